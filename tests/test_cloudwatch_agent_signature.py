"""The bake installs the CloudWatch agent only when AWS's key signed it.

The role's verification tasks (hello_app_aws, tasks/cloudwatch-agent-verify.yml) run for real
with ansible-playbook on this machine, against file:// URLs: a key made here stands in for
AWS's, and its fingerprint for the one AWS documents.
"""

import sys
from pathlib import Path

import pytest
import yaml
from support import REPO_ROOT, require_command, run

VENV_BIN = Path(sys.executable).parent
ROLE = REPO_ROOT / "ansible" / "roles" / "hello_app_aws"


@pytest.fixture(scope="module")
def signer(tmp_path_factory):
    """A signing key in a keyring of its own: (gpg command prefix, fingerprint)."""
    require_command("gpg", "gpg")
    home = tmp_path_factory.mktemp("signer")
    gpg = ["gpg", "--homedir", str(home), "--batch", "--pinentry-mode", "loopback"]
    run(*gpg, "--passphrase", "", "--quick-gen-key", "Stand-in <agent@example.org>", "ed25519")
    listing = run(*gpg, "--with-colons", "--fingerprint").stdout
    fingerprint = next(line.split(":")[9] for line in listing.splitlines() if line[:4] == "fpr:")
    return gpg, fingerprint


@pytest.fixture
def release(tmp_path, signer):
    """A package, its detached signature and the public key, as AWS publishes them."""
    gpg, _ = signer
    site = tmp_path / "site"
    site.mkdir()
    package = site / "amazon-cloudwatch-agent.deb"
    package.write_bytes(b"!<arch>\nstand-in for the agent's package\n")
    run(*gpg, "--output", f"{package}.sig", "--detach-sign", str(package))
    run(*gpg, "--output", str(site / "amazon-cloudwatch-agent.gpg"), "--export")
    return site


def verify(tmp_path, site, fingerprint):
    """Run the role's verification tasks against the files in site; the play's result."""
    require_command("gpg", "gpg")
    playbook = tmp_path / "verify.yml"
    playbook.write_text(
        yaml.safe_dump(
            [
                {
                    "name": "Verify the CloudWatch agent's package",
                    "hosts": "localhost",
                    "connection": "local",
                    "gather_facts": False,
                    "tasks": [
                        {
                            "name": "Run the role's verification",
                            "ansible.builtin.include_role": {
                                "name": "hello_app_aws",
                                "tasks_from": "cloudwatch-agent-verify.yml",
                            },
                            "vars": {
                                "hello_app_aws_cloudwatch_agent_url": (
                                    f"file://{site}/amazon-cloudwatch-agent.deb"
                                ),
                                "hello_app_aws_cloudwatch_agent_key_url": (
                                    f"file://{site}/amazon-cloudwatch-agent.gpg"
                                ),
                                "hello_app_aws_cloudwatch_agent_key_fingerprint": fingerprint,
                            },
                        }
                    ],
                }
            ]
        )
    )
    return run(
        VENV_BIN / "ansible-playbook",
        "-i",
        "localhost,",
        str(playbook),
        check=False,
        env={
            "PATH": f"{VENV_BIN}:/usr/bin:/bin",
            "ANSIBLE_ROLES_PATH": str(ROLE.parent),
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_PYTHON_INTERPRETER": sys.executable,
        },
    )


def test_a_package_signed_by_the_pinned_key_verifies(tmp_path, signer, release):
    _, fingerprint = signer
    result = verify(tmp_path, release, fingerprint)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "failed=0" in result.stdout


def test_a_tampered_package_fails_the_bake(tmp_path, signer, release):
    _, fingerprint = signer
    with (release / "amazon-cloudwatch-agent.deb").open("ab") as package:
        package.write(b"one more byte")
    result = verify(tmp_path, release, fingerprint)
    assert result.returncode != 0
    assert "TASK [hello_app_aws : Verify the package's signature.]" in result.stdout
    assert "fatal:" in result.stdout.split("Verify the package's signature.]", 1)[1]


def test_a_key_with_another_fingerprint_fails_the_bake(tmp_path, release):
    documented = "937616F3450B7D806CBD9725D58167303B789C72"  # AWS's, which did not sign these
    result = verify(tmp_path, release, documented)
    assert result.returncode != 0
    assert f"not the documented {documented}: the agent is not installed" in result.stdout
    assert "Verify the package's signature." not in result.stdout


def test_the_role_pins_the_fingerprint_aws_documents():
    defaults = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())
    # "Verifying the signature of the CloudWatch agent package", AWS CloudWatch User Guide.
    documented = "9376 16F3 450B 7D80 6CBD 9725 D581 6730 3B78 9C72".replace(" ", "")
    assert defaults["hello_app_aws_cloudwatch_agent_key_fingerprint"] == documented
    assert defaults["hello_app_aws_cloudwatch_agent_key_url"].startswith("https://")
