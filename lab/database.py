"""The lab's database: a PostgreSQL primary and its synchronous standby, standing in for RDS
Multi-AZ, driven through the docker CLI.

- `<prefix>db1` and `<prefix>db2` take turns as primary and standby. The primary carries the
  network alias `db` on the app's network, as RDS's endpoint follows its primary; the
  standby is on that network too, without the alias.
- Replication has a network of its own, so that moving the alias (a disconnect and a
  reconnect on the app's network) never cuts it.
- Commits wait for the standby (synchronous_commit=on and synchronous_standby_names naming
  it): a commit the app saw acknowledged is on both servers.
- `<prefix>standby-watch` does what RDS does when the standby is lost (standby_watch.sh):
  after the detection window, commits stop waiting for it; once a standby has caught up,
  they wait again.
- The app logs in as one of two login roles that both act as the NOLOGIN role owning its
  tables, so its password can be rotated without a failed request ("alternating users").

It works the same with the public postgres:17-alpine image and the offline stand-in of
scripts/images/postgres: both read POSTGRES_PASSWORD and PGDATA, run the server as the
`postgres` user, and have the server and client binaries on PATH (the stand-in's Dockerfile
puts /usr/lib/postgresql/15/bin there). Commands run inside with sh, never bash (alpine).

Passwords are generated here, kept in the state directory (mode 0600) for a later process
(`make drills` after `make lab`), and reach docker and psql through the environment or
stdin, never through a command line that `ps` would show.
"""

import json
import os
import re
import secrets
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from lab.docker import LabError

ALIAS = "db"
DATABASE = "hello"
PORT = 5432
# Owns the app's tables; nobody logs in as it.
OWNER_ROLE = "hello_owner"
# The app logs in as one of these at a time; rotation alternates between them.
LOGIN_ROLES = ("hello_app_a", "hello_app_b")
REPLICATION_ROLE = "replicator"
MEMBERS = ("db1", "db2")
LABEL = "hello-lab"
STATE_FILE = "database.json"

# Both images initialise pg_hba.conf differently (the official one trusts 127.0.0.1, the
# stand-in asks for a password): this one replaces both, so a password is checked alike.
PG_HBA = f"""\
# Written by lab/database.py.
# docker exec -u postgres … psql: the lab's own administration, inside the container.
local all postgres trust
local all all scram-sha-256
host replication {REPLICATION_ROLE} all scram-sha-256
host all all all scram-sha-256
"""

# The standby's command: copy the primary, then run as its hot standby. Run with sh as the
# entrypoint, so neither image's entrypoint tries to initialise a cluster of its own.
# $1: the primary's host name, $2: this member's name (its application_name).
STANDBY_SCRIPT = f"""\
set -eu
mkdir -p "$PGDATA"
chmod 700 "$PGDATA"
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  pg_basebackup --host="$1" --port={PORT} --username={REPLICATION_ROLE} --no-password \\
    --pgdata="$PGDATA" --wal-method=stream --checkpoint=fast
  touch "$PGDATA/standby.signal"
  # synchronous_standby_names comes over with the copy; empty it, so that once promoted
  # this server does not wait for a standby that does not exist yet.
  conninfo="host=$1 port={PORT} user={REPLICATION_ROLE} application_name=$2"
  cat >>"$PGDATA/postgresql.auto.conf" <<EOF
primary_conninfo = '$conninfo password=$PGPASSWORD'
synchronous_standby_names = ''
EOF
fi
# Replies every second, not every 10 s: the primary's reply_time tells a silent standby.
exec postgres -c cluster_name="$2" -c wal_receiver_status_interval=1
"""
WATCH_SCRIPT = (Path(__file__).parent / "standby_watch.sh").read_text()
WATCHER = "standby-watch"


class DatabaseError(LabError):
    """A docker or psql command failed or timed out; the message carries its stderr."""


class FailoverTimes(NamedTuple):
    """time.time() at each step of failover()."""

    fault: float
    fenced: float
    promoted: float
    alias_moved: float


def _password() -> str:
    # URL-safe characters: they need no quoting in a URL, a SQL literal or a conninfo.
    return secrets.token_urlsafe(24)


class DatabasePair:
    """A primary and a synchronous standby in containers, with RDS's failover and the
    alternating-users rotation of the app's credentials."""

    def __init__(
        self,
        image: str,
        prefix: str,
        app_network: str,
        replication_network: str,
        state_dir: Path,
        standby_detection_s: float,
        timeout: float = 120,
    ):
        self.image = image
        # How long the standby may stay silent before commits stop waiting for it.
        self.standby_detection_s = standby_detection_s
        self.prefix = prefix
        self.app_network = app_network
        self.replication_network = replication_network
        self.state_path = Path(state_dir) / STATE_FILE
        # How long any one wait (a server starting, a standby catching up) may take.
        self.timeout = timeout
        self._state = self._load_state()

    # ---- state kept between processes

    def _load_state(self) -> dict:
        if self.state_path.exists():
            return json.loads(self.state_path.read_text())
        return {
            "primary": MEMBERS[0],
            "standby": MEMBERS[1],
            "superuser_password": _password(),
            "replication_password": _password(),
            "passwords": {LOGIN_ROLES[0]: _password(), LOGIN_ROLES[1]: None},
            "active": LOGIN_ROLES[0],
            "previous": None,
        }

    def _save_state(self) -> None:
        self.state_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        temporary = self.state_path.with_suffix(".tmp")
        temporary.unlink(missing_ok=True)
        # Created 0600 from the start: the file holds passwords.
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as file:
            json.dump(self._state, file, indent=2)
        os.replace(temporary, self.state_path)

    def _secrets(self) -> list[str]:
        state = self._state
        values = [state["superuser_password"], state["replication_password"]]
        return [*values, *(p for p in state["passwords"].values() if p)]

    # ---- names

    def _container(self, member: str) -> str:
        return f"{self.prefix}{member}"

    @property
    def primary(self) -> str:
        """The container that is primary now (the roles swap at each failover)."""
        return self._container(self._state["primary"])

    @property
    def standby(self) -> str:
        """The container that is, or is to be rebuilt as, the standby."""
        return self._container(self._state["standby"])

    def app_url(self) -> str:
        """The URL the app connects with: the active login role, through the alias `db`."""
        role = self._state["active"]
        password = self._state["passwords"][role]
        return f"postgresql://{role}:{password}@{ALIAS}:{PORT}/{DATABASE}"

    # ---- commands

    def _scrub(self, text: str) -> str:
        for secret in self._secrets():
            text = text.replace(secret, "***")
        return text

    def _docker(
        self,
        *args: str,
        input: str | None = None,
        env: dict[str, str] | None = None,
        timeout: float = 30,
        check: bool = True,
    ) -> subprocess.CompletedProcess:
        command = ["docker", *args]
        shown = self._scrub(" ".join(command))[:200]
        try:
            result = subprocess.run(
                command,
                input=input,
                capture_output=True,
                text=True,
                timeout=timeout,
                env={**os.environ, **env} if env else None,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise DatabaseError(f"`{shown}` did not finish within {timeout} s") from None
        if check and result.returncode != 0:
            raise DatabaseError(f"`{shown}` failed: {self._scrub(result.stderr.strip())}")
        return result

    def psql(
        self,
        sql: str,
        container: str | None = None,
        database: str = "postgres",
        user: str | None = None,
        password: str | None = None,
        host: str | None = None,
        timeout: float = 30,
    ) -> str:
        """Run sql with psql in container (the primary by default); return its unaligned,
        tuples-only output. Without user, as the superuser over the local socket.

        The SQL goes through stdin rather than -c: it may hold a password.
        """
        exec_args = ["exec", "-i", "-u", "postgres"]
        env = None
        if password is not None:
            # `-e NAME` without a value: docker copies it from its own environment.
            exec_args += ["-e", "PGPASSWORD"]
            env = {"PGPASSWORD": password}
        client = ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-At", "-d", database]
        if user:
            client += ["-U", user]
        if host:
            client += ["-h", host, "-p", str(PORT)]
        result = self._docker(
            *exec_args, container or self.primary, *client, input=sql, env=env, timeout=timeout
        )
        return result.stdout.strip()

    def _wait(self, what: str, condition: Callable[[], bool], timeout: float | None = None):
        """Poll condition until it holds; a DatabaseError it raises counts as not yet."""
        timeout = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        last_error = ""
        while True:
            try:
                if condition():
                    return
            except DatabaseError as exc:
                last_error = f" (last error: {exc})"
            if time.monotonic() > deadline:
                raise DatabaseError(f"gave up waiting for {what} after {timeout} s{last_error}")
            time.sleep(0.2)

    # ---- containers and networks

    def _status(self, container: str) -> str | None:
        """running, paused, exited, created…, or None when there is no such container."""
        result = self._docker(
            "container", "inspect", "-f", "{{.State.Status}}", container, check=False
        )
        return result.stdout.strip() if result.returncode == 0 else None

    def _fail_if_exited(self, container: str) -> None:
        if self._status(container) in ("running", "paused"):
            return
        logs = self._docker("logs", "--tail", "20", container, check=False)
        tail = self._scrub((logs.stdout + logs.stderr).strip())
        raise DatabaseError(f"{container} stopped; its last log lines:\n{tail}")

    def _ensure_network(self, name: str, *options: str) -> None:
        if self._docker("network", "inspect", name, check=False).returncode == 0:
            return  # the caller's, or ours from an earlier up()
        self._docker("network", "create", *self._labels(), *options, name)

    def _labels(self) -> list[str]:
        # down() finds containers and networks by the second label, never another's.
        return ["--label", f"{LABEL}=1", "--label", f"{LABEL}.database={self.prefix}"]

    def _create_primary(self, member: str) -> None:
        name = self._container(member)
        self._docker(
            "create", "--name", name, *self._labels(), "--user", "postgres",
            "--network", self.replication_network, "-e", "POSTGRES_PASSWORD",
            self.image, "postgres", "-c", f"cluster_name={member}",
            env={"POSTGRES_PASSWORD": self._state["superuser_password"]},
        )  # fmt: skip
        self._docker("network", "connect", "--alias", ALIAS, self.app_network, name)
        self._docker("start", name)

    def _create_standby(self, member: str, primary: str) -> None:
        name = self._container(member)
        self._docker(
            "create", "--name", name, *self._labels(), "--user", "postgres",
            "--network", self.replication_network, "-e", "PGPASSWORD",
            "--entrypoint", "sh", self.image, "-c", STANDBY_SCRIPT, "sh", primary, member,
            env={"PGPASSWORD": self._state["replication_password"]},
        )  # fmt: skip
        self._docker("network", "connect", self.app_network, name)
        self._docker("start", name)

    def _start_watcher(self) -> None:
        """A new watcher each time: it keeps no state, and so runs today's script."""
        name = self._container(WATCHER)
        self._docker("rm", "-f", name, check=False)
        self._docker(
            "run", "--detach", "--name", name, *self._labels(), "--user", "postgres",
            "--network", self.replication_network, "-e", "PGPASSWORD",
            "--entrypoint", "sh", self.image, "-c", WATCH_SCRIPT, "sh",
            str(self.standby_detection_s), *(self._container(m) for m in MEMBERS),
            env={"PGPASSWORD": self._state["superuser_password"]},
        )  # fmt: skip

    def watcher_log(self) -> str:
        """What the standby watcher changed, one line per change."""
        return self._docker("logs", self._container(WATCHER), check=False).stdout

    def _wait_accepting(self, container: str) -> None:
        def accepting() -> bool:
            self._fail_if_exited(container)
            # Over TCP: the official image's first-run server listens on its socket only,
            # then restarts; the stand-in initialises with no listener at all.
            probe = ["exec", "-u", "postgres", container, "pg_isready", "-q", "-h", "127.0.0.1"]
            return self._docker(*probe, check=False).returncode == 0

        self._wait(f"{container} to accept connections", accepting)

    # ---- the primary's configuration

    def _configure_primary(self) -> None:
        """Make the primary what the lab needs; every statement may run again."""
        self._docker(
            "exec", "-i", "-u", "postgres", self.primary, "sh", "-c",
            'cat >"$PGDATA/pg_hba.conf"', input=PG_HBA,
        )  # fmt: skip
        state = self._state
        active = state["active"]
        create_roles = "\n".join(
            f"  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{role}') THEN"
            f" CREATE ROLE {role} {attributes}; END IF;"
            for role, attributes in [
                (REPLICATION_ROLE, "REPLICATION"),
                (OWNER_ROLE, "NOLOGIN"),
                *((role, f"NOLOGIN IN ROLE {OWNER_ROLE}") for role in LOGIN_ROLES),
            ]
        )
        run_as_owner = "\n".join(
            # Tables the app's migrations create belong to the owner, whichever login
            # role ran them, so the other login role can use and alter them too.
            f"ALTER ROLE {role} IN DATABASE {DATABASE} SET role = '{OWNER_ROLE}';"
            for role in LOGIN_ROLES
        )
        # Built from this module's constants and generated passwords only.
        self.psql(f"""
ALTER SYSTEM SET synchronous_commit = 'on';
-- A standby paused by a drill catches up from here, without a slot that could fill the disk.
ALTER SYSTEM SET wal_keep_size = '256MB';
SELECT pg_reload_conf();
DO $$
BEGIN
{create_roles}
END $$;
ALTER ROLE {REPLICATION_ROLE} WITH REPLICATION LOGIN PASSWORD '{state["replication_password"]}';
ALTER ROLE {active} WITH LOGIN PASSWORD '{state["passwords"][active]}';
SELECT format('CREATE DATABASE %I OWNER %I', '{DATABASE}', '{OWNER_ROLE}')
  WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '{DATABASE}') \\gexec
REVOKE ALL ON DATABASE {DATABASE} FROM PUBLIC;
{run_as_owner}
""")  # noqa: S608

    def _replication_state(self, member: str) -> str:
        """The standby's sync_state on the primary ('sync', 'async', 'potential'), or ''."""
        return self.psql(
            "SELECT sync_state FROM pg_stat_replication"  # noqa: S608 (member: one of MEMBERS)
            f" WHERE application_name = '{member}' AND state = 'streaming'",
            timeout=10,
        )

    def _require_sync(self) -> None:
        """Make commits wait for the standby, once it streams, and wait until it is sync."""
        member = self._state["standby"]
        self.psql(
            f"ALTER SYSTEM SET synchronous_standby_names = '{member}';\nSELECT pg_reload_conf();"
        )
        self._wait(
            f"{self.standby} to be the synchronous standby",
            lambda: self._replication_state(member) == "sync",
        )

    # ---- the public operations

    def up(self) -> None:
        """Bring the pair up, or back to primary + synchronous standby; returns once the
        standby is synchronous. Safe to call again."""
        self._ensure_network(self.app_network)
        # Only the two servers ever talk on it.
        self._ensure_network(self.replication_network, "--internal")
        self._save_state()
        status = self._status(self.primary)
        if status is None:
            self._create_primary(self._state["primary"])
        elif status == "paused":
            self._docker("unpause", self.primary)
        elif status != "running":
            self._docker("start", self.primary)
        self._wait_accepting(self.primary)
        self._configure_primary()
        member = self._state["standby"]
        try:
            streaming = self._replication_state(member) != ""
        except DatabaseError:
            streaming = False
        if streaming and self._status(self.standby) == "running":
            self._require_sync()
        else:
            self.rebuild_standby()
        self._start_watcher()

    def rebuild_standby(self) -> None:
        """Replace the standby (after a failover: the fenced old primary) with a fresh copy
        of the primary, and make it synchronous again: the end of RDS's degraded state."""
        self._docker("rm", "-f", "-v", self.standby, check=False)
        self._create_standby(self._state["standby"], self.primary)
        member = self._state["standby"]

        def streaming() -> bool:
            self._fail_if_exited(self.standby)
            return self._replication_state(member) != ""

        self._wait(f"{self.standby} to copy the primary and stream from it", streaming)
        self._require_sync()

    def failover(self) -> FailoverTimes:
        """Do what RDS's control plane does when the primary fails: fence it, promote the
        standby, move the name `db` to it. Returns the time of each step."""
        fault = time.time()
        old, new = self.primary, self.standby
        # Fenced for good: a killed container takes no more writes, and without networks a
        # restart could not take any either, nor claim the alias back. Kill works on a
        # paused container too.
        if self._status(old) in ("running", "paused"):
            self._docker("kill", old)
        for network in (self.app_network, self.replication_network):
            self._docker("network", "disconnect", "-f", network, old, check=False)
        fenced = time.time()

        self.psql("SELECT pg_promote(true, 60)", container=new, timeout=70)
        # RDS's degraded single-AZ state: no standby, so commits must not wait for one. The
        # standby's copy already has synchronous_standby_names empty (STANDBY_SCRIPT); say
        # it again here, until rebuild_standby() brings a standby back.
        self.psql(
            "ALTER SYSTEM SET synchronous_standby_names = '';\nSELECT pg_reload_conf();",
            container=new,
        )
        # Taking a transaction id is a write: it fails while the server is in recovery.
        self._wait(
            f"{new} to accept writes",
            lambda: self.psql("SELECT pg_current_xact_id()", container=new, timeout=10) != "",
        )
        promoted = time.time()

        # A container gains an alias only by joining the network again.
        self._docker("network", "disconnect", self.app_network, new)
        self._docker("network", "connect", "--alias", ALIAS, self.app_network, new)
        alias_moved = time.time()

        state = self._state
        state["primary"], state["standby"] = state["standby"], state["primary"]
        self._save_state()
        return FailoverTimes(fault, fenced, promoted, alias_moved)

    def pause_primary(self) -> None:
        """Freeze the primary: its kernel still accepts TCP, postgres never answers."""
        self._docker("pause", self.primary)

    def unpause_primary(self) -> None:
        self._docker("unpause", self.primary)

    def pause_standby(self) -> None:
        """Freeze the standby, as a lost standby looks to the primary: no more replies."""
        self._docker("pause", self.standby)

    def unpause_standby(self) -> None:
        self._docker("unpause", self.standby)

    def slow_writes(self, seconds: float) -> None:
        """Make every insert into visits take `seconds` longer, on the server: a database
        slower than normal, but under the app's timeout."""
        self.psql(
            "CREATE OR REPLACE FUNCTION lab_slow_write() RETURNS trigger LANGUAGE plpgsql AS"
            f" $$BEGIN PERFORM pg_sleep({float(seconds)}); RETURN NEW; END$$;\n"
            "DROP TRIGGER IF EXISTS lab_slow_write ON visits;\n"
            "CREATE TRIGGER lab_slow_write BEFORE INSERT ON visits"
            " FOR EACH ROW EXECUTE FUNCTION lab_slow_write();",
            database=DATABASE,
        )

    def normal_writes(self) -> None:
        self.psql(
            "DROP TRIGGER IF EXISTS lab_slow_write ON visits;\n"
            "DROP FUNCTION IF EXISTS lab_slow_write();",
            database=DATABASE,
        )

    def rotate_app_credentials(self) -> str:
        """Give the login role the app does not use a new password and make it the active
        one; return the new URL. The previous role keeps working until
        retire_previous_credentials(), so every client can switch without a failure."""
        state = self._state
        if state["previous"] is not None:
            raise DatabaseError(
                f"{state['previous']} may still be in use: call retire_previous_credentials()"
                " once every client has the current URL, then rotate again"
            )
        previous = state["active"]
        role = LOGIN_ROLES[1 - LOGIN_ROLES.index(previous)]
        password = _password()
        state["passwords"][role] = password  # first, so that an error message hides it
        self.psql(f"ALTER ROLE {role} WITH LOGIN PASSWORD '{password}';")
        state["active"], state["previous"] = role, previous
        self._save_state()
        return self.app_url()

    def retire_previous_credentials(self) -> None:
        """Refuse the login role used before the last rotation. Call it once every client
        has the new URL. Sessions already open end by themselves (the app's are short)."""
        state = self._state
        role = state["previous"]
        if role is None:
            return
        self.psql(f"ALTER ROLE {role} WITH NOLOGIN PASSWORD NULL;")
        state["passwords"][role], state["previous"] = None, None
        self._save_state()

    def visits(self) -> int:
        """The count the app's GET /visits reports, read on the primary."""
        # Until the app has connected once, its migrations have not created the table.
        exists = self.psql(
            "SELECT to_regclass('public.visit_count') IS NOT NULL", database=DATABASE
        )
        if exists != "t":
            return 0
        return int(self.psql("SELECT visits FROM visit_count WHERE id = 1", database=DATABASE))

    def stored_keys(self, prefix: str) -> set[str]:
        """The Idempotency-Keys starting with `prefix` whose visits the primary holds."""
        if not re.fullmatch(r"[A-Za-z0-9-]+", prefix):
            raise ValueError(f"not a key prefix: {prefix!r}")
        exists = self.psql("SELECT to_regclass('public.visit_keys') IS NOT NULL", database=DATABASE)
        if exists != "t":
            return set()
        query = f"SELECT key FROM visit_keys WHERE key LIKE '{prefix}-%'"  # noqa: S608 - checked
        rows = self.psql(query, database=DATABASE)
        return set(rows.split())

    def is_synchronous(self) -> bool:
        """Whether the standby streams as synchronous standby, so commits are on both."""
        try:
            return self._replication_state(self._state["standby"]) == "sync"
        except DatabaseError:
            return False  # a primary that does not answer has no synchronous standby

    def down(self) -> None:
        """Remove the containers and the networks this pair created, and its state file.
        Safe to call again; never touches anything it did not create."""
        mine = f"label={LABEL}.database={self.prefix}"
        containers = self._docker("ps", "-aq", "--filter", mine).stdout.split()
        if containers:
            self._docker("rm", "-f", "-v", *containers)
        networks = self._docker("network", "ls", "-q", "--filter", mine).stdout.split()
        if networks:
            self._docker("network", "rm", *networks)
        self.state_path.unlink(missing_ok=True)
