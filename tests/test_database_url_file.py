"""DATABASE_URL_FILE: the URL comes from a file that is read again when it changes, so a
rotated password reaches the app without a restart, and never through its command line."""

import os
from pathlib import Path

import psycopg2
import pytest
from support import LoadLoop, PostgresCluster

from app.config import ConfigError, load_config
from app.db import DatabaseUrl

OLD_PASSWORD = PostgresCluster.PASSWORD
NEW_PASSWORD = "rotated-password-002"  # noqa: S105 - same length as the old, see below


def url_with(cluster: PostgresCluster, password: str) -> str:
    return cluster.url.replace(f":{OLD_PASSWORD}@", f":{password}@")


def set_password(cluster: PostgresCluster, current: str, new: str) -> None:
    with psycopg2.connect(url_with(cluster, current)) as conn, conn.cursor() as cur:
        cur.execute(f"ALTER ROLE {cluster.USER} PASSWORD %s", (new,))
    conn.close()


def replace_file(path: Path, text: str) -> None:
    """Write text to path atomically, as the boot step does: a new file renamed over it."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def test_a_rotated_password_is_picked_up_from_the_file_without_a_restart(
    app_server, postgres_cluster, tmp_path
):
    url_file = tmp_path / "database-url"
    replace_file(url_file, url_with(postgres_cluster, OLD_PASSWORD) + "\n")
    server = app_server(DATABASE_URL="", DATABASE_URL_FILE=str(url_file), DB_TIMEOUT_SECONDS="2")
    assert server.post("/visits").json() == {"visits": 1}

    with LoadLoop(server.port, threads=1, pause=0.02) as root:
        set_password(postgres_cluster, OLD_PASSWORD, NEW_PASSWORD)
        refused = server.post("/visits")
        replace_file(url_file, url_with(postgres_cluster, NEW_PASSWORD) + "\n")
        after = server.post("/visits")
    assert refused.status == 503
    assert refused.json() == {
        "error": "database unavailable",
        "reason": "database refused the credentials",
    }
    assert after.status == 201
    assert after.json() == {"visits": 2}
    assert root.answered > 0 and root.failed == []
    assert server.proc.poll() is None, "no restart"

    cmdline = Path(f"/proc/{server.proc.pid}/cmdline").read_bytes()
    for password in (OLD_PASSWORD, NEW_PASSWORD):
        assert password not in server.log
        assert password.encode() not in cmdline
        assert password not in refused.text


def test_a_refused_password_rereads_a_file_rewritten_in_place(
    app_server, postgres_cluster, tmp_path
):
    # A rewrite that keeps the file's inode, size and timestamp is invisible to stat();
    # the server refusing the old password is what makes the app read it again.
    url_file = tmp_path / "database-url"
    url_file.write_text(url_with(postgres_cluster, OLD_PASSWORD))
    server = app_server(DATABASE_URL="", DATABASE_URL_FILE=str(url_file), DB_TIMEOUT_SECONDS="2")
    assert server.post("/visits").status == 201

    before = url_file.stat()
    set_password(postgres_cluster, OLD_PASSWORD, NEW_PASSWORD)
    url_file.write_text(url_with(postgres_cluster, NEW_PASSWORD))
    os.utime(url_file, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert url_file.stat().st_size == before.st_size

    assert server.post("/visits").json() == {"visits": 2}


def test_the_app_serves_before_the_file_exists_and_connects_once_it_does(
    app_server, postgres_cluster, tmp_path
):
    url_file = tmp_path / "not-written-yet"
    server = app_server(DATABASE_URL="", DATABASE_URL_FILE=str(url_file), DB_TIMEOUT_SECONDS="2")
    assert server.get("/").text == "Hello World"
    ready = server.get("/readyz")
    assert ready.status == 503
    assert ready.json()["reason"] == "database not configured"

    replace_file(url_file, "mysql://someone:pw@db/app\n")
    assert server.get("/readyz").json()["reason"] == "database not configured"
    server.wait_for_event("database_url_file_invalid")
    assert "pw@" not in server.log

    replace_file(url_file, url_with(postgres_cluster, OLD_PASSWORD) + "\n")
    assert server.get("/readyz").status == 200


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"DATABASE_URL": "postgresql://u:p@db/app", "DATABASE_URL_FILE": "/run/url"},
            "set DATABASE_URL or DATABASE_URL_FILE, not both",
        ),
        ({"DATABASE_URL_FILE": "relative/url"}, "must be the absolute path of a file"),
        ({"DATABASE_URL_FILE": "/"}, "must be the absolute path of a file"),
    ],
)
def test_a_bad_database_url_file_setting_is_refused(env, message):
    with pytest.raises(ConfigError, match=message):
        load_config(env)


def test_a_url_file_rewritten_with_a_new_token_every_few_minutes_keeps_memory_bounded(tmp_path):
    """The boot step writes a new IAM token every 5 minutes: the passwords kept for scrubbing
    log lines are the last few, not one per rewrite for as long as the process runs."""
    url_file = tmp_path / "database-url"
    urls = DatabaseUrl(load_config({"DATABASE_URL_FILE": str(url_file)}))
    for token in range(50):
        replace_file(url_file, f"postgresql://app:token-{token}@db.example:5432/hello\n")
        urls.get()
    assert list(urls.passwords) == [f"token-{token}" for token in range(46, 50)]


def test_an_iam_token_that_rds_refuses_is_reported_as_refused_credentials(
    app_server, postgres_cluster, tmp_path
):
    """RDS checks an IAM auth token through PAM, and says "PAM authentication failed" when
    it has expired: the app names that as refused credentials, not as an unreachable
    database. A server that authenticates through PAM refuses the same way."""
    postgres_cluster.stop()
    (postgres_cluster.datadir / "pg_hba.conf").write_text(
        "local all all scram-sha-256\nhost all all 127.0.0.1/32 pam\n"
    )
    postgres_cluster.start()
    url_file = tmp_path / "database-url"
    replace_file(url_file, postgres_cluster.url + "\n")
    # pam_unix waits about 2 s before it says no.
    server = app_server(DATABASE_URL="", DATABASE_URL_FILE=str(url_file), DB_TIMEOUT_SECONDS="10")

    refused = server.post("/visits")

    assert refused.status == 503
    assert refused.json()["reason"] == "database refused the credentials"
