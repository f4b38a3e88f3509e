"""The README's promise, tried as a new user would: on a bare machine with only what the
README's requirements line installs, a clean clone, then its two opening commands, exactly as
written.

The machine is a container of FRESH_MACHINE_IMAGE (CI's matrix on GitHub: debian:12 and
ubuntu:24.04), else debian:12 when it can be pulled, else its offline stand-in built from
Debian's packages (scripts/images/debian12). The clone is of this repository's HEAD, so commit
what you want tried.

The requirements go in without recommends, the way container images and CI job images install
packages: on Debian `git` recommends `openssh-client`, and with it installed a test that needs
`ssh` without saying so would pass here and fail there. The commands run both as an ordinary
user and as root, each in a clone of its own.
"""

import os
import re
import subprocess
import uuid

import pytest
from conftest import standin_image
from support import REPO_ROOT, http_request, require_command, wait_until

README = REPO_ROOT / "README.md"
PUBLIC_IMAGE = "debian:12"
USER = "newuser"
USERS = [USER, "root"]
HOMES = {USER: f"/home/{USER}", "root": "/root"}
SUMMARY = re.compile(r"^=+ (.*) in [0-9.]+s.* =+$", re.MULTILINE)
# The reason support.require_command gives: the tool, and the package that provides it.
SKIP_NAMING_ITS_PACKAGE = re.compile(
    r"^SKIPPED \[\d+\] \S+: needs .+, .*\(apt-get install [a-z0-9.+-]+\)", re.MULTILINE
)

pytestmark = [pytest.mark.fresh_machine, pytest.mark.timeout(3600)]


def readme_opening() -> tuple[str, list[str]]:
    """The requirements' install command and the commands of the README's first code block."""
    text = README.read_text()
    install = re.search(r"`sudo (apt-get install [^`]+)`", text)
    assert install, "the README's opening must name the requirements' apt-get install line"
    block = re.search(r"```bash\n(.*?)```", text, re.DOTALL)
    commands = [line.split("#")[0].strip() for line in block.group(1).splitlines()]
    return install.group(1), [command for command in commands if command]


def present_or_pulled(image: str) -> bool:
    for probe in (["docker", "image", "inspect", image], ["docker", "pull", "--quiet", image]):
        if subprocess.run(probe, capture_output=True, timeout=600, check=False).returncode == 0:
            return True
    return False


@pytest.fixture(scope="module")
def bare_image(docker) -> str:
    if os.environ.get("FRESH_MACHINE_IMAGE"):
        return os.environ["FRESH_MACHINE_IMAGE"]
    return PUBLIC_IMAGE if present_or_pulled(PUBLIC_IMAGE) else standin_image("debian12")


def clone_of(user: str) -> str:
    return f"{HOMES[user]}/hello-ha"


class Machine:
    """A running container that plays the new user's machine, as seen by one of its users."""

    def __init__(self, name: str, user: str = USER):
        self.name = name
        self.user = user

    def as_user(self, user: str) -> "Machine":
        return Machine(self.name, user)

    def run(self, command: str, workdir: str = "", timeout: float = 600):
        """Runs `command` as this machine's user, by default in that user's clone."""
        workdir = workdir or clone_of(self.user)
        return subprocess.run(
            ["docker", "exec", "-u", self.user, "-w", workdir, self.name, "bash", "-c", command],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def published_port(self, port: int) -> int:
        out = subprocess.check_output(["docker", "port", self.name, f"{port}/tcp"], text=True)
        return int(out.split(":")[-1])


@pytest.fixture(scope="module")
def bare_machine(bare_image, tmp_path_factory):
    """The bare machine with the README's requirements installed, and a clean clone in the
    home of each of its users."""
    require_command("git", "git")
    clone = tmp_path_factory.mktemp("fresh") / "hello-ha"
    subprocess.run(["git", "clone", "--quiet", REPO_ROOT, clone], check=True, timeout=120)
    name = f"hello-fresh-{uuid.uuid4().hex[:8]}"
    # sleep bounds the container's life even if the teardown never runs.
    subprocess.run(
        ["docker", "run", "-d", "--name", name, "-p", "127.0.0.1::8080",
         "-v", f"{clone}:/src:ro", bare_image, "sleep", "3600"],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    try:
        box = Machine(name)
        install, _ = readme_opening()
        bare_install = install.replace(
            "apt-get install", "apt-get install -y -qq --no-install-recommends"
        )
        setup = box.as_user("root").run(
            "export DEBIAN_FRONTEND=noninteractive && apt-get update -qq"
            f" && {bare_install} && useradd --create-home {USER}",
            workdir="/",
        )
        assert setup.returncode == 0, f"{install} failed:\n{setup.stdout[-3000:]}{setup.stderr}"
        for user in USERS:
            copy = box.as_user(user).run(f"cp -R /src {clone_of(user)}", workdir="/")
            assert copy.returncode == 0, copy.stderr
        yield box
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True, check=False)


@pytest.fixture(params=USERS)
def machine(bare_machine, request) -> Machine:
    """The bare machine, as an ordinary user and as root."""
    return bare_machine.as_user(request.param)


def test_the_readme_opens_with_start_sh_and_make_test():
    _, commands = readme_opening()
    assert commands == ["./start.sh", "make test"]


def test_start_sh_serves_hello_world_on_8080_and_status_restart_stop_work(machine):
    started = machine.run("./start.sh")
    assert started.returncode == 0, started.stdout + started.stderr
    assert "hello-app is running: http://localhost:8080" in started.stdout
    first = machine.run("cat .run/app.pid").stdout.strip()
    page = http_request(machine.published_port(8080), "/")
    assert (page.status, page.text) == (200, "Hello World")

    status = machine.run("./start.sh status")
    assert status.returncode == 0, status.stdout
    assert f"(pid {first})" in status.stdout

    restarted = machine.run("./start.sh restart")
    assert restarted.returncode == 0, restarted.stdout + restarted.stderr
    assert f"hello-app stopped (pid {first})" in restarted.stdout
    second = machine.run("cat .run/app.pid").stdout.strip()
    assert second != first
    wait_until(
        lambda: http_request(machine.published_port(8080), "/").text == "Hello World",
        what="Hello World after the restart",
    )

    stopped = machine.run("./start.sh stop")
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert f"hello-app stopped (pid {second})" in stopped.stdout
    # Gone, or a zombie that the container's PID 1 (sleep) will never reap.
    exited = machine.run(f"test ! -d /proc/{second} || grep -q '^State:.*Z' /proc/{second}/status")
    assert exited.returncode == 0, "the app is still running"
    port_closed = machine.run("! (exec 3<>/dev/tcp/127.0.0.1/8080) 2>/dev/null")
    assert port_closed.returncode == 0, "something still listens on 8080"
    assert machine.run("./start.sh status").returncode == 3


def test_make_test_passes_and_every_skip_names_the_package_it_needs(machine, tmp_path):
    result = machine.run("make test", timeout=3000)
    output = result.stdout + result.stderr
    (tmp_path / "make-test.log").write_text(output)
    assert result.returncode == 0, f"make test failed on a fresh machine:\n{output[-6000:]}"

    summary = SUMMARY.findall(result.stdout)[-1]
    counts = {word: int(n) for n, word in re.findall(r"(\d+) (\w+)", summary)}
    assert counts.get("passed", 0) > 0
    assert not {"failed", "error", "errors"} & counts.keys(), summary
    skip_lines = [line for line in result.stdout.splitlines() if line.startswith("SKIPPED")]
    unexplained = [line for line in skip_lines if not SKIP_NAMING_ITS_PACKAGE.match(line)]
    assert unexplained == [], "skips that do not name the package they need"
    reported = sum(int(n) for n in re.findall(r"^SKIPPED \[(\d+)\]", result.stdout, re.M))
    assert reported == counts.get("skipped", 0), "a skip is missing from the -ra report"
