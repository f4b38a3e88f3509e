"""ansible/site.yml over real SSH, the way README step 4 deploys to a VM.

The "VM" is a systemd container running sshd, reached on a port published on 127.0.0.1,
with a `deploy` user that has sudo, as on a cloud image. The key, the vault password and the
secrets file are throwaway files in the test's tmp dir. The commands are the README's.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from support import PUBLISHED_PORT_PAUSE, REPO_ROOT, LoadLoop, http_request, run, wait_until

VENV_BIN = Path(sys.executable).parent


@pytest.fixture
def vm(ssh_vms, tmp_path):
    """One VM, and an inventory that names it."""
    machine = ssh_vms("vm1")
    inventory = tmp_path / "hosts.ini"
    inventory.write_text("[hello_app]\n" + machine["inventory_line"])
    return {**machine, "inventory": inventory}


def deploy(vm, home: Path, *extra: str) -> subprocess.CompletedProcess:
    """README step 4's command: cd ansible && ansible-playbook -i ... site.yml -e @secrets."""
    env = dict(os.environ, PATH=f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}", HOME=str(home))
    return run(
        "ansible-playbook", "-i", str(vm["inventory"]), "site.yml",
        "-e", f"@{home}/hello-app-secrets.yml",
        "--vault-password-file", f"{home}/.hello-app-vault-pass",
        *extra, cwd=REPO_ROOT / "ansible", env=env,
    )  # fmt: skip


# README step 4, "Secrets": the same commands, with a SQLite URL instead of PostgreSQL's.
MAKE_SECRETS = """
umask 077
head -c 32 /dev/urandom | base64 > ~/.hello-app-vault-pass
cat > ~/hello-app-secrets.yml <<'EOF'
hello_app_database_url: "sqlite:////var/lib/hello-app/from-vault.sqlite3"
EOF
ansible-vault encrypt --vault-password-file ~/.hello-app-vault-pass ~/hello-app-secrets.yml
"""


def rollback(vm, home: Path, *extra: str, check: bool = True) -> subprocess.CompletedProcess:
    """README step 4's rollback: cd ansible && ansible-playbook -i ... rollback.yml."""
    env = dict(os.environ, PATH=f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}", HOME=str(home))
    return run("ansible-playbook", "-i", str(vm["inventory"]), "rollback.yml", *extra,
               cwd=REPO_ROOT / "ansible", env=env, check=check)  # fmt: skip


def test_site_playbook_deploys_over_ssh_with_a_vaulted_secret_and_can_be_rolled_back(vm, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    env = dict(os.environ, HOME=str(home), PATH=f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}")
    run("bash", "-euo", "pipefail", "-c", MAKE_SECRETS, env=env)
    assert (home / "hello-app-secrets.yml").read_text().startswith("$ANSIBLE_VAULT;")

    deploy(vm, home, "-e", "hello_app_version=1.0.0")
    # Traffic on new connections throughout: the workers restart one at a time, each once the
    # one before it serves again, and the socket stays open, so nothing may fail.
    with LoadLoop(vm["http"], pause=PUBLISHED_PORT_PAUSE, seconds=300) as during_deploy:
        deploy(vm, home, "-e", "hello_app_version=1.0.1")
    assert during_deploy.answered > 0
    assert during_deploy.failed == []

    page = http_request(vm["http"], "/")
    assert (page.status, page.text) == (200, "Hello World")
    assert http_request(vm["http"], "/visits", method="POST").status in (200, 201)
    # The vaulted DATABASE_URL reached the service: its database is the file it names.
    facts = run(*vm["ssh"], "sudo stat -c '%a %U:%G' /etc/hello-app/hello-app.env"
                " && sudo test -s /var/lib/hello-app/from-vault.sqlite3"
                " && readlink /opt/hello-app/current /opt/hello-app/previous"
                ).stdout.split("\n")  # fmt: skip
    assert facts[:3] == ["640 root:hello-app", "/opt/hello-app/releases/1.0.1",
                         "/opt/hello-app/releases/1.0.0"]  # fmt: skip
    releases = run(*vm["ssh"], "ls /opt/hello-app/releases").stdout.split()
    assert releases == ["1.0.0", "1.0.1"]
    # One worker per vCPU, by default.
    vcpus = int(run(*vm["ssh"], "nproc").stdout)
    workers = run(*vm["ssh"], "systemctl list-units --plain --no-legend --state=active"
                  " 'hello-app@*.service'").stdout.split("\n")  # fmt: skip
    assert [line.split()[0] for line in workers if line] == [
        f"hello-app@{n}.service" for n in range(1, vcpus + 1)]  # fmt: skip

    # README's rollback: the previous release, on every host, one at a time; under load again.
    with LoadLoop(vm["http"], pause=PUBLISHED_PORT_PAUSE, seconds=300) as during_rollback:
        rollback(vm, home)
    assert during_rollback.answered > 0
    assert during_rollback.failed == []
    links = run(*vm["ssh"], "readlink /opt/hello-app/current /opt/hello-app/previous").stdout
    assert links.split() == ["/opt/hello-app/releases/1.0.0", "/opt/hello-app/releases/1.0.1"]

    # Or a release named on the command line; one that is not installed stops the play.
    rollback(vm, home, "-e", "hello_app_version=1.0.1")
    assert run(*vm["ssh"], "readlink /opt/hello-app/current").stdout.strip().endswith("/1.0.1")
    missing = rollback(vm, home, "-e", "hello_app_version=9.9.9", check=False)
    assert missing.returncode != 0
    assert "/opt/hello-app/releases/9.9.9 is not installed on vm1" in missing.stdout
    wait_until(lambda: http_request(vm["http"], "/").text == "Hello World", what="Hello World")
