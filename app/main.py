"""The app's start: reads the configuration once, then serves until SIGTERM. Run it as
`python -m app` (app/__main__.py).
"""

import contextlib
import logging
import sys
import threading

from app.config import ConfigError, load_config
from app.db import DatabaseUnavailable, open_database
from app.logs import setup_logging
from app.server import GracefulServer
from app.web import RequestLog, create_app

EXIT_CONFIG_ERROR = 2

log = logging.getLogger("app")


def warm_up(database) -> None:
    """Create the schema and log the database state, without holding up the start."""
    # A failure is already logged as database_lost, and each request retries.
    with contextlib.suppress(DatabaseUnavailable):
        database.ping()


def main() -> int:
    try:
        config = load_config()
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG_ERROR

    setup_logging(config.log_level)
    log.info(
        "starting",
        extra={
            "port": config.port,
            "threads": config.threads,
            "database_url": config.database_source,
        },
    )
    database = open_database(config)
    try:
        server = GracefulServer(RequestLog(create_app(database)), config)
    except OSError as exc:
        log.error("cannot_listen", extra={"port": config.port, "detail": str(exc)})
        return 1
    threading.Thread(target=warm_up, args=(database,), name="db-warm-up", daemon=True).start()
    server.serve()
    return 0
