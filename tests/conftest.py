"""Test-suite policy shared by every test module.

Tests that need something the machine may lack (Docker, PostgreSQL binaries) skip with a
reason. CI sets FORBID_SKIPS=1, and then every skip is reported as a failure instead.
"""

import os
import shutil
import subprocess
import sys

import pytest
from support import REPO_ROOT, AppProcess, PostgresCluster

# The app is imported as a package from the repository root, as `python app/main.py` does.
sys.path.insert(0, str(REPO_ROOT))

FORBID_SKIPS = os.environ.get("FORBID_SKIPS") == "1"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if FORBID_SKIPS and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"skipped, but FORBID_SKIPS=1 makes every test mandatory: {reason}"


def pytest_configure(config):
    config.addinivalue_line("markers", "docker: needs a Docker engine (added automatically)")


def pytest_collection_modifyitems(items):
    # `-m "not docker"` then selects the tests that need no Docker engine.
    for item in items:
        if "docker" in item.fixturenames:
            item.add_marker(pytest.mark.docker)


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


@pytest.fixture
def app_server(tmp_path):
    """Factory: start `python app/main.py` as a real server on a free port; stopped at teardown."""
    servers = []

    def start(**env) -> AppProcess:
        server = AppProcess(tmp_path / f"app-{len(servers)}.log", env)
        servers.append(server)
        server.start()
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(scope="session")
def postgres_url(tmp_path_factory):
    """A PostgreSQL the tests may write to: TEST_DATABASE_URL (CI's server) or a throwaway one."""
    url = os.environ.get("TEST_DATABASE_URL")
    if url:
        yield url
        return
    cluster = PostgresCluster.create_or_skip()
    cluster.start()
    yield cluster.url
    cluster.destroy()


@pytest.fixture
def postgres_cluster():
    """A throwaway PostgreSQL server of the test's own, which it may stop and start."""
    cluster = PostgresCluster.create_or_skip()
    cluster.start()
    yield cluster
    cluster.destroy()


@pytest.fixture(scope="session")
def base_images(docker) -> dict[str, str]:
    """PYTHON_IMAGE and POSTGRES_IMAGE for builds and compose, from tests/images/select.sh.

    The public images when they are present or can be pulled (GitHub's runners), otherwise
    the offline stand-ins of tests/images/, built on first use (`make images`).
    """
    select = subprocess.run(
        [REPO_ROOT / "tests/images/select.sh"], capture_output=True, text=True, timeout=1800
    )
    assert select.returncode == 0, f"no base images to build on:\n{select.stderr}"
    return dict(line.split("=", 1) for line in select.stdout.splitlines())
