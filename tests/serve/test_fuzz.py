"""Fuzz the served client's API from its own OpenAPI document (schemathesis): no crash, no undocumented answer.

Every operation gets schema-valid and schema-invalid requests (random text, huge numbers, missing and extra
fields, odd headers). Each response must not be a server error, must use a documented status code and
content type, must match the documented body schema, and invalid requests must be refused.
"""

from __future__ import annotations

import pytest
from serve_fixtures import make_engine, tiny_world_dir

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis.errors import Unsatisfiable  # noqa: E402
from schemathesis import GenerationMode, checks  # noqa: E402

from fedspear.serve.app import LOOPBACK_NAMES, ServeOptions, create_app  # noqa: E402
from fedspear.serve.runtime import ClientRuntime  # noqa: E402

CHECKS = [checks.not_a_server_error, checks.status_code_conformance, checks.content_type_conformance,
          checks.response_schema_conformance, checks.negative_data_rejection]


@pytest.fixture(scope="module")
def api_schema(tmp_path_factory):
    runtime = ClientRuntime(make_engine(tiny_world_dir(tmp_path_factory)), tmp_path_factory.mktemp("fuzz"), seed=0)
    app = create_app(runtime, ServeOptions(rate_per_minute=10**6, allowed_hosts=[*LOOPBACK_NAMES, "testserver"]))
    yield schemathesis.openapi.from_asgi("/openapi.json", app)
    runtime.close()


def test_api_never_crashes_and_matches_its_openapi(api_schema):
    """Each operation, schema-valid then schema-invalid requests (schemathesis' pytest plugin needs pytest < 9,
    so the cases are drawn from its Hypothesis strategies directly)."""
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 8
    tried_negative_on_empty: list[str] = []
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(max_examples=25, deadline=None, derandomize=True, database=None,
                      suppress_health_check=list(HealthCheck))
            def fuzz(case) -> None:
                case.call_and_validate(checks=CHECKS)

            try:
                fuzz()
            except Unsatisfiable:  # nothing can be invalid in an operation without inputs (GET /api/status)
                assert mode is GenerationMode.NEGATIVE, operation.label
                tried_negative_on_empty.append(operation.label)
    assert len(tried_negative_on_empty) <= 1
