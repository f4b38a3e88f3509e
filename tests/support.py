"""Small helpers shared by the tests: ports, HTTP over a real socket, polling."""

import contextlib
import http.client
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
# The file an instance of the AMI copies the app's journal lines to, for the CloudWatch agent
# to ship: hello_app_aws_log_file in ansible/roles/hello_app_aws/defaults/main.yml.
AMI_APP_LOG_FILE = "/var/log/hello-app/app.log"


def require_command(command: str, package: str) -> str:
    """The path of `command`. When it is not installed, the test skips and names the package
    that provides it, so a laptop learns what to install (CI forbids the skip)."""
    path = shutil.which(command)
    if path is None:
        pytest.skip(f"needs {command}, which is not installed (apt-get install {package})")
    return path


def compose_command() -> list[str]:
    """COMPOSE from the environment, else docker-compose (v1, as the exercise names it),
    else the `docker compose` plugin (v2)."""
    if os.environ.get("COMPOSE"):
        return os.environ["COMPOSE"].split()
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    plugin = subprocess.run(["docker", "compose", "version"], capture_output=True, check=False)
    if plugin.returncode != 0:
        require_command("docker-compose", "docker-compose")
    return ["docker", "compose"]


def path_without(directory: Path, *commands: str) -> str:
    """A PATH that offers every command of this one except `commands`: the same machine as
    far as a script can tell, but without those tools installed."""
    directory.mkdir(parents=True)
    for entry in os.environ["PATH"].split(os.pathsep):
        if not os.path.isdir(entry):
            continue
        for program in sorted(Path(entry).iterdir()):
            link = directory / program.name
            if program.name in commands or link.exists() or link.is_symlink():
                continue  # hidden, or shadowed by an earlier PATH entry
            if program.is_file() and os.access(program, os.X_OK):
                link.symlink_to(program)
    return str(directory)


def run(*args, check=True, timeout: float = 600, **kwargs) -> subprocess.CompletedProcess:
    """Run a command, capturing its output; with check, fail the test showing that output."""
    result = subprocess.run(args, capture_output=True, text=True, timeout=timeout, **kwargs)
    if check:
        assert result.returncode == 0, f"{args} failed:\n{result.stdout[-6000:]}\n{result.stderr}"
    return result


def free_port() -> int:
    """A TCP port that nothing uses now, and that nothing else will be given meanwhile.

    bind(0) would pick from the kernel's ephemeral range, which also supplies the local port
    of every outgoing connection (to PostgreSQL, docker-proxy's ports…): between choosing
    and listening, a client could take it, and the server then fails with "address already
    in use". Below that range, the kernel hands out nothing by itself.
    """
    ephemeral_low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for _ in range(200):
        port = random.randint(max(1024, ephemeral_low - 10000), ephemeral_low - 1)  # noqa: S311
        with socket.socket() as sock:
            try:
                sock.bind(("0.0.0.0", port))
            except OSError:
                continue
            return port
    raise AssertionError(f"no free port below the ephemeral range ({ephemeral_low})")


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode()

    def json(self):
        return json.loads(self.body)


def http_request(
    port: int,
    path: str = "/",
    method: str = "GET",
    body: bytes | None = None,
    host: str = "127.0.0.1",
    timeout: float = 10,
    headers: dict[str, str] | None = None,
) -> Response:
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return Response(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
    finally:
        conn.close()


def wait_until(condition: Callable[[], bool], timeout: float = 15, what: str = "condition"):
    """Poll until condition() is true; fail the test with `what` after timeout seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def read_response(sock: socket.socket) -> bytes:
    """Read one HTTP response (headers and Content-Length body) from a connected socket."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    length = next(
        (int(line.split(b":")[1]) for line in head.split(b"\r\n")
         if line.lower().startswith(b"content-length:")),
        0,
    )  # fmt: skip
    while len(body) < length:
        body += sock.recv(65536)
    return head + b"\r\n\r\n" + body


def raw_exchange(port: int, payload: bytes, timeout: float = 5) -> bytes:
    """Send raw bytes and return whatever the server answers before closing."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(payload)
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except (ConnectionResetError, TimeoutError):
            pass
        return b"".join(chunks)


# The pause between a LoadLoop thread's requests to a port that Docker publishes. There,
# docker-proxy's connection to the container leaves a TIME_WAIT on the host's ephemeral ports
# for 60 s per request. The default range holds 28,232 of them: unpaced, 4 threads open ~500
# a second, and after a minute docker-proxy can connect no more and resets every client.
# 4 threads at this pause make at most 200 a second, under half the range.
PUBLISHED_PORT_PAUSE = 0.02


def open_loop(rate: float, count: int, send: Callable[[int], object]) -> list:
    """Open-loop load: send(i) for i in range(count), started at `rate` a second whatever
    the answers do, each on a thread of its own, so a stall shows as failures instead of
    fewer requests. Returns each call's result, or the exception it raised."""
    results: list = [None] * count

    def one(i: int):
        try:
            results[i] = send(i)
        except (OSError, http.client.HTTPException) as error:
            results[i] = error

    threads = []
    started = time.monotonic()
    for i in range(count):
        time.sleep(max(0.0, started + i / rate - time.monotonic()))
        threads.append(threading.Thread(target=one, args=(i,)))
        threads[-1].start()
    for thread in threads:
        thread.join()
    return results


class LoadLoop:
    """GET / on a new connection each time, from `threads` threads, until the `with` block
    ends (or `seconds`): counts the answers and records every failure. Traffic to 127.0.0.1
    only. Through a port Docker publishes, pass pause=PUBLISHED_PORT_PAUSE."""

    def __init__(self, port: int, threads: int = 4, pause: float = 0.0, seconds: float = 60):
        self.port, self.pause, self.seconds = port, pause, seconds
        self.answered, self.failed = 0, []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run) for _ in range(threads)]

    def _run(self):
        deadline = time.monotonic() + self.seconds
        while not self._stop.is_set() and time.monotonic() < deadline:
            try:
                ok = http_request(self.port, "/", timeout=10).text == "Hello World"
            except (OSError, http.client.HTTPException) as error:
                self.failed.append(repr(error))
                continue
            if ok:
                self.answered += 1
            else:
                self.failed.append("not Hello World")
            time.sleep(self.pause)

    def __enter__(self):
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        for thread in self._threads:
            thread.join()

    def wait_for(self, more: int):
        target = self.answered + more
        wait_until(lambda: self.answered >= target, what=f"{more} more answers")


# What systemd does between fork and exec for a socket-activated service: the socket on
# fd 3, and LISTEN_PID set to the PID that exec keeps.
_HAND_OVER = 'exec 3<&"$HANDED_FD"; LISTEN_PID=$$ LISTEN_FDS=1 exec "$PYTHON" -m app'


def start_socket_activated(sock: socket.socket, env: dict[str, str], **popen) -> subprocess.Popen:
    """Start the app serving on the listening socket `sock`, as systemd would hand it over."""
    env = {**env, "HANDED_FD": str(sock.fileno()), "PYTHON": sys.executable}
    return subprocess.Popen(
        ["bash", "-c", _HAND_OVER],
        cwd=REPO_ROOT,  # where `-m app` finds the package
        env=env,
        pass_fds=(sock.fileno(),),
        **popen,
    )


class AppProcess:
    """`python -m app` as a child process, run from the checkout, its output in a log file."""

    def __init__(self, log_path: Path, env: dict[str, str]):
        self.log_path = log_path
        self.port = int(env.get("PORT") or free_port())
        self.env = {
            "PATH": os.environ["PATH"],
            "DATABASE_URL": f"sqlite:///{log_path.parent / 'app.sqlite3'}",
            **env,
            "PORT": str(self.port),
        }
        self.proc: subprocess.Popen | None = None

    def start(self, wait: bool = True) -> "AppProcess":
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "app"],
                cwd=REPO_ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        if wait:
            wait_until(self._healthy, what=f"app on port {self.port} to answer /healthz")
        return self

    def _healthy(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"app exited with {self.proc.returncode}:\n{self.log}")
        return http_request(self.port, "/healthz", timeout=1).status == 200

    def get(self, path: str = "/", **kwargs) -> Response:
        return http_request(self.port, path, **kwargs)

    def post(self, path: str, **kwargs) -> Response:
        return http_request(self.port, path, method="POST", **kwargs)

    @property
    def log(self) -> str:
        return self.log_path.read_text()

    def log_events(self) -> list[dict]:
        return [json.loads(line) for line in self.log.splitlines() if line.startswith("{")]

    def wait_for_event(self, event: str, timeout: float = 10) -> None:
        wait_until(
            lambda: any(e["event"] == event for e in self.log_events()),
            timeout=timeout,
            what=f"log event {event!r}",
        )

    def let_server_read(self) -> None:
        """Give the server a moment to read what was just sent: no log line marks that."""
        time.sleep(0.3)

    def terminate(self, timeout: float = 15) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class PostgresCluster:
    """A throwaway PostgreSQL server (initdb + pg_ctl) on a free port, with a password."""

    USER = "tester"
    PASSWORD = "s3cret-test-password"  # noqa: S105 - a throwaway local cluster

    def __init__(self, bindir: Path):
        self.bindir = bindir
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="hello-pg-"))
        self.datadir = self.root / "data"
        # initdb refuses to run as root; the postgres user runs it then.
        self.as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        self.server_options = ""

    @property
    def url(self) -> str:
        return f"postgresql://{self.USER}:{self.PASSWORD}@127.0.0.1:{self.port}/postgres"

    @staticmethod
    def server_bindir() -> Path:
        """Where pg_ctl and initdb are; skips, naming the package, when they are not."""
        # Debian keeps the server binaries off PATH, in /usr/lib/postgresql/<version>/bin.
        candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), reverse=True)
        if shutil.which("pg_ctl"):
            candidates.insert(0, Path(shutil.which("pg_ctl")))
        if not candidates:
            require_command("pg_ctl", "postgresql")
        return candidates[0].resolve().parent

    @classmethod
    def create_or_skip(cls) -> "PostgresCluster":
        cluster = cls(cls.server_bindir())
        cluster._initdb()
        return cluster

    def _run(self, tool: str, *args: str) -> None:
        subprocess.run(
            [*self.as_user, str(self.bindir / tool), *args],
            check=True,
            capture_output=True,
            timeout=60,
        )

    def _initdb(self) -> None:
        pwfile = self.root / "pwfile"
        pwfile.write_text(self.PASSWORD)
        if self.as_user:
            shutil.chown(self.root, "postgres")
            shutil.chown(pwfile, "postgres")
        self._run(
            "initdb", "-D", str(self.datadir), "-U", self.USER, f"--pwfile={pwfile}",
            "--auth=scram-sha-256", "--no-sync",
        )  # fmt: skip

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        options += self.server_options
        self._run("pg_ctl", "start", "-D", str(self.datadir), "-w", "-o", options,
                  "-l", str(self.root / "server.log"))  # fmt: skip

    def stop(self) -> None:
        self._run("pg_ctl", "stop", "-D", str(self.datadir), "-m", "fast", "-w")

    def require_tls(self, certificate_pem: bytes, key_pem: bytes) -> None:
        """Serve TLS with this certificate, and refuse every connection without it. Applies
        at the next start."""
        for name, data in (("server.crt", certificate_pem), ("server.key", key_pem)):
            path = self.datadir / name
            path.write_bytes(data)
            path.chmod(0o600)  # the server refuses a key others can read
            if self.as_user:
                shutil.chown(path, "postgres")
        (self.datadir / "pg_hba.conf").write_text(
            "local all all scram-sha-256\n"
            "hostssl all all 127.0.0.1/32 scram-sha-256\n"
            "hostnossl all all all reject\n"
        )
        self.server_options = " -c ssl=on -c ssl_cert_file=server.crt -c ssl_key_file=server.key"

    def kill(self) -> None:
        """Stop as a crash does: no shutdown checkpoint; the next start recovers from WAL."""
        self._run("pg_ctl", "stop", "-D", str(self.datadir), "-m", "immediate", "-w")

    def destroy(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):  # already stopped
            self.stop()
        shutil.rmtree(self.root, ignore_errors=True)
