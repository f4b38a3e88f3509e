"""make bench: the app against a misbehaving or large database, now and at a baseline release.

Prints figures, asserts nothing. Each pair is measured in the same run, alternating, and
reported as medians and per-run ratios, because this machine is noisy:
- GET /healthz p50 and p99 while 50 connections hammer POST /visits against a black-holed
  database (a TCP peer that never answers). Goal: p99 <= 100 ms.
- POST /visits p50 on an empty database and with 5 million visits recorded. Goal: ratio <= 1.5.
- POST /visits throughput with 8 connections against a local PostgreSQL.

The baseline is BENCH_BASELINE (a git revision; default: the last release that counted with
count(*)), checked out into a temporary worktree. Needs PostgreSQL's server (pg_ctl, initdb).
"""

import http.client
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest  # support.py reports a missing tool as pytest's skip

ROOT = Path(__file__).resolve().parents[2]
# The helpers the tests use to drive the app (support.py) drive it here too.
sys.path.insert(0, str(ROOT / "tests"))
from support import PostgresCluster, free_port  # noqa: E402 - after the path it needs

BASELINE = os.environ.get("BENCH_BASELINE", "b853538")
RUNS = int(os.environ.get("RUNS", "3"))
SECONDS = float(os.environ.get("BENCH_SECONDS", "6"))
BIG_TABLE = int(os.environ.get("BENCH_VISITS", "5000000"))


class App:
    """The app of one source tree, served on a free port."""

    def __init__(self, tree: Path, database_url: str):
        self.port = free_port()
        env = {"PATH": os.environ["PATH"], "PORT": str(self.port), "DATABASE_URL": database_url}
        self.proc = subprocess.Popen(
            [sys.executable, *entry_point(tree)],
            cwd=tree,
            env=env,
            stdout=subprocess.DEVNULL,  # a line per request: far too many to keep
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while request(self.port, "GET", "/healthz")[0] != 200:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise SystemExit(f"the app in {tree} did not start")
            time.sleep(0.1)

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=30)


def entry_point(tree: Path) -> list[str]:
    """How the tree's revision ran its app: `-m app` from its root since 28b7d89, which
    imports that tree's app; before it, the script app/main.py."""
    if (tree / "app" / "__main__.py").exists():
        return ["-m", "app"]
    return [str(tree / "app" / "main.py")]


def request(port: int, method: str, path: str, timeout: float = 30) -> tuple[int, float]:
    """(status, seconds); status 0 when nothing answered."""
    started = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path)
        status = conn.getresponse().status
    except OSError:
        status = 0
    finally:
        conn.close()
    return status, time.perf_counter() - started


def hammer(port: int, connections: int, seconds: float, method="POST", path="/visits") -> int:
    """Requests from `connections` threads for `seconds`; returns how many were answered."""
    done = []
    deadline = time.monotonic() + seconds

    def loop():
        count = 0
        while time.monotonic() < deadline:
            count += request(port, method, path, timeout=10)[0] != 0
        done.append(count)

    threads = [threading.Thread(target=loop) for _ in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(done)


def percentile(samples: list[float], p: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))]


def black_hole() -> tuple[str, socket.socket]:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1024)  # accepted by the kernel, never answered
    return f"postgresql://app:pw@127.0.0.1:{listener.getsockname()[1]}/app", listener


def healthz_under_hung_writes(tree: Path, database_url: str) -> tuple[float, float]:
    app = App(tree, database_url)
    latencies = []
    writers = threading.Thread(target=hammer, args=(app.port, 50, SECONDS))
    writers.start()
    while writers.is_alive():
        latencies.append(request(app.port, "GET", "/healthz")[1] * 1000)
    app.stop()
    return statistics.median(latencies), percentile(latencies, 0.99)


def post_p50(tree: Path, database_url: str, count: int = 20) -> float:
    app = App(tree, database_url)
    request(app.port, "POST", "/visits")  # migrations, if any, happen here
    seconds = [request(app.port, "POST", "/visits")[1] for _ in range(count)]
    app.stop()
    return statistics.median(seconds) * 1000


def post_throughput(tree: Path, database_url: str) -> float:
    app = App(tree, database_url)
    request(app.port, "POST", "/visits")
    answered = hammer(app.port, 8, SECONDS)
    app.stop()
    return answered / SECONDS


def fresh_database(cluster: PostgresCluster, name: str, visits: int = 0) -> str:
    """A database with the baseline's schema, and `visits` rows in it."""
    import psycopg2

    admin = psycopg2.connect(cluster.url)
    admin.autocommit = True
    admin.cursor().execute(f"DROP DATABASE IF EXISTS {name}")
    admin.cursor().execute(f"CREATE DATABASE {name}")
    admin.close()
    url = cluster.url.rsplit("/", 1)[0] + f"/{name}"
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute(
            "CREATE TABLE visits (id bigserial PRIMARY KEY,"
            " visited_at timestamptz NOT NULL DEFAULT now())"
        )
        cur.execute("INSERT INTO visits SELECT FROM generate_series(1, %s)", (visits,))
        cur.execute("ANALYZE visits")
    return url


def baseline_worktree() -> Path:
    """BASELINE checked out into a temporary worktree. A shallow clone lacks it."""
    known = subprocess.run(["git", "-C", str(ROOT), "cat-file", "-e", f"{BASELINE}^{{commit}}"],
                           capture_output=True, check=False)  # fmt: skip
    if known.returncode != 0:
        raise SystemExit(
            f"make bench: the baseline {BASELINE} is not in this clone; fetch the whole history"
            " (git fetch --unshallow) or name another revision in BENCH_BASELINE"
        )
    tree = Path(tempfile.mkdtemp(prefix="hello-baseline-")) / "tree"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(tree),
                    BASELINE], check=True)  # fmt: skip
    return tree


def main() -> None:
    try:
        cluster = PostgresCluster.create_or_skip()
    except pytest.skip.Exception as missing:  # support's way to say a tool is missing
        raise SystemExit(f"make bench: {missing.msg}") from None
    baseline = baseline_worktree()
    cluster.start()
    trees = {"now": ROOT, "baseline": baseline}
    try:
        print(f"Baseline: {BASELINE}. {RUNS} runs of each, alternating; medians.")
        hung_url, listener = black_hole()
        figures = {name: [] for name in trees}
        for _ in range(RUNS):
            for name, tree in trees.items():
                figures[name].append(healthz_under_hung_writes(tree, hung_url))
        listener.close()
        print("GET /healthz while 50 connections POST /visits to a black-holed database:")
        for name, runs in figures.items():
            p50 = statistics.median(r[0] for r in runs)
            p99 = statistics.median(r[1] for r in runs)
            print(f"  {name:8} p50 {p50:8.1f} ms   p99 {p99:8.1f} ms   (goal: p99 <= 100 ms)")

        print(f"POST /visits p50, 1 connection, empty table vs {BIG_TABLE:,} visits:")
        big = fresh_database(cluster, "bench_big", BIG_TABLE)
        for name, tree in trees.items():
            # Each tree gets fresh databases: the current one migrates what it is given.
            empty = fresh_database(cluster, f"bench_empty_{name}")
            ratios, empties, bigs = [], [], []
            for _ in range(RUNS):
                empties.append(post_p50(tree, empty))
                bigs.append(post_p50(tree, big))
                ratios.append(bigs[-1] / empties[-1])
            print(f"  {name:8} empty {statistics.median(empties):7.1f} ms   big"
                  f" {statistics.median(bigs):8.1f} ms   ratio {statistics.median(ratios):6.1f}"
                  "   (goal: ratio <= 1.5)")  # fmt: skip

        print(f"POST /visits throughput, 8 connections, {SECONDS:.0f} s, local PostgreSQL:")
        rates = {name: [] for name in trees}
        for _ in range(RUNS):
            for name, tree in trees.items():
                rates[name].append(post_throughput(tree, fresh_database(cluster, f"bench_{name}")))
        ratio = statistics.median(
            n / b for n, b in zip(rates["now"], rates["baseline"], strict=True)
        )
        for name, runs in rates.items():
            print(f"  {name:8} {statistics.median(runs):7.0f} req/s")
        print(f"  now / baseline (per run): {ratio:.2f}")
    finally:
        cluster.destroy()
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(baseline)],
                       check=False)  # fmt: skip


if __name__ == "__main__":
    main()
