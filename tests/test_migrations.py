"""Schema migrations: versioned, idempotent, safe when several instances start at once, and a
database made by an earlier release upgrades in place with its count carried over exactly.
Each test runs on SQLite and on a throwaway PostgreSQL server of its own."""

import sqlite3
import threading
from contextlib import closing

import psycopg2
import pytest
from support import wait_until

from app.config import Config
from app.db import open_database
from app.migrations import MIGRATIONS

# What every release before the migrations created, word for word.
PREVIOUS_RELEASE_SCHEMA = {
    "postgresql": "CREATE TABLE IF NOT EXISTS visits ("
    " id bigserial PRIMARY KEY, visited_at timestamptz NOT NULL DEFAULT now())",
    "sqlite": "CREATE TABLE IF NOT EXISTS visits ("
    " id INTEGER PRIMARY KEY AUTOINCREMENT,"
    " visited_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP)",
}
ALL_VERSIONS = [m.version for m in MIGRATIONS]


class Target:
    """A fresh database of one kind, reachable both by the app and by plain SQL."""

    def __init__(self, kind: str, url: str):
        self.kind, self.url = kind, url

    def connect(self):
        if self.kind == "sqlite":
            return sqlite3.connect(self.url.removeprefix("sqlite:///"), timeout=10)
        return psycopg2.connect(self.url)

    def sql(self, *statements: str) -> list[tuple]:
        with closing(self.connect()) as conn:
            cur = conn.cursor()
            for statement in statements:
                cur.execute(statement)
            rows = cur.fetchall() if cur.description else []
            conn.commit()
            return rows

    def database(self):
        return open_database(Config(database_url=self.url, db_timeout_seconds=10))

    def make_previous_release_database(self, visits: int) -> None:
        self.sql(PREVIOUS_RELEASE_SCHEMA[self.kind])
        self.sql(*["INSERT INTO visits DEFAULT VALUES"] * visits)

    def versions(self) -> list[int]:
        return [row[0] for row in self.sql("SELECT version FROM schema_migrations ORDER BY 1")]


@pytest.fixture(params=["sqlite", "postgresql"])
def target(request, tmp_path) -> Target:
    if request.param == "sqlite":
        return Target("sqlite", f"sqlite:///{tmp_path / 'app.sqlite3'}")
    return Target("postgresql", request.getfixturevalue("postgres_cluster").url)


def test_a_new_database_gets_every_migration_and_counts_from_zero(target):
    database = target.database()
    assert database.count_visits() == 0
    assert database.record_visit().count == 1
    assert target.versions() == ALL_VERSIONS


def test_a_previous_release_database_upgrades_in_place_and_keeps_its_count(target):
    target.make_previous_release_database(visits=5)
    database = target.database()
    assert database.count_visits() == 5
    assert database.record_visit().count == 6
    assert target.versions() == ALL_VERSIONS
    assert target.sql("SELECT count(*) FROM visits") == [(6,)]


def test_running_the_migrations_again_changes_nothing(target):
    target.make_previous_release_database(visits=2)
    assert target.database().record_visit().count == 3
    # A restarted instance: a new Database, which migrates on first use.
    again = target.database()
    assert again.record_visit().count == 4  # the trigger exists once: +1 per visit, not +2
    assert target.versions() == ALL_VERSIONS


def test_instances_that_start_together_migrate_once_and_lose_no_visit(target):
    target.make_previous_release_database(visits=7)
    instances = [target.database() for _ in range(6)]
    start = threading.Barrier(len(instances), timeout=60)
    counted = threading.Barrier(len(instances), timeout=60)
    counts, errors = [], []

    def first_requests(database):
        try:
            start.wait()
            counts.append(database.count_visits())
            counted.wait()
            database.record_visit()
        except Exception as error:
            errors.append(error)
            counted.abort()  # release the others at once

    threads = [threading.Thread(target=first_requests, args=(db,), daemon=True) for db in instances]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    assert counts == [7] * 6
    assert target.versions() == ALL_VERSIONS
    assert instances[0].count_visits() == 7 + 6
    assert target.sql("SELECT count(*) FROM visits") == [(13,)]


def test_visits_an_earlier_release_still_inserts_are_counted(target):
    # During a rolling deploy, instances of the previous release keep inserting rows.
    target.make_previous_release_database(visits=1)
    database = target.database()
    assert database.count_visits() == 1
    target.sql("INSERT INTO visits DEFAULT VALUES", "INSERT INTO visits DEFAULT VALUES")
    assert database.count_visits() == 3


def test_recording_and_counting_never_scan_the_visits_table(postgres_cluster):
    target = Target("postgresql", postgres_cluster.url)
    target.make_previous_release_database(visits=100)
    database = target.database()
    database.count_visits()  # migrates: its one count(*) scans visits

    def scans() -> int:
        return target.sql("SELECT seq_scan FROM pg_stat_user_tables WHERE relname = 'visits'")[0][0]

    # Each backend flushes its statistics when it exits; a last scan of our own marks the
    # point by which the app's earlier connections have flushed theirs.
    def after_a_marker_scan(before: int) -> int:
        target.sql("SELECT count(*) FROM visits")
        wait_until(lambda: scans() > before, what="the marker scan in pg_stat_user_tables")
        return scans() - 1

    before = after_a_marker_scan(scans())
    for _ in range(20):
        database.record_visit()
        database.count_visits()
    assert after_a_marker_scan(before + 1) == before + 1
