"""The AMI's bake, rehearsed locally: packer/local bakes a Debian 12 systemd container with
the same playbook, bake mode and ansible provisioner (through Packer's SSH proxy) as the AMI.

The baked image then boots like an instance of the AMI: the service is enabled, so it starts
at boot and answers /healthz, but has no DATABASE_URL, so /readyz says 503 (its code directory
is read-only, so no SQLite file either) until the boot step writes one and restarts it.
"""

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from conftest import systemd_container_args
from support import REPO_ROOT, require_command, wait_until

VENV_BIN = Path(sys.executable).parent
ENV_FILE = "/etc/hello-app/hello-app.env"
# Prints the HTTP status of a URL, from inside the container (which has no curl).
STATUS_PROBE = """
import urllib.error, urllib.request
try:
    print(urllib.request.urlopen("{url}", timeout=2).status)
except urllib.error.HTTPError as error:
    print(error.code)
except OSError:
    print(0)
"""


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


def test_baked_image_boots_without_a_database_until_the_boot_step_supplies_one(
    baked_image,
):
    name = f"hello-packer-boot-{uuid.uuid4().hex[:8]}"
    run("docker", "run", "-d", "--name", name, *systemd_container_args(), baked_image)
    try:

        def sh(command: str, check=True) -> subprocess.CompletedProcess:
            return run("docker", "exec", name, "sh", "-c", command, check=check)

        def status(path: str) -> int:
            probe = STATUS_PROBE.format(url=f"http://127.0.0.1:8080{path}")
            answer = sh(f"python3 -c '{probe}'", check=False).stdout.strip()
            return int(answer) if answer.isdigit() else 0

        state = "systemctl is-system-running"
        wait_until(
            lambda: sh(state, check=False).stdout.strip() in ("running", "degraded"),
            timeout=60,
            what="the baked image to boot",
        )
        assert sh("systemctl is-enabled hello-app").stdout.strip() == "enabled"
        assert "DATABASE_URL=" not in sh(f"cat {ENV_FILE}").stdout
        assert sh("readlink /opt/hello-app/current").stdout.strip().endswith("/baked-1")
        wait_until(lambda: status("/healthz") == 200, what="/healthz after boot")
        assert status("/readyz") == 503

        # What the AMI's boot script does, with SQLite standing in for RDS.
        sh(f"echo 'DATABASE_URL=sqlite:////var/lib/hello-app/boot.sqlite3' >> {ENV_FILE}"
           " && systemctl restart hello-app")  # fmt: skip
        wait_until(lambda: status("/readyz") == 200, what="/readyz once the database is set")
        # rsyslog copies the journal to the file the CloudWatch agent ships.
        wait_until(lambda: "/readyz" in sh("cat /var/log/hello-app/app.log", check=False).stdout,
                   what="the request in /var/log/hello-app/app.log")  # fmt: skip
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True, check=False)
