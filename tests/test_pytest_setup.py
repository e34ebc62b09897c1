"""The test suite as a contributor runs it: the ``pytest`` console script in the repository root."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO


def test_plain_pytest_collects_every_test_file():
    """``pytest --collect-only`` through the console script (not ``python -m pytest``, which puts the current folder
    on sys.path and hides imports that only work from there) collects the whole suite without an error."""
    script = Path(sys.executable).with_name("pytest")
    if not script.is_file():
        pytest.skip(f"no pytest console script next to {sys.executable}")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTEST_ADDOPTS")}
    proc = subprocess.run([str(script), "--collect-only", "-q", "-p", "no:cacheprovider"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "error" not in out.splitlines()[-1].lower()
    assert "tests/test_sweep.py::" in proc.stdout  # the file that once failed to import is collected
