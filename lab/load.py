"""A constant, bounded load through the lab's front door, for the drills to measure.

Locust does the sending, headless, as a subprocess of this venv: it is the load tool the field
knows, and its request hook gives one row per request (lab/locustfile.py), which the
per-second history CSV alone cannot: a drill needs each failure's time, status and error, and
the latency of one path over one second. Its own CSVs (--csv, --csv-full-history) are kept
next to those rows for anyone who wants Locust's view.

    with Load(port, out_dir, seconds=60, rate=40) as load:
        inject_the_fault()
    load.error_window("/visits")

The target is always http://127.0.0.1:<port>. The load stops by itself after `seconds`
(Locust's --run-time), or when the `with` block ends, whichever comes first.
"""

import contextlib
import csv
import math
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

LOCUSTFILE = Path(__file__).with_name("locustfile.py")
LOOPBACK = "127.0.0.1"
MAX_RATE = 200  # requests/s: the lab shares 2 cores with everything it measures
MAX_SECONDS = 3600
# lab/locustfile.py runs one task a second per user: the rate is the number of users.
REQUESTS_PER_USER_PER_SECOND = 1


class LoadError(RuntimeError):
    """Locust did not start, or did not run as it should have; the message shows its log."""


@dataclass(frozen=True)
class Request:
    """One request as the client saw it. `at` is when it was sent (epoch seconds); status 0
    means no HTTP answer at all (refused, reset, timed out). A POST /visits has its
    Idempotency-Key and `write`: acknowledged, rejected or unknown (locustfile.write_outcome)."""

    at: float
    method: str
    path: str
    status: int
    latency_ms: float
    ok: bool
    error: str
    key: str = ""
    write: str = ""

    @property
    def name(self) -> str:
        return f"{self.method} {self.path}"


def read_requests(csv_path: Path) -> list[Request]:
    """The rows lab/locustfile.py wrote, in the order they were sent. A row cut short by a
    killed run is skipped."""
    if not csv_path.exists():
        return []
    rows = []
    with csv_path.open(newline="") as file:
        for row in csv.DictReader(file):
            try:
                rows.append(
                    Request(
                        at=float(row["at"]),
                        method=row["method"],
                        path=row["path"],
                        status=int(row["status"]),
                        latency_ms=float(row["latency_ms"]),
                        ok=row["ok"] == "1",
                        error=row["error"] or "",
                        key=row.get("key") or "",
                        write=row.get("write") or "",
                    )
                )
            except (KeyError, TypeError, ValueError):
                continue
    rows.sort(key=lambda request: request.at)
    return rows


class Load:
    """Locust sending `rate` requests/s to http://127.0.0.1:<port> for at most `seconds`.

    `out_dir` receives requests.csv (one row per request), Locust's locust_*.csv and its
    log, locust.log. Entering waits for the first answers; leaving stops Locust if it is
    still running."""

    def __init__(
        self,
        port: int,
        out_dir: Path,
        seconds: float = 60,
        rate: int = 40,
        host: str = LOOPBACK,
        # Above the app's own bounds (DB_TIMEOUT_SECONDS), below the ALB's 60 s idle timeout.
        request_timeout: float = 10.0,
    ):
        if host != LOOPBACK:
            raise ValueError(f"the lab sends load to {LOOPBACK} only, not to {host!r}")
        if not 0 < port < 65536:
            raise ValueError(f"port must be 1-65535, not {port}")
        if not 0 < seconds <= MAX_SECONDS:
            raise ValueError(f"seconds must be in (0, {MAX_SECONDS}], not {seconds}")
        if not 1 <= rate <= MAX_RATE:
            raise ValueError(f"rate must be 1-{MAX_RATE} requests/s, not {rate}")
        self.port, self.seconds, self.rate = port, seconds, rate
        self.request_timeout = request_timeout
        # The Idempotency-Keys of this load's writes all start with it, and no other's do.
        self.key_prefix = f"lab-{uuid.uuid4().hex[:12]}"
        self.out_dir = Path(out_dir)
        self.requests_csv = self.out_dir / "requests.csv"
        self.log_path = self.out_dir / "locust.log"
        self.started_at: float | None = None
        self.exit_code: int | None = None
        self.killed = False
        self._process: subprocess.Popen | None = None
        self._requests: list[Request] | None = None

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def command(self) -> list[str]:
        users = math.ceil(self.rate / REQUESTS_PER_USER_PER_SECOND)
        return [
            sys.executable, "-m", "locust",
            "--locustfile", str(LOCUSTFILE),
            "--headless",
            "--host", self.url,
            "--users", str(users),
            "--spawn-rate", str(users),
            "--run-time", f"{math.ceil(self.seconds)}s",
            # At the end, let each user finish the request it has in flight: a write cut off
            # mid-way would be committed on the server but missing from requests.csv.
            "--stop-timeout", str(math.ceil(self.request_timeout) + 1),
            "--request-timeout", str(self.request_timeout),
            "--requests-csv", str(self.requests_csv),
            "--key-prefix", self.key_prefix,
            "--csv", str(self.out_dir / "locust"),
            "--csv-full-history",
            "--only-summary",
            # Failed requests are what drills measure, not an error of the run.
            "--exit-code-on-error", "0",
        ]  # fmt: skip

    def start(self, first_answer_timeout: float = 30) -> "Load":
        """Start Locust and return once the first request has completed."""
        if self._process is not None:
            raise LoadError("this Load has already run; make a new one")
        self.out_dir.mkdir(parents=True, exist_ok=True)
        # Locust reads LOCUST_* variables and locust.conf from the working directory:
        # run it where neither can change what the command line says.
        env = {k: v for k, v in os.environ.items() if not k.startswith(("LOCUST_", "LAB_"))}
        with self.log_path.open("wb") as log:
            self._process = subprocess.Popen(
                self.command(), cwd=self.out_dir, env=env, stdout=log, stderr=subprocess.STDOUT
            )
        self.started_at = time.time()
        deadline = time.monotonic() + first_answer_timeout
        while not read_requests(self.requests_csv):
            if self._process.poll() is not None:
                self._finish()
                problem = f"Locust exited with {self.exit_code} before any request"
                raise LoadError(f"{problem}:\n{self._log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                problem = f"no request completed within {first_answer_timeout}s"
                raise LoadError(f"{problem}:\n{self._log_tail()}")
            time.sleep(0.1)
        return self

    def stop(self, timeout: float | None = None) -> None:
        """Stop Locust now if it still runs (SIGTERM: it finishes in-flight requests and
        writes its CSVs); kill it if it has not exited within `timeout` seconds."""
        if self._process is None or self.exit_code is not None:
            return
        if timeout is None:
            timeout = self.request_timeout + 15
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
        try:
            self._process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
            self.killed = True
        self._finish()

    def wait(self) -> None:
        """Let the load run to its end (`seconds`), then collect it."""
        if self._process is None:
            raise LoadError("the load was never started")
        remaining = self.started_at + self.seconds - time.time()
        with contextlib.suppress(subprocess.TimeoutExpired):  # then stop() ends it
            self._process.wait(timeout=max(0, remaining) + self.request_timeout + 15)
        self.stop()

    def _finish(self) -> None:
        self.exit_code = self._process.returncode
        self._requests = read_requests(self.requests_csv)

    def _log_tail(self, lines: int = 20) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def __enter__(self) -> "Load":
        return self.start()

    def __exit__(self, exc_type, exc, traceback) -> None:
        self.stop()
        if exc_type is None:
            self.check()

    def check(self) -> None:
        """Raise LoadError if Locust failed, or the locustfile raised: then the rows do not
        measure the target. (Killed after ignoring SIGTERM, its rows still stand.)"""
        if self.exit_code not in (0, None) and not self.killed:
            raise LoadError(f"Locust exited with {self.exit_code}:\n{self._log_tail()}")
        exceptions = self.out_dir / "locust_exceptions.csv"
        if exceptions.exists():
            with exceptions.open(newline="") as file:
                raised = [row.get("Message", "") for row in csv.DictReader(file)]
            if raised:
                raise LoadError(f"lab/locustfile.py raised: {'; '.join(raised)[:2000]}")

    # What the drills measure. `path` is "/visits" (any method) or "POST /visits"; `since`
    # and `until` bound the time each request was sent (epoch seconds, inclusive).

    @property
    def requests(self) -> list[Request]:
        """Every request, oldest first: final once stopped, a snapshot while running."""
        if self._requests is not None:
            return self._requests
        return read_requests(self.requests_csv)

    def select(
        self,
        path: str | None = None,
        since: float | None = None,
        until: float | None = None,
        ok: bool | None = None,
    ) -> list[Request]:
        return [
            request
            for request in self.requests
            if (path is None or path in (request.path, request.name))
            and (since is None or request.at >= since)
            and (until is None or request.at <= until)
            and (ok is None or request.ok == ok)
        ]

    def failures(self, path: str | None = None, since=None, until=None) -> list[Request]:
        return self.select(path, since, until, ok=False)

    def count(self, path: str | None = None, since=None, until=None, ok=None) -> int:
        return len(self.select(path, since, until, ok))

    def p99_ms(self, path: str | None = None, since=None, until=None) -> float | None:
        """The 99th percentile latency (nearest rank) of the requests sent in the window,
        failed ones included: a timeout is latency the user lived through."""
        latencies = sorted(request.latency_ms for request in self.select(path, since, until))
        if not latencies:
            return None
        return latencies[math.ceil(0.99 * len(latencies)) - 1]

    def error_window(self, path: str | None = None) -> tuple[float, float] | None:
        """When the first and the last failed request were sent, or None if none failed."""
        failed = self.failures(path)
        if not failed:
            return None
        return failed[0].at, failed[-1].at

    def writes(self, outcome: str) -> set[str]:
        """The Idempotency-Keys of the POST /visits whose outcome the client learned was
        `outcome`: acknowledged (201), rejected (any other answer, which promises nothing was
        stored) or unknown (no answer, or a 503 that says its COMMIT went unanswered)."""
        return {r.key for r in self.select("POST /visits") if r.write == outcome}

    def created(self) -> int:
        """Visits the client knows were stored: POST /visits answered 201."""
        return len(self.writes("acknowledged"))

    def ambiguous_writes(self) -> int:
        """Writes whose outcome the client never learned. Stored visits lie between created()
        and created() + ambiguous_writes()."""
        return len(self.writes("unknown"))
