"""The WSGI app in-process: routes, JSON errors, database failures and the request log."""

import io
import json
import logging
from wsgiref.util import setup_testing_defaults

import pytest

from app.config import Config
from app.db import open_database
from app.logs import JsonFormatter
from app.web import RequestLog, create_app


def call(app, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None):
    """Call a WSGI app directly; return (status code, headers, body)."""
    environ = {
        "REQUEST_METHOD": method,
        "PATH_INFO": path,
        "CONTENT_LENGTH": str(len(body)),
        "wsgi.input": io.BytesIO(body),
    }
    for name, value in (headers or {}).items():
        environ["HTTP_" + name.upper().replace("-", "_")] = value
    setup_testing_defaults(environ)
    captured = {}

    def start_response(status, headers, exc_info=None):
        captured["status"] = int(status.split()[0])
        captured["headers"] = dict(headers)

    chunks = app(environ, start_response)
    payload = b"".join(chunks)
    if hasattr(chunks, "close"):
        chunks.close()
    return captured["status"], captured["headers"], payload


@pytest.fixture
def sqlite_app(tmp_path):
    config = Config(database_url=f"sqlite:///{tmp_path / 'app.sqlite3'}")
    return create_app(open_database(config))


@pytest.fixture
def broken_database_app(tmp_path):
    # The database file's directory cannot exist: its parent is a regular file.
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    config = Config(database_url=f"sqlite:///{blocker / 'app.sqlite3'}")
    return create_app(open_database(config))


def test_root_says_hello_world_as_plain_text(sqlite_app):
    status, headers, body = call(sqlite_app, "GET", "/")
    assert status == 200
    assert body == b"Hello World"
    assert headers["Content-Type"].startswith("text/plain")


def test_head_root_answers_without_a_body(sqlite_app):
    status, headers, body = call(sqlite_app, "HEAD", "/")
    assert status == 200
    assert body == b""
    assert headers["Content-Type"].startswith("text/plain")


def test_healthz_answers_json_ok(sqlite_app):
    status, headers, body = call(sqlite_app, "GET", "/healthz")
    assert status == 200
    assert headers["Content-Type"] == "application/json"
    assert json.loads(body) == {"status": "ok"}


def test_readyz_is_ready_when_the_database_answers(sqlite_app):
    status, _, body = call(sqlite_app, "GET", "/readyz")
    assert status == 200
    assert json.loads(body) == {"status": "ready", "database": "sqlite"}


def test_visits_are_counted(sqlite_app):
    assert json.loads(call(sqlite_app, "GET", "/visits")[2]) == {"visits": 0}
    assert call(sqlite_app, "POST", "/visits")[0] == 201
    status, _, body = call(sqlite_app, "POST", "/visits")
    assert (status, json.loads(body)) == (201, {"visits": 2})
    assert json.loads(call(sqlite_app, "GET", "/visits")[2]) == {"visits": 2}


def post_with_key(app, key: str):
    status, headers, body = call(app, "POST", "/visits", headers={"Idempotency-Key": key})
    return status, headers.get("Idempotent-Replayed"), json.loads(body)


def test_a_retry_with_the_same_idempotency_key_returns_the_first_answer_and_counts_once(
    sqlite_app,
):
    assert post_with_key(sqlite_app, "order-1") == (201, None, {"visits": 1})
    call(sqlite_app, "POST", "/visits")
    assert post_with_key(sqlite_app, "order-1") == (201, "true", {"visits": 1})
    assert json.loads(call(sqlite_app, "GET", "/visits")[2]) == {"visits": 2}


def test_each_idempotency_key_records_its_own_visit(sqlite_app):
    assert post_with_key(sqlite_app, "a")[2] == {"visits": 1}
    assert post_with_key(sqlite_app, "b")[2] == {"visits": 2}
    assert post_with_key(sqlite_app, "a")[2] == {"visits": 1}
    assert post_with_key(sqlite_app, "b")[2] == {"visits": 2}


@pytest.mark.parametrize(
    "key", ["", "x" * 256, "has space", "tab\there", "caf\u00e9"],
    ids=["empty", "too-long", "space", "control", "non-ascii"],
)  # fmt: skip
def test_a_malformed_idempotency_key_is_refused_with_400_and_counts_nothing(sqlite_app, key):
    status, headers, body = call(sqlite_app, "POST", "/visits", headers={"Idempotency-Key": key})
    assert status == 400
    assert headers["Content-Type"] == "application/json"
    assert json.loads(body) == {
        "error": "Idempotency-Key must be 1 to 255 visible ASCII characters"
    }
    assert json.loads(call(sqlite_app, "GET", "/visits")[2]) == {"visits": 0}


def test_unknown_path_is_404_json(sqlite_app):
    status, headers, body = call(sqlite_app, "GET", "/nope")
    assert status == 404
    assert headers["Content-Type"] == "application/json"
    assert json.loads(body) == {"error": "not found"}


def test_wrong_method_is_405_json_with_allow_header(sqlite_app):
    status, headers, body = call(sqlite_app, "DELETE", "/visits")
    assert status == 405
    assert set(headers["Allow"].split(",")) >= {"GET", "POST"}
    assert json.loads(body) == {"error": "method not allowed"}


def test_database_failure_gives_503_on_database_endpoints_only(broken_database_app):
    for method, path in [("GET", "/readyz"), ("GET", "/visits"), ("POST", "/visits")]:
        status, headers, body = call(broken_database_app, method, path)
        assert status == 503, (method, path)
        assert headers["Content-Type"] == "application/json"
        assert json.loads(body)["reason"] == "database unavailable"
    assert call(broken_database_app, "GET", "/")[0] == 200
    assert call(broken_database_app, "GET", "/healthz")[0] == 200


def test_unexpected_error_is_a_generic_500_and_logged_with_its_traceback(tmp_path, caplog):
    class ExplodingDatabase:
        kind = "exploding"

        def count_visits(self):
            raise RuntimeError("internal detail: /secret/path line 42")

    app = create_app(ExplodingDatabase())
    with caplog.at_level(logging.ERROR):
        status, _, body = call(app, "GET", "/visits")
    assert status == 500
    assert json.loads(body) == {"error": "internal server error"}
    assert b"internal detail" not in body and b"Traceback" not in body
    assert "internal detail" in caplog.text


def test_each_request_is_logged_with_method_path_status_and_duration(sqlite_app, caplog):
    app = RequestLog(sqlite_app)
    with caplog.at_level(logging.INFO, logger="app.request"):
        call(app, "GET", "/nope")
    (record,) = [r for r in caplog.records if r.getMessage() == "request"]
    assert (record.method, record.path, record.status) == ("GET", "/nope", 404)
    assert record.duration_ms >= 0


def test_database_outage_is_logged_without_the_password(caplog):
    # Port 9 (discard) on loopback: nothing listens, so the connection is refused.
    config = Config(
        database_url="postgresql://app:hunter2-secret@127.0.0.1:9/app", db_timeout_seconds=1
    )
    with caplog.at_level(logging.INFO):
        app = create_app(open_database(config))
        status, _, body = call(app, "GET", "/readyz")
    assert status == 503
    assert json.loads(body) == {"status": "unavailable", "reason": "database unreachable"}
    # Format the records as the app does, extra fields included.
    logged = "\n".join(JsonFormatter().format(record) for record in caplog.records)
    assert '"event": "database_lost"' in logged
    assert "app:***@127.0.0.1:9/app" in logged  # the redacted URL of database_selected
    assert "hunter2-secret" not in logged
    assert "hunter2-secret" not in body.decode()
