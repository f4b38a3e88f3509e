"""The hello_app role under Molecule: create, converge, idempotence, verify, destroy.

verify.yml (ansible/roles/hello_app/molecule/default) holds the behaviour checks: the unit is
active and enabled, Hello World answers on 8080 through systemd, the process runs as
hello-app, kill -9 is followed by a restart, a broken release is rolled back, and
`systemd-analyze security` scores the unit. Here the scenario runs as `make molecule` does.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import systemd_container_args
from support import REPO_ROOT

ROLE_DIR = REPO_ROOT / "ansible/roles/hello_app"
VENV_BIN = Path(sys.executable).parent
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def molecule_env(request) -> dict[str, str]:
    """CI's matrix sets MOLECULE_IMAGE (geerlingguy's images) and the platform settings;
    otherwise the offline stand-in runs, with the platform this Docker host allows."""
    env = dict(os.environ)
    # Molecule calls ansible-playbook and ansible-config from its own venv.
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env["PY_COLORS"] = env["ANSIBLE_FORCE_COLOR"] = "0"
    if "MOLECULE_IMAGE" not in env:
        privileged = "--privileged" in systemd_container_args()
        env["MOLECULE_IMAGE"] = request.getfixturevalue("systemd_image")
        env["MOLECULE_PRIVILEGED"] = "true" if privileged else "false"
        env["MOLECULE_CGROUP_MODE"] = "rw" if privileged else "ro"
    return env


# Not automatic: systemd_image is only requested when CI names no image of its own.
@pytest.mark.systemd
def test_molecule_scenario_converges_idempotently_and_verifies_the_service(docker, request):
    result = subprocess.run(
        [VENV_BIN / "molecule", "test"],
        cwd=ROLE_DIR,
        env=molecule_env(request),
        capture_output=True,
        text=True,
        timeout=1200,
    )
    output = ANSI.sub("", result.stdout + result.stderr)
    assert result.returncode == 0, f"molecule test failed; its last output:\n{output[-8000:]}"
    for step in ("converge", "idempotence", "verify"):
        assert f"{step}: Executed: Successful" in output, f"no {step}:\n{output[-4000:]}"
    score = re.search(r"Overall exposure level for hello-app@1\.service: ([0-9.]+)", output)
    assert score, "verify did not print the systemd-analyze security score"
    print(f"\nsystemd-analyze security hello-app@1: exposure {score.group(1)} (goal <= 2.5)")
    print("\n".join(line for line in output.splitlines() if "Executed:" in line))
