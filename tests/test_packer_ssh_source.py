"""The AMI bake's temporary SSH rule admits the machine that runs Packer, not the internet."""

import re

from support import REPO_ROOT

PACKER = REPO_ROOT / "packer"


def amazon_ebs_source(text: str) -> str:
    """The body of the template's `source "amazon-ebs" ...` block (blocks close at column 0)."""
    match = re.search(r'^source "amazon-ebs" "[^"]+" \{\n(.*?)^\}', text, re.M | re.S)
    assert match, "packer/hello-app.pkr.hcl has no amazon-ebs source"
    return match.group(1)


def test_the_temporary_ssh_rule_admits_only_this_machines_public_ip():
    source = amazon_ebs_source((PACKER / "hello-app.pkr.hcl").read_text())
    assert re.search(r"^  temporary_security_group_source_public_ip\s*=\s*true$", source, re.M)
    # Neither Packer's default nor an explicit rule opens SSH wider.
    assert "temporary_security_group_source_cidrs" not in source
    assert "security_group_id" not in source


def test_no_packer_template_opens_anything_to_the_internet():
    for template in sorted(PACKER.rglob("*.pkr.hcl")):
        assert "0.0.0.0/0" not in template.read_text(), template


def test_the_required_amazon_plugin_knows_the_setting():
    # temporary_security_group_source_public_ip came with packer-plugin-amazon 1.1.4.
    plugins = (PACKER / "plugins.pkr.hcl").read_text()
    amazon = re.search(r'amazon = \{\s*version = ">= ([0-9.]+)"', plugins)
    assert amazon, "plugins.pkr.hcl does not require the amazon plugin"
    assert tuple(map(int, amazon.group(1).split("."))) >= (1, 1, 4)
