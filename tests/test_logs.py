"""Log lines: JSON, one per line, whole even when many threads log at once, no passwords."""

import json
import logging
import threading

from app.logs import JsonFormatter, LineWriter, redact_url


def test_redact_url_hides_only_the_password():
    url = "postgresql://app:p%40ss@db.internal:5432/app"
    assert redact_url(url) == "postgresql://app:***@db.internal:5432/app"
    assert redact_url("sqlite:////var/lib/app.db") == "sqlite:////var/lib/app.db"


def test_a_record_becomes_one_json_object_with_its_extra_fields():
    record = logging.makeLogRecord(
        {"name": "app.request", "levelno": logging.INFO, "levelname": "INFO", "msg": "request"}
    )
    record.status = 404
    entry = json.loads(JsonFormatter().format(record))
    assert entry["event"] == "request"
    assert entry["level"] == "info"
    assert entry["status"] == 404
    assert entry["ts"].endswith("Z")


def test_lines_stay_whole_when_many_threads_log_at_once(tmp_path):
    path = tmp_path / "app.log"
    logger = logging.getLogger("test.linewriter")
    logger.propagate = False
    with path.open("w") as stream:
        handler = LineWriter(stream)
        handler.setFormatter(JsonFormatter())
        logger.addHandler(handler)
        try:
            padding = "x" * 2000  # long lines make interleaving likely if writes were split

            def log_many(writer: int):
                for i in range(300):
                    logger.warning("event", extra={"writer": writer, "i": i, "pad": padding})

            threads = [threading.Thread(target=log_many, args=(t,)) for t in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        finally:
            logger.removeHandler(handler)

    entries = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(entries) == 8 * 300
    assert {(e["writer"], e["i"]) for e in entries} == {
        (t, i) for t in range(8) for i in range(300)
    }
