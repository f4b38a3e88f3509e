"""The app's systemd unit, rendered from the role's template as Ansible renders it, scored by
`systemd-analyze security --offline`: its hardening may grow, never shrink."""

import re
import subprocess

import yaml
from ansible.parsing.dataloader import DataLoader
from ansible.template import Templar, trust_as_template
from support import REPO_ROOT, require_command

ROLE = REPO_ROOT / "ansible/roles/hello_app"
# The exposure systemd 252 gives the unit of main before issue 12 (2026-11-27), offline; the
# lab's hosts, which also see the socket and the user, print 1.2. Lower it when a change lowers
# the score; never raise it.
EXPOSURE_OF_MAIN = 1.4
# EC2's instance metadata service, over IPv4 and IPv6.
INSTANCE_METADATA = {"169.254.169.254", "fd00:ec2::254"}


def render_worker_unit(path) -> str:
    """hello-app@.service as the role writes it, with its defaults and vars."""
    variables = {"ansible_managed": "Ansible managed", "ansible_facts": {}}
    for layer in ("defaults", "vars"):
        for name, value in yaml.safe_load((ROLE / layer / "main.yml").read_text()).items():
            variables[name] = trust_as_template(value) if isinstance(value, str) else value
    source = trust_as_template((ROLE / "templates/hello-app@.service.j2").read_text())
    text = Templar(loader=DataLoader(), variables=variables).template(source)
    path.write_text(text)
    return text


def test_the_app_unit_scores_no_worse_than_main(tmp_path):
    analyze = require_command("systemd-analyze", "systemd")
    unit = tmp_path / "hello-app@.service"
    render_worker_unit(unit)

    result = subprocess.run(
        [analyze, "security", "--offline=true", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        check=False,
    )

    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert found, f"systemd-analyze printed no score:\n{result.stdout}\n{result.stderr}"
    assert "bad unit file setting" not in result.stderr, result.stderr
    assert float(found.group(1)) <= EXPOSURE_OF_MAIN


def test_the_app_unit_cannot_reach_the_instance_metadata_service(tmp_path):
    lines = render_worker_unit(tmp_path / "hello-app@.service").splitlines()
    denied = {
        address
        for line in lines
        if line.startswith("IPAddressDeny=")
        for address in line.removeprefix("IPAddressDeny=").split()
    }
    assert denied >= INSTANCE_METADATA
