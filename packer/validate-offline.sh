#!/usr/bin/env bash
# Checks the Packer template offline with Debian's Packer 1.6.6 (make lint-packer).
# CI checks the whole directory as it is with current Packer after `packer init`; 1.6.6
# needs two things left out, and only those:
# - plugins.pkr.hcl: 1.6.6 has the amazon and ansible plugins built in and rejects
#   `required_plugins`, so only hello-app.pkr.hcl is validated;
# - the `metadata_options` block (IMDSv2), which came with Packer 1.7: it is cut from a
#   temporary copy, after checking that it is there and requires tokens;
# - `temporary_security_group_source_public_ip`, which came with the amazon plugin 1.1.4:
#   cut likewise, after checking that it is there and true.
# `packer validate` also runs the ansible provisioner's checks, so ansible-playbook must be
# on PATH and ansible/bake.yml must exist.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
template=packer/hello-app.pkr.hcl

packer fmt -check -diff packer
packer fmt -check -diff packer/local

grep -q '^    http_tokens *= *"required"$' "$template" \
  || { echo "validate-offline: $template must require IMDSv2 tokens" >&2; exit 1; }

grep -q '^  temporary_security_group_source_public_ip = true$' "$template" \
  || { echo "validate-offline: $template must limit the temporary SSH rule to this machine's public IP" >&2; exit 1; }

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
# Same layout as the repository, so ${path.root}/../ansible resolves.
mkdir "$tmp/packer"
ln -s "$PWD/ansible" "$tmp/ansible"
sed -e '/^  metadata_options {$/,/^  }$/d' -e '/^  temporary_security_group_source_public_ip = true$/d' \
  "$template" >"$tmp/$template"
removed=$(($(wc -l <"$template") - $(wc -l <"$tmp/$template")))
((removed > 1 && removed < 9)) \
  || { echo "validate-offline: expected to cut one metadata_options block and one line, cut $removed lines" >&2; exit 1; }

packer validate "$tmp/$template"
echo "packer validate: $template is valid for $(packer version | head -n 1) (without metadata_options and the SSH source rule)"
# The local rehearsal of the bake (docker builder) validates as it is.
packer validate -var image=validate-only packer/local
echo "packer validate: packer/local is valid"
