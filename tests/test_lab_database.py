"""lab/database.py: the lab's PostgreSQL primary and synchronous standby (RDS Multi-AZ).

One pair serves the module, as bringing one up takes most of the time. Each test holds
whichever server is primary when it runs. The test host reaches the servers only through
`docker exec … psql`: over TCP inside a container, with a password, to `db` through
Docker's DNS on the app's network, or locally as the superuser.
"""

import os
import subprocess
import time
import uuid
from urllib.parse import urlsplit

import pytest
from support import run, wait_until

from app.migrations import migrate
from lab.database import DATABASE, OWNER_ROLE, DatabaseError, DatabasePair
from lab.topology import STANDBY_DETECTION_S

pytestmark = pytest.mark.lab


class _RecordingCursor:
    """Collects the statements of app.migrations.migrate() for an empty database."""

    def __init__(self):
        self.statements: list[str] = []

    def execute(self, sql: str, params: tuple = ()) -> None:
        for value in params:
            literal = (
                str(value) if isinstance(value, int) else "'{}'".format(value.replace("'", "''"))
            )
            sql = sql.replace("%s", literal, 1)
        self.statements.append(sql)

    def fetchall(self) -> list:
        return []


def app_migrations_sql() -> str:
    """The app's schema, as its migrations create it in one transaction at first connect."""
    cursor = _RecordingCursor()
    migrate(cursor, "postgresql")
    return "BEGIN;\n" + ";\n".join(cursor.statements) + ";\nCOMMIT;\n"


def credentials(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.username, parts.password


def as_app(pair: DatabasePair, url: str, sql: str, container: str | None = None) -> str:
    """Run sql as the URL's login role, over TCP with its password. From a container on the
    app's network (the standby by default) through `db`, as the app would."""
    role, password = credentials(url)
    return pair.psql(
        sql,
        container=container or pair.standby,
        database=DATABASE,
        user=role,
        password=password,
        host=urlsplit(url).hostname,
    )


def record_visit(pair: DatabasePair, url: str, container: str | None = None) -> int:
    """The app's POST /visits: one insert; returns the new row's id once it is committed."""
    return int(as_app(pair, url, "INSERT INTO visits DEFAULT VALUES RETURNING id", container))


def container_state(name: str) -> tuple[bool, list[str]]:
    """Whether the container runs, and the networks it is attached to."""
    fmt = "{{.State.Running}} {{range $name, $_ := .NetworkSettings.Networks}}{{$name}} {{end}}"
    running, *networks = run("docker", "container", "inspect", "-f", fmt, name).stdout.split()
    return running == "true", networks


@pytest.fixture(scope="module")
def pair(docker, base_images, tmp_path_factory):
    run_id = uuid.uuid4().hex[:8]
    database_pair = DatabasePair(
        image=base_images["POSTGRES_IMAGE"],
        prefix=f"hello-labtest-{run_id}-",
        app_network=f"hello-labtest-{run_id}-app",
        replication_network=f"hello-labtest-{run_id}-replication",
        state_dir=tmp_path_factory.mktemp("lab"),
        standby_detection_s=STANDBY_DETECTION_S,
    )
    try:
        database_pair.up()
        # The app's first connection runs its migrations: do the same, as the login role.
        as_app(database_pair, database_pair.app_url(), app_migrations_sql())
        yield database_pair
    finally:
        database_pair.down()


def test_up_again_keeps_the_running_pair(pair):
    created = run("docker", "inspect", "-f", "{{.Created}}", pair.primary, pair.standby).stdout
    pair.up()
    assert run("docker", "inspect", "-f", "{{.Created}}", pair.primary, pair.standby).stdout == (
        created
    )
    assert pair.is_synchronous()


def test_a_commit_through_db_is_on_the_standby(pair):
    visit = record_visit(pair, pair.app_url())
    # synchronous_commit=on: acknowledged once flushed on the standby; replayed a moment later.
    deadline = time.monotonic() + 5
    query = f"SELECT count(*) FROM visits WHERE id = {visit:d}"  # noqa: S608
    while pair.psql(query, container=pair.standby, database=DATABASE) != "1":
        assert time.monotonic() < deadline, "the committed row never appeared on the standby"
        time.sleep(0.1)
    assert pair.psql("SELECT pg_is_in_recovery()", container=pair.standby) == "t"


def test_a_commit_is_not_acknowledged_until_the_standby_has_it(pair):
    role, password = credentials(pair.app_url())
    insert = subprocess.Popen(
        ["docker", "exec", "-i", "-e", "PGPASSWORD", pair.primary, "psql", "-X", "-q",
         "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-U", role, "-d", DATABASE],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PGPASSWORD": password},
    )  # fmt: skip
    before = pair.visits()
    run("docker", "pause", pair.standby)
    try:
        insert.stdin.write("INSERT INTO visits DEFAULT VALUES;\n")
        insert.stdin.close()
        with pytest.raises(subprocess.TimeoutExpired):
            insert.wait(timeout=2)
    finally:
        run("docker", "unpause", pair.standby)
    assert insert.wait(timeout=15) == 0, insert.stderr.read()
    assert pair.visits() == before + 1


def test_a_lost_standby_holds_commits_for_the_detection_window_only_then_sync_returns(pair):
    before = pair.visits()
    run("docker", "pause", pair.standby)
    try:
        started = time.monotonic()
        record_visit(pair, pair.app_url(), container=pair.primary)
        held = time.monotonic() - started
    finally:
        run("docker", "unpause", pair.standby)
    assert pair.visits() == before + 1
    # Held while the standby might still answer, then no longer: RDS's degraded state.
    assert STANDBY_DETECTION_S <= held <= STANDBY_DETECTION_S + 5, f"held {held:.1f} s"
    assert "no word from the standby" in pair.watcher_log()
    wait_until(pair.is_synchronous, timeout=20, what="the standby synchronous again")
    assert "the standby has caught up" in pair.watcher_log()


def test_failover_keeps_every_acknowledged_commit(pair):
    url = pair.app_url()
    before = pair.visits()
    for _ in range(5):
        record_visit(pair, url)
    old_primary, old_standby = pair.primary, pair.standby

    times = pair.failover()

    assert times.fault <= times.fenced <= times.promoted <= times.alias_moved
    assert (pair.primary, pair.standby) == (old_standby, old_primary)
    # Fenced: not running, and on no network the app or the new primary could reach.
    assert container_state(old_primary) == (False, [])
    # `db` now leads to the promoted server, which takes writes without waiting for a standby.
    assert as_app(pair, url, "SELECT pg_is_in_recovery()", container=pair.primary) == "f"
    for _ in range(3):
        record_visit(pair, url, container=pair.primary)
    assert pair.visits() == before + 5 + 3
    assert not pair.is_synchronous()

    pair.rebuild_standby()

    assert pair.is_synchronous()
    record_visit(pair, url)  # from the rebuilt standby, through `db`
    assert pair.visits() == before + 5 + 3 + 1


def test_rotation_keeps_both_credentials_working_until_the_old_is_retired(pair):
    old_url = pair.app_url()
    assert record_visit(pair, old_url)

    new_url = pair.rotate_app_credentials()

    assert credentials(new_url)[0] != credentials(old_url)[0]
    assert pair.app_url() == new_url
    for url in (old_url, new_url):
        session_user, current_user = as_app(pair, url, "SELECT session_user, current_user").split(
            "|"
        )
        assert (session_user, current_user) == (credentials(url)[0], OWNER_ROLE)
        assert record_visit(pair, url)

    pair.retire_previous_credentials()

    with pytest.raises(DatabaseError, match=r"password authentication failed|not permitted"):
        as_app(pair, old_url, "SELECT 1")
    before = pair.visits()
    assert record_visit(pair, new_url)
    assert pair.visits() == before + 1
    owners = pair.psql(
        "SELECT DISTINCT tableowner FROM pg_tables WHERE schemaname = 'public'", database=DATABASE
    )
    assert owners == OWNER_ROLE


def test_down_removes_its_containers_and_networks_and_may_run_again(pair):
    # The last test of the module: the fixture's own down() then finds nothing left.
    pair.down()
    pair.down()

    prefix = pair.prefix
    assert run("docker", "ps", "-aq", "--filter", f"name={prefix}").stdout == ""
    assert run("docker", "network", "ls", "-q", "--filter", f"name={prefix}").stdout == ""
    assert not pair.state_path.exists()
