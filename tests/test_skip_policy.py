"""CI's rule that nothing may skip: with FORBID_SKIPS=1 a skip is reported as a failure."""

import os
import shutil
import subprocess
import sys

from support import REPO_ROOT

SKIPPING_TEST = """
import pytest

def test_needs_something_missing():
    pytest.skip("no such engine here")
"""


def run_inner_suite(tmp_path, forbid: str) -> subprocess.CompletedProcess:
    for name in ("conftest.py", "support.py"):
        shutil.copy2(REPO_ROOT / "tests" / name, tmp_path / name)
    (tmp_path / "test_inner.py").write_text(SKIPPING_TEST)
    # conftest.py imports from the checkout (lab/), as the suite's pythonpath allows.
    env = {**os.environ, "FORBID_SKIPS": forbid, "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        cwd=tmp_path,
    )


def test_a_skip_is_a_failure_when_skips_are_forbidden(tmp_path):
    result = run_inner_suite(tmp_path, forbid="1")
    assert result.returncode == 1
    assert "1 failed" in result.stdout
    assert (
        "FORBID_SKIPS=1 makes every test mandatory: Skipped: no such engine here" in result.stdout
    )


def test_a_skip_stays_a_skip_elsewhere(tmp_path):
    result = run_inner_suite(tmp_path, forbid="")
    assert result.returncode == 0
    assert "1 skipped" in result.stdout
