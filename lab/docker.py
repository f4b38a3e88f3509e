"""Small helpers around the docker CLI and polling, shared by the lab and the tests."""

import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


class LabError(Exception):
    """A step of the lab failed; the message says which and shows the command's output."""


def run(*args, check: bool = True, timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
    """Run a command, capturing its output; with check, raise LabError showing that output."""
    result = subprocess.run(
        [str(arg) for arg in args], capture_output=True, text=True, timeout=timeout, **kwargs
    )
    if check and result.returncode != 0:
        output = (result.stdout[-3000:] + result.stderr[-3000:]).strip()
        command = " ".join(str(arg) for arg in args[:6])
        raise LabError(f"{command} … failed ({result.returncode}):\n{output}")
    return result


def docker(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return run("docker", *args, **kwargs)


def wait_until(condition: Callable[[], bool], timeout: float, what: str, interval: float = 0.2):
    """Poll condition() until it is true; raise LabError naming `what` after timeout seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except (OSError, LabError, subprocess.TimeoutExpired):
            pass
        time.sleep(interval)
    raise LabError(f"timed out after {timeout:.0f} s waiting for {what}")


def container_running(name: str) -> bool:
    state = docker("inspect", "--format", "{{.State.Running}}", name, check=False)
    return state.stdout.strip() == "true"


def published_port(container: str, port: int) -> int:
    return int(docker("port", container, f"{port}/tcp").stdout.split(":")[-1])


def systemd_container_args() -> list[str]:
    """`docker run` options that let systemd run as PID 1 in a container.

    cgroup v2 hosts (GitHub's runners) need --privileged and the host's cgroup namespace;
    cgroup v1 hosts that refuse --privileged (the offline lab) get by with CAP_SYS_ADMIN and
    a read-only cgroup mount. The same choice is made for Molecule by the environment.
    """
    if os.path.exists("/sys/fs/cgroup/cgroup.controllers"):
        cgroup = ["--privileged", "--cgroupns=host", "-v", "/sys/fs/cgroup:/sys/fs/cgroup:rw"]
    else:
        cgroup = ["--cap-add", "SYS_ADMIN", "-v", "/sys/fs/cgroup:/sys/fs/cgroup:ro"]
    return [*cgroup, "--tmpfs", "/run", "--tmpfs", "/run/lock"]


def select_image(variable: str, public: str, standin: str) -> str:
    """The image for one role in the lab: $variable when set; else the public image when it
    is present or can be pulled (GitHub's runners); else the offline stand-in of
    scripts/images/<standin>, built on first use, as `make images` does."""
    if os.environ.get(variable):
        return os.environ[variable]
    if public:
        present = docker("image", "inspect", public, check=False).returncode == 0
        if present or docker("pull", "--quiet", public, check=False, timeout=600).returncode == 0:
            return public
    run(REPO_ROOT / "scripts/images/build.sh", standin, timeout=1800)
    prefix = f"{standin.upper().replace('-', '_')}_IMAGE="
    for line in (REPO_ROOT / ".env.offline").read_text().splitlines():
        if line.startswith(prefix):
            return line.removeprefix(prefix)
    raise LabError(f"scripts/images/build.sh wrote no {prefix} to .env.offline")
