"""Versioned schema migrations, for PostgreSQL and SQLite.

Each migration runs once per database, in order, in the same transaction as the row that
records it in schema_migrations, so a failure leaves nothing half done. The caller holds a
lock for the whole run (PostgreSQL: an advisory lock; SQLite: BEGIN IMMEDIATE): instances
that start together wait for the first one, then find nothing left to do.

Version 1 is the schema every earlier release created, so a database made by one (a visits
table with rows in it, no schema_migrations) starts from there and keeps its rows.
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    postgresql: tuple[str, ...]
    sqlite: tuple[str, ...]


MIGRATIONS = (
    Migration(
        1,
        "one row per visit",
        postgresql=(
            "CREATE TABLE IF NOT EXISTS visits ("
            " id bigserial PRIMARY KEY,"
            " visited_at timestamptz NOT NULL DEFAULT now())",
        ),
        sqlite=(
            "CREATE TABLE IF NOT EXISTS visits ("
            " id INTEGER PRIMARY KEY AUTOINCREMENT,"
            " visited_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP)",
        ),
    ),
    # count(*) over visits grew with every visit: 1 s per POST at 5 million rows. The count
    # now lives in one row that a trigger keeps, so a release that predates this one and
    # still inserts during a rolling deploy is counted too.
    Migration(
        2,
        "the visit count in one row, kept by a trigger on visits",
        postgresql=(
            # No insert may land between the count below and the trigger's creation.
            "LOCK TABLE visits IN SHARE ROW EXCLUSIVE MODE",
            "CREATE TABLE visit_count ("
            " id integer PRIMARY KEY CHECK (id = 1),"
            " visits bigint NOT NULL)",
            "INSERT INTO visit_count (id, visits) SELECT 1, count(*) FROM visits",
            "CREATE FUNCTION count_visit() RETURNS trigger LANGUAGE plpgsql AS"
            " $$BEGIN UPDATE visit_count SET visits = visits + 1 WHERE id = 1; RETURN NULL; END$$",
            "CREATE TRIGGER count_visit AFTER INSERT ON visits"
            " FOR EACH ROW EXECUTE FUNCTION count_visit()",
        ),
        sqlite=(
            "CREATE TABLE visit_count ("
            " id INTEGER PRIMARY KEY CHECK (id = 1),"
            " visits INTEGER NOT NULL)",
            "INSERT INTO visit_count (id, visits) SELECT 1, count(*) FROM visits",
            "CREATE TRIGGER count_visit AFTER INSERT ON visits"
            " BEGIN UPDATE visit_count SET visits = visits + 1 WHERE id = 1; END",
        ),
    ),
    # A client that never learned a write's outcome retries with the same Idempotency-Key, and
    # gets the first answer instead of a second visit. A key is kept as long as its visit.
    Migration(
        3,
        "idempotency keys of recorded visits, with the count each answered",
        postgresql=(
            "CREATE TABLE visit_keys ("
            " key text PRIMARY KEY,"
            " visits bigint,"
            " created_at timestamptz NOT NULL DEFAULT now())",
        ),
        sqlite=(
            "CREATE TABLE visit_keys ("
            " key TEXT PRIMARY KEY,"
            " visits INTEGER,"
            " created_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP)",
        ),
    ),
)

_SCHEMA_MIGRATIONS = {
    "postgresql": "CREATE TABLE IF NOT EXISTS schema_migrations ("
    " version integer PRIMARY KEY,"
    " description text NOT NULL,"
    " applied_at timestamptz NOT NULL DEFAULT now())",
    "sqlite": "CREATE TABLE IF NOT EXISTS schema_migrations ("
    " version INTEGER PRIMARY KEY,"
    " description TEXT NOT NULL,"
    " applied_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP)",
}
_RECORD = {
    "postgresql": "INSERT INTO schema_migrations (version, description) VALUES (%s, %s)",
    "sqlite": "INSERT INTO schema_migrations (version, description) VALUES (?, ?)",
}


def migrate(cursor, dialect: str, migrations: tuple[Migration, ...] = MIGRATIONS) -> list[int]:
    """Apply the migrations this database lacks; return their versions. The caller holds the
    lock and commits. `migrations`: all of them, or the first few, as an earlier release had."""
    cursor.execute(_SCHEMA_MIGRATIONS[dialect])
    cursor.execute("SELECT version FROM schema_migrations")
    applied = {row[0] for row in cursor.fetchall()}
    done = []
    for migration in migrations:
        if migration.version in applied:
            continue
        for statement in getattr(migration, dialect):
            cursor.execute(statement)
        cursor.execute(_RECORD[dialect], (migration.version, migration.description))
        done.append(migration.version)
    return done
