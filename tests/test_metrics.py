"""The metric registry (fedspear/metrics.py): names declared where they are made, read by every consumer."""

from __future__ import annotations

import pytest

from fedspear import metrics


def test_patterns_match_only_well_formed_names():
    assert metrics.matches("loss_pg", ["loss_*"]) and metrics.matches("revision_attempts_3", ["revision_attempts_#"])
    assert not metrics.matches("loss_the zorvik", ["loss_*"]) and not metrics.matches("revision_attempts_1x",
                                                                                       ["revision_attempts_#"])
    assert not metrics.matches("loss_" + "a" * 41, ["loss_*"]) and not metrics.matches("", [""])
    assert metrics.matches("prompts", ["prompts"]) and not metrics.matches("prompts2", ["prompts"])


def test_a_class_inherits_its_bases_declarations():
    from fedspear.algorithms.feedback_sft import FeedbackSFT
    from fedspear.algorithms.spear import Spear

    assert metrics.class_metrics(FeedbackSFT) == metrics.class_metrics(Spear)
    assert {"steps", "loss_*", "losses_fixed", "revision_attempts_#"} <= metrics.class_metrics(Spear)
    assert "feedback_false_rejects" in metrics.declared_metrics(Spear)  # the feedback user model's


def test_every_aggregate_tracked_and_compared_name_is_declared_by_an_algorithm():
    declared = metrics.declared_metrics()
    reported = [key for _, key in metrics.REPORTED]
    assert set(reported) <= set(metrics.ROUND_COUNTS)
    for name in (*metrics.ROUND_COUNTS, *metrics.TOTALS, *(k for k in metrics.TRACKED if k not in metrics.DERIVED)):
        assert metrics.matches(name, declared), name
    assert set(metrics.TRACKED) <= {*metrics.ROUND_COUNTS, *metrics.DERIVED}
    assert set(metrics.TOTALS) <= set(metrics.ROUND_COUNTS)


def test_the_server_tracker_and_compare_read_the_registry():
    from fedspear.compare import run_totals
    from fedspear.federation.server import COUNT_KEYS, sum_client_metrics
    from fedspear.tracking import TRAIN_KEYS

    assert COUNT_KEYS == metrics.ROUND_COUNTS and TRAIN_KEYS == metrics.TRACKED
    agg = sum_client_metrics([{"prompts": 2, "wins_y0": 1}, {"prompts": 2, "wins_y0": 2}])
    assert list(agg)[: len(metrics.ROUND_COUNTS)] == list(metrics.ROUND_COUNTS) and agg["y0_accuracy"] == 0.75
    totals = run_totals([{"round": 1, "clients": [{"metrics": {"tokens_trained": 5}}], "time": {"round_s": 1.0}}])
    assert set(metrics.TOTALS) <= set(totals) and totals["tokens_trained"] == 5


@pytest.mark.parametrize(("value", "expected"), [(True, 1), (3, 3), (2.5, 2.5), (float("nan"), None),
                                                 ("1", None), ([1], None), (None, None)])
def test_numeric(value, expected):
    assert metrics.numeric(value) == expected
