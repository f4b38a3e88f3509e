"""The WSGI application: routes, JSON errors and one log line per request."""

import logging
import re
import time

import bottle

from app.db import Database, DatabaseUnavailable
from app.server import QUEUE_WAIT_KEY

log = logging.getLogger("app.request")

# A retry of POST /visits with the same key returns the first answer and counts once.
IDEMPOTENCY_KEY = "Idempotency-Key"
VALID_KEY = re.compile(r"[\x21-\x7e]{1,255}")
BAD_KEY = f"{IDEMPOTENCY_KEY} must be 1 to 255 visible ASCII characters"


def create_app(database: Database) -> bottle.Bottle:
    """Build the Bottle app around a database. No globals: tests build as many as they like."""
    app = bottle.Bottle(catchall=True, autojson=True)
    app.install(DatabaseUnavailableAs503())

    @app.get("/")
    def hello():
        bottle.response.content_type = "text/plain; charset=utf-8"
        return "Hello World"

    @app.get("/healthz")
    def healthz():
        # Liveness only: answering at all is the signal, so never touch the database here.
        return {"status": "ok"}

    @app.get("/readyz")
    def readyz():
        try:
            database.ping()
        except DatabaseUnavailable as exc:
            return bottle.HTTPResponse(
                status=503, body={"status": "unavailable", "reason": exc.reason}
            )
        return {"status": "ready", "database": database.kind}

    @app.get("/visits")
    def count_visits():
        return {"visits": database.count_visits()}

    @app.post("/visits")
    def record_visit():
        # raw: get_header() decodes as UTF-8, and raises on a byte that is not.
        key = bottle.request.headers.raw(IDEMPOTENCY_KEY)
        if key is not None and not VALID_KEY.fullmatch(key):
            return bottle.HTTPResponse(status=400, body={"error": BAD_KEY})
        visit = database.record_visit(key)
        bottle.response.status = 201
        if visit.replayed:
            bottle.response.set_header("Idempotent-Replayed", "true")
        return {"visits": visit.count}

    @app.error(404)
    def not_found(error):
        return _json_body(error, "not found")

    @app.error(405)
    def method_not_allowed(error):
        return _json_body(error, "method not allowed")

    @app.error(500)
    def internal_error(error):
        # Bottle stores the exception on the error; log it here, show the client nothing of it.
        if error.exception is not None:
            log.error("unhandled_exception", exc_info=error.exception)
        return _json_body(error, "internal server error")

    return app


def _json_body(error: bottle.HTTPError, message: str) -> str:
    bottle.response.content_type = "application/json"
    return bottle.json_dumps({"error": message})


class DatabaseUnavailableAs503:
    """Bottle plugin: any route whose database call fails answers 503 JSON, never 500."""

    name = "database_unavailable_as_503"
    api = 2

    def apply(self, callback, route):
        def wrapper(*args, **kwargs):
            try:
                return callback(*args, **kwargs)
            except DatabaseUnavailable as exc:
                body = {"error": "database unavailable", "reason": exc.reason}
                if exc.outcome_unknown:
                    body["outcome"] = "unknown"
                return bottle.HTTPResponse(status=503, body=body)

        return wrapper


class RequestLog:
    """WSGI middleware: one JSON line per request with method, path, status, duration, and
    how long the request waited for a thread (queue_ms, when the server reports it)."""

    def __init__(self, app):
        self.app = app

    def __call__(self, environ, start_response):
        started = time.perf_counter()
        status = ["500"]

        def capture_status(status_line, headers, exc_info=None):
            status[0] = status_line.split(" ", 1)[0]
            return start_response(status_line, headers, exc_info)

        try:
            return self.app(environ, capture_status)
        finally:
            log.info(
                "request",
                extra={
                    "method": environ.get("REQUEST_METHOD"),
                    "path": environ.get("PATH_INFO"),
                    "status": int(status[0]),
                    "duration_ms": round((time.perf_counter() - started) * 1000, 2),
                    "queue_ms": environ.get(QUEUE_WAIT_KEY),
                },
            )
