"""`make lint` on a machine that lacks a linter's tool: it names the tool with its install
command, still runs the other linters, and fails at the end, naming what did not pass."""

import os
import subprocess

from support import REPO_ROOT, path_without, require_command


def test_a_missing_tool_is_named_the_other_linters_run_and_lint_fails_at_the_end(tmp_path):
    require_command("make", "make")
    result = subprocess.run(
        ["make", "--no-print-directory", "lint", "LINT_TARGETS=lint-packer lint-yaml"],
        cwd=REPO_ROOT,
        env={**os.environ, "PATH": path_without(tmp_path / "bin", "packer")},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 2, result.stdout + result.stderr  # make: a target failed
    assert (
        "make lint-packer: needs packer, which is not installed. Install it: apt-get install packer"
        in result.stderr
    )
    assert "command not found" not in result.stderr
    assert "yamllint --strict ." in result.stdout, "the linter after the missing one did not run"
    assert "make lint: did not pass: lint-packer (the reasons are above)" in result.stderr
