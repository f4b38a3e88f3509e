"""The HA lab and its drills, run by README step 6's commands: `make lab`, `make drills`,
`make lab-down`. Each drill injects its fault under Locust's load, and its hypothesis must
hold. This lab has names, a port and a state directory of its own (LAB_PREFIX, LAB_PORT,
LAB_STATE_DIR), so it never touches a lab that `make lab` brought up, and it writes its report
to a temporary directory (LAB_DOCS_DIR), not over docs/drills.md.

The committed report, docs/drills.md, must hold a real run of every drill.
"""

import json
import os
import re
import uuid
from pathlib import Path

import pytest
from support import REPO_ROOT, free_port, require_command, run

from lab.docker import published_port
from lab.drills import DRILLS

pytestmark = pytest.mark.lab
# The lab up (~1.5 min), then every drill (~10 min on 2 cores), with room for a loaded machine.
MAKE_TIMEOUT = 2400


@pytest.fixture(scope="module")
def lab_env(docker, tmp_path_factory):
    for command in ("ssh", "ssh-keygen", "ssh-keyscan", "make"):
        require_command(command, "openssh-client" if command.startswith("ssh") else command)
    state = tmp_path_factory.mktemp("lab")
    env = {
        **os.environ,
        "LAB_PREFIX": f"hello-labtest-{uuid.uuid4().hex[:6]}",
        "LAB_PORT": str(free_port()),
        "LAB_STATE_DIR": str(state / "state"),
        "LAB_DOCS_DIR": str(state / "docs"),
    }
    yield env
    run("make", "lab-down", cwd=REPO_ROOT, env=env)
    left = run("docker", "ps", "-aq", "--filter", f"name={env['LAB_PREFIX']}").stdout
    assert left == "", "make lab-down left containers behind"
    assert not (state / "state").exists()


@pytest.fixture(scope="module")
def drill_results(lab_env) -> dict[str, dict]:
    up = run("make", "lab", cwd=REPO_ROOT, env=lab_env, timeout=MAKE_TIMEOUT)
    assert f"http://127.0.0.1:{lab_env['LAB_PORT']}/" in up.stdout
    drills = run("make", "drills", cwd=REPO_ROOT, env=lab_env, timeout=MAKE_TIMEOUT, check=False)
    print(drills.stdout[-5000:])  # the table, shown with -s or on failure
    results = json.loads(Path(lab_env["LAB_STATE_DIR"], "drills", "results.json").read_text())
    by_name = {result["name"]: result for result in results}
    assert (drills.returncode == 0) == all(r["passed"] for r in results), drills.stderr[-3000:]
    return by_name


# The first of these also brings the lab up and runs every drill (the module's fixtures).
@pytest.mark.timeout(2 * MAKE_TIMEOUT + 300)
@pytest.mark.parametrize("name", [drill.name for drill in DRILLS])
def test_the_drill_holds_its_hypothesis(drill_results, name):
    result = drill_results[name]
    assert result["passed"], f"{name}: " + "; ".join(result["reasons"])
    # The load flowed the whole time: 40 requests a second.
    assert result["requests"] > 300
    with open(result["timeline"], "rb") as timeline:
        assert timeline.read(4) == b"\x89PNG"


def test_the_committed_report_holds_a_run_of_every_drill():
    report = (REPO_ROOT / "docs" / "drills.md").read_text()
    names = {
        re.sub(r"^\[(.*?)\].*", r"\1", row.split("|")[1].strip())
        for row in report.splitlines()
        if row.startswith("| [")
    }
    assert names == {drill.name for drill in DRILLS}
    for drill in DRILLS:
        assert (REPO_ROOT / "docs" / "drills" / f"{drill.name}.png").is_file()
    assert "FAIL" not in report


def test_a_deploys_ssh_session_runs_at_the_lowest_cpu_priority_and_the_workers_at_the_normal_one(
    lab_env, drill_results
):
    """What a deploy runs on a VM must not compete with the VMs that serve (on AWS it uses the
    drained instance's own cores), and the app it starts must not inherit that priority."""
    state = Path(lab_env["LAB_STATE_DIR"])
    vm = f"{lab_env['LAB_PREFIX']}-vm1"
    session = run(
        "ssh", "-p", str(published_port(vm, 22)), "-i", str(state / "id_ed25519"),
        "-o", f"UserKnownHostsFile={state / 'known_hosts'}", "-o", "BatchMode=yes",
        "deploy@127.0.0.1", "ps -o ni= -p $$; sudo sh -c 'ps -o ni= -p $$'",
    )  # fmt: skip
    assert session.stdout.split() == ["19", "19"]
    processes = run("docker", "exec", vm, "ps", "-o", "ni=,args=", "-u", "hello-app").stdout
    workers = [line.split()[0] for line in processes.splitlines() if "python -m app" in line]
    assert workers, "no worker runs on vm1"
    assert set(workers) == {"0"}, f"the workers' nice values: {workers}"
