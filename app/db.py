"""The visits store: PostgreSQL or SQLite, chosen by DATABASE_URL.

Every operation opens its own short-lived connection, bounded by a timeout. That keeps
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
"""

import logging
import math
import os
import sqlite3
import threading
from abc import ABC, abstractmethod
from collections import deque
from contextlib import closing, contextmanager
from urllib.parse import urlsplit

import psycopg2
import psycopg2.errors

from app.config import Config, ConfigError, check_database_url
from app.logs import redact_url
from app.migrations import migrate

log = logging.getLogger("app.db")


class DatabaseUnavailable(Exception):
    """The database could not serve the request. `reason` is safe to show a client."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


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
    def record_visit(self) -> int:
        def insert_and_count(cur):
            cur.execute("INSERT INTO visits DEFAULT VALUES")
            cur.execute("SELECT visits FROM visit_count WHERE id = 1")
            return cur.fetchone()[0]

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
            raise DatabaseUnavailable(self._reason(exc)) from exc
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
            conn.commit()
            return result

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


class PostgresDatabase(Database):
    kind = "postgresql"
    errors = (psycopg2.Error,)

    def _connect(self):
        timeout = self.config.db_timeout_seconds
        return psycopg2.connect(
            self.url.get(),
            # libpq takes whole seconds here (and treats 1 as 2).
            connect_timeout=max(1, math.ceil(timeout)),
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
        with conn.cursor() as cur:
            # Several instances may start at once: the first migrates, the others wait here.
            cur.execute("SELECT pg_advisory_xact_lock(hashtext('hello-app schema'))")
            # Counting a large visits table once may take longer than a request may.
            cur.execute("SET LOCAL statement_timeout = '10min'")
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
        if self._is_password_refused(exc):
            return "database refused the credentials"
        # sslmode=verify-full: an untrusted or misnamed certificate, or no TLS at all. The
        # log's detail carries libpq's exact words; the client learns only this much.
        if "certificate" in str(exc) or "SSL" in str(exc):
            return "database TLS failed"
        if isinstance(exc, psycopg2.errors.QueryCanceled) or "timeout" in str(exc).lower():
            return "database timed out"
        if isinstance(exc, psycopg2.OperationalError):
            return "database unreachable"
        return "database error"


class SQLiteDatabase(Database):
    kind = "sqlite"
    errors = (sqlite3.Error, OSError)

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
