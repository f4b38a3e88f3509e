"""Test-suite policy shared by every test module.

Tests that need something the machine may lack (Docker, PostgreSQL's server, Packer…) skip,
naming the tool and the package that provides it (support.require_command). CI sets
FORBID_SKIPS=1, and then every skip is reported as a failure instead.
"""

import fcntl
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import uuid
from pathlib import Path

import pytest
from support import REPO_ROOT, AppProcess, PostgresCluster, require_command, run, wait_until

from lab.docker import systemd_container_args

FORBID_SKIPS = os.environ.get("FORBID_SKIPS") == "1"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if not report.skipped or hasattr(report, "wasxfail"):
        return
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
    if report.when == "call":
        # Report the test, not support.require_command's line, as pytest does for fixtures.
        path, line = item.reportinfo()[:2]
        report.longrepr = (os.fspath(path), line + 1, reason)
    if FORBID_SKIPS:
        report.outcome = "failed"
        report.longrepr = f"skipped, but FORBID_SKIPS=1 makes every test mandatory: {reason}"


# make test hands whole files to its workers in collection order (Makefile: TEST_WORKERS).
# These take minutes each (`--durations` in .ci/run), so they go first: none is left to start
# at the end while the other workers sit idle. The lab's files go last, as they run alone.
SLOWEST_FILES = (
    "test_fresh_machine.py",  # 7 min alone: make test as two users
    "test_ansible_load_balancer.py",  # 4 min
    "test_ansible_molecule.py",  # 4 min
    "test_ansible_ssh.py",  # 2.5 min
    "test_infra_stack.py",  # 2 min: stacks and change sets on moto's server
    "test_ansible_fleet.py",  # 2 min
    "test_packer_local_bake.py",  # 2 min
)


def pytest_collection_modifyitems(items):
    rank = {name: position for position, name in enumerate(SLOWEST_FILES)}

    def order(item):
        return item.get_closest_marker("lab") is not None, rank.get(item.path.name, len(rank))

    items.sort(key=order)  # stable: files stay whole
    # `-m "not docker"` then selects the tests that need no Docker engine, `-m systemd` those
    # that boot systemd containers as VMs (the markers are declared in pyproject.toml).
    for item in items:
        if "docker" in item.fixturenames:
            item.add_marker(pytest.mark.docker)
        if "systemd_image" in item.fixturenames:  # ssh_vms too: it boots from systemd_image
            item.add_marker(pytest.mark.systemd)


class MachineLock:
    """With TEST_WORKERS, the lab's tests run with the machine to themselves: the drills
    measure failure windows, and on 2 cores the other tests' load stretches them until the
    hypotheses fail. Every worker holds this lock, shared for other tests and exclusive for
    lab tests, and lets go after its last test.

    The lock is taken before pytest-timeout starts a test's clock: waiting is not running."""

    def __init__(self, path: Path):
        self.file = path.open("a")
        self.exclusive: bool | None = None

    def release(self) -> None:
        fcntl.flock(self.file, fcntl.LOCK_UN)
        self.exclusive = None

    def hold(self, exclusive: bool) -> None:
        if exclusive == self.exclusive:
            return
        self.release()  # flock cannot switch modes atomically
        fcntl.flock(self.file, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        self.exclusive = exclusive


machine_lock: MachineLock | None = None


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_protocol(item, nextitem):
    global machine_lock
    run_id = os.environ.get("PYTEST_XDIST_TESTRUNUID")  # set in xdist's workers only
    if run_id:
        if machine_lock is None:
            machine_lock = MachineLock(Path(tempfile.gettempdir()) / f"hello-tests-{run_id}.lock")
        machine_lock.hold(exclusive=item.get_closest_marker("lab") is not None)
    yield
    if machine_lock and nextitem is None:  # the worker's last test: it idles until all end
        machine_lock.release()


@pytest.fixture(scope="session", autouse=True)
def short_ssh_control_path_dir():
    """Ansible keeps its ssh ControlPath sockets in $HOME/.ansible/cp, and the tests' HOMEs
    live under pytest's tmp paths, which xdist makes longer (popen-gwN/) than a Unix socket's
    path may be (108 bytes): ssh then refuses to connect. A short directory of each worker's own."""
    path = tempfile.mkdtemp(prefix="hello-cp-")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ANSIBLE_SSH_CONTROL_PATH_DIR", path)
        yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def docker():
    """Skip the test, with the reason, when no Docker engine answers."""
    require_command("docker", "docker.io")
    probe = subprocess.run(
        ["docker", "info"], capture_output=True, text=True, timeout=30, check=False
    )
    if probe.returncode != 0:
        last_line = (probe.stderr.strip().splitlines() or ["no output"])[-1]
        pytest.skip(f"needs a running Docker engine, and `docker info` failed: {last_line}")


@pytest.fixture
def app_server(tmp_path):
    """Factory: start `python -m app` as a real server on a free port; stopped at teardown."""
    servers = []

    def start(**env) -> AppProcess:
        server = AppProcess(tmp_path / f"app-{len(servers)}.log", env)
        servers.append(server)
        server.start()
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(scope="session")
def postgres_url(tmp_path_factory):
    """A PostgreSQL the tests may write to: TEST_DATABASE_URL (CI's server) or a throwaway one."""
    url = os.environ.get("TEST_DATABASE_URL")
    if url:
        yield url
        return
    cluster = PostgresCluster.create_or_skip()
    cluster.start()
    yield cluster.url
    cluster.destroy()


@pytest.fixture
def postgres_cluster():
    """A throwaway PostgreSQL server of the test's own, which it may stop and start."""
    cluster = PostgresCluster.create_or_skip()
    cluster.start()
    yield cluster
    cluster.destroy()


@pytest.fixture
def unresponsive_database():
    """A TCP server that accepts connections and never says a word, like a hung database."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    accepted = []
    stop = threading.Event()

    def accept_forever():
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept_forever, daemon=True)
    thread.start()
    yield f"postgresql://app:pw@127.0.0.1:{listener.getsockname()[1]}/app"
    stop.set()
    thread.join()
    for conn in accepted:
        conn.close()
    listener.close()


@pytest.fixture(scope="session")
def base_images(docker) -> dict[str, str]:
    """PYTHON_IMAGE and POSTGRES_IMAGE for builds and compose, from scripts/images/select.sh.

    The public images when they are present or can be pulled (GitHub's runners), otherwise
    the offline stand-ins of scripts/images/, built on first use (`make images`).
    """
    select = subprocess.run(
        [REPO_ROOT / "scripts/images/select.sh"], capture_output=True, text=True, timeout=1800
    )
    if select.returncode != 0 and shutil.which("debootstrap") is None:
        pytest.skip(
            "needs the public base images, which cannot be pulled here, or debootstrap to build"
            " stand-ins, which is not installed (apt-get install debootstrap)"
        )
    assert select.returncode == 0, f"no base images to build on:\n{select.stderr}"
    return dict(line.split("=", 1) for line in select.stdout.splitlines())


def standin_image(name: str) -> str:
    """The offline stand-in of scripts/images/<name>, built on first use (`make images`)."""
    build = subprocess.run(
        [REPO_ROOT / "scripts/images/build.sh", name], capture_output=True, text=True, timeout=1800
    )
    if build.returncode != 0:
        require_command("debootstrap", "debootstrap")
    assert build.returncode == 0, f"could not build the {name} stand-in:\n{build.stderr}"
    variable = f"{name.upper().replace('-', '_')}_IMAGE="
    for line in (REPO_ROOT / ".env.offline").read_text().splitlines():
        if line.startswith(variable):
            return line.removeprefix(variable)
    raise AssertionError(f"scripts/images/build.sh wrote no {variable} to .env.offline")


@pytest.fixture(scope="session")
def systemd_image(docker) -> str:
    """A Debian 12 image that boots systemd and runs sshd: $HELLO_SYSTEMD_IMAGE, or the
    offline stand-in of scripts/images/debian12-systemd."""
    return os.environ.get("HELLO_SYSTEMD_IMAGE") or standin_image("debian12-systemd")


def _published_port(container: str, port: int) -> int:
    return int(run("docker", "port", container, f"{port}/tcp").stdout.split(":")[-1])


@pytest.fixture
def ssh_vms(systemd_image, tmp_path):
    """Factory: "VMs" as a cloud gives them, reached over SSH on 127.0.0.1. Each is a systemd
    container with sshd and a sudo user `deploy` that accepts the test's throwaway key; each
    comes with its inventory line, an ssh command and its published port 8080."""
    yield from ssh_vm_factory(systemd_image, tmp_path)


@pytest.fixture(scope="module")
def module_ssh_vms(systemd_image, tmp_path_factory):
    """ssh_vms, for VMs that a module's tests share."""
    yield from ssh_vm_factory(systemd_image, tmp_path_factory.mktemp("vms"))


def ssh_vm_factory(systemd_image: str, directory: Path):
    """ssh_vms' factory; its key and known_hosts go in `directory`. Removes its VMs when done."""
    for command in ("ssh", "ssh-keygen", "ssh-keyscan"):
        require_command(command, "openssh-client")
    key = directory / "id_ed25519"
    run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "hello-ssh-test", "-f", str(key))
    known_hosts = directory / "known_hosts"
    known_hosts.touch()
    ssh_args = f"-o UserKnownHostsFile={known_hosts} -o IdentitiesOnly=yes"
    setup = (
        "useradd --create-home --shell /bin/bash deploy"
        " && install -d -m 700 -o deploy -g deploy ~deploy/.ssh"
        " && install -m 600 -o deploy -g deploy /dev/stdin ~deploy/.ssh/authorized_keys"
        " && echo 'deploy ALL=(ALL) NOPASSWD:ALL' > /etc/sudoers.d/deploy"
    )
    containers = []

    def start(alias: str) -> dict:
        name = f"hello-vm-{uuid.uuid4().hex[:8]}"
        containers.append(name)
        run("docker", "run", "-d", "--name", name, *systemd_container_args(),
             "-p", "127.0.0.1::22", "-p", "127.0.0.1::8080", systemd_image)  # fmt: skip
        state = ["docker", "exec", name, "systemctl", "is-system-running"]
        wait_until(
            lambda: run(*state, check=False).stdout.strip() in ("running", "degraded"),
            timeout=60,
            what="systemd to boot in the container",
        )
        run(
            "docker",
            "exec",
            "-i",
            name,
            "sh",
            "-c",
            setup,
            input=key.with_suffix(".pub").read_text(),
        )
        ssh_port = _published_port(name, 22)
        scan = ["ssh-keyscan", "-p", str(ssh_port), "127.0.0.1"]
        wait_until(lambda: run(*scan, check=False).stdout != "", timeout=30, what="sshd")
        with known_hosts.open("a") as hosts:
            hosts.write(run(*scan).stdout)
        return {
            "name": name,
            "inventory_line": f"{alias} ansible_host=127.0.0.1 ansible_port={ssh_port}"
            f" ansible_user=deploy ansible_ssh_private_key_file={key}"
            f" ansible_ssh_common_args='{ssh_args}'\n",
            "ssh": [
                "ssh",
                "-p",
                str(ssh_port),
                "-i",
                str(key),
                *ssh_args.split(),
                "deploy@127.0.0.1",
            ],
            "http": _published_port(name, 8080),
        }

    yield start
    for name in containers:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True, check=False)
