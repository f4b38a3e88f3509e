"""The lab's constant load: what a drill's users do while a fault is injected.

Open loop: each user sends one request a second, picked from the app's four routes, on a
fixed schedule whatever the answers do (each request in a greenlet of its own), so a server
that stalls gets failures, not fewer requests. Each user starts at its own phase;
lab/load.py sets the number of users to the rate it wants.

Every request is also written as one CSV row (see REQUEST_FIELDS) to --requests-csv, as it
completes, so that a drill can count failures per path and per second, and a run killed
midway keeps its rows.

Run by lab/load.py; by hand, from the repository's root:

    locust -f lab/locustfile.py --headless --host http://127.0.0.1:8080 -u 10 -r 10 -t 30s \
        --requests-csv /tmp/requests.csv

Only http://127.0.0.1 is accepted as the host: the lab never sends load anywhere else.
"""

import csv
import itertools
import re
import sys
import time
from urllib.parse import urlsplit

import gevent
import gevent.pool
from locust import HttpUser, events, task

# The columns of the per-request CSV; lab/load.py reads them back. A POST /visits also has
# its Idempotency-Key and what the client learned of the write (WRITE_OUTCOMES).
REQUEST_FIELDS = ("at", "method", "path", "status", "latency_ms", "ok", "error", "key", "write")
WRITE_OUTCOMES = ("acknowledged", "rejected", "unknown")
LOOPBACK = "127.0.0.1"


@events.init_command_line_parser.add_listener
def add_arguments(parser):
    parser.add_argument(
        "--requests-csv",
        env_var="LAB_REQUESTS_CSV",
        default="",
        help="Write one CSV row per request to this file (required)",
        include_in_web_ui=False,
    )
    parser.add_argument(
        "--request-timeout",
        env_var="LAB_REQUEST_TIMEOUT",
        type=float,
        default=10.0,
        help="Seconds before a request counts as failed with status 0 (default 10)",
        include_in_web_ui=False,
    )
    parser.add_argument(
        "--key-prefix",
        env_var="LAB_KEY_PREFIX",
        default="load",
        help="Each POST /visits sends the Idempotency-Key PREFIX-N, N counting from 0",
        include_in_web_ui=False,
    )


class RequestRecorder:
    """Appends one row per completed request; line-buffered, so each row reaches the file
    as soon as it is written."""

    def __init__(self, path: str):
        self.file = open(path, "w", newline="", buffering=1)  # noqa: SIM115 - closed at quit
        self.writer = csv.writer(self.file, lineterminator="\n")
        self.writer.writerow(REQUEST_FIELDS)

    def record(self, request_type, name, response_time, response, exception, **meta):
        url = meta.get("url") or name
        status = getattr(response, "status_code", 0) or 0
        key = (meta.get("context") or {}).get("key", "")
        self.writer.writerow(
            (
                f"{meta.get('start_time') or 0:.6f}",
                request_type,
                urlsplit(url).path or name,
                status,
                f"{response_time:.1f}",
                int(exception is None),
                "" if exception is None else short_error(exception),
                key,
                write_outcome(response, status) if key else "",
            )
        )

    def close(self, **_):
        self.file.close()


def write_outcome(response, status: int) -> str:
    """What the client learned of its write: a 201 acknowledged it; no answer, or a 503 that
    says the COMMIT went unanswered, leaves it unknown; any other answer rejected it."""
    if status == 201:
        return "acknowledged"
    if status == 0:
        return "unknown"
    try:
        unknown = status == 503 and response.json().get("outcome") == "unknown"
    except (ValueError, AttributeError):
        unknown = False
    return "unknown" if unknown else "rejected"


def short_error(exception: BaseException) -> str:
    """One line that says what went wrong, without the pool and URL noise of requests'
    messages: "ConnectionRefusedError: [Errno 111] Connection refused"."""
    text = " ".join(str(exception).split())
    errno = re.search(r"\[Errno -?\d+\] [^'\")]+", text)
    if errno:
        text = errno.group(0)
    elif "Read timed out" in text:
        text = "read timed out"
    name = type(exception).__name__
    text = text if name == "CatchResponseError" else f"{name}: {text}"
    return text[:160]


@events.init.add_listener
def refuse_other_hosts_and_record(environment, **_):
    options = environment.parsed_options
    if options is None:
        return  # imported by a tool, not run
    target = urlsplit(environment.host or "")
    if target.scheme != "http" or target.hostname != LOOPBACK:
        # SystemExit passes through Locust's event hooks: nothing is spawned, nothing sent.
        sys.exit(
            f"lab/locustfile.py: the host must be http://{LOOPBACK}:PORT, not {target.geturl()!r}"
        )
    if not options.requests_csv:
        sys.exit("lab/locustfile.py: --requests-csv (or LAB_REQUESTS_CSV) is required")
    recorder = RequestRecorder(options.requests_csv)
    environment.events.request.add_listener(recorder.record)
    environment.events.quit.add_listener(recorder.close)


class AppUser(HttpUser):
    """A client of the app: one request a second, on schedule, each answer checked."""

    _started = itertools.count()
    _keys = itertools.count()  # one Locust process: the keys are unique within a run

    def on_start(self):
        self.timeout = self.environment.parsed_options.request_timeout
        # Locust spawns a second's users together: paced from the same instant, all would fire
        # in the same instant of each second, a burst that trips the app's database bulkhead
        # (503 "database busy"). Each user starts at its own phase, spread evenly by the golden
        # ratio for any count, and keeps it: one request a second on its own clock.
        gevent.sleep(next(self._started) * 0.618034 % 1)
        self._next_request_at = time.monotonic()
        self._in_flight = gevent.pool.Group()

    def on_stop(self):
        # Let the requests in flight finish: a write cut off mid-way would be committed on the
        # server but missing from requests.csv.
        self._in_flight.join(timeout=self.timeout + 1)

    def wait_time(self) -> float:
        """One request a second on the user's own clock. The tasks only start their request,
        so a slow answer neither delays the next one nor lowers the rate."""
        self._next_request_at += 1
        return max(0.0, self._next_request_at - time.monotonic())

    def _send(self, request, *args) -> None:
        self._in_flight.spawn(request, *args)

    def _get(self, path):
        return self.client.get(path, name=f"GET {path}", catch_response=True, timeout=self.timeout)

    @task
    def hello(self):
        self._send(self._check_get, "/", lambda r: r.text == "Hello World")

    @task
    def healthz(self):
        self._send(self._check_get, "/healthz", lambda r: True)

    @task
    def record_visit(self):
        self._send(self._post_visit)

    @task
    def count_visits(self):
        self._send(self._check_get, "/visits", has_visit_count)

    def _check_get(self, path, body_is_right):
        with self._get(path) as response:
            expect(response, 200, body_is_right)

    def _post_visit(self):
        # Every write carries its own key, so that afterwards the drill can ask the database
        # which acknowledged writes it kept and which rejected ones it counted.
        key = f"{self.environment.parsed_options.key_prefix}-{next(self._keys)}"
        post = self.client.post(
            "/visits",
            name="POST /visits",
            catch_response=True,
            timeout=self.timeout,
            headers={"Idempotency-Key": key},
            context={"key": key},
        )
        with post as response:
            expect(response, 201, has_visit_count)


def has_visit_count(response) -> bool:
    try:
        visits = response.json()["visits"]
    except (ValueError, KeyError, TypeError):
        return False
    return isinstance(visits, int) and not isinstance(visits, bool)


def expect(response, status: int, body_is_right=lambda response: True) -> None:
    """Mark the response failed unless it has `status` and the right body. With no HTTP
    answer at all (status 0), Locust records the connection error or timeout itself."""
    if response.status_code == 0:
        return
    if response.status_code != status:
        # The body says why (e.g. 503 "database busy"); a drill's failures are read by it.
        body = " ".join(response.text.split())[:80]
        response.failure(f"HTTP {response.status_code}, expected {status}: {body}")
    elif not body_is_right(response):
        response.failure(f"HTTP {status} with an unexpected body: {response.text[:60]!r}")
    else:
        response.success()
