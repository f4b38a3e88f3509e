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
from support import REPO_ROOT, http_request, run, wait_until

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


def test_site_playbook_deploys_over_ssh_with_a_vaulted_secret_and_can_be_rolled_back(vm, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    env = dict(os.environ, HOME=str(home), PATH=f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}")
    run("bash", "-euo", "pipefail", "-c", MAKE_SECRETS, env=env)
    assert (home / "hello-app-secrets.yml").read_text().startswith("$ANSIBLE_VAULT;")

    deploy(vm, home, "-e", "hello_app_version=1.0.0")
    deploy(vm, home, "-e", "hello_app_version=1.0.1")

    page = http_request(vm["http"], "/")
    assert (page.status, page.text) == (200, "Hello World")
    assert http_request(vm["http"], "/visits", method="POST").status in (200, 201)
    # The vaulted DATABASE_URL reached the service: its database is the file it names.
    facts = run(*vm["ssh"], "sudo stat -c '%a %U:%G' /etc/hello-app/hello-app.env"
                " && sudo test -s /var/lib/hello-app/from-vault.sqlite3"
                " && readlink /opt/hello-app/current").stdout.split("\n")  # fmt: skip
    assert facts[0] == "640 root:hello-app"
    assert facts[1] == "/opt/hello-app/releases/1.0.1"
    releases = run(*vm["ssh"], "ls /opt/hello-app/releases").stdout.split()
    assert releases == ["1.0.0", "1.0.1"]

    # README's manual rollback: point `current` at the previous release and restart.
    run(*vm["ssh"], "sudo ln -sfn /opt/hello-app/releases/1.0.0 /opt/hello-app/current"
        " && sudo systemctl restart hello-app")  # fmt: skip
    assert run(*vm["ssh"], "readlink /opt/hello-app/current").stdout.strip().endswith("/1.0.0")
    wait_until(lambda: http_request(vm["http"], "/").text == "Hello World", what="Hello World")
