"""The lab's topology: HAProxy in front of three systemd "VMs" provisioned by site.yml over
SSH, and the PostgreSQL pair of lab/database.py behind them, on a Docker network of its own.

Everything the lab creates carries the label `hello-lab` and a name that starts with its
prefix, so `down()` removes exactly that. Its state (SSH key, known_hosts, inventory, the
HAProxy config and admin socket, the database's passwords) lives in .lab/.
"""

import json
import os
import shlex
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path

from lab.database import DatabasePair
from lab.docker import (
    REPO_ROOT,
    LabError,
    container_running,
    docker,
    published_port,
    run,
    select_image,
    systemd_container_args,
    wait_until,
)

VM_NAMES = ("vm1", "vm2", "vm3")
WORKERS_PER_VM = 2
# The public images where they can be pulled; the stand-ins of scripts/images/ otherwise.
# No public image is a Debian VM with sshd, so the VMs are always built from Debian's packages.
HAPROXY_PUBLIC_IMAGE = "haproxy:3.2"
POSTGRES_PUBLIC_IMAGE = "postgres:17-alpine"  # docker-compose.yml's
# The URL file the AWS boot step writes (roles/hello_app_aws); the lab writes it the same way.
DATABASE_URL_FILE = "/etc/hello-app/database-url"
# The ALB target group's health check (infra/hello-app.yaml), five times faster: 10 s
# interval, 5 s timeout, 3 failures out, 2 successes in. A dead VM leaves in ~6 s, not ~30 s.
HEALTH_CHECK_SCALE = 5
HEALTH_CHECK = {"interval_s": 10, "timeout_s": 5, "unhealthy": 3, "healthy": 2}
# How long the synchronous standby may be silent before commits stop waiting for it: the
# health check's detection time (3 failed checks 10 s apart), scaled down the same way.
STANDBY_DETECTION_S = HEALTH_CHECK["interval_s"] * HEALTH_CHECK["unhealthy"] / HEALTH_CHECK_SCALE
# A deploy of three VMs, each installing its release venv from PyPI.
PLAY_TIMEOUT = 900

HAPROXY_CONFIG = """\
# Written by lab/topology.py: HAProxy standing in for the ALB.
global
    stats socket /var/run/hello-lab/admin.sock mode 600 level admin
    log stdout format raw local0

defaults
    mode http
    log global
    option httplog
    # Also a check's connect timeout (the smaller of this and `inter`): the target group's
    # 5 s timeout, scaled down like the rest of the check.
    timeout connect {timeout_ms}ms
    timeout client 60s
    timeout server 60s
    # The ALB does not retry a request on another target: neither does the lab.
    retries 0

# Docker's DNS: a VM rebuilt after a loss comes back under its name with a new address.
resolvers docker
    nameserver dns 127.0.0.11:53
    hold valid 1s

frontend hello
    bind :8080
    default_backend hello_app

backend hello_app
    option httpchk GET /healthz
    http-check expect status 200
    timeout check {timeout_ms}ms
    default-server check inter {interval_ms}ms fall {unhealthy} rise {healthy}
    default-server resolvers docker init-addr last,libc,none
{servers}
"""


def app_events(container: str, since: float) -> list[tuple[float, int, dict]]:
    """The app's JSON log lines in this VM's journal since `since`: (time.time(), the
    worker's PID, the line)."""
    journal = docker(
        "exec", container, "journalctl", "--unit", "hello-app*", "--output", "json",
        "--no-pager", f"--since=@{int(since)}",
    ).stdout  # fmt: skip
    events = []
    for line in journal.splitlines():
        entry = json.loads(line)
        message, at = entry.get("MESSAGE"), int(entry["__REALTIME_TIMESTAMP"]) / 1e6
        if isinstance(message, str) and message.startswith("{") and at >= since:
            events.append((at, int(entry["_PID"]), json.loads(message)))
    return events


def restart_window(container: str, since: float) -> tuple[float, float]:
    """When the app on this VM began to stop, and when it was last ready (time.time()), from
    the app's own lifecycle events since `since`."""
    events = app_events(container, since)
    stopping = [at for at, _, line in events if line.get("event") == "stopping"]
    ready = [at for at, _, line in events if line.get("event") == "ready"]
    if not (stopping and ready):
        raise LabError(f"{container} did not restart: {len(events)} app events since {since}")
    return min(stopping), max(ready)


class Lab:
    """The lab. LAB_PREFIX, LAB_PORT and LAB_STATE_DIR let a second lab (the test suite's)
    run beside the one `make lab` brought up."""

    def __init__(self):
        self.prefix = os.environ.get("LAB_PREFIX", "hello-lab")
        self.port = int(os.environ.get("LAB_PORT", "8088"))
        self.state_dir = Path(os.environ.get("LAB_STATE_DIR", REPO_ROOT / ".lab")).resolve()
        prefix = self.prefix
        self.network = prefix
        self.key = self.state_dir / "id_ed25519"
        self.known_hosts = self.state_dir / "known_hosts"
        self.inventory = self.state_dir / "inventory.ini"
        self.haproxy_dir = self.state_dir / "haproxy"
        self.admin_socket = self.haproxy_dir / "admin.sock"
        self._wheel: Path | None = None
        self.database = DatabasePair(
            image=select_image("POSTGRES_IMAGE", POSTGRES_PUBLIC_IMAGE, "postgres"),
            prefix=f"{prefix}-",
            app_network=self.network,
            replication_network=f"{prefix}-replication",
            state_dir=self.state_dir / "database",
            standby_detection_s=STANDBY_DETECTION_S,
        )

    # Names ---------------------------------------------------------------------------------

    def vm(self, name: str) -> str:
        return f"{self.prefix}-{name}"

    @property
    def balancer(self) -> str:
        return f"{self.prefix}-lb"

    # Bring-up ------------------------------------------------------------------------------

    def up(self, release: str = "1.0.0") -> float:
        """Bring the whole lab up (what is already up is kept); return the seconds it took."""
        started = time.monotonic()
        self.state_dir.mkdir(exist_ok=True)
        if not self.key.exists():
            run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "hello-lab", "-f", self.key)
        if docker("network", "inspect", self.network, check=False).returncode != 0:
            docker("network", "create", "--label", f"hello-lab={self.prefix}", self.network)
        self.database.up()
        missing = [name for name in VM_NAMES if not container_running(self.vm(name))]
        for name in missing:
            self.start_vm(name)
        self.write_inventory()
        self.start_balancer()
        if missing:
            for name in missing:
                self.write_database_url(name, self.database.app_url())
            self.deploy(release, limit=missing, serial=len(missing))
        wait_until(self.all_up, timeout=60, what="HAProxy to see every VM UP")
        seconds = time.monotonic() - started
        if missing:  # a bring-up, not a check of a lab that was up: what the budget is about
            (self.state_dir / "up-seconds").write_text(f"{seconds:.0f}\n")
        return seconds

    def last_bring_up_seconds(self) -> int | None:
        """How long the last bring-up of VMs took (`make lab`, or `make drills` on no lab)."""
        record = self.state_dir / "up-seconds"
        return int(record.read_text()) if record.exists() else None

    def start_vm(self, name: str) -> None:
        """A fresh VM, as the Auto Scaling Group launches one: systemd, sshd and a sudo user
        `deploy` that accepts the lab's key; on the lab's network under its name."""
        container = self.vm(name)
        docker("rm", "-f", container, check=False)
        docker("run", "-d", "--name", container, "--hostname", name,
               "--label", f"hello-lab={self.prefix}", "--network", self.network,
               *systemd_container_args(), "-p", "127.0.0.1::22", self.vm_image())  # fmt: skip
        wait_until(
            lambda: (
                self.exec(name, "systemctl", "is-system-running", check=False).stdout.strip()
                in ("running", "degraded")
            ),
            timeout=90,
            what=f"systemd to boot in {container}",
        )
        setup = (
            "id deploy >/dev/null 2>&1 || useradd --create-home --shell /bin/bash deploy"
            " && install -d -m 700 -o deploy -g deploy ~deploy/.ssh"
            " && install -m 600 -o deploy -g deploy /dev/stdin ~deploy/.ssh/authorized_keys"
            " && echo 'deploy ALL=(ALL) NOPASSWD:ALL' > /etc/sudoers.d/deploy"
            # What Ansible runs over SSH, at the lowest CPU priority (sshd's pam_limits): on
            # AWS a deploy's pip and modules use the drained instance's own cores, not the
            # ones serving. The app's workers are started by systemd, at the normal priority.
            " && echo 'deploy - priority 19' > /etc/security/limits.d/deploy.conf"
        )
        docker("exec", "-i", container, "sh", "-c", setup,
               input=self.key.with_suffix(".pub").read_text())  # fmt: skip
        port = published_port(container, 22)
        scan = ["ssh-keyscan", "-p", str(port), "127.0.0.1"]
        wait_until(lambda: run(*scan, check=False).stdout != "", timeout=30, what="sshd")
        keys = run(*scan).stdout
        # The port is new: earlier keys for it belong to another VM.
        kept = [line for line in self._known_hosts_lines() if f"]:{port} " not in line]
        self.known_hosts.write_text("".join(kept) + keys)

    def _known_hosts_lines(self) -> list[str]:
        if not self.known_hosts.exists():
            return []
        return self.known_hosts.read_text().splitlines(keepends=True)

    def vm_image(self) -> str:
        return select_image("HELLO_SYSTEMD_IMAGE", "", "debian12-systemd")

    def write_inventory(self) -> None:
        """The lab's inventory: the VMs over SSH on 127.0.0.1, behind the lab's HAProxy."""
        ssh_args = f"-o UserKnownHostsFile={self.known_hosts} -o IdentitiesOnly=yes"
        hosts = "".join(
            f"{name} ansible_host=127.0.0.1 ansible_port={published_port(self.vm(name), 22)}"
            f" ansible_user=deploy ansible_ssh_private_key_file={self.key}"
            f" ansible_ssh_common_args='{ssh_args}'\n"
            for name in VM_NAMES
            if container_running(self.vm(name))
        )
        settings = {
            "hello_app_database_url_file": DATABASE_URL_FILE,
            "hello_app_lb_type": "haproxy",
            "hello_app_lb_haproxy_socket": self.admin_socket,
            # Each VM gets 2 workers, whatever the machine's cores: the lab has three VMs.
            "hello_app_workers": WORKERS_PER_VM,
        }
        self.inventory.write_text(
            "# Written by lab/topology.py (make lab).\n[hello_app]\n" + hosts
            + "[hello_app:vars]\n" + "".join(f"{k}={v}\n" for k, v in settings.items())
        )  # fmt: skip

    def start_balancer(self) -> None:
        """HAProxy, (re)started unless it runs with this very configuration."""
        scale = HEALTH_CHECK_SCALE
        config = HAPROXY_CONFIG.format(
            interval_ms=HEALTH_CHECK["interval_s"] * 1000 // scale,
            timeout_ms=HEALTH_CHECK["timeout_s"] * 1000 // scale,
            unhealthy=HEALTH_CHECK["unhealthy"],
            healthy=HEALTH_CHECK["healthy"],
            servers="".join(f"    server {name} {self.vm(name)}:8080\n" for name in VM_NAMES),
        )
        config_file = self.haproxy_dir / "haproxy.cfg"
        if container_running(self.balancer) and config_file.read_text() == config:
            return
        self.haproxy_dir.mkdir(exist_ok=True)
        config_file.write_text(config)
        image = select_image("HAPROXY_IMAGE", HAPROXY_PUBLIC_IMAGE, "haproxy")
        # The admin socket is made in this directory by HAProxy's user (the image's), and used
        # by Ansible's hooks on this machine.
        user = docker("run", "--rm", "--entrypoint", "id", image, "-u").stdout.strip()
        if os.geteuid() == 0:
            os.chown(self.haproxy_dir, int(user), -1)
            user_args = []
        else:
            user_args = ["--user", f"{os.getuid()}:{os.getgid()}"]
        docker("rm", "-f", self.balancer, check=False)
        self.admin_socket.unlink(missing_ok=True)  # the last HAProxy's
        docker("run", "-d", "--name", self.balancer, "--label", f"hello-lab={self.prefix}",
               "--network", self.network, *user_args,
               "-p", f"127.0.0.1:{self.port}:8080",
               "-v", f"{config_file}:/usr/local/etc/haproxy/haproxy.cfg:ro",
               "-v", f"{self.haproxy_dir}:/var/run/hello-lab", image)  # fmt: skip
        wait_until(self.admin_socket.exists, timeout=30, what="HAProxy's admin socket")

    # Operations ----------------------------------------------------------------------------

    def exec(self, name: str, *command: str, **kwargs):
        return docker("exec", self.vm(name), *command, **kwargs)

    def ansible_env(self) -> dict[str, str]:
        return {
            **os.environ,
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
            "ANSIBLE_NOCOLOR": "1",
        }

    def playbook_command(self, playbook: str = "site.yml", *extra: str) -> list[str]:
        """What a user types in ansible/ to run a playbook against the lab."""
        return ["ansible-playbook", "-i", str(self.inventory), playbook, *extra]

    def wheel(self) -> Path:
        """The checkout's wheel, built once per process (as `make dist` does, but outside the
        checkout): each deploy installs it instead of building its own, which saves half a
        minute per run of site.yml."""
        if self._wheel:
            return self._wheel
        dist = self.state_dir / "dist"
        shutil.rmtree(dist, ignore_errors=True)
        with tempfile.TemporaryDirectory() as scratch:
            source = Path(scratch) / "hello-app"
            shutil.copytree(REPO_ROOT / "app", source / "app",
                            ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
            for name in ("pyproject.toml", "requirements.txt"):
                shutil.copy2(REPO_ROOT / name, source / name)
            run(sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                "--wheel-dir", dist, source, timeout=300)  # fmt: skip
        self._wheel = next(dist.glob("hello_app-*.whl"))
        return self._wheel

    def deploy(self, release: str, *extra: str, limit: list[str] | None = None,
               serial: int = 1, check: bool = True, log: Path | None = None):  # fmt: skip
        """site.yml with this release, through the HAProxy hooks, one VM at a time. The
        lab's wheel, unless `extra` names other sources."""
        args = ["-e", f"hello_app_version={release}", "-e", f"hello_app_serial={serial}", *extra]
        if not any(arg.startswith("hello_app_source_dir=") for arg in extra):
            args += ["-e", f"hello_app_wheel={self.wheel()}"]
        if limit:
            args += ["--limit", ",".join(limit)]
        # At the lowest CPU priority: on AWS the controller is a runner or a laptop, not one of
        # the fleet's cores. Here its bursts would stall the database's commits, and the app
        # would shed /visits (503 "database busy") in a drill that measures a deploy.
        result = run("nice", "-n", "19", *self.playbook_command("site.yml", *args),
                     cwd=REPO_ROOT / "ansible", env=self.ansible_env(), timeout=PLAY_TIMEOUT,
                     check=False)  # fmt: skip
        if log:
            log.write_text(result.stdout + result.stderr)
        if check and result.returncode != 0:
            raise LabError(f"site.yml {release} failed:\n{result.stdout[-4000:]}")
        return result

    def write_database_url(self, name: str, url: str) -> None:
        """What the boot step does: the URL file, replaced in one rename, readable by the
        app's group only. The app reads it again on its next database call. On a new VM it
        comes before site.yml, as on an instance the boot step runs before the app: the
        group is made here then (the role keeps it), and the release checks /readyz."""
        script = (
            "{ getent group hello-app >/dev/null || groupadd --system hello-app; }"
            f" && install -d -m 0755 {Path(DATABASE_URL_FILE).parent}"
            f" && umask 027 && cat > {DATABASE_URL_FILE}.new"
            f" && chgrp hello-app {DATABASE_URL_FILE}.new"
            f" && mv {DATABASE_URL_FILE}.new {DATABASE_URL_FILE}"
        )
        docker("exec", "-i", self.vm(name), "sh", "-c", script, input=url + "\n")

    def workers_on_url(self, name: str, since: float, user: str) -> int:
        """How many of the VM's workers have read a database URL for `user` since `since`:
        each reads the URL file again on its next database call after it changes."""
        return len({
            pid for _, pid, line in app_events(self.vm(name), since)
            if line.get("event") == "database_url_read" and f"//{user}:" in line.get("url", "")
        })  # fmt: skip

    def haproxy(self, command: str) -> str:
        """One command on HAProxy's runtime API."""
        with socket.socket(socket.AF_UNIX) as client:
            client.settimeout(5)
            client.connect(str(self.admin_socket))
            client.sendall(command.encode() + b"\n")
            return client.makefile().read()

    def server_states(self) -> dict[str, str]:
        """Each VM's status in HAProxy: UP, DOWN, MAINT, DRAIN…"""
        lines = self.haproxy("show stat").lstrip("# ").splitlines()
        header = lines[0].split(",")
        rows = [dict(zip(header, line.split(","), strict=False)) for line in lines[1:] if line]
        return {
            row["svname"]: row["status"]
            for row in rows
            if row["pxname"] == "hello_app" and row["svname"] in VM_NAMES
        }

    def all_up(self) -> bool:
        return set(self.server_states().values()) == {"UP"}

    def describe(self) -> str:
        """Where to look, printed by `make lab`."""
        ansible = shlex.join(self.playbook_command("site.yml", "-e", "hello_app_version=1.0.1"))
        return "\n".join([
            f"The lab is up: http://127.0.0.1:{self.port}/ (HAProxy, then {', '.join(VM_NAMES)})",
            "  its state:        .venv/bin/python -m lab status",
            f"  a VM:             docker exec -it {self.vm('vm1')} journalctl -t hello-app -f",
            f"  the primary:      docker exec -it {self.database.primary} psql -U postgres hello",
            f"  deploy to it:     . .venv/bin/activate && cd ansible && {ansible}",
            "  fault drills:     make drills;  remove it all: make lab-down",
        ])  # fmt: skip

    def current_release(self, name: str) -> str:
        return Path(self.exec(name, "readlink", "/opt/hello-app/current").stdout.strip()).name

    def memory_mib(self) -> float:
        """The memory the lab's containers use together, as `docker stats` reports it."""
        units = {"B": 1 / 2**20, "KiB": 1 / 1024, "MiB": 1, "GiB": 1024}
        stats = docker("stats", "--no-stream", "--format", "{{.Name}} {{.MemUsage}}").stdout
        total = 0.0
        for line in stats.splitlines():
            name, usage = line.split(" ", 1)
            if name.startswith(self.prefix + "-"):
                amount = usage.split("/")[0].strip()
                unit = amount.lstrip("0123456789.")
                total += float(amount.removesuffix(unit)) * units[unit]
        return total

    def status(self) -> str:
        states = self.server_states()
        lines = [
            f"HAProxy on 127.0.0.1:{self.port}: "
            + ", ".join(f"{name} {state}" for name, state in sorted(states.items()))
        ]
        lines.append(
            f"database: primary {self.database.primary}, standby {self.database.standby}"
            f" ({'synchronous' if self.database.is_synchronous() else 'NOT synchronous'})"
        )
        return "\n".join(lines)  # fmt: skip

    def down(self) -> None:
        """Remove every container and network the lab made, and its state."""
        ours = docker("ps", "-aq", "--filter", f"label=hello-lab={self.prefix}").stdout.split()
        if ours:
            docker("rm", "-f", *ours)
        self.database.down()
        docker("network", "rm", self.network, check=False)
        run("rm", "-rf", self.state_dir)
