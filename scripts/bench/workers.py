"""make bench: N app workers sharing one listening socket, as socket activation runs them,
against one worker and against gunicorn gthread (2 workers x 4 threads, what users pick
instead), all serving the same app with its request logs on. Prints figures, asserts nothing.

The socket is handed over the way systemd does it (LISTEN_FDS, LISTEN_PID, fd 3); gunicorn
gets the same kind of socket as fd://. Runs alternate between the three servers, so all see
the same noise; medians and per-run ratios. Goals: N workers >= 2.5x one worker and >= 1.2x
gunicorn, p99 <= 20 ms. N defaults to the number of CPUs.

Then the restarts: GET / on a new connection per request while the N workers are restarted
one at a time, then all at once; failed requests are counted. Goal: 0 for both.
"""

import importlib.util
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# The helpers the tests use to drive the app (support.py) drive it here too.
sys.path.insert(0, str(ROOT / "tests"))
from support import LoadLoop, start_socket_activated  # noqa: E402 - after the path it needs

RUNS = int(os.environ.get("RUNS", "3"))
DURATION = os.environ.get("BENCH_DURATION", "6s")
WORKERS = int(os.environ.get("BENCH_WORKERS", str(os.cpu_count() or 2)))

# Starts a server on the listening socket; returns its processes, to stop after the run.
StartServers = Callable[[socket.socket, Path], list[subprocess.Popen]]


def app_env(data: Path) -> dict[str, str]:
    return {"PATH": os.environ["PATH"], "DATABASE_URL": f"sqlite:///{data / 'bench.sqlite3'}"}


def start_workers(sock: socket.socket, count: int, data: Path) -> list[subprocess.Popen]:
    return [
        # A line per request goes to the log, as in production, and is thrown away.
        start_socket_activated(
            sock, app_env(data), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        for _ in range(count)
    ]


def start_gunicorn(sock: socket.socket, data: Path) -> list[subprocess.Popen]:
    """gunicorn gthread, 2 workers x 4 threads, on the app as app.main builds it."""
    command = [
        sys.executable, "-m", "gunicorn", "--worker-class", "gthread", "--workers", "2",
        "--threads", "4", "--bind", f"fd://{sock.fileno()}",
        # Otherwise it opens a control socket in $HOME, shared by every run on the machine.
        "--no-control-socket",
        "--pythonpath", f"{ROOT},{ROOT / 'scripts' / 'bench'}", "app_wsgi:application",
    ]  # fmt: skip
    # Its request log lines go where the workers' go: thrown away after being written.
    server = subprocess.Popen(
        command, env=app_env(data), pass_fds=(sock.fileno(),),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    return [server]


def wait_until_serving(port: int) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as conn:
                conn.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
                if conn.recv(16).startswith(b"HTTP/1.0 200"):
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit("the workers did not answer")


def measure(port: int) -> tuple[float, float]:
    """(requests per second, p99 in ms) from wrk -t2 -c50."""
    out = subprocess.run(
        ["wrk", "-t2", "-c50", f"-d{DURATION}", "--latency", f"http://127.0.0.1:{port}/"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    value, unit = re.search(r"^\s+99%\s+([\d.]+)(us|ms|s)$", out, re.MULTILINE).groups()
    return rps, float(value) * {"us": 0.001, "ms": 1, "s": 1000}[unit]


def run(start: StartServers, data: Path) -> tuple[float, float]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    port = sock.getsockname()[1]
    servers = start(sock, data)
    try:
        wait_until_serving(port)
        return measure(port)
    finally:
        for server in servers:
            server.terminate()
        for server in servers:
            server.wait(timeout=30)
        sock.close()


def failed_during_restarts(data: Path) -> dict[str, tuple[int, int]]:
    """Failed and answered requests while N workers restart one at a time, then all at once."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    port = sock.getsockname()[1]
    workers = start_workers(sock, WORKERS, data)
    wait_until_serving(port)
    results = {}
    try:
        with LoadLoop(port) as load:
            for index in range(len(workers)):
                workers[index].terminate()
                workers[index].wait(timeout=30)
                workers[index] = start_workers(sock, 1, data)[0]
                time.sleep(1)  # the new worker's start-up, as systemd waits for READY=1
        results["rolling restart"] = (len(load.failed), load.answered)
        with LoadLoop(port) as load:
            time.sleep(1)
            for worker in workers:
                worker.terminate()
            for worker in workers:
                worker.wait(timeout=30)
            workers = start_workers(sock, WORKERS, data)  # meanwhile: the socket's backlog
            wait_until_serving(port)
            time.sleep(1)
        results["restart of all workers"] = (len(load.failed), load.answered)
    finally:
        for worker in workers:
            worker.terminate()
            worker.wait(timeout=30)
        sock.close()
    return results


def per_run_ratio(numerator: list[tuple[float, float]], denominator: list[tuple[float, float]]):
    """The median of the throughput ratios of runs made side by side, so in the same noise."""
    return statistics.median(n[0] / d[0] for n, d in zip(numerator, denominator, strict=True))


def main() -> None:
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (apt-get install wrk)")
    if importlib.util.find_spec("gunicorn") is None:
        raise SystemExit("gunicorn is not installed: make venv installs requirements-dev.txt")
    many_label, gunicorn_label = f"{WORKERS} workers", "gunicorn gthread 2x4"
    servers: dict[str, StartServers] = {
        "1 worker": lambda sock, data: start_workers(sock, 1, data),
        many_label: lambda sock, data: start_workers(sock, WORKERS, data),
        gunicorn_label: start_gunicorn,
    }
    data = Path(tempfile.mkdtemp(prefix="hello-bench-"))
    results: dict[str, list[tuple[float, float]]] = {label: [] for label in servers}
    for _ in range(RUNS):
        for label, start in servers.items():
            results[label].append(run(start, data))
    restarts = failed_during_restarts(data)
    shutil.rmtree(data)
    print(f"GET / on the app with its request logs, wrk -t2 -c50 -d{DURATION}, {RUNS} runs:")
    for label, runs in results.items():
        rps = statistics.median(r[0] for r in runs)
        p99 = statistics.median(r[1] for r in runs)
        print(f"  {label:20} {rps:7.0f} req/s   p99 {p99:6.1f} ms")
    many = results[many_label]
    against_one = per_run_ratio(many, results["1 worker"])
    against_gunicorn = per_run_ratio(many, results[gunicorn_label])
    many_p99 = statistics.median(r[1] for r in many)
    print(f"  {many_label} / 1 worker (per run): {against_one:.2f}   (goal: >= 2.5)")
    print(f"  {many_label} / {gunicorn_label} (per run): {against_gunicorn:.2f}   (goal: >= 1.2)")
    print(f"  {many_label} p99: {many_p99:.1f} ms   (goal: <= 20 ms)")
    print(f"GET / on new connections while {many_label} restart:")
    for label, (failed, answered) in restarts.items():
        print(f"  {label:24} {failed} failed of {failed + answered}   (goal: 0)")


if __name__ == "__main__":
    main()
