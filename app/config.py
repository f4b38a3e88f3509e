"""Configuration: read from the environment once, validated, then passed around as a value.

Nothing else in the app reads os.environ.
"""

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from app.logs import redact_url

POSTGRES_SCHEMES = ("postgresql", "postgres")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


class ConfigError(ValueError):
    """Raised with a one-line, human-readable message naming the bad variable."""


@dataclass(frozen=True)
class Config:
    host: str = "0.0.0.0"  # noqa: S104 - a server is meant to listen on all interfaces
    port: int = 8080
    # A listening socket handed over by systemd's socket activation: its file descriptor.
    # None: bind HOST:PORT ourselves.
    listen_fd: int | None = None
    # systemd's notification socket (Type=notify): told READY=1 once the worker serves, so
    # `systemctl restart` returns only then, and a rolling restart can go on to the next one.
    notify_socket: str | None = None
    # postgresql://… or sqlite:///…. No default: where the data lives is the caller's choice
    # (start.sh: the checkout's data/; the image: its data directory; the unit: its state).
    database_url: str | None = None
    # Or, instead, a file that holds a postgresql:// URL, re-read whenever it changes, so a
    # rotated password needs no restart. It may not exist yet: the boot step writes it.
    database_url_file: Path | None = None
    log_level: str = "INFO"
    threads: int = 4
    # Requests that may wait on the database at once; the rest of the threads stay free for
    # / and /healthz whatever the database does. Beyond it, database requests get a 503.
    db_max_concurrency: int = 3
    db_timeout_seconds: float = 3.0
    # waitress defaults to 1 GB; nothing this app accepts is anywhere near 1 MiB.
    max_request_body_bytes: int = 1024 * 1024
    max_request_header_bytes: int = 64 * 1024
    # How long SIGTERM waits for in-flight requests before giving up.
    shutdown_timeout_seconds: float = 10.0

    @property
    def database_kind(self) -> str:
        if self.database_url_file is not None:
            return "postgresql"
        return "postgresql" if urlsplit(self.database_url).scheme in POSTGRES_SCHEMES else "sqlite"

    @property
    def database_source(self) -> str:
        """Where the database URL comes from, safe to log."""
        if self.database_url_file is not None:
            return f"DATABASE_URL_FILE {self.database_url_file}"
        return redact_url(self.database_url)

    @property
    def sqlite_path(self) -> Path:
        # sqlite:////abs/path -> /abs/path ; sqlite:///rel/path -> rel/path
        return Path(self.database_url.removeprefix("sqlite:///"))


def _number(env: Mapping[str, str], name: str, default, low, high, parse=int):
    """An int (or, with parse=float, a number of seconds) from env[name], within [low, high]."""
    raw = env.get(name, "").strip()
    if not raw:
        return default
    noun = "a whole number" if parse is int else "a number of seconds"
    try:
        value = parse(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not {noun}") from None
    if not low <= value <= high:
        raise ConfigError(f"{name}={value} is out of range ({low}-{high})")
    return value


def check_database_url(raw: str, name: str = "DATABASE_URL", allow_sqlite: bool = True) -> str:
    """raw, if it is a usable database URL; else ConfigError naming `name`, never the URL."""
    parts = urlsplit(raw)
    if parts.scheme in POSTGRES_SCHEMES:
        if not parts.hostname and not parts.path.strip("/"):
            raise ConfigError(f"{name} names no PostgreSQL host or database")
        return raw
    if parts.scheme == "sqlite" and allow_sqlite:
        if not raw.startswith("sqlite:///") or raw == "sqlite:///":
            raise ConfigError(f"{name} for SQLite must look like sqlite:////absolute/path.db")
        return raw
    # Never echo the URL itself: it may carry a password.
    scheme = parts.scheme or "(none)"
    use = "postgresql:// or sqlite:///" if allow_sqlite else "postgresql://"
    raise ConfigError(f"{name} scheme {scheme!r} is not supported (use {use})")


def _database_url(env: Mapping[str, str]) -> str | None:
    raw = env.get("DATABASE_URL", "").strip()
    return check_database_url(raw) if raw else None


def _database_url_file(env: Mapping[str, str]) -> Path | None:
    raw = env.get("DATABASE_URL_FILE", "").strip()
    if not raw:
        return None
    if env.get("DATABASE_URL", "").strip():
        raise ConfigError("set DATABASE_URL or DATABASE_URL_FILE, not both")
    path = Path(raw)
    if not path.is_absolute() or path.is_dir():
        raise ConfigError(f"DATABASE_URL_FILE={raw!r} must be the absolute path of a file")
    return path


# sd_listen_fds(3): systemd passes its sockets from file descriptor 3 on.
SD_LISTEN_FDS_START = 3


def _systemd_socket(env: Mapping[str, str]) -> int | None:
    """The socket systemd handed to this very process (LISTEN_PID), if any."""
    count = env.get("LISTEN_FDS", "").strip()
    if not count or env.get("LISTEN_PID", "").strip() != str(os.getpid()):
        return None  # not socket-activated, or the variables were meant for another process
    if count != "1":
        raise ConfigError(f"LISTEN_FDS={count!r}: expected the one socket of hello-app.socket")
    return SD_LISTEN_FDS_START


def load_config(env: Mapping[str, str] | None = None) -> Config:
    """Build a Config from environment variables, or raise ConfigError."""
    env = os.environ if env is None else env
    log_level = env.get("LOG_LEVEL", "INFO").strip().upper() or "INFO"
    if log_level not in LOG_LEVELS:
        raise ConfigError(f"LOG_LEVEL={log_level!r} is not one of {', '.join(LOG_LEVELS)}")
    threads = _number(env, "WAITRESS_THREADS", Config.threads, 2, 64)
    db_max_concurrency = _number(env, "DB_MAX_CONCURRENCY", threads - 1, 1, 64)
    if db_max_concurrency >= threads:
        raise ConfigError(
            f"DB_MAX_CONCURRENCY={db_max_concurrency} must be below WAITRESS_THREADS={threads},"
            " so that a thread is always free for / and /healthz"
        )
    config = Config(
        host=env.get("HOST", "").strip() or Config.host,
        port=_number(env, "PORT", Config.port, 1, 65535),
        listen_fd=_systemd_socket(env),
        notify_socket=env.get("NOTIFY_SOCKET", "").strip() or None,
        database_url=_database_url(env),
        database_url_file=_database_url_file(env),
        log_level=log_level,
        threads=threads,
        db_max_concurrency=db_max_concurrency,
        db_timeout_seconds=_number(
            env, "DB_TIMEOUT_SECONDS", Config.db_timeout_seconds, 0.1, 30, parse=float
        ),
        shutdown_timeout_seconds=_number(
            env, "SHUTDOWN_TIMEOUT_SECONDS", Config.shutdown_timeout_seconds, 0, 300, parse=float
        ),
    )
    if config.database_url is None and config.database_url_file is None:
        raise ConfigError(
            "no database configured: set DATABASE_URL (postgresql://... or"
            " sqlite:////absolute/path.db) or DATABASE_URL_FILE"
        )
    return config
