"""The visits store: PostgreSQL or SQLite, chosen by DATABASE_URL.

Every operation opens its own short-lived connection, and on PostgreSQL every round trip of
it, COMMIT included, ends by a client-side deadline (app/deadline.py). That keeps
failure handling trivial: there is no pool to go stale, so when the database comes back the
next request simply works. At this app's load the cost of a connection is negligible; a pool
(or RDS Proxy) is the step to take when it is not.

Two guards keep a misbehaving database from taking the whole service down with it:
- a bulkhead: at most `db_max_concurrency` requests wait on the database at once; one more
  gets DatabaseUnavailable("database busy") at once, so some threads are always free for
  / and /healthz, even while every database call hangs until its timeout;
- a circuit breaker: once the database is lost, one request at a time probes it while the
  others fail fast with the last reason, instead of each waiting out the timeout. The first
  probe that succeeds closes the circuit (database_back).

A COMMIT that the server never answered may have committed: its 503 says the outcome is
unknown, and a retry with the same Idempotency-Key returns the first answer if it did.
"""

import logging
import os
import sqlite3
import threading
from abc import ABC, abstractmethod
from collections import deque
from contextlib import closing, contextmanager
from dataclasses import dataclass
from urllib.parse import urlsplit

import psycopg2
import psycopg2.errors
import psycopg2.extensions

from app import deadline
from app.config import Config, ConfigError, check_database_url
from app.logs import redact_url
from app.migrations import migrate

log = logging.getLogger("app.db")


class DatabaseUnavailable(Exception):
    """The database could not serve the request. `reason` is safe to show a client.
    `outcome_unknown`: the write's COMMIT went unanswered, so it may have been made."""

    def __init__(self, reason: str, outcome_unknown: bool = False):
        super().__init__(reason)
        self.reason = reason
        self.outcome_unknown = outcome_unknown


@dataclass(frozen=True)
class Visit:
    """A recorded visit: the count it made, and whether its idempotency key had already
    recorded it (then `count` is the first answer's)."""

    count: int
    replayed: bool = False


class DatabaseUrl:
    """The database URL: DATABASE_URL as given, or the content of DATABASE_URL_FILE, read
    again whenever the file changes (a rotated password) or the server refuses the password.

    The file may not exist yet, or hold something else: the database endpoints then answer
    503 "database not configured" until it does, and the rest of the app is unaffected.
    """

    NOT_CONFIGURED = "database not configured"
    # An IAM auth token is a new password every few minutes, for as long as the process runs;
    # a failure is logged while its password is at most a rotation or two old.
    REMEMBERED_PASSWORDS = 4

    def __init__(self, config: Config):
        self.path = config.database_url_file
        self._url: str | None = None if self.path else config.database_url
        self._seen: tuple[int, int, int] | None = None  # the file as last read
        self._lock = threading.Lock()
        # The passwords this process used last, so that none leaks into a log line.
        self.passwords: deque[str] = deque(maxlen=self.REMEMBERED_PASSWORDS)
        self._remember(self._url)

    def get(self, reread: bool = False) -> str:
        if self.path is None:
            return self._url
        try:
            info = os.stat(self.path)
        except OSError:
            raise DatabaseUnavailable(self.NOT_CONFIGURED) from None
        seen = (info.st_ino, info.st_mtime_ns, info.st_size)
        with self._lock:
            if reread or seen != self._seen:
                self._read(seen)
            url = self._url
        if url is None:
            raise DatabaseUnavailable(self.NOT_CONFIGURED)
        return url

    def _read(self, seen: tuple[int, int, int]) -> None:
        name = f"the URL in DATABASE_URL_FILE ({self.path})"
        try:
            url = check_database_url(self.path.read_text().strip(), name, allow_sqlite=False)
        except (OSError, ConfigError) as exc:
            if self._seen != seen:
                log.error("database_url_file_invalid", extra={"reason": str(exc)})
            self._url = None
        else:
            if url != self._url:
                log.info("database_url_read", extra={"url": redact_url(url)})
            self._url = url
            self._remember(url)
        self._seen = seen

    def _remember(self, url: str | None) -> None:
        password = urlsplit(url).password if url else None
        if password and password not in self.passwords:
            self.passwords.append(password)


class Database(ABC):
    """Shared behaviour: lazy schema creation, availability tracking, error translation."""

    kind: str
    errors: tuple[type[BaseException], ...]
    # Idempotency keys, in the driver's parameter style: claim a key (inserts nothing when it
    # was claimed before), read a key's answer, remember the answer.
    claim_key_sql: str
    key_answer_sql: str
    remember_answer_sql: str

    def __init__(self, config: Config):
        self.config = config
        self._schema_ready = False
        self._available: bool | None = None  # None until the first attempt
        self._state_lock = threading.Lock()
        self.url = DatabaseUrl(config)
        self._slots = threading.BoundedSemaphore(config.db_max_concurrency)
        self._probe = threading.Lock()
        self._last_reason = "database unavailable"

    def _scrub(self, text: str) -> str:
        """Driver messages do not normally echo the password; make sure of it."""
        for password in self.url.passwords:
            text = text.replace(password, "***")
        return text

    @abstractmethod
    def _connect(self): ...

    @abstractmethod
    def _migrate(self, conn) -> list[int]:
        """Bring the schema up to date under the database's own lock; commit."""

    @abstractmethod
    def _is_missing_table(self, exc: BaseException) -> bool: ...

    @abstractmethod
    def _reason(self, exc: BaseException) -> str: ...

    def ping(self) -> None:
        self._run(lambda cur: cur.execute("SELECT 1"))

    # Both cost the same at any number of visits: the count is one row, which a trigger on
    # visits keeps (app/migrations.py), read in the transaction that inserted.
    def record_visit(self, key: str | None = None) -> Visit:
        """Record a visit, once per idempotency key: a key seen before returns its first
        answer and records nothing."""

        def insert_and_count(cur):
            if key is not None:
                # A second request with this key waits here until the first one's transaction
                # ends; if it committed, this inserts nothing and reads its answer.
                cur.execute(self.claim_key_sql, (key,))
                if cur.rowcount == 0:
                    cur.execute(self.key_answer_sql, (key,))
                    return Visit(cur.fetchone()[0], replayed=True)
            cur.execute("INSERT INTO visits DEFAULT VALUES")
            cur.execute("SELECT visits FROM visit_count WHERE id = 1")
            count = cur.fetchone()[0]
            if key is not None:
                cur.execute(self.remember_answer_sql, (count, key))
            return Visit(count)

        return self._run(insert_and_count)

    def count_visits(self) -> int:
        def count(cur):
            cur.execute("SELECT visits FROM visit_count WHERE id = 1")
            return cur.fetchone()[0]

        return self._run(count)

    def _run(self, operation):
        """Run operation(cursor) through both guards: a free slot, and a closed circuit or
        this request's turn to probe."""
        if not self._slots.acquire(blocking=False):
            raise DatabaseUnavailable("database busy")
        try:
            with self._probe_turn():
                return self._attempt(operation)
        finally:
            self._slots.release()

    @contextmanager
    def _probe_turn(self):
        """Go ahead while the database is available; once it is lost, only one at a time."""
        if self._available is not False:
            yield
            return
        if not self._probe.acquire(blocking=False):
            raise DatabaseUnavailable(self._last_reason)
        try:
            yield
        finally:
            self._probe.release()

    def _attempt(self, operation):
        """Run operation(cursor) in one transaction, creating the schema first if needed."""
        try:
            try:
                result = self._transaction(operation)
            except self.errors as exc:
                if not self._recover(exc):
                    raise
                result = self._transaction(operation)
        except self.errors as exc:
            self._mark_unavailable(exc)
            unknown = isinstance(exc, CommitUnanswered)
            raise DatabaseUnavailable(self._reason(exc), outcome_unknown=unknown) from exc
        self._mark_available()
        return result

    def _recover(self, exc: BaseException) -> bool:
        """Whether the failure was one that trying again can mend, after mending it."""
        if self._is_missing_table(exc):
            # The database was recreated under us (e.g. a fresh volume): build it again.
            self._schema_ready = False
            return True
        return False

    def _transaction(self, operation):
        with closing(self._connect()) as conn:
            if not self._schema_ready:
                applied = self._migrate(conn)
                if applied:
                    log.info("schema_migrated", extra={"versions": applied})
                self._schema_ready = True
            with closing(conn.cursor()) as cur:
                result = operation(cur)
            self._commit(conn)
            return result

    def _commit(self, conn) -> None:
        conn.commit()

    def _mark_unavailable(self, exc: BaseException) -> None:
        with self._state_lock:
            was_available, self._available = self._available, False
            self._last_reason = self._reason(exc)
        if was_available is not False:
            reason, detail = self._reason(exc), self._scrub(str(exc))
            log.warning(
                "database_lost", extra={"database": self.kind, "reason": reason, "detail": detail}
            )

    def _mark_available(self) -> None:
        with self._state_lock:
            was_available, self._available = self._available, True
        if was_available is not True:
            event = "database_back" if was_available is False else "database_connected"
            log.info(event, extra={"database": self.kind})


class CommitUnanswered(psycopg2.OperationalError):
    """COMMIT was sent and no answer came back: the transaction may or may not be committed.
    Its cause is the error that cut the wait short."""


class PostgresDatabase(Database):
    kind = "postgresql"
    errors = (psycopg2.Error,)
    claim_key_sql = "INSERT INTO visit_keys (key) VALUES (%s) ON CONFLICT DO NOTHING"
    key_answer_sql = "SELECT visits FROM visit_keys WHERE key = %s"
    remember_answer_sql = "UPDATE visit_keys SET visits = %s WHERE key = %s"
    # Migrating counts a large visits table once, which may take longer than a request may.
    MIGRATION_SECONDS = 600

    def __init__(self, config: Config):
        super().__init__(config)
        deadline.install()
        # Cancelling a call that missed its deadline takes a connection of its own; a silent
        # server would hold each, so only as many as may wait on the database at once.
        self._cancellers = threading.BoundedSemaphore(config.db_max_concurrency)

    def _transaction(self, operation):
        """One transaction, connection included, within DB_TIMEOUT_SECONDS. A call cut short
        is cancelled on the server, so it never holds its locks past the deadline."""
        try:
            with deadline.deadline(self.config.db_timeout_seconds):
                return super()._transaction(operation)
        except psycopg2.Error as exc:
            cut_short = exc.__cause__ if isinstance(exc, CommitUnanswered) else exc
            if isinstance(cut_short, deadline.DeadlinePassed) and cut_short.backend_pid:
                self._cancel_in_background(cut_short.backend_pid)
            raise

    def _commit(self, conn) -> None:
        try:
            conn.commit()
        except psycopg2.Error as exc:
            if exc.pgcode is None:  # no answer from the server, which may have committed
                raise CommitUnanswered(str(exc)) from exc
            raise  # the server answered with an error: it rolled back

    def _cancel_in_background(self, backend_pid: int) -> None:
        if not self._cancellers.acquire(blocking=False):
            log.warning("database_cancel_skipped", extra={"backend_pid": backend_pid})
            return
        threading.Thread(
            target=self._cancel, args=(backend_pid,), name="db-cancel", daemon=True
        ).start()

    def _cancel(self, backend_pid: int) -> None:
        """pg_cancel_backend from a connection of its own: a COMMIT waiting on a standby then
        completes locally (PostgreSQL warns that it may not be replicated), anything else
        rolls back, and the row locks go either way."""
        try:
            with (
                deadline.deadline(self.config.db_timeout_seconds),
                closing(self._connect()) as conn,
                closing(conn.cursor()) as cur,
            ):
                cur.execute("SELECT pg_cancel_backend(%s)", (backend_pid,))
                cancelled = cur.fetchone()[0]
            log.info(
                "database_call_cancelled",
                extra={"backend_pid": backend_pid, "cancelled": cancelled},
            )
        except (psycopg2.Error, DatabaseUnavailable) as exc:
            detail = self._scrub(str(exc))
            log.warning(
                "database_cancel_failed", extra={"backend_pid": backend_pid, "detail": detail}
            )
        finally:
            self._cancellers.release()

    def _connect(self):
        timeout = self.config.db_timeout_seconds
        # No connect_timeout: libpq applies it only when it blocks, and under the wait
        # callback the deadline bounds the connection instead.
        return psycopg2.connect(
            self.url.get(),
            options=f"-c statement_timeout={int(timeout * 1000)}",
            application_name="hello-app",
            # Notice a peer that vanished mid-request instead of waiting on TCP for minutes.
            keepalives=1,
            keepalives_idle=5,
            keepalives_interval=1,
            keepalives_count=3,
            tcp_user_timeout=int(timeout * 1000),
        )

    def _migrate(self, conn) -> list[int]:
        with deadline.deadline(self.MIGRATION_SECONDS), conn.cursor() as cur:
            # Several instances may start at once: the first migrates, the others wait here.
            cur.execute("SELECT pg_advisory_xact_lock(hashtext('hello-app schema'))")
            cur.execute(f"SET LOCAL statement_timeout = '{self.MIGRATION_SECONDS}s'")
            applied = migrate(cur, "postgresql")
            conn.commit()
        return applied

    def _is_missing_table(self, exc: BaseException) -> bool:
        return isinstance(exc, psycopg2.errors.UndefinedTable)

    @staticmethod
    def _is_password_refused(exc: BaseException) -> bool:
        # SQLSTATE 28P01; psycopg2 gives connection errors no pgcode, only libpq's message.
        # RDS refuses an expired or unsigned IAM auth token through PAM.
        message = str(exc)
        return (
            exc.pgcode == "28P01"
            or "password authentication failed" in message
            or "PAM authentication failed" in message
        )

    def _recover(self, exc: BaseException) -> bool:
        if self._is_password_refused(exc) and self.url.path is not None:
            # Rotated: the new password may already be in the file, unseen if the rewrite
            # kept its size and timestamp. Try again only if the URL did change.
            refused = self.url.get()
            return self.url.get(reread=True) != refused
        return super()._recover(exc)

    def _reason(self, exc: BaseException) -> str:
        if isinstance(exc, CommitUnanswered):
            return self._reason(exc.__cause__)
        if self._is_password_refused(exc):
            return "database refused the credentials"
        # sslmode=verify-full: an untrusted or misnamed certificate, or no TLS at all. The
        # log's detail carries libpq's exact words; the client learns only this much.
        if "certificate" in str(exc) or "SSL" in str(exc):
            return "database TLS failed"
        # The server's statement_timeout (QueryCanceled), or this side's deadline.
        if isinstance(exc, psycopg2.extensions.QueryCanceledError) or "timeout" in str(exc).lower():
            return "database timed out"
        if isinstance(exc, psycopg2.OperationalError):
            return "database unreachable"
        return "database error"


class SQLiteDatabase(Database):
    kind = "sqlite"
    errors = (sqlite3.Error, OSError)
    claim_key_sql = "INSERT INTO visit_keys (key) VALUES (?) ON CONFLICT DO NOTHING"
    key_answer_sql = "SELECT visits FROM visit_keys WHERE key = ?"
    remember_answer_sql = "UPDATE visit_keys SET visits = ? WHERE key = ?"

    def _connect(self):
        path = self.config.sqlite_path
        path.parent.mkdir(parents=True, exist_ok=True)
        return sqlite3.connect(path, timeout=self.config.db_timeout_seconds)

    def _migrate(self, conn) -> list[int]:
        # sqlite3 would start its own transactions around DML only; take the write lock
        # ourselves, so the whole run is one transaction and other processes wait for it.
        conn.isolation_level = None
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                applied = migrate(conn.cursor(), "sqlite")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return applied
        finally:
            conn.isolation_level = ""

    def _is_missing_table(self, exc: BaseException) -> bool:
        return isinstance(exc, sqlite3.OperationalError) and "no such table" in str(exc)

    def _reason(self, exc: BaseException) -> str:
        if isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc):
            return "database timed out"
        return "database unavailable"


def open_database(config: Config) -> Database:
    """The Database for config.database_url. Connects lazily: never fails at start."""
    database_class = PostgresDatabase if config.database_kind == "postgresql" else SQLiteDatabase
    database = database_class(config)
    log.info(
        "database_selected",
        extra={"database": database.kind, "url": config.database_source},
    )
    return database
