"""start.sh for real: each test runs it in a copy of the project, on a free port."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support import REPO_ROOT, free_port, http_request, path_without, wait_until


class Checkout:
    """A copy of what start.sh needs, so tests never touch the developer's logs or app."""

    def __init__(self, root: Path, venv: Path):
        self.root = root
        self.port = free_port()
        self.venv = venv
        shutil.copytree(
            REPO_ROOT / "app", root / "app", ignore=shutil.ignore_patterns("__pycache__")
        )
        shutil.copy2(REPO_ROOT / "start.sh", root / "start.sh")
        shutil.copy2(REPO_ROOT / "requirements.txt", root / "requirements.txt")

    def run(self, *args: str, timeout: float = 60, **env: str) -> subprocess.CompletedProcess:
        full_env = {
            "PATH": os.environ["PATH"],
            "HOME": os.environ.get("HOME", "/root"),
            "PORT": str(self.port),
            "VENV_DIR": str(self.venv),
            **env,
        }
        return subprocess.run(
            [str(self.root / "start.sh"), *args],
            cwd=self.root.parent,  # not the checkout: start.sh finds its own root
            env=full_env,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )

    @property
    def pid_file(self) -> Path:
        return self.root / ".run" / "app.pid"

    @property
    def log(self) -> str:
        path = self.root / "logs" / "app.log"
        return path.read_text() if path.exists() else ""

    def pid(self) -> int:
        return int(self.pid_file.read_text())


def is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped) is not alive either.
    state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    return state != "Z"


def apps_running_in(root: Path) -> list[int]:
    """Live PIDs of `python -m app` working in `root`: pgrep, without needing procps."""
    pids = []
    for process in Path("/proc").glob("[0-9]*"):
        try:
            found = process.joinpath("cmdline").read_bytes().endswith(b"\0-m\0app\0")
            found = found and process.joinpath("cwd").resolve() == root.resolve()
            pid = int(process.name)
        except OSError:  # the process ended while we looked
            continue
        if found and is_alive(pid):
            pids.append(pid)
    return pids


@pytest.fixture
def checkout(tmp_path):
    co = Checkout(tmp_path / "project", Path(sys.prefix))
    yield co
    co.run("stop")


def test_start_serves_hello_world_and_prints_url_pid_and_log_path(checkout):
    result = checkout.run()
    assert result.returncode == 0, result.stderr
    assert f"http://localhost:{checkout.port}" in result.stdout
    assert f"pid {checkout.pid()}" in result.stdout
    assert "logs/app.log" in result.stdout
    assert http_request(checkout.port, "/").text == "Hello World"
    # stdout and stderr of the app are appended to logs/app.log.
    assert '"event": "ready"' in checkout.log


def test_status_says_running_with_pid_and_url(checkout):
    checkout.run()
    result = checkout.run("status")
    assert result.returncode == 0
    assert f"pid {checkout.pid()}" in result.stdout
    assert f"http://localhost:{checkout.port}" in result.stdout


def test_status_when_not_running_exits_3(checkout):
    result = checkout.run("status")
    assert result.returncode == 3
    assert "not running" in result.stdout


def test_stop_sends_sigterm_and_waits_for_a_clean_exit(checkout):
    checkout.run()
    pid = checkout.pid()
    result = checkout.run("stop")
    assert result.returncode == 0
    assert f"stopped (pid {pid})" in result.stdout
    assert not is_alive(pid)
    assert not checkout.pid_file.exists()
    assert '"event": "stopped"' in checkout.log  # it shut down itself, not by SIGKILL


def test_start_when_already_running_keeps_the_running_app(checkout):
    checkout.run()
    pid = checkout.pid()
    result = checkout.run()
    assert result.returncode == 0
    assert "already running" in result.stdout
    assert checkout.pid() == pid and is_alive(pid)


def test_port_in_use_is_refused_with_a_clear_message(checkout):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", checkout.port))
        holder.listen()
        result = checkout.run()
    assert result.returncode == 1
    assert f"port {checkout.port} is already in use" in result.stderr
    assert f"pid {os.getpid()}" in result.stderr  # names the process holding it
    assert not checkout.pid_file.exists()
    assert checkout.log == ""  # nothing was started


def test_port_taken_by_another_copy_leaves_that_app_untouched(checkout, tmp_path):
    checkout.run()
    first_pid = checkout.pid()
    second = Checkout(tmp_path / "second", checkout.venv)
    second.port = checkout.port
    result = second.run()
    assert result.returncode == 1
    assert f"pid {first_pid}" in result.stderr
    assert is_alive(first_pid)
    assert http_request(checkout.port, "/").text == "Hello World"


def test_the_app_of_another_checkout_is_neither_reported_nor_stopped(checkout, tmp_path):
    # Both run `python -m app` from the same venv: only the working directory tells them apart.
    other = Checkout(tmp_path / "other", checkout.venv)
    assert other.run().returncode == 0
    other_pid = other.pid()
    try:
        checkout.pid_file.parent.mkdir()
        checkout.pid_file.write_text(f"{other_pid}\n")
        assert checkout.run("status").returncode == 3
        checkout.pid_file.write_text(f"{other_pid}\n")
        assert checkout.run("stop").returncode == 0
        assert is_alive(other_pid), "stop must not signal the app of another checkout"
        assert checkout.run().returncode == 0
        assert checkout.pid() != other_pid
        assert apps_running_in(checkout.root) == [checkout.pid()]
    finally:
        other.run("stop")


def test_the_database_defaults_to_sqlite_in_the_checkouts_data_directory(checkout):
    assert checkout.run().returncode == 0
    assert http_request(checkout.port, "/visits", method="POST").status == 201
    assert (checkout.root / "data" / "app.sqlite3").is_file()


def test_a_database_url_given_by_the_user_is_used_instead(checkout, tmp_path):
    database = tmp_path / "elsewhere.sqlite3"
    assert checkout.run(DATABASE_URL=f"sqlite:///{database}").returncode == 0
    assert http_request(checkout.port, "/visits", method="POST").status == 201
    assert database.is_file()
    assert not (checkout.root / "data").exists()


def test_a_database_url_file_is_not_combined_with_the_default(checkout, tmp_path):
    # The app refuses DATABASE_URL and DATABASE_URL_FILE together: start.sh adds no default.
    result = checkout.run(DATABASE_URL_FILE=str(tmp_path / "not-written-yet"))
    assert result.returncode == 0, result.stderr
    visits = http_request(checkout.port, "/visits")
    assert visits.status == 503
    assert visits.json()["reason"] == "database not configured"


def test_stale_pid_file_of_a_dead_process_is_ignored(checkout):
    dead = subprocess.Popen(["true"])
    dead.wait()
    checkout.pid_file.parent.mkdir()
    checkout.pid_file.write_text(f"{dead.pid}\n")

    status = checkout.run("status")
    assert status.returncode == 3
    assert "stale" in status.stdout

    checkout.pid_file.write_text(f"{dead.pid}\n")
    assert checkout.run().returncode == 0
    assert http_request(checkout.port, "/").status == 200


def test_pid_reused_by_another_program_is_neither_reported_nor_killed(checkout):
    other = subprocess.Popen(["sleep", "60"])
    try:
        checkout.pid_file.parent.mkdir()
        checkout.pid_file.write_text(f"{other.pid}\n")
        assert checkout.run("status").returncode == 3
        checkout.pid_file.write_text(f"{other.pid}\n")
        assert checkout.run("stop").returncode == 0
        assert other.poll() is None, "stop must not signal a process that is not the app"
        assert checkout.run().returncode == 0
        assert checkout.pid() != other.pid
    finally:
        other.kill()
        other.wait()


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"PORT": "70000"}, "configuration error: PORT=70000 is out of range"),
        ({"PORT": "abc"}, "configuration error: PORT='abc' is not a whole number"),
        ({"DATABASE_URL": "mysql://u:p@db/app"}, "configuration error: DATABASE_URL scheme"),
    ],
)
def test_bad_configuration_fails_and_shows_the_log_tail(checkout, env, message):
    result = checkout.run(**env)
    assert result.returncode == 1
    assert "failed to start (exit code 2)" in result.stderr
    assert message in result.stderr
    assert checkout.run("status").returncode == 3


def test_a_crashing_app_fails_the_start_and_shows_the_log_tail(checkout):
    (checkout.root / "app" / "main.py").write_text("raise RuntimeError('boom at start')\n")
    result = checkout.run()
    assert result.returncode == 1
    assert "failed to start (exit code 1)" in result.stderr
    assert "RuntimeError: boom at start" in result.stderr


def test_an_app_that_never_answers_times_out_and_is_stopped(checkout):
    (checkout.root / "app" / "main.py").write_text("import time\ntime.sleep(120)\n")
    result = checkout.run(START_TIMEOUT="1")
    assert result.returncode == 1
    assert "did not answer" in result.stderr
    # SIGTERM takes effect a moment after start.sh has sent it and returned.
    wait_until(lambda: apps_running_in(checkout.root) == [], timeout=5, what="the hung app to stop")


def test_fresh_clone_creates_the_venv_then_start_is_a_quick_no_op(checkout, tmp_path):
    checkout.venv = tmp_path / "fresh-venv"
    first = checkout.run("install", timeout=300, PYTHON=sys.executable)
    assert first.returncode == 0, first.stderr
    assert "Creating the virtual environment" in first.stdout
    assert (checkout.venv / "bin" / "waitress-serve").exists()

    again = checkout.run()
    assert again.returncode == 0, again.stderr
    assert "Installing" not in again.stdout
    assert http_request(checkout.port, "/").text == "Hello World"

    # A changed requirements.txt is noticed and installed again.
    with (checkout.root / "requirements.txt").open("a") as f:
        f.write("# touched\n")
    assert "Installing" in checkout.run("install", timeout=300).stdout


def test_unknown_command_is_a_usage_error(checkout):
    result = checkout.run("launch")
    assert result.returncode == 2
    assert "unknown command 'launch'" in result.stderr


def test_status_notices_an_app_stopped_outside_the_script(checkout):
    checkout.run()
    pid = checkout.pid()
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while is_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not is_alive(pid)
    assert checkout.run("status").returncode == 3


def test_start_status_restart_and_stop_work_without_procps(checkout, tmp_path):
    # Minimal Debian and Ubuntu images have no ps, pgrep, ss or lsof; /proc is always there.
    bare_path = path_without(tmp_path / "bin", "ps", "pgrep", "pkill", "ss", "lsof")
    assert checkout.run(PATH=bare_path).returncode == 0
    first = checkout.pid()

    status = checkout.run("status", PATH=bare_path)
    assert status.returncode == 0, status.stdout
    assert f"pid {first}" in status.stdout

    restart = checkout.run("restart", PATH=bare_path)
    assert restart.returncode == 0, restart.stderr
    assert f"stopped (pid {first})" in restart.stdout
    assert not is_alive(first)
    second = checkout.pid()
    assert http_request(checkout.port, "/").text == "Hello World"

    stop = checkout.run("stop", PATH=bare_path)
    assert stop.returncode == 0
    assert f"stopped (pid {second})" in stop.stdout
    assert not is_alive(second)
    assert checkout.run("status", PATH=bare_path).returncode == 3


def test_a_busy_port_names_its_holder_without_procps(checkout, tmp_path):
    bare_path = path_without(tmp_path / "bin", "ps", "pgrep", "pkill", "ss", "lsof")
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", checkout.port))
        holder.listen()
        result = checkout.run(PATH=bare_path)
    assert result.returncode == 1
    assert f"port {checkout.port} is already in use by" in result.stderr
    assert f"(pid {os.getpid()})" in result.stderr


def test_a_python_without_venv_is_named_with_the_package_to_install(checkout, tmp_path):
    # Debian's python3 without python3-venv: `-m venv` leaves a venv without pip, then fails.
    python_without_venv = tmp_path / "python3"
    python_without_venv.write_text(
        "#!/bin/sh\n"
        'if [ "$1 $2" = "-m venv" ]; then\n'
        f'  mkdir -p "$3/bin" && ln -sf {os.path.realpath(sys.executable)} "$3/bin/python"\n'
        '  echo "ensurepip is not available" >&2; exit 1\n'
        "fi\n"
        f'exec {sys.executable} "$@"\n'
    )
    python_without_venv.chmod(0o755)
    checkout.venv = tmp_path / "fresh-venv"

    result = checkout.run(PYTHON=str(python_without_venv))
    assert result.returncode == 1
    assert "sudo apt-get install python3-venv" in result.stderr
    assert not checkout.pid_file.exists()

    # Once the package is there, the next start builds the venv instead of tripping on the
    # half-made one.
    again = checkout.run(timeout=300, PYTHON=sys.executable)
    assert again.returncode == 0, again.stderr
    assert "Creating the virtual environment" in again.stdout
    assert http_request(checkout.port, "/").text == "Hello World"


# Runs start.sh's commands from a process that adopts orphans and never reaps them, like a
# container's PID 1 that is `sleep infinity`: the app, once stopped, stays a zombie.
NON_REAPING_PARENT = """
import ctypes, json, subprocess, sys
ctypes.CDLL(None).prctl(36, 1)  # PR_SET_CHILD_SUBREAPER: orphans become this process's
results = [subprocess.run([sys.argv[1], command], capture_output=True, text=True, timeout=60)
           for command in sys.argv[2:]]
print(json.dumps([[r.returncode, r.stdout + r.stderr] for r in results]))
"""


def test_stop_treats_an_unreaped_zombie_as_stopped(checkout):
    env = {"PATH": os.environ["PATH"], "PORT": str(checkout.port), "VENV_DIR": str(checkout.venv)}
    run = subprocess.run(
        [sys.executable, "-c", NON_REAPING_PARENT, checkout.root / "start.sh",
         "start", "stop", "status"],
        env=env, capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    (start, start_out), (stop, stop_out), (status, _) = json.loads(run.stdout)
    assert start == 0, start_out
    assert stop == 0, stop_out
    assert "hello-app stopped" in stop_out
    assert status == 3
