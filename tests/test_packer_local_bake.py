"""The AMI's bake, rehearsed locally: packer/local bakes a Debian 12 systemd container with
the same playbook (ansible/bake.yml: roles hello_app and hello_app_aws), the same ansible
provisioner (through Packer's SSH proxy) as the AMI.

The baked image then boots like an instance of the AMI: the service is enabled, so it starts
at boot and answers /healthz, but its database URL file does not exist yet, so /readyz says
503 "database not configured". Then the boot step's own code, as installed in the image,
writes the file, with a PostgreSQL container standing in for RDS, and /readyz turns 200
without a restart of the service.
"""

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from conftest import systemd_container_args
from support import AMI_APP_LOG_FILE, REPO_ROOT, require_command, wait_until

VENV_BIN = Path(sys.executable).parent
ENV_FILE = "/etc/hello-app/hello-app.env"
IMAGE_SETTINGS = "/etc/hello-app/configure.json"
BOOT_STEP = "/usr/local/sbin/hello-app-configure"
# Prints the HTTP status and body of a URL, from inside the container (which has no curl).
PROBE = """
import urllib.error, urllib.request
try:
    with urllib.request.urlopen("{url}", timeout=2) as response:
        print(response.status, response.read().decode())
except urllib.error.HTTPError as error:
    print(error.code, error.read().decode())
except OSError:
    print(0)
"""
# What `hello-app-configure boot` does with the URL it builds from the secret, done by the
# installed script's own functions: write it to the file its image settings name.
WRITE_URL_FILE = """
import importlib.machinery, importlib.util, sys
loader = importlib.machinery.SourceFileLoader("configure", "{script}")
configure = importlib.util.module_from_spec(importlib.util.spec_from_loader("configure", loader))
loader.exec_module(configure)
image = configure.read_settings(configure.IMAGE_SETTINGS, configure.IMAGE_KEYS)
configure.write_database_url(image["database_url_file"], sys.argv[1], image["group"])
"""
DB_USER, DB_NAME = "hello", "hello"
DB_PASSWORD = "local-bake-" + uuid.uuid4().hex[:12]


def run(*args, check=True) -> subprocess.CompletedProcess:
    result = subprocess.run(args, capture_output=True, text=True, timeout=900)
    if check:
        assert result.returncode == 0, f"{args} failed:\n{result.stdout[-6000:]}\n{result.stderr}"
    return result


@pytest.fixture
def baked_image(systemd_image):
    require_command("packer", "packer")
    require_command("ssh", "openssh-client")  # the ansible provisioner connects over SSH
    tag = f"hello-packer-local:{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}"}
    build = subprocess.run(
        ["packer", "build", "-color=false", f"-var=image={systemd_image}",
         "-var=app_version=baked-1", f"-var=tag={tag}", "packer/local"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=900,
        env=env,
    )  # fmt: skip
    try:
        assert build.returncode == 0, f"packer build failed:\n{build.stdout[-8000:]}"
        yield tag
    finally:
        subprocess.run(["docker", "rmi", "-f", tag], capture_output=True, check=False)


@pytest.fixture
def network(docker):
    """A Docker network of the test's own, for the instance and its database."""
    name = f"hello-packer-net-{uuid.uuid4().hex[:8]}"
    run("docker", "network", "create", name)
    yield name
    subprocess.run(["docker", "network", "rm", name], capture_output=True, check=False)


@pytest.fixture
def database(base_images, network):
    """PostgreSQL standing in for RDS, reached as `db` on the network; yields its URL."""
    name = f"hello-packer-db-{uuid.uuid4().hex[:8]}"
    run("docker", "run", "-d", "--name", name, "--network", network, "--network-alias", "db",
        "-e", f"POSTGRES_USER={DB_USER}", "-e", f"POSTGRES_PASSWORD={DB_PASSWORD}",
        "-e", f"POSTGRES_DB={DB_NAME}", base_images["POSTGRES_IMAGE"])  # fmt: skip
    try:
        ready = ["docker", "exec", name, "pg_isready", "-q", "-U", DB_USER, "-d", DB_NAME]
        wait_until(lambda: run(*ready, check=False).returncode == 0, timeout=60,
                   what="PostgreSQL to accept connections")  # fmt: skip
        yield f"postgresql://{DB_USER}:{DB_PASSWORD}@db:5432/{DB_NAME}"
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True, check=False)


def test_baked_image_serves_without_a_database_until_the_boot_step_writes_its_url_file(
    baked_image, network, database
):
    name = f"hello-packer-boot-{uuid.uuid4().hex[:8]}"
    run("docker", "run", "-d", "--name", name, "--network", network,
        *systemd_container_args(), baked_image)  # fmt: skip
    try:

        def sh(command: str, check=True) -> subprocess.CompletedProcess:
            return run("docker", "exec", name, "sh", "-c", command, check=check)

        def get(path: str) -> tuple[int, str]:
            probe = PROBE.format(url=f"http://127.0.0.1:8080{path}")
            answer = run("docker", "exec", name, "python3", "-c", probe, check=False).stdout
            status, _, body = answer.strip().partition(" ")
            return (int(status) if status.isdigit() else 0), body

        def unit(prop: str) -> str:
            return sh(f"systemctl show hello-app@1 --property {prop} --value").stdout.strip()

        state = "systemctl is-system-running"
        wait_until(
            lambda: sh(state, check=False).stdout.strip() in ("running", "degraded"),
            timeout=60,
            what="the baked image to boot",
        )
        enabled = sh("systemctl is-enabled hello-app.socket hello-app.target").stdout.split()
        assert enabled == ["enabled", "enabled"]
        assert sh("readlink /opt/hello-app/current").stdout.strip().endswith("/baked-1")
        # The two roles agree on the file: the app reads the one the boot step writes.
        image = json.loads(sh(f"cat {IMAGE_SETTINGS}").stdout)
        env_lines = sh(f"cat {ENV_FILE}").stdout.splitlines()
        assert f'DATABASE_URL_FILE="{image["database_url_file"]}"' in env_lines
        assert not any(line.startswith("DATABASE_URL=") for line in env_lines)
        sh(f"test -x {BOOT_STEP}")
        timer = sh("systemctl is-enabled hello-app-db-url.timer", check=False).stdout.strip()
        assert timer == "disabled"  # `boot` starts it, once the instance has its settings

        wait_until(lambda: get("/healthz")[0] == 200, what="/healthz after boot")
        status, body = get("/readyz")
        assert (status, json.loads(body)["reason"]) == (503, "database not configured")
        started = (unit("MainPID"), unit("ExecMainStartTimestamp"))

        script = WRITE_URL_FILE.format(script=BOOT_STEP)
        run("docker", "exec", name, "python3", "-c", script, database)
        assert sh(f"stat -c '%a %U:%G' {image['database_url_file']}").stdout.strip() == (
            "640 root:hello-app"
        )
        wait_until(lambda: get("/readyz")[0] == 200, what="/readyz once the URL file is written")
        assert get("/visits")[0] == 200
        assert (unit("MainPID"), unit("ExecMainStartTimestamp")) == started, "it was restarted"
        assert unit("NRestarts") == "0"

        # rsyslog copies the journal to the file the CloudWatch agent ships.
        assert image["log_file"] == AMI_APP_LOG_FILE
        wait_until(lambda: "/readyz" in sh(f"cat {AMI_APP_LOG_FILE}", check=False).stdout,
                   what=f"the request in {AMI_APP_LOG_FILE}")  # fmt: skip
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True, check=False)
