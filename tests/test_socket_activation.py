"""Socket activation: the app serves on a listening socket handed over as systemd does it
(LISTEN_FDS and LISTEN_PID, the socket on file descriptor 3), so several workers share one
port, and a restart, even of every worker at once, leaves connections waiting in the kernel's
backlog instead of refused. The test process plays systemd: it holds the socket throughout.
"""

import os
import signal
import socket
import subprocess
import time

import pytest
from support import LoadLoop, free_port, http_request, start_socket_activated, wait_until

from app.config import ConfigError, load_config


class Worker:
    def __init__(self, sock: socket.socket, tmp_path, name: str, **extra_env: str):
        self.log_path = tmp_path / f"{name}.log"
        env = {
            **extra_env,
            "PATH": os.environ["PATH"],
            # Were the app to bind a port of its own, this one is taken: it would fail.
            "PORT": str(sock.getsockname()[1]),
            "DATABASE_URL": f"sqlite:///{tmp_path / 'app.sqlite3'}",
        }
        with self.log_path.open("ab") as log:
            self.proc = start_socket_activated(sock, env, stdout=log, stderr=subprocess.STDOUT)
        wait_until(lambda: '"event": "ready"' in self.log, what=f"{name} to be ready")

    @property
    def log(self) -> str:
        return self.log_path.read_text()

    def stop(self, sig=signal.SIGTERM) -> int:
        self.proc.send_signal(sig)
        return self.proc.wait(timeout=20)


@pytest.fixture
def handed_socket():
    """The listening socket, as systemd's hello-app.socket holds it."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", free_port()))
    sock.listen(1024)
    yield sock
    sock.close()


@pytest.fixture
def workers(handed_socket, tmp_path):
    started = []

    def start(name: str, **extra_env: str) -> Worker:
        started.append(Worker(handed_socket, tmp_path, name, **extra_env))
        return started[-1]

    yield start
    for worker in started:
        if worker.proc.poll() is None:
            worker.proc.kill()
            worker.proc.wait()


def test_the_app_serves_on_the_socket_systemd_hands_over(handed_socket, workers):
    worker = workers("worker-1")
    assert http_request(handed_socket.getsockname()[1], "/").text == "Hello World"
    assert '"socket": "systemd"' in worker.log


def test_a_worker_tells_systemd_when_it_serves_and_when_it_stops(handed_socket, workers, tmp_path):
    """Type=notify: `systemctl restart hello-app@1` returns once READY=1 arrives, which is what
    lets a rolling restart wait for one worker before it restarts the next."""
    systemd = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    systemd.bind(str(tmp_path / "notify.sock"))
    systemd.settimeout(10)
    with systemd:
        worker = workers("worker-1", NOTIFY_SOCKET=str(tmp_path / "notify.sock"))
        assert systemd.recv(4096) == b"READY=1"
        # READY means serving: the request needs no retry.
        assert http_request(handed_socket.getsockname()[1], "/", timeout=2).status == 200
        assert worker.stop() == 0
        assert systemd.recv(4096) == b"STOPPING=1"


def test_socket_variables_meant_for_another_process_are_ignored():
    database = {"DATABASE_URL": "sqlite:////var/lib/hello-app/app.sqlite3"}
    ours = str(os.getpid())
    assert load_config({**database, "LISTEN_FDS": "1", "LISTEN_PID": ours}).listen_fd == 3
    assert load_config({**database, "LISTEN_FDS": "1", "LISTEN_PID": "1"}).listen_fd is None
    assert load_config(database).listen_fd is None
    with pytest.raises(ConfigError, match="LISTEN_FDS='2': expected the one socket"):
        load_config({**database, "LISTEN_FDS": "2", "LISTEN_PID": ours})


def test_restarting_workers_one_at_a_time_or_all_at_once_drops_nothing(handed_socket, workers):
    first, second = workers("worker-1"), workers("worker-2")
    with LoadLoop(handed_socket.getsockname()[1]) as load:
        load.wait_for(50)
        assert first.stop() == 0  # a rolling restart: the other worker goes on accepting
        load.wait_for(50)
        first = workers("worker-1b")
        assert second.stop() == 0
        load.wait_for(50)
        # Every worker gone: new connections wait in the socket's backlog meanwhile.
        assert first.stop() == 0
        time.sleep(1)
        workers("worker-3")
        workers("worker-4")
        load.wait_for(50)
    assert load.failed == []


def test_a_killed_worker_leaves_the_others_serving(handed_socket, workers):
    doomed, survivor = workers("worker-1"), workers("worker-2")
    with LoadLoop(handed_socket.getsockname()[1]) as load:
        load.wait_for(50)
        doomed.stop(signal.SIGKILL)
        load.wait_for(200)
    assert survivor.proc.poll() is None
    # Only the connections the dead worker held when it died: each of the 4 client threads
    # has one open at a time. Every connection after the crash went to the survivor.
    assert len(load.failed) <= 4, load.failed
