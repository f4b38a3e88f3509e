"""site.yml across several hosts: the fleet check that runs before any host is touched, and
the one-host-at-a-time rollout that stops at the first failure. A bad release on three real
VMs, rolled back on the first while the other two keep serving, is the lab's `bad-release`
drill (tests/test_lab_drills.py).

The hosts here are names for 127.0.0.1 on a port where nothing listens: reaching one fails at
once, and says so in Ansible's output ("UNREACHABLE"), so the output shows which hosts the
play tried to touch, and in what order. That word comes from the ssh connection plugin, so these
tests need an SSH client: without one, Ansible fails every host the same way before connecting,
and no test here could tell a host that was tried from one that was not.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from support import REPO_ROOT, free_port, require_command

VENV_BIN = Path(sys.executable).parent


def site_yml(tmp_path, hosts: list[str], *extra: str) -> str:
    require_command("ssh", "openssh-client")
    closed_port = free_port()
    inventory = tmp_path / "hosts.ini"
    inventory.write_text(
        "[hello_app]\n"
        + "".join(
            f"{host} ansible_host=127.0.0.1 ansible_port={closed_port} ansible_user=nobody\n"
            for host in hosts
        )
    )
    env = dict(os.environ, PATH=f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}", ANSIBLE_NOCOLOR="1")
    result = subprocess.run(
        [VENV_BIN / "ansible-playbook", "-i", inventory, "site.yml", *extra],
        cwd=REPO_ROOT / "ansible",
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode != 0  # no host can be reached here
    return result.stdout + result.stderr


def test_a_fleet_without_a_database_url_stops_before_touching_any_host(tmp_path):
    output = site_yml(tmp_path, ["web1", "web2"])
    assert "2 hosts and no hello_app_database_url" in output
    assert "UNREACHABLE" not in output, "a host was connected to before the check"


@pytest.mark.parametrize(
    "extra",
    [
        ("-e", "hello_app_database_url=postgresql://app:pw@db.internal:5432/hello"),
        ("-e", "hello_app_sqlite_per_host=true"),
    ],
    ids=["shared-database", "sqlite-on-purpose"],
)
def test_a_fleet_with_a_database_or_sqlite_on_purpose_goes_on_to_deploy(tmp_path, extra):
    output = site_yml(tmp_path, ["web1", "web2"], *extra)
    assert "fatal: [web1]: UNREACHABLE" in output


def test_a_single_vm_may_use_sqlite(tmp_path):
    output = site_yml(tmp_path, ["web1"])
    assert "fatal: [web1]: UNREACHABLE" in output


def test_the_rollout_goes_one_host_at_a_time_and_stops_at_the_first_failure(tmp_path):
    output = site_yml(tmp_path, ["web1", "web2", "web3"], "-e", "hello_app_sqlite_per_host=true")
    assert "fatal: [web1]: UNREACHABLE" in output
    assert "[web2]: UNREACHABLE" not in output and "[web3]: UNREACHABLE" not in output


def test_serial_is_a_variable(tmp_path):
    output = site_yml(
        tmp_path, ["web1", "web2", "web3"], "-e", "hello_app_sqlite_per_host=true",
        "-e", "hello_app_serial=2",
    )  # fmt: skip
    assert "fatal: [web1]: UNREACHABLE" in output and "fatal: [web2]: UNREACHABLE" in output
    assert "[web3]: UNREACHABLE" not in output
