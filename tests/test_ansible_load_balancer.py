"""site.yml behind a load balancer: the hooks of ansible/roles/hello_app_lb, run by the
README's commands against two VMs (systemd containers reached over SSH on 127.0.0.1).

- HAProxy: the test runs it on 127.0.0.1 in front of both VMs, with health checks, and sends
  requests through it during the deploy.
- An ALB target group: in moto's AWS simulator, its targets being the VMs' instance IDs.

The evidence of the order: while the play runs, the test samples every 50 ms which hosts the
load balancer has taken out. Each VM's journal says, from the app's own lifecycle events, when
its old release began to stop and when its new one was ready. A host must be seen out before
its first `stopping`, stay out, and still be seen out after its last `ready`; two hosts must
never be out at once.
"""

import contextlib
import os
import shlex
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import boto3
import pytest
from support import (
    PUBLISHED_PORT_PAUSE,
    REPO_ROOT,
    LoadLoop,
    free_port,
    http_request,
    require_command,
    run,
    wait_until,
)
from test_ansible_fleet import site_yml
from test_ansible_ssh import MAKE_SECRETS

from lab.topology import restart_window

VENV_BIN = Path(sys.executable).parent
OLD_RELEASE, NEW_RELEASE = "1.0.0", "2.0.0"
REGION = "us-east-1"
# A deploy of two VMs, one at a time, on a loaded machine: mostly the release venvs' pip.
PLAY_TIMEOUT = 900


def readme_command(playbook: str, lb_type: str, inventory: Path) -> str:
    """README section 4's command that runs `playbook` (site.yml or rollback.yml) behind this
    load balancer, with the test's inventory."""
    readme = (REPO_ROOT / "README.md").read_text()
    [command] = [
        line.strip()
        for line in readme.splitlines()
        if line.strip().startswith("ansible-playbook ")
        and f" {playbook} " in line
        and line.endswith(f"-e hello_app_lb_type={lb_type}")
    ]
    assert " -i inventory/production.ini " in command
    return command.replace("inventory/production.ini", shlex.quote(str(inventory)))


class Fleet:
    """Two VMs, vm1 and vm2, an inventory of them, and a HOME with README step 3's vault files
    (a SQLite URL, as in tests/test_ansible_ssh.py). The load balancers' tests share one."""

    def __init__(self, ssh_vms, tmp_path: Path, env: dict[str, str]):
        self.home = tmp_path / "home"
        self.home.mkdir()
        self.inventory = tmp_path / "hosts.ini"
        self.deploys = 0
        self.env = {
            **env,
            "HOME": str(self.home),
            "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}",
            "ANSIBLE_NOCOLOR": "1",
        }
        run("bash", "-euo", "pipefail", "-c", MAKE_SECRETS, env=self.env)
        self.vms = {alias: ssh_vms(alias) for alias in ("vm1", "vm2")}

    def write_inventory(self, host_vars: dict[str, str], group_vars: dict[str, str]) -> None:
        lines = [
            vm["inventory_line"].rstrip("\n") + f" {host_vars.get(alias, '')}\n"
            for alias, vm in self.vms.items()
        ]
        settings = "".join(f"{name}={value}\n" for name, value in group_vars.items())
        self.inventory.write_text(
            "[hello_app]\n" + "".join(lines) + "[hello_app:vars]\n" + settings
        )

    def deploy(self, command: str, load_port: int | None = None) -> LoadLoop | None:
        """Run a deploy command from ansible/, its output in a log file of its own. With
        load_port, requests go through that port from before the play starts until it ends."""
        self.deploys += 1
        log_path = self.inventory.parent / f"deploy-{self.deploys}.log"
        load = None
        if load_port:
            load = LoadLoop(load_port, threads=4, pause=PUBLISHED_PORT_PAUSE, seconds=PLAY_TIMEOUT)
        with log_path.open("w") as log, load or contextlib.nullcontext():
            play = subprocess.run(["bash", "-c", command], cwd=REPO_ROOT / "ansible", env=self.env,
                                  stdout=log, stderr=subprocess.STDOUT, timeout=PLAY_TIMEOUT,
                                  check=False)  # fmt: skip
        assert play.returncode == 0, f"{command}\n{log_path.read_text()[-6000:]}"
        return load

    def deploy_old_release(self) -> None:
        """README step 4's command, both hosts at once and no load balancer: the starting point."""
        self.deploy(
            f"ansible-playbook -i {shlex.quote(str(self.inventory))} site.yml"
            ' -e @"$HOME/hello-app-secrets.yml" --vault-password-file ~/.hello-app-vault-pass'
            f" -e hello_app_version={OLD_RELEASE} -e hello_app_serial=2"
        )

    def current_release(self, alias: str) -> str:
        """The release the VM runs, or "" before its first deploy."""
        link = run(*self.vms[alias]["ssh"], "readlink /opt/hello-app/current", check=False)
        return Path(link.stdout.strip()).name

    def restart_window(self, alias: str, since: float) -> tuple[float, float]:
        """When the VM's old release began to stop, and when its new one was last ready."""
        return restart_window(self.vms[alias]["name"], since)


@pytest.fixture(scope="module")
def shared_fleet(module_ssh_vms, tmp_path_factory) -> Fleet:
    # Dummy AWS credentials for the ALB hooks; the endpoint comes from the inventory
    # (hello_app_lb_alb_endpoint_url), so nothing reaches AWS.
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env |= {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
    return Fleet(module_ssh_vms, tmp_path_factory.mktemp("fleet"), env)


@pytest.fixture
def fleet(shared_fleet) -> Fleet:
    """The shared fleet on OLD_RELEASE, the rollouts' starting point: deployed by the first
    test, and again only if a test left the VMs on another release."""
    shared_fleet.write_inventory({}, {})
    if any(shared_fleet.current_release(alias) != OLD_RELEASE for alias in shared_fleet.vms):
        shared_fleet.deploy_old_release()
    return shared_fleet


class OutOfRotation:
    """Samples, every 50 ms until the `with` block ends (or 15 min), which hosts the load
    balancer has taken out: `hosts_out()` returns their aliases."""

    def __init__(self, hosts_out: Callable[[], set[str]]):
        self.hosts_out, self.samples, self.errors = hosts_out, [], []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run)

    def _run(self):
        deadline = time.monotonic() + 900
        while not self._stop.is_set() and time.monotonic() < deadline:
            try:
                self.samples.append((time.time(), frozenset(self.hosts_out())))
            except Exception as error:  # reported by the test, not lost in the thread
                self.errors.append(repr(error))
            time.sleep(0.05)

    def __enter__(self):
        self.samples.append((time.time(), frozenset(self.hosts_out())))
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def assert_out_around_restart(self, alias: str, stopping: float, ready: float) -> None:
        seen_out = [at for at, out in self.samples if alias in out]
        assert seen_out, f"{alias} was never taken out of the load balancer"
        first, last = min(seen_out), max(seen_out)
        assert first < stopping, f"{alias}'s old release stopped before it was taken out"
        assert last > ready, f"{alias} was put back before its new release was ready"
        back_in_between = [at for at, out in self.samples if first < at < last and alias not in out]
        assert not back_in_between, f"{alias} was back in the load balancer during its restart"

    def assert_one_host_out_at_a_time(self) -> None:
        assert not self.errors, self.errors[:3]
        assert self.samples[0][1] == frozenset(), "a host was out before the deploy"
        assert self.samples[-1][1] == frozenset(), "a host was left out after the deploy"
        assert max(len(out) for _, out in self.samples) == 1


def assert_each_host_left_around_its_restart(
    fleet: Fleet, rotation: OutOfRotation, since: float, release: str = NEW_RELEASE
):
    rotation.assert_one_host_out_at_a_time()
    windows = {alias: fleet.restart_window(alias, since) for alias in fleet.vms}
    for alias, (stopping, ready) in windows.items():
        rotation.assert_out_around_restart(alias, stopping, ready)
        assert fleet.current_release(alias) == release
    (_, first_ready), (second_stop, _) = sorted(windows.values())
    assert first_ready < second_stop, "the hosts restarted at the same time"


# HAProxy ----------------------------------------------------------------------------------

HAPROXY_CONFIG = """\
global
    stats socket {socket} mode 600 level admin
{drop_root}
defaults
    mode http
    timeout connect 2s
    timeout client 10s
    timeout server 10s
    # A check may wait on a busy server: only an app that stops answering counts as DOWN.
    timeout check 3s

frontend hello
    bind 127.0.0.1:{port}
    default_backend hello_app

backend hello_app
    option httpchk GET /healthz
{servers}
"""


def haproxy_command(admin_socket: Path, command: str) -> str:
    with socket.socket(socket.AF_UNIX) as client:
        client.connect(str(admin_socket))
        client.sendall(command.encode() + b"\n")
        return client.makefile().read()


def haproxy_servers_out(admin_socket: Path) -> set[str]:
    """Servers of the backend hello_app in drain or maintenance: a non-zero srv_admin_state."""
    lines = haproxy_command(admin_socket, "show servers state hello_app").splitlines()
    rows = [line.split() for line in lines[2:] if line.strip()]  # after the version and header
    return {row[3] for row in rows if row[6] != "0"}


def haproxy_status(admin_socket: Path) -> dict[str, str]:
    lines = haproxy_command(admin_socket, "show stat").lstrip("# ").splitlines()
    header = lines[0].split(",")
    rows = [dict(zip(header, line.split(","), strict=False)) for line in lines[1:] if line]
    return {row["svname"]: row["status"] for row in rows if row["pxname"] == "hello_app"}


@pytest.fixture
def haproxy(tmp_path):
    """Factory: HAProxy on a free port of 127.0.0.1 in front of the given ports, its admin
    socket in tmp_path. It needs no root; when the test runs as root, it drops to nobody once it
    has bound its sockets, as its packaged service does."""
    binary = require_command("haproxy", "haproxy")
    processes = []

    def start(backends: dict[str, int]) -> dict:
        admin_socket, port = tmp_path / "haproxy-admin.sock", free_port()
        config = tmp_path / "haproxy.cfg"
        config.write_text(
            HAPROXY_CONFIG.format(
                socket=admin_socket,
                drop_root="    user nobody\n    group nogroup\n" if os.geteuid() == 0 else "",
                port=port,
                servers="".join(
                    f"    server {name} 127.0.0.1:{backend_port} check inter 500ms\n"
                    for name, backend_port in backends.items()
                ),
            )
        )
        run(binary, "-c", "-f", str(config))
        log = (tmp_path / "haproxy.log").open("w")
        processes.append(subprocess.Popen([binary, "-db", "-f", str(config)], stdout=log,
                                          stderr=subprocess.STDOUT))  # fmt: skip
        wait_until(
            lambda: set(haproxy_status(admin_socket).get(name) for name in backends) == {"UP"},
            timeout=30,
            what="HAProxy to see every server UP",
        )
        return {"port": port, "socket": admin_socket}

    yield start
    for process in processes:
        process.terminate()
        process.wait(timeout=10)


def test_haproxy_drains_each_vm_before_its_restart_and_enables_it_once_ready(fleet, haproxy):
    proxy = haproxy({alias: vm["http"] for alias, vm in fleet.vms.items()})
    fleet.write_inventory({}, {"hello_app_lb_haproxy_socket": str(proxy["socket"])})

    since = time.time()
    with OutOfRotation(lambda: haproxy_servers_out(proxy["socket"])) as rotation:
        command = (
            readme_command("site.yml", "haproxy", fleet.inventory)
            + f" -e hello_app_version={NEW_RELEASE}"
        )
        load = fleet.deploy(command, load_port=proxy["port"])

    failed, answered = load.failed, load.answered
    assert answered > 100 and failed == [], f"{len(failed)} of {answered} failed: {failed[:5]}"
    assert_each_host_left_around_its_restart(fleet, rotation, since)
    assert haproxy_status(proxy["socket"]) == {"vm1": "UP", "vm2": "UP", "BACKEND": "UP"}
    page = http_request(proxy["port"], "/")
    assert (page.status, page.text) == (200, "Hello World")

    # README's rollback behind the load balancer: the same drain around each host's restart.
    since = time.time()
    with OutOfRotation(lambda: haproxy_servers_out(proxy["socket"])) as rotation:
        load = fleet.deploy(
            readme_command("rollback.yml", "haproxy", fleet.inventory), load_port=proxy["port"]
        )
    assert load.answered > 100 and load.failed == [], load.failed[:5]
    assert_each_host_left_around_its_restart(fleet, rotation, since, release=OLD_RELEASE)
    assert haproxy_status(proxy["socket"]) == {"vm1": "UP", "vm2": "UP", "BACKEND": "UP"}


# ALB target group in moto ----------------------------------------------------------------


@pytest.fixture
def moto_endpoint(tmp_path):
    """moto's server on a free port of 127.0.0.1: the URL that AWS clients are pointed at."""
    port = free_port()
    with (tmp_path / "moto.log").open("w") as log:
        server = subprocess.Popen([VENV_BIN / "moto_server", "-H", "127.0.0.1", "-p", str(port)],
                                  stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        wait_until(lambda: socket.create_connection(("127.0.0.1", port), timeout=1).close() is None,
                   timeout=30, what="moto's server")  # fmt: skip
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(timeout=10)


def aws_client(service: str, endpoint: str):
    return boto3.client(
        service,
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",  # noqa: S106 - moto accepts any key
    )


def target_group_with_two_instances(endpoint: str) -> tuple[str, list[str]]:
    """A VPC, a subnet, two instances, and a target group of both with a 1 s deregistration
    delay. Returns the group's ARN and the instance IDs."""
    ec2, elbv2 = aws_client("ec2", endpoint), aws_client("elbv2", endpoint)
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.0.1.0/24")["Subnet"]["SubnetId"]
    image = ec2.describe_images()["Images"][0]["ImageId"]  # one of moto's stock AMIs
    instances = ec2.run_instances(ImageId=image, MinCount=2, MaxCount=2, SubnetId=subnet,
                                  InstanceType="t3.micro")["Instances"]  # fmt: skip
    group = elbv2.create_target_group(Name="hello-app", Protocol="HTTP", Port=8080, VpcId=vpc,
                                      TargetType="instance")["TargetGroups"][0]  # fmt: skip
    elbv2.modify_target_group_attributes(
        TargetGroupArn=group["TargetGroupArn"],
        Attributes=[{"Key": "deregistration_delay.timeout_seconds", "Value": "1"}],
    )
    ids = [instance["InstanceId"] for instance in instances]
    elbv2.register_targets(TargetGroupArn=group["TargetGroupArn"], Targets=[{"Id": i} for i in ids])
    return group["TargetGroupArn"], ids


def healthy_targets(endpoint: str, group_arn: str) -> set[str]:
    described = aws_client("elbv2", endpoint).describe_target_health(TargetGroupArn=group_arn)
    return {
        target["Target"]["Id"]
        for target in described["TargetHealthDescriptions"]
        if target["TargetHealth"]["State"] == "healthy"
    }


@pytest.mark.aws
def test_alb_deregisters_each_vm_before_its_restart_and_registers_it_once_ready(
    fleet, moto_endpoint
):
    group_arn, instance_ids = target_group_with_two_instances(moto_endpoint)
    target_of = dict(zip(fleet.vms, instance_ids, strict=True))
    fleet.write_inventory(
        {alias: f"instance_id={target}" for alias, target in target_of.items()},
        {
            "hello_app_lb_alb_target_group_arn": group_arn,
            "hello_app_lb_alb_region": REGION,
            "hello_app_lb_alb_endpoint_url": moto_endpoint,
            "hello_app_lb_alb_deregistration_timeout": "10",
            "hello_app_lb_alb_healthy_timeout": "10",
        },
    )

    def hosts_out() -> set[str]:
        registered = healthy_targets(moto_endpoint, group_arn)
        return {alias for alias, target in target_of.items() if target not in registered}

    since = time.time()
    with OutOfRotation(hosts_out) as rotation:
        fleet.deploy(
            readme_command("site.yml", "alb", fleet.inventory)
            + f" -e hello_app_version={NEW_RELEASE}"
        )

    assert_each_host_left_around_its_restart(fleet, rotation, since)
    assert healthy_targets(moto_endpoint, group_arn) == set(instance_ids)


# The guard: settings checked before any host is touched -----------------------------------


def test_an_unknown_load_balancer_stops_the_play_before_any_host_is_touched(tmp_path):
    output = site_yml(tmp_path, ["web1", "web2"], "-e", "hello_app_sqlite_per_host=true",
                      "-e", "hello_app_lb_type=nginx")  # fmt: skip
    assert "hello_app_lb_type is 'nginx', which no hook knows" in output
    assert "UNREACHABLE" not in output, "a host was connected to before the check"


def test_an_alb_without_a_target_group_stops_the_play_before_any_host_is_touched(tmp_path):
    output = site_yml(tmp_path, ["web1", "web2"], "-e", "hello_app_sqlite_per_host=true",
                      "-e", "hello_app_lb_type=alb")  # fmt: skip
    assert "hello_app_lb_type=alb needs hello_app_lb_alb_target_group_arn" in output
    assert "UNREACHABLE" not in output, "a host was connected to before the check"
