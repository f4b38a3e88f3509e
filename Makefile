# One entry point for developers and CI: the workflow and .ci/run call these targets.
SHELL := bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Each piece of the project adds its linters here.
LINT_TARGETS := lint-python lint-shell lint-workflows lint-docker lint-yaml lint-ansible \
  lint-packer lint-infra

.PHONY: help venv dist test lint $(LINT_TARGETS) bench clean images bench-docker molecule \
  packer-validate diagram lab lab-down drills

# $(call require,COMMAND,HOW TO INSTALL IT): stop the target with one line naming the missing
# tool and its install command, instead of the shell's bare "command not found" (exit 127).
require = command -v $(1) >/dev/null || { echo "make $@: needs $(1), which is not installed. Install it: $(2)" >&2; exit 1; }
PACKER_INSTALL := apt-get install packer (Debian), or HashiCorp's package: https://developer.hashicorp.com/packer/install

help: ## List the targets.
	@grep -E '^[a-z][a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | sort | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

# start.sh owns the runtime venv (requirements.txt); the dev tools go on top of it.
# --no-compile: pip would byte-compile all ~1 GB of the tools (Ansible's collections alone
# are 470 MB), 50 s of CPU for files never imported here; Python compiles what is imported.
$(VENV)/.dev-installed: requirements.txt requirements-dev.txt start.sh
	VENV_DIR=$(VENV) PYTHON=$(PYTHON) ./start.sh install
	$(BIN)/pip install --quiet --disable-pip-version-check --no-compile -r requirements-dev.txt
	touch $@

venv: $(VENV)/.dev-installed ## Create or update the dev venv (.venv).

# Only the runtime venv: pip builds in an isolated environment with pyproject.toml's pinned
# setuptools. build/ goes first, as setuptools would put a module deleted since in the wheel.
dist: ## Build the app's wheel, the one artefact deployments install, into dist/.
	VENV_DIR=$(VENV) PYTHON=$(PYTHON) ./start.sh install
	rm -rf build dist
	$(BIN)/pip wheel --quiet --disable-pip-version-check --no-deps --wheel-dir dist .
	@ls dist/*.whl

# The test files run side by side on one process per core (pytest-xdist), slowest first; a
# file's tests stay together, as they share its fixtures. The lab's tests run last, alone
# (tests/conftest.py: MachineLock). TEST_WORKERS=0 runs everything in this one process.
TEST_WORKERS ?= auto

test: venv ## Run the whole test suite.
	$(BIN)/pytest tests -ra --timeout=900 --durations=25 \
	  -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder $(PYTEST_ARGS)

# Every linter runs, even after one has failed or could not run for want of its tool; the
# run fails at the end and names each target that did not pass.
lint: venv ## Run every linter; at the end, name each one that failed or could not run.
	@failed=(); \
	for target in $(LINT_TARGETS); do \
	  $(MAKE) --no-print-directory "$$target" || failed+=("$$target"); \
	done; \
	if (( $${#failed[@]} )); then \
	  echo "make lint: did not pass: $${failed[*]} (the reasons are above)" >&2; exit 1; \
	fi

lint-python: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

lint-shell: venv
	$(BIN)/shellcheck --external-sources start.sh .ci/run scripts/bench/*.sh \
	  scripts/compose_smoke.sh $(wildcard scripts/images/*.sh scripts/images/*/*.sh) \
	  packer/validate-offline.sh infra/deploy.sh infra/drill.sh lab/standby_watch.sh

lint-workflows: venv
	$(BIN)/zizmor --offline .github/workflows/

lint-docker: venv
	$(BIN)/hadolint Dockerfile $(wildcard scripts/images/*/Dockerfile)

lint-yaml: venv
	$(BIN)/yamllint --strict .

# ansible-lint and Molecule call ansible-playbook and ansible-config: the venv's bin/ goes first.
lint-ansible: venv
	cd ansible && PATH="$(CURDIR)/$(BIN):$$PATH" ansible-lint

# Packer 1.6.6 (Debian's) offline; CI also runs current Packer with `packer init`.
lint-packer: venv
	@$(call require,packer,$(PACKER_INSTALL))
	PATH="$(CURDIR)/$(BIN):$$PATH" packer/validate-offline.sh

# CI's packer job: current Packer, with the plugins that `packer init` downloads.
packer-validate: venv ## Check the AMI template with current Packer: init, fmt -check, validate.
	@$(call require,packer,$(PACKER_INSTALL))
	packer init packer
	packer fmt -check -diff packer
	PATH="$(CURDIR)/$(BIN):$$PATH" packer validate packer

molecule: venv ## Run the Ansible role's Molecule scenario (converge, idempotence, verify).
	$(BIN)/pytest tests/test_ansible_molecule.py -ra -s $(PYTEST_ARGS)

images: ## Build the offline stand-ins for the public base images; writes .env.offline.
	scripts/images/build.sh

bench-docker: ## Measure image size, code-only rebuild and compose start-up; prints figures.
	scripts/bench/docker.sh

# checkov pins many of its dependencies; its own venv keeps them out of the dev venv.
CHECKOV_VENV ?= .venv-checkov
$(CHECKOV_VENV)/.installed: infra/requirements-checkov.txt
	$(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/pip install --quiet --disable-pip-version-check -r infra/requirements-checkov.txt
	touch $@

# checkov reads the templates with Fn::ForEach expanded (scripts/cfn_expand.py): without, it
# sees no resource inside one.
lint-infra: venv $(CHECKOV_VENV)/.installed
	$(BIN)/cfn-lint infra/*.yaml
	expanded="$$(mktemp -d)" && trap 'rm -rf "$$expanded"' EXIT && \
	  $(BIN)/python scripts/cfn_expand.py "$$expanded" infra/*.yaml && \
	  $(CHECKOV_VENV)/bin/checkov --directory "$$expanded" --framework cloudformation --compact --quiet --skip-download

diagram: venv ## Render docs/architecture.png from docs/diagram.py (needs Graphviz).
	@$(call require,dot,apt-get install graphviz)
	$(BIN)/python docs/diagram.py

# The HA lab (lab/): HAProxy, three VMs provisioned by site.yml, PostgreSQL primary and standby.
lab: venv ## Bring up the HA lab on this machine; prints where to look.
	@$(call require,docker,apt-get install docker.io)
	@$(call require,ssh-keygen,apt-get install openssh-client)
	$(BIN)/python -m lab up

lab-down: venv ## Remove the HA lab's containers, networks and state (.lab/).
	$(BIN)/python -m lab down

drills: venv ## Inject each fault into the lab under load; writes docs/drills.md and its timelines.
	@$(call require,docker,apt-get install docker.io)
	@$(call require,ssh-keygen,apt-get install openssh-client)
	$(BIN)/python -m lab drills $(DRILLS)

bench: venv ## Measure start-up time and HTTP throughput; prints figures, asserts nothing.
	scripts/bench/run.sh

clean: ## Remove the venv, logs, local data, caches and build output.
	rm -rf $(VENV) $(CHECKOV_VENV) logs data .run .pytest_cache .ruff_cache build dist \
	  *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
