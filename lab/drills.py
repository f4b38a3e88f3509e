"""The failure drills: each states its hypothesis, injects one fault into the lab while Locust's
constant load flows through HAProxy, measures, and checks the hypothesis.

`make drills` runs them all against the lab (bringing it up first if needed), prints the
table, and writes docs/drills.md with one timeline per drill in docs/drills/.
"""

import json
import os
import shutil
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import yaml

from lab.docker import REPO_ROOT, LabError, docker, wait_until
from lab.load import Load
from lab.report import (
    DrillResult,
    machine_description,
    print_table,
    timeline_png,
    write_markdown,
)
from lab.topology import (
    HEALTH_CHECK,
    HEALTH_CHECK_SCALE,
    STANDBY_DETECTION_S,
    VM_NAMES,
    WORKERS_PER_VM,
    Lab,
    restart_window,
)

# Seconds of steady load before each fault and after it: the baseline the timeline shows.
SETTLE = 5
# Requests a second through HAProxy, open loop (lab/locustfile.py), so a stall shows as
# failures. The goal is 100; at 100 today the bulkhead turns writes away ("database busy")
# during deploys and a slow database, as each request opens its own connection: measured,
# rolling-deploy failed 219 of 12,593 and database-slow 522 of 4,593. Pooled connections
# are the next step (issue 23).
LOAD_RATE = 40
# A dead VM's requests fail until HAProxy marks it DOWN: `fall` failed checks, each waiting
# out its timeout, `inter` apart; the first may start up to one `inter` after the fault.
DETECTION_WINDOW = (
    HEALTH_CHECK["unhealthy"] * (HEALTH_CHECK["interval_s"] + HEALTH_CHECK["timeout_s"])
    + HEALTH_CHECK["interval_s"]
) / HEALTH_CHECK_SCALE
# The database drills' recovery objectives (README step 6).
FAILOVER_VISITS_BACK_S = 15
BROWNOUT_S = 60
BROWNOUT_VISITS_BACK_S = 10
BROWNOUT_HEALTHZ_P99_MS = 1000
# RDS keeps the primary writable when it loses the standby: /visits is back once the lab's
# watcher has stopped waiting for it (lab/standby_watch.sh), plus this.
STANDBY_LOSS_S = 30
STANDBY_LOSS_VISITS_BACK_S = 5
STANDBY_SYNC_AGAIN_S = 20
# A database slower than normal, but under the app's timeout (DB_TIMEOUT_SECONDS, 3 s).
SLOW_WRITE_S = 0.5
SLOW_FOR_S = 30
# Measured: 2 %, 4.7 % and, with CI's other tests before it, 11 % of the database requests
# turned away as "database busy".
SLOW_BUSY_SHARE = 0.25
# The role's units allow 5 starts in 60 s (StartLimitBurst); the 6th kill should end the loop.
CRASH_LOOP_MAX_KILLS = 10


# The most requests one worker serves at once: the role's hello_app_waitress_threads.
ROLE_DEFAULTS = REPO_ROOT / "ansible/roles/hello_app/defaults/main.yml"
THREADS_PER_WORKER = int(yaml.safe_load(ROLE_DEFAULTS.read_text())["hello_app_waitress_threads"])
# Locust's send times and the fault's marks come from one clock, a little apart.
CLOCK_SLACK_S = 0.2


def describe_failures(failures: list, what: str) -> str:
    """A reason for a drill's verdict that shows the first failures, not just their count."""
    first = "; ".join(f"{r.method} {r.path} {r.status} {r.error}"[:120] for r in failures[:3])
    return f"{len(failures)} requests {what}" + (f" (first: {first})" if first else "")


class Membership:
    """Samples HAProxy's view of the VMs every 100 ms while the `with` block runs (15 min at
    most): which VMs were ever not UP."""

    def __init__(self, lab: Lab):
        self.lab, self.samples, self.errors = lab, [], []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        deadline = time.monotonic() + 900
        while not self._stop.is_set() and time.monotonic() < deadline:
            try:
                self.samples.append((time.time(), self.lab.server_states()))
            except (OSError, LabError, IndexError) as error:
                self.errors.append(repr(error))
            time.sleep(0.1)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def left(self) -> set[str]:
        """The VMs seen out of rotation: DOWN, drained or in maintenance. "UP 1/3" (one failed
        check of the three that take a VM out) is still in."""
        return {
            name
            for _, states in self.samples
            for name, state in states.items()
            if not state.startswith("UP")
        }

    def first_seen(self, name: str, status: str, since: float) -> float | None:
        return next(
            (at for at, states in self.samples if at >= since and states.get(name) == status),
            None,
        )


@dataclass
class Drill:
    name: str
    hypothesis: str
    fault: str
    inject: Callable[["Run"], None]
    seconds: int  # the load's hard bound


class Run:
    """One drill's run: the lab, its load, the fault's window and the checks' outcomes."""

    def __init__(self, lab: Lab, drill: Drill, out_dir: Path):
        self.lab, self.drill, self.out_dir = lab, drill, out_dir
        self.fault_start = self.fault_end = 0.0
        self.reasons: list[str] = []
        self.rpo = "n/a"
        self.load: Load | None = None
        self.membership: Membership | None = None

    def check(self, condition: bool, reason: str) -> None:
        if not condition:
            self.reasons.append(reason)

    def fault(self, inject: Callable[[], None]) -> None:
        """Inject the fault, marking its start and end for the timeline."""
        self.fault_start = time.time()
        inject()
        self.fault_end = time.time()

    def failed(self, path: str | None = None) -> int:
        return len(self.load.failures(path=path))

    # One definition for every drill (README step 6, docs/architecture.md): None when no
    # request failed.
    def rto(self) -> float | None:
        """From the fault's start to the last failed request's sending."""
        failed = self.load.failures()
        return failed[-1].at - self.fault_start if failed else None

    def full_service(self) -> float | None:
        """From the fault's start until the last failed request had its answer (or gave up):
        after that, every request succeeded."""
        failed = self.load.failures()
        if not failed:
            return None
        return max(r.at + r.latency_ms / 1000 for r in failed) - self.fault_start


def rolling_deploy(run_: Run) -> None:
    lab = run_.lab
    release = f"drill-{int(time.time())}"
    run_.fault(lambda: lab.deploy(release, log=run_.out_dir / "site.yml.log"))
    for name in VM_NAMES:
        current = lab.current_release(name)
        run_.check(current == release, f"{name} runs {current}, not {release}")
    run_.check(run_.failed() == 0, describe_failures(run_.load.failures(), "failed"))
    check_each_vm_was_out_while_it_restarted(run_)


def check_each_vm_was_out_while_it_restarted(run_: Run) -> None:
    """From HAProxy's samples and each VM's journal: a VM left before its app began to stop,
    came back only after its new release was ready, and no two VMs were out at once."""
    samples = run_.membership.samples
    out_at = {name: [at for at, states in samples if _out(states.get(name))] for name in VM_NAMES}
    for name in VM_NAMES:
        stopping, ready = restart_window(run_.lab.vm(name), run_.fault_start)
        if not out_at[name]:
            run_.reasons.append(f"{name} never left HAProxy")
            continue
        first, last = min(out_at[name]), max(out_at[name])
        run_.check(first < stopping, f"{name}'s app began to stop before it left HAProxy")
        run_.check(last > ready, f"{name} came back before its new release was ready")
        back = [at for at, states in samples if first < at < last and not _out(states.get(name))]
        run_.check(not back, f"{name} was back in HAProxy in the middle of its restart")
    most_out = max(sum(_out(state) for state in states.values()) for _, states in samples)
    run_.check(most_out <= 1, f"{most_out} VMs were out of HAProxy at once")


def _out(state: str | None) -> bool:
    """Out of rotation by the hooks: drained or in maintenance (a DOWN one is not drained)."""
    return state is not None and state.startswith(("MAINT", "DRAIN"))


def write_bad_release(directory: Path) -> Path:
    """The app's sources, except that /readyz never answers: the release starts and serves /,
    but cannot reach its database, so it must not go live."""
    shutil.rmtree(directory, ignore_errors=True)
    shutil.copytree(
        REPO_ROOT / "app", directory / "app", ignore=shutil.ignore_patterns("__pycache__")
    )
    for name in ("pyproject.toml", "requirements.txt"):
        shutil.copy2(REPO_ROOT / name, directory / name)
    web = directory / "app" / "web.py"
    source = web.read_text()
    readyz = "    def readyz():\n"
    if readyz not in source:
        raise LabError("app/web.py has no readyz() to break")
    web.write_text(source.replace(readyz, readyz + "        time.sleep(3600)\n", 1))
    return directory


def bad_release(run_: Run) -> None:
    lab = run_.lab
    before = {name: lab.current_release(name) for name in VM_NAMES}
    source = write_bad_release(run_.out_dir / "bad-release")
    release = f"drill-bad-{int(time.time())}"
    result = None

    def deploy():
        nonlocal result
        result = lab.deploy(release, "-e", f"hello_app_source_dir={source}",
                            "-e", "hello_app_healthcheck_timeout=6", check=False,
                            log=run_.out_dir / "site.yml.log")  # fmt: skip

    run_.fault(deploy)
    run_.check(result.returncode != 0, "site.yml accepted a release whose /readyz never answers")
    run_.check("ROLLED BACK" in result.stdout, "the first VM was not rolled back")
    releases = {n: lab.exec(n, "ls", "/opt/hello-app/releases").stdout.split() for n in VM_NAMES}
    run_.check(release in releases["vm1"], "the rollout did not try the first VM")
    for name in VM_NAMES[1:]:
        run_.check(release not in releases[name], f"the rollout went on to {name}")
    for name in VM_NAMES:
        current = lab.current_release(name)
        run_.check(current == before[name], f"{name} runs {current}, not {before[name]}")
    run_.check(run_.failed("/") == 0, f"{run_.failed('/')} GET / failed")
    # A host that failed its deploy stays out of the load balancer (site.yml's post_tasks do
    # not run): the operator puts it back once it answers on its old release.
    lab.haproxy("set server hello_app/vm1 state ready")


def worker_crash(run_: Run) -> None:
    lab = run_.lab
    worker = "hello-app@1.service"
    pid, restarts = vm1_unit_pid_and_restarts(lab, worker)
    run_.fault(lambda: lab.exec("vm1", "systemctl", "kill", "--signal=KILL", worker))
    time.sleep(SETTLE)
    # systemd's Restart=on-failure, not the socket's next connection, started it again: a
    # new process, and one more restart counted.
    new_pid, new_restarts = vm1_unit_pid_and_restarts(lab, worker)
    run_.check(vm1_unit_state(lab, worker) == "active", "worker 1 is not active again")
    run_.check(new_pid not in (0, pid), f"worker 1's PID is {new_pid}, was {pid}")
    run_.check(new_restarts == restarts + 1, f"NRestarts went {restarts} to {new_restarts}")
    check_only_killed_requests_failed(run_, kills=1)


def vm1_unit_pid_and_restarts(lab: Lab, unit: str) -> tuple[int, int]:
    shown = lab.exec("vm1", "systemctl", "show", "-p", "MainPID", "-p", "NRestarts", unit)
    values = dict(line.split("=", 1) for line in shown.stdout.split())
    return int(values["MainPID"]), int(values["NRestarts"])


def worker_crash_loop(run_: Run) -> None:
    lab = run_.lab
    kills = 0

    def crash_loop():
        # Kill worker 1 each time systemd has started it again, until systemd gives up on it:
        # its start limit, which also closes the socket whose Service= it is.
        nonlocal kills
        while kills < CRASH_LOOP_MAX_KILLS and vm1_unit_state(lab, "hello-app.socket") != "failed":
            lab.exec("vm1", "systemctl", "kill", "--signal=KILL", "hello-app@1.service",
                     check=False)  # fmt: skip
            kills += 1
            time.sleep(1)

    run_.fault(crash_loop)
    socket = vm1_unit_state(lab, "hello-app.socket")
    run_.check(socket == "failed", f"the socket is {socket} after {kills} kills")
    time.sleep(SETTLE)  # worker 2 alone, on the port that it still holds
    # What an operator does: site.yml repairs the host, out of HAProxy meanwhile.
    lab.deploy(lab.current_release("vm1"), limit=["vm1"], log=run_.out_dir / "site.yml.log")
    units = ["hello-app.socket"] + [f"hello-app@{n}.service" for n in range(1, WORKERS_PER_VM + 1)]
    for unit in units:
        state = vm1_unit_state(lab, unit)
        run_.check(state == "active", f"{unit} is {state} after site.yml")
    check_only_killed_requests_failed(run_, kills)


def vm1_unit_state(lab: Lab, unit: str) -> str:
    """`systemctl is-active` of one of vm1's units: active, failed, activating…"""
    return lab.exec("vm1", "systemctl", "is-active", unit, check=False).stdout.strip()


def check_only_killed_requests_failed(run_: Run, kills: int) -> None:
    """kill -9 loses what the worker was serving at that instant, as it would behind an ALB,
    which does not retry: at most one request per thread per kill, each sent before the last
    kill. Connections not yet accepted wait in the shared socket for the other workers."""
    failures = run_.load.failures()
    after = [r for r in failures if r.at > run_.fault_end + CLOCK_SLACK_S]
    run_.check(not after, describe_failures(after, "sent after the last kill"))
    most = kills * THREADS_PER_WORKER
    run_.check(len(failures) <= most, describe_failures(failures, f"failed, more than {most}"))


def vm_loss(run_: Run) -> None:
    lab = run_.lab
    run_.fault(lambda: docker("kill", lab.vm("vm2")))
    time.sleep(DETECTION_WINDOW + SETTLE)
    down_at = run_.membership.first_seen("vm2", "DOWN", run_.fault_start)
    run_.check(down_at is not None, "HAProxy never marked vm2 DOWN")
    # What the Auto Scaling Group does: a new instance, provisioned by site.yml.
    lab.start_vm("vm2")
    lab.write_inventory()
    lab.write_database_url("vm2", lab.database.app_url())
    lab.deploy(lab.current_release("vm1"), limit=["vm2"], log=run_.out_dir / "site.yml.log")
    try:
        wait_until(lambda: lab.server_states().get("vm2") == "UP", timeout=30, what="vm2 UP")
    except LabError:
        run_.reasons.append(f"vm2 did not rejoin HAProxy: {lab.server_states()}")
    time.sleep(SETTLE)
    # Requests fail only until HAProxy stops sending to the dead VM; none fail after, the
    # rebuilt VM's return included.
    rto = run_.rto() or 0.0
    run_.check(
        rto <= DETECTION_WINDOW,
        f"requests failed {rto:.1f} s after the loss, beyond the health check's"
        f" {DETECTION_WINDOW:.1f} s",
    )


def database_failover(run_: Run) -> None:
    lab = run_.lab
    timings = []
    run_.fault(lambda: timings.append(lab.database.failover()))
    time.sleep(FAILOVER_VISITS_BACK_S + 2)
    promoted = timings[0].promoted if timings else run_.fault_end
    for path in ("/", "/healthz"):
        run_.check(run_.failed(path) == 0, f"{run_.failed(path)} {path} failed")
    late = run_.load.failures("/visits", since=promoted + FAILOVER_VISITS_BACK_S)
    after = f"still failed {FAILOVER_VISITS_BACK_S} s after promotion"
    run_.check(not late, describe_failures(late, after))


def database_brownout(run_: Run) -> None:
    lab = run_.lab

    def brownout():
        lab.database.pause_primary()
        time.sleep(BROWNOUT_S)
        lab.database.unpause_primary()

    run_.fault(brownout)
    time.sleep(BROWNOUT_VISITS_BACK_S + 2)
    p99 = run_.load.p99_ms("/healthz", since=run_.fault_start, until=run_.fault_end)
    run_.check(p99 < BROWNOUT_HEALTHZ_P99_MS, f"/healthz p99 was {p99:.0f} ms during the brownout")
    run_.check(run_.failed("/") == 0, f"{run_.failed('/')} GET / failed")
    late = run_.load.failures("/visits", since=run_.fault_end + BROWNOUT_VISITS_BACK_S)
    after = f"still failed {BROWNOUT_VISITS_BACK_S} s after the brownout"
    run_.check(not late, describe_failures(late, after))


def standby_loss(run_: Run) -> None:
    lab = run_.lab
    database = lab.database

    def lose_standby():
        database.pause_standby()
        time.sleep(STANDBY_LOSS_S)
        database.unpause_standby()

    run_.fault(lose_standby)
    try:
        wait_until(database.is_synchronous, STANDBY_SYNC_AGAIN_S, "synchronous commits again")
    except LabError as error:
        run_.reasons.append(f"after the standby returned: {error}")
    run_.check(run_.failed("/") == 0, f"{run_.failed('/')} GET / failed")
    back_by = run_.fault_start + database.standby_detection_s + STANDBY_LOSS_VISITS_BACK_S
    late = run_.load.failures("/visits", since=back_by)
    after = f"failed {back_by - run_.fault_start:.0f} s after the standby's loss or later"
    run_.check(not late, describe_failures(late, after))


def database_slow(run_: Run) -> None:
    lab = run_.lab

    def slow_down():
        lab.database.slow_writes(SLOW_WRITE_S)
        time.sleep(SLOW_FOR_S)
        lab.database.normal_writes()

    run_.fault(slow_down)
    time.sleep(SETTLE)
    for path in ("/", "/healthz"):
        run_.check(run_.failed(path) == 0, f"{run_.failed(path)} {path} failed")
    # Writes that queue up on a worker past its DB_MAX_CONCURRENCY slots are turned away at
    # once ("database busy"): the bulkhead at work, and nothing else may fail.
    failed = run_.load.failures()
    other = [request for request in failed if "database busy" not in request.error]
    run_.check(not other, describe_failures(other, "failed, not as 'database busy'"))
    database_requests = run_.load.count("/visits", since=run_.fault_start, until=run_.fault_end)
    run_.check(
        len(failed) <= SLOW_BUSY_SHARE * database_requests,
        f"{len(failed)} of {database_requests} database requests turned away, more than"
        f" {SLOW_BUSY_SHARE:.0%}",
    )
    slowed = [
        request.latency_ms
        for request in run_.load.select("POST /visits", run_.fault_start + 1, run_.fault_end - 1)
        if request.ok
    ]
    median = statistics.median(slowed) if slowed else 0.0
    run_.check(
        median >= SLOW_WRITE_S * 1000,
        f"POST /visits took {median:.0f} ms (median) while slowed: the fault did not take",
    )


def credentials_rotation(run_: Run) -> None:
    lab = run_.lab

    def rotate():
        since = time.time()
        url = lab.database.rotate_app_credentials()
        for name in VM_NAMES:
            lab.write_database_url(name, url)
        # The old login is retired once each VM's app has used the new one. A worker that had
        # no database call meanwhile (HAProxy keeps its connections to the other) reads the
        # file on its next call, which looks at it each time; a refused password makes it
        # read the file again and retry.
        user = urlsplit(url).username
        for name in VM_NAMES:
            wait_until(
                lambda name=name: lab.workers_on_url(name, since, user) >= 1,
                timeout=30,
                what=f"the app on {name} to read the new URL",
            )
        lab.database.retire_previous_credentials()

    run_.fault(rotate)
    time.sleep(SETTLE)
    run_.check(run_.failed() == 0, describe_failures(run_.load.failures(), "failed"))


DRILLS = [
    Drill(
        "rolling-deploy",
        "site.yml rolls a new release onto the VMs one at a time, each out of HAProxy while it"
        " restarts: no request fails.",
        "site.yml with a new release, serial 1, HAProxy hooks",
        rolling_deploy,
        seconds=600,
    ),
    Drill(
        "bad-release",
        "A release that cannot get ready stops the rollout at the first VM, which is rolled back"
        " while out of HAProxy: no GET / fails.",
        "site.yml with a release whose /readyz never answers",
        bad_release,
        seconds=300,
    ),
    Drill(
        "worker-crash",
        "A worker killed mid-traffic costs at most the requests it was serving: the others"
        " accept every later connection from the shared socket, and systemd starts a new one.",
        "kill -9 of one worker on vm1",
        worker_crash,
        seconds=60,
    ),
    Drill(
        "worker-crash-loop",
        "A worker that keeps crashing costs at most the requests it was serving at each crash:"
        " when systemd gives up on it and closes the socket, the other worker keeps serving on"
        " the port, and site.yml repairs the host while it is out of HAProxy.",
        "kill -9 of worker 1 on vm1 until systemd gives up on it, then site.yml on vm1",
        worker_crash_loop,
        seconds=300,
    ),
    Drill(
        "vm-loss",
        "A VM that dies costs only the requests sent to it before the health check marks it"
        " DOWN; a rebuilt VM rejoins.",
        "docker kill of vm2, then a new vm2 provisioned by site.yml",
        vm_loss,
        seconds=600,
    ),
    Drill(
        "database-failover",
        "A Multi-AZ failover loses no acknowledged write, never fails / or /healthz, takes no"
        f" VM out, and /visits is back within {FAILOVER_VISITS_BACK_S} s of the promotion.",
        "fence the primary, promote the standby, move the name db",
        database_failover,
        seconds=120,
    ),
    Drill(
        "database-brownout",
        f"A primary that stops answering for {BROWNOUT_S} s keeps /healthz under"
        f" {BROWNOUT_HEALTHZ_P99_MS} ms (p99) and / at 100 %, takes no VM out, and /visits is"
        f" back within {BROWNOUT_VISITS_BACK_S} s.",
        f"docker pause of the primary for {BROWNOUT_S} s",
        database_brownout,
        seconds=150,
    ),
    Drill(
        "standby-loss",
        f"A standby lost for {STANDBY_LOSS_S} s holds writes only until RDS's detection window"
        f" ends: /visits is back within {STANDBY_DETECTION_S:g} + {STANDBY_LOSS_VISITS_BACK_S} s,"
        " no acknowledged write is lost, / never fails, no VM leaves, and commits are"
        " synchronous again once the standby is back.",
        f"docker pause of the standby for {STANDBY_LOSS_S} s",
        standby_loss,
        seconds=120,
    ),
    Drill(
        "database-slow",
        f"A database that takes {SLOW_WRITE_S * 1000:.0f} ms longer on each write, under the"
        " app's timeout, never fails / or /healthz and takes no VM out; the bulkhead may turn"
        f" away at most {SLOW_BUSY_SHARE:.0%} of the database requests ('database busy'),"
        " and nothing else fails.",
        f"a trigger that sleeps {SLOW_WRITE_S} s in each insert, for {SLOW_FOR_S} s",
        database_slow,
        seconds=90,
    ),
    Drill(
        "credentials-rotation",
        "A new database password reaches every VM through its URL file with no failed request"
        " (alternating users).",
        "new password on the other login role, new URL file on each VM, old login retired",
        credentials_rotation,
        seconds=60,
    ),
]
# Drills whose hypothesis includes "no VM leaves the load balancer".
KEEP_EVERY_VM = {
    "worker-crash", "database-failover", "database-brownout", "standby-loss", "database-slow",
    "credentials-rotation",
}  # fmt: skip


def run_drill(lab: Lab, drill: Drill, out_dir: Path, timeline: Path) -> DrillResult:
    """Run one drill; its load's rows and logs go to out_dir, its timeline to `timeline`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    run_ = Run(lab, drill, out_dir)
    # The drill before may have just put a VM back, its checks not settled yet.
    wait_until(lab.all_up, timeout=30, what=f"every VM UP before {drill.name}")
    initial_visits = lab.database.visits()
    load = Load(lab.port, out_dir, seconds=drill.seconds, rate=LOAD_RATE)
    with Membership(lab) as membership, load:
        run_.load, run_.membership = load, membership
        time.sleep(SETTLE)
        try:
            drill.inject(run_)
        except (LabError, OSError) as error:
            run_.reasons.append(f"the drill itself failed: {error}")
        time.sleep(SETTLE)
    # A load that stopped early would make any stall after it look like a success.
    last_sent = load.requests[-1].at if load.requests else 0.0
    run_.check(
        last_sent >= run_.fault_end + SETTLE - 1,
        f"the load stopped {run_.fault_end + SETTLE - last_sent:.1f} s before the drill's end",
    )
    run_.check(
        len(membership.samples) > 10 * len(membership.errors),
        f"HAProxy's state could not be read: {membership.errors[:3]}",
    )
    if drill.name in KEEP_EVERY_VM:
        left = membership.left()
        run_.check(not left, f"{', '.join(sorted(left))} left the load balancer")
    # RPO by the ledger: every write carried its own Idempotency-Key, so the database says
    # which it kept. An acknowledged key must be there, a rejected one must not; a write
    # whose outcome the client never learned may be either, and is counted apart.
    stored = lab.database.stored_keys(load.key_prefix)
    lost = load.writes("acknowledged") - stored
    counted = load.writes("rejected") & stored
    run_.check(not lost, f"{len(lost)} acknowledged writes are missing")
    run_.check(not counted, f"{len(counted)} rejected writes were counted")
    counted_visits = lab.database.visits() - initial_visits
    run_.check(
        counted_visits == len(stored),
        f"the count grew by {counted_visits}, but {len(stored)} of the load's keys are stored",
    )
    run_.rpo = "0" if not lost else f"{len(lost)} writes"
    failed = load.failures()
    window = load.error_window()
    result = DrillResult(
        name=drill.name,
        hypothesis=drill.hypothesis,
        fault=drill.fault,
        requests=len(load.requests),
        failed=len(failed),
        unknown=load.ambiguous_writes(),
        error_window_s=(window[1] - window[0]) if window else None,
        rto_s=run_.rto(),
        full_service_s=run_.full_service(),
        rpo=run_.rpo,
        passed=not run_.reasons,
        reasons=run_.reasons,
        timeline=timeline,
        fault_start=run_.fault_start,
        fault_end=run_.fault_end,
        load_csv=load.requests_csv,
    )
    timeline.parent.mkdir(parents=True, exist_ok=True)
    timeline_png(load.requests, run_.fault_start, run_.fault_end, drill.name, timeline)
    return result


def restore(lab: Lab, drill: Drill) -> None:
    """Put the lab back as the next drill expects it: a synchronous standby again."""
    if drill.name == "database-failover":
        lab.database.rebuild_standby()


def run_drills(lab: Lab, names: list[str]) -> list[DrillResult]:
    """Run the named drills (all by default) and report them: the table, .lab/drills/
    results.json and, for a run of them all, docs/drills.md (or $LAB_DOCS_DIR/drills.md) with
    the timelines."""
    unknown = set(names) - {drill.name for drill in DRILLS}
    if unknown:
        raise LabError(f"no such drill: {', '.join(sorted(unknown))}")
    docs_dir = Path(os.environ.get("LAB_DOCS_DIR", REPO_ROOT / "docs"))
    started = time.monotonic()
    lab.up()
    results = []
    for drill in DRILLS:
        if names and drill.name not in names:
            continue
        print(f"==> {drill.name}: {drill.fault}", flush=True)
        out_dir = lab.state_dir / "drills" / drill.name
        # Only a run of every drill replaces the report; a chosen few keep theirs in .lab/.
        timeline = out_dir / "timeline.png" if names else docs_dir / "drills" / f"{drill.name}.png"
        results.append(run_drill(lab, drill, out_dir, timeline))
        restore(lab, drill)
    notes = [
        f"Lab up from built images: {lab.last_bring_up_seconds()} s (budget 180 s)",
        f"Drill suite: {time.monotonic() - started:.0f} s (budget 600 s)",
        f"Lab containers' memory: {lab.memory_mib():.0f} MiB (budget 2048 MiB)",
    ]
    print_table(results, notes)
    if names:
        print(
            f"Timelines in {lab.state_dir / 'drills'}/<drill>/; docs/drills.md is left as it was."
        )
    else:
        write_markdown(results, docs_dir / "drills.md", machine_description(), notes)
    summary = [
        {"name": r.name, "passed": r.passed, "reasons": r.reasons, "requests": r.requests,
         "failed": r.failed, "unknown": r.unknown, "rto_s": r.rto_s,
         "full_service_s": r.full_service_s, "rpo": r.rpo,
         "timeline": str(r.timeline)}
        for r in results
    ]  # fmt: skip
    (lab.state_dir / "drills" / "results.json").write_text(json.dumps(summary, indent=2))
    return results
