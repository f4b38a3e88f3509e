"""Configuration is read from the environment once and refused, clearly, when invalid."""

import socket
import subprocess
import sys
from pathlib import Path

import pytest
from support import REPO_ROOT, free_port

from app.config import Config, ConfigError, load_config

SQLITE_URL = "sqlite:////var/lib/hello-app/app.sqlite3"


def test_defaults_listen_on_8080():
    config = load_config({"DATABASE_URL": SQLITE_URL})
    assert config.port == 8080
    assert config.host == "0.0.0.0"
    assert config.max_request_body_bytes == 1024 * 1024


def test_an_sqlite_url_names_the_file_the_caller_chose():
    config = load_config({"DATABASE_URL": SQLITE_URL})
    assert config.database_kind == "sqlite"
    assert config.sqlite_path == Path("/var/lib/hello-app/app.sqlite3")


def test_a_database_url_file_alone_is_enough(tmp_path):
    config = load_config({"DATABASE_URL_FILE": str(tmp_path / "database-url")})
    assert config.database_url is None
    assert config.database_kind == "postgresql"


@pytest.mark.parametrize("env", [{}, {"DATABASE_URL": " "}, {"DATABASE_URL_FILE": ""}])
def test_no_database_is_refused_naming_both_variables(env):
    # The app knows no repository or data directory of its own to fall back on.
    with pytest.raises(ConfigError, match=r"set DATABASE_URL .* or DATABASE_URL_FILE$"):
        load_config(env)


def test_environment_overrides_are_applied():
    config = load_config(
        {
            "PORT": "9000",
            "DATABASE_URL": "postgresql://u:p@db:5432/app",
            "LOG_LEVEL": "debug",
            "WAITRESS_THREADS": "8",
            "DB_TIMEOUT_SECONDS": "1.5",
        }
    )
    assert config == Config(
        port=9000,
        database_url="postgresql://u:p@db:5432/app",
        log_level="DEBUG",
        threads=8,
        db_max_concurrency=7,  # all threads but one, unless set
        db_timeout_seconds=1.5,
    )
    assert config.database_kind == "postgresql"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"PORT": "abc"}, "PORT='abc' is not a whole number"),
        ({"PORT": "70000"}, "PORT=70000 is out of range"),
        ({"PORT": "0"}, "PORT=0 is out of range"),
        ({"DATABASE_URL": "mysql://u:p@h/d"}, "scheme 'mysql' is not supported"),
        ({"DATABASE_URL": "localhost:5432"}, "is not supported"),
        ({"DATABASE_URL": "sqlite://relative.db"}, "sqlite:////absolute/path.db"),
        ({"LOG_LEVEL": "LOUD"}, "LOG_LEVEL='LOUD' is not one of"),
        ({"WAITRESS_THREADS": "1"}, "WAITRESS_THREADS=1 is out of range"),
        ({"DB_MAX_CONCURRENCY": "0"}, "DB_MAX_CONCURRENCY=0 is out of range"),
        (
            {"WAITRESS_THREADS": "4", "DB_MAX_CONCURRENCY": "4"},
            "DB_MAX_CONCURRENCY=4 must be below WAITRESS_THREADS=4, so that a thread is",
        ),
        ({"DB_TIMEOUT_SECONDS": "soon"}, "is not a number of seconds"),
    ],
)
def test_invalid_configuration_is_refused_with_a_message_naming_the_variable(env, message):
    with pytest.raises(ConfigError, match=message):
        load_config(env)


def test_unsupported_database_url_error_does_not_echo_the_password():
    with pytest.raises(ConfigError) as excinfo:
        load_config({"DATABASE_URL": "mysql://user:hunter2@db/app"})
    assert "hunter2" not in str(excinfo.value)


@pytest.mark.parametrize(
    "env",
    [
        {"PORT": "abc", "DATABASE_URL": SQLITE_URL},
        {"PORT": "70000", "DATABASE_URL": SQLITE_URL},
        {"DATABASE_URL": "redis://:pw@cache:6379/0"},
        {},  # no database at all
    ],
)
def test_invalid_configuration_exits_2_with_one_line_before_binding(env):
    port = free_port()
    env = {"PATH": "/usr/bin:/bin", "PORT": str(port), **env}
    result = subprocess.run(
        [sys.executable, "-m", "app"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("configuration error: ")
    # Nothing was bound: the port is still free.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
