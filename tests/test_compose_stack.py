"""The compose stack (web + db), driven with the real docker-compose commands.

Each run uses its own project name, host port and credentials, so it never touches a
developer's stack, and removes its containers and volumes at the end.
"""

import json
import os
import secrets
import subprocess

import pytest
from support import (
    REPO_ROOT,
    compose_command,
    free_port,
    http_request,
    require_command,
    wait_until,
)

pytestmark = pytest.mark.timeout(900)

HEALTH_TIMEOUT = 90


class Stack:
    def __init__(self, env_file, project: str, port: int):
        self.project = project
        self.port = port
        self.base = [*compose_command(), "--project-name", project, "--env-file", str(env_file)]

    def compose(self, *args: str, timeout: float = 600) -> str:
        result = subprocess.run(
            [*self.base, *args],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if result.returncode != 0:
            raise AssertionError(f"compose {' '.join(args)} failed:\n{result.stderr}")
        return result.stdout.strip()

    def container(self, service: str) -> str:
        container_id = self.compose("ps", "-q", service)
        assert container_id, f"no {service} container"
        return container_id

    def inspect(self, service: str) -> dict:
        out = subprocess.run(
            ["docker", "inspect", self.container(service)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        return json.loads(out)[0]

    def health(self, service: str) -> str:
        return self.inspect(service)["State"]["Health"]["Status"]

    def up(self):
        """`up -d --build`, then wait until both services are healthy (v1 has no --wait)."""
        self.compose("up", "--detach", "--build")
        for service in ("db", "web"):
            wait_until(
                lambda s=service: self.health(s) == "healthy",
                timeout=HEALTH_TIMEOUT,
                what=f"{service} to turn healthy",
            )

    def get(self, path: str, method: str = "GET"):
        return http_request(self.port, path, method=method)

    def visits(self) -> int:
        resp = self.get("/visits")
        assert resp.status == 200, resp.text
        return resp.json()["visits"]


def write_env_file(path, base_images: dict[str, str], port: int):
    values = {
        **base_images,
        "WEB_PORT": str(port),
        "POSTGRES_USER": "hello_test",
        "POSTGRES_PASSWORD": secrets.token_hex(16),
        "POSTGRES_DB": "hello_test",
    }
    path.write_text("".join(f"{key}={value}\n" for key, value in values.items()))


@pytest.fixture(scope="module")
def stack(base_images, tmp_path_factory):
    port = free_port()
    env_file = tmp_path_factory.mktemp("compose") / "test.env"
    write_env_file(env_file, base_images, port)
    stack = Stack(env_file, f"hello-test-{secrets.token_hex(4)}", port)
    try:
        stack.up()
        yield stack
    finally:
        stack.compose("down", "--volumes", "--remove-orphans", "--rmi", "local")


# Runs first, on the fresh volume.
def test_two_visits_count_two(stack):
    assert stack.visits() == 0
    stack.get("/visits", method="POST")
    stack.get("/visits", method="POST")
    assert stack.visits() == 2


def test_both_services_are_healthy_and_only_web_is_published(stack):
    assert stack.health("db") == "healthy"
    assert stack.health("web") == "healthy"
    assert stack.inspect("db")["NetworkSettings"]["Ports"].get("5432/tcp") is None
    published = stack.inspect("web")["NetworkSettings"]["Ports"]["8080/tcp"]
    assert {binding["HostPort"] for binding in published} == {str(stack.port)}


def test_web_answers_hello_world_on_the_published_port(stack):
    resp = stack.get("/")
    assert resp.status == 200
    assert resp.text == "Hello World"


def test_visits_survive_down_and_up(stack):
    stack.get("/visits", method="POST")
    before = stack.visits()
    stack.compose("down")
    stack.up()
    assert stack.visits() == before


def test_down_with_volumes_discards_the_visits(stack):
    stack.get("/visits", method="POST")
    assert stack.visits() > 0
    stack.compose("down", "--volumes")
    stack.up()
    assert stack.visits() == 0


def test_web_survives_a_db_outage_and_recovers_without_a_restart(stack):
    web_before = stack.inspect("web")
    stack.compose("stop", "db")
    assert stack.get("/").status == 200
    wait_until(lambda: stack.get("/readyz").status == 503, what="/readyz to answer 503")
    stack.compose("start", "db")
    wait_until(lambda: stack.get("/readyz").status == 200, timeout=30, what="/readyz 200")
    web_after = stack.inspect("web")
    assert web_after["Id"] == web_before["Id"]
    assert web_after["State"]["StartedAt"] == web_before["State"]["StartedAt"]
    assert web_after["RestartCount"] == 0


def test_web_runs_hardened(stack):
    web = stack.container("web")
    assert stack.inspect("web")["HostConfig"]["CapDrop"] == ["ALL"]
    assert "no-new-privileges:true" in stack.inspect("web")["HostConfig"]["SecurityOpt"]
    readonly = subprocess.run(["docker", "exec", web, "touch", "/opt/hello-app/x"], check=False)
    assert readonly.returncode != 0, "the root filesystem is writable"
    tmpfs = subprocess.run(["docker", "exec", web, "touch", "/tmp/x"], check=False)
    assert tmpfs.returncode == 0, "/tmp is not writable"
    uid = subprocess.check_output(["docker", "exec", web, "id", "-u"], text=True).strip()
    assert uid == "10001"


def test_the_ci_smoke_script_passes(base_images, tmp_path):
    """scripts/compose_smoke.sh is what CI runs on GitHub's runners; run it here too."""
    require_command("curl", "curl")
    port = free_port()
    env_file = tmp_path / "smoke.env"
    write_env_file(env_file, base_images, port)
    env = {
        **os.environ,
        "COMPOSE": " ".join(compose_command()),
        "COMPOSE_ENV_FILE": str(env_file),
        "COMPOSE_PROJECT_NAME": f"hello-test-smoke-{secrets.token_hex(4)}",
        "WEB_PORT": str(port),
    }
    result = subprocess.run(
        [REPO_ROOT / "scripts/compose_smoke.sh"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    assert "compose smoke test passed" in result.stderr, result.stderr
