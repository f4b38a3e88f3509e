"""`make bench`, whole, as a user runs it: every part prints its figures, numbers included.

The figures themselves are never asserted: the machine is noisy, and performance is read from
the printout, not tested. Each part runs once and briefly here (the BENCH_* knobs below); the
database part runs its baseline release too, the way that release ran.
"""

import os
import re
import subprocess

import pytest
from support import REPO_ROOT, PostgresCluster, compose_command, require_command

pytestmark = [pytest.mark.bench, pytest.mark.timeout(900)]

NUMBER = r"[0-9]+(\.[0-9]+)?"
# Each part's last line of figures: a part that stopped early, or printed an empty figure,
# misses it.
LAST_FIGURE_OF_EACH_PART = {
    "scripts/bench/start.sh": rf"start\.sh to first 200: median {NUMBER} s",
    "scripts/bench/http.sh": rf"app / baseline throughput ratio .*: median {NUMBER}",
    "scripts/bench/docker.sh": rf"compose: up until both services are healthy in {NUMBER} s",
    "scripts/bench/workers.py": rf"restart of all workers +{NUMBER} failed of {NUMBER}",
    "scripts/bench/db.py": rf"now / baseline \(per run\): {NUMBER}",
}
QUICK = {
    "BENCH_RUNS": "1",
    "BENCH_DURATION": "1s",
    "BENCH_SECONDS": "1",
    "BENCH_VISITS": "1000",
}


def test_make_bench_prints_the_figures_of_every_part(docker):
    for command, package in (("wrk", "wrk"), ("curl", "curl"), ("git", "git")):
        require_command(command, package)
    compose_command()
    PostgresCluster.server_bindir()

    result = subprocess.run(
        ["make", "bench"],
        cwd=REPO_ROOT,
        env=dict(os.environ, **QUICK),
        capture_output=True,
        text=True,
        timeout=840,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"make bench failed:\n{output[-4000:]}"
    assert "Traceback" not in output
    parts = re.split(r"^== (\S+)$", result.stdout, flags=re.MULTILINE)[1:]
    printed = dict(zip(parts[::2], parts[1::2], strict=True))
    assert printed.keys() == LAST_FIGURE_OF_EACH_PART.keys()
    for part, figure in LAST_FIGURE_OF_EACH_PART.items():
        assert re.search(figure, printed[part]), f"{part} printed no {figure!r}:\n{printed[part]}"
