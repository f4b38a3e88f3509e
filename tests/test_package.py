"""The app is a package: `make dist` builds one wheel, and that wheel alone, installed into a
fresh venv next to requirements.txt, serves Hello World without the repository."""

import email
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest
from support import REPO_ROOT, free_port, http_request, require_command, run, wait_until

pytestmark = pytest.mark.timeout(300)

# What `make dist` needs from a checkout; the build runs in a copy, so it leaves nothing in
# the developer's tree.
BUILD_INPUTS = ("Makefile", "start.sh", "pyproject.toml", "requirements.txt")


def requirement_pins() -> list[str]:
    lines = (REPO_ROOT / "requirements.txt").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    require_command("make", "make")
    tree = tmp_path_factory.mktemp("checkout")
    for name in BUILD_INPUTS:
        shutil.copy2(REPO_ROOT / name, tree / name)
    shutil.copytree(REPO_ROOT / "app", tree / "app", ignore=shutil.ignore_patterns("__pycache__"))
    # The test suite's venv already holds requirements.txt: start.sh install is a no-op on it.
    run("make", "dist", f"VENV={sys.prefix}", cwd=tree, timeout=240)
    wheels = list((tree / "dist").glob("*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def test_make_dist_builds_one_wheel_named_for_the_project(wheel):
    assert wheel.name.startswith("hello_app-")
    assert wheel.name.endswith("-py3-none-any.whl")


def test_the_wheel_holds_the_app_package_and_nothing_else(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    code = sorted(name for name in names if ".dist-info/" not in name)
    assert code == sorted(f"app/{path.name}" for path in (REPO_ROOT / "app").glob("*.py"))


def test_the_wheel_requires_exactly_the_pins_of_requirements_txt(wheel):
    with zipfile.ZipFile(wheel) as archive:
        metadata_name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        metadata = email.message_from_bytes(archive.read(metadata_name))
    assert metadata["Name"] == "hello-app"
    assert metadata["Requires-Python"] == ">=3.11"
    assert metadata.get_all("Requires-Dist") == requirement_pins()


def test_the_installed_wheel_serves_hello_world_outside_the_repository(wheel, tmp_path):
    env_dir = tmp_path / "venv"
    # Without pip of its own (ensurepip takes seconds): the suite's pip installs into it.
    venv.create(env_dir)
    python = str(env_dir / "bin" / "python")
    pip = [sys.executable, "-m", "pip", "--python", python, "install", "--quiet"]
    run(*pip, "-r", str(REPO_ROOT / "requirements.txt"), timeout=240)
    run(*pip, "--no-deps", str(wheel), timeout=120)

    elsewhere = tmp_path / "elsewhere"  # no app/ here: the import must find the installed one
    elsewhere.mkdir()
    found = run(python, "-c", "import app; print(app.__file__)", cwd=elsewhere, env={})
    assert Path(found.stdout.strip()).is_relative_to(env_dir)

    port = free_port()
    env = {"PORT": str(port), "DATABASE_URL": f"sqlite:///{tmp_path / 'app.sqlite3'}"}
    log = tmp_path / "app.log"
    with log.open("wb") as output:
        server = subprocess.Popen(
            [python, "-m", "app"], cwd=elsewhere, env=env, stdout=output, stderr=output
        )

    def answers() -> bool:
        if server.poll() is not None:
            raise AssertionError(f"the installed app exited:\n{log.read_text()}")
        return http_request(port, "/healthz", timeout=1).status == 200

    try:
        wait_until(answers, what="the installed app to answer /healthz")
        assert http_request(port, "/").text == "Hello World"
        assert http_request(port, "/visits", method="POST").json() == {"visits": 1}
    finally:
        server.terminate()
        server.wait(timeout=15)
