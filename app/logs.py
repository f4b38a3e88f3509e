"""JSON-lines logging: one object per line, info on stdout, warnings and errors on stderr."""

import json
import logging
import os
import sys
import time
from urllib.parse import urlsplit, urlunsplit

# Attributes every LogRecord has; anything else came in through `extra=` and is a field.
_RECORD_ATTRS = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


def redact_url(url: str) -> str:
    """The URL with its password replaced, safe to log."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        entry.update({k: v for k, v in vars(record).items() if k not in _RECORD_ATTRS})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class _BelowWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno < logging.WARNING


class LineWriter(logging.Handler):
    """Writes each record as a single os.write() of one line, and takes no lock.

    A StreamHandler serialises every request thread on its lock; under load they queue up
    there, which cost about two thirds of GET / throughput (make bench). One write() call per
    line keeps lines whole without that lock.
    """

    def __init__(self, stream):
        super().__init__()
        self.fd = stream.fileno()

    def createLock(self) -> None:
        self.lock = None

    def emit(self, record: logging.LogRecord) -> None:
        try:
            data = (self.format(record) + "\n").encode()
            while data:
                data = data[os.write(self.fd, data) :]
        except Exception:
            self.handleError(record)


def setup_logging(level: str) -> None:
    formatter = JsonFormatter()
    stdout = LineWriter(sys.stdout)
    stdout.addFilter(_BelowWarning())
    stderr = LineWriter(sys.stderr)
    stderr.setLevel(logging.WARNING)
    root = logging.getLogger()
    root.handlers[:] = []
    for handler in (stdout, stderr):
        handler.setFormatter(formatter)
        root.addHandler(handler)
    root.setLevel(level)
