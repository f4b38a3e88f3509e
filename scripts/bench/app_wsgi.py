"""The app as app.main builds it (create_app inside RequestLog, JSON request logs on), as
a WSGI module for another server: make bench serves it with gunicorn. Needs the repository
root on sys.path (gunicorn's --pythonpath)."""

from app.config import load_config
from app.db import open_database
from app.logs import setup_logging
from app.web import RequestLog, create_app

config = load_config()
# Without it the request log lines are never written, and gunicorn would skip work the
# waitress workers do.
setup_logging(config.log_level)
application = RequestLog(create_app(open_database(config)))
