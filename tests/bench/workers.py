"""make bench: N app workers sharing one listening socket, as socket activation runs them,
against one worker. Prints figures, asserts nothing.

The socket is handed over the way systemd does it (LISTEN_FDS, LISTEN_PID, fd 3). Runs
alternate between 1 and N workers, so both see the same noise; medians and per-run ratios.
Goal: N workers >= 2.5x one worker, p99 <= 20 ms. N defaults to the number of CPUs.
"""

import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
from support import start_socket_activated  # noqa: E402 - after the path it needs

RUNS = int(os.environ.get("RUNS", "3"))
DURATION = os.environ.get("BENCH_DURATION", "6s")
WORKERS = int(os.environ.get("BENCH_WORKERS", str(os.cpu_count() or 2)))


def start_workers(sock: socket.socket, count: int, data: Path) -> list[subprocess.Popen]:
    env = {"PATH": os.environ["PATH"], "DATABASE_URL": f"sqlite:///{data / 'bench.sqlite3'}"}
    return [
        # A line per request goes to the log, as in production, and is thrown away.
        start_socket_activated(sock, env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(count)
    ]


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


def run(count: int, data: Path) -> tuple[float, float]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    port = sock.getsockname()[1]
    workers = start_workers(sock, count, data)
    try:
        wait_until_serving(port)
        return measure(port)
    finally:
        for worker in workers:
            worker.terminate()
        for worker in workers:
            worker.wait(timeout=30)
        sock.close()


def main() -> None:
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (apt-get install wrk)")
    data = Path(tempfile.mkdtemp(prefix="hello-bench-"))
    single, many = [], []
    for _ in range(RUNS):
        single.append(run(1, data))
        many.append(run(WORKERS, data))
    shutil.rmtree(data)
    ratio = statistics.median(m[0] / s[0] for m, s in zip(many, single, strict=True))
    print(f"GET / on workers sharing one socket, wrk -t2 -c50 -d{DURATION}, {RUNS} runs:")
    for label, runs in (("1 worker", single), (f"{WORKERS} workers", many)):
        rps = statistics.median(r[0] for r in runs)
        p99 = statistics.median(r[1] for r in runs)
        print(f"  {label:10} {rps:7.0f} req/s   p99 {p99:6.1f} ms")
    print(f"  {WORKERS} workers / 1 worker (per run): {ratio:.2f}   (goals: >= 2.5, p99 <= 20 ms)")


if __name__ == "__main__":
    main()
