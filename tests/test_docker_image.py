"""The app's image, built with the real Dockerfile and run alone with `docker run`."""

import secrets
import subprocess
import time

import pytest
from support import REPO_ROOT, free_port, http_request, wait_until

pytestmark = pytest.mark.timeout(900)

# Kept after the run: it anchors the layer cache that compose builds reuse.
IMAGE = "hello-test-app:latest"
APP_UID = "10001"


def docker_cmd(*args: str, check: bool = True, timeout: float = 60) -> str:
    result = subprocess.run(
        ["docker", *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and result.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)} failed:\n{result.stderr}")
    return result.stdout.strip()


@pytest.fixture(scope="module")
def image(base_images):
    previous = docker_cmd("image", "inspect", "--format", "{{.Id}}", IMAGE, check=False)
    docker_cmd(
        "build",
        "--build-arg",
        f"PYTHON_IMAGE={base_images['PYTHON_IMAGE']}",
        "--tag",
        IMAGE,
        str(REPO_ROOT),
        timeout=600,
    )
    if previous and previous != docker_cmd("image", "inspect", "--format", "{{.Id}}", IMAGE):
        docker_cmd("image", "rm", previous, check=False)  # the old build, now untagged
    return IMAGE


@pytest.fixture
def container(image):
    """The image running alone, published on a free loopback port."""
    name = f"hello-test-app-{secrets.token_hex(4)}"
    port = free_port()
    docker_cmd("run", "--detach", "--name", name, "--publish", f"127.0.0.1:{port}:8080", image)
    try:
        wait_until(lambda: http_request(port, "/healthz").status == 200, what="the container")
        yield name, port
    finally:
        docker_cmd("rm", "--force", "--volumes", name, check=False)


def health(name: str) -> str:
    return docker_cmd("inspect", "--format", "{{.State.Health.Status}}", name)


def test_the_container_answers_hello_world(container):
    _, port = container
    resp = http_request(port, "/")
    assert resp.status == 200
    assert resp.text == "Hello World"


def test_the_container_turns_healthy(container):
    name, _ = container
    wait_until(lambda: health(name) == "healthy", timeout=30, what="health status 'healthy'")


def test_run_alone_the_image_keeps_its_sqlite_file_in_its_data_directory(container):
    # The app has no default database; the image gives it one that its user may write.
    name, port = container
    assert http_request(port, "/visits", method="POST").status == 201
    docker_cmd("exec", name, "test", "-f", "/opt/hello-app/data/app.sqlite3")


def test_the_server_runs_as_a_fixed_non_root_user(container):
    name, _ = container
    status = docker_cmd("exec", name, "cat", "/proc/1/status")
    uids = next(line.split()[1:] for line in status.splitlines() if line.startswith("Uid:"))
    assert set(uids) == {APP_UID}


def test_sigterm_stops_the_container_within_seconds_with_exit_code_0(container):
    name, port = container
    assert http_request(port, "/").status == 200
    started = time.monotonic()
    docker_cmd("kill", "--signal", "TERM", name)
    exit_code = docker_cmd("wait", name, timeout=30)
    elapsed = time.monotonic() - started
    assert exit_code == "0"
    assert elapsed < 5, f"took {elapsed:.1f}s to stop"


def test_the_image_holds_only_the_app_and_its_venv(image):
    listing = docker_cmd("run", "--rm", image, "ls", "-A", "/opt/hello-app", "/opt/venv/bin")
    app_dir, venv_bin = listing.split("\n\n")
    # .dockerignore keeps tests, .git, .venv, logs and caches out of the image.
    assert app_dir.splitlines()[1:] == ["app", "data"]
    # pip is removed from the runtime venv: nothing gets installed at run time.
    assert "pip" not in venv_bin.split()
