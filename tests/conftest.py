"""Test-suite policy shared by every test module.

Tests that need something the machine may lack (Docker, PostgreSQL binaries) skip with a
reason. CI sets FORBID_SKIPS=1, and then every skip is reported as a failure instead.
"""

import os
import shutil
import subprocess

import pytest

FORBID_SKIPS = os.environ.get("FORBID_SKIPS") == "1"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if FORBID_SKIPS and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"skipped, but FORBID_SKIPS=1 makes every test mandatory: {reason}"


def docker_is_available() -> bool:
    if shutil.which("docker") is None:
        return False
    probe = subprocess.run(["docker", "info"], capture_output=True, timeout=30, check=False)
    return probe.returncode == 0


@pytest.fixture(scope="session")
def docker():
    """Skip the test, with the reason, when no Docker engine answers."""
    if not docker_is_available():
        pytest.skip("Docker engine not available (docker info failed)")


@pytest.fixture(scope="session")
def base_images(docker) -> dict[str, str]:
    """PYTHON_IMAGE and POSTGRES_IMAGE for builds and compose, from tests/images/select.sh.

    The public images when they are present or can be pulled (GitHub's runners), otherwise
    the offline stand-ins of tests/images/, built on first use (`make images`).
    """
    from support import REPO_ROOT

    select = subprocess.run(
        [REPO_ROOT / "tests/images/select.sh"], capture_output=True, text=True, timeout=1800
    )
    assert select.returncode == 0, f"no base images to build on:\n{select.stderr}"
    return dict(line.split("=", 1) for line in select.stdout.splitlines())
