"""Run a WSGI app on waitress, and stop it gracefully on SIGTERM or SIGINT.

waitress's own serve() exits on a signal without draining. Here a signal only sets a flag;
the loop then stops accepting, lets requests in flight finish (including their responses,
which waitress's main loop writes), closes idle keep-alive connections, and returns.
"""

import logging
import signal
import time

from waitress import wasyncore
from waitress.server import create_server

from app.config import Config

log = logging.getLogger("app.server")

POLL_SECONDS = 0.2


class GracefulServer:
    def __init__(self, wsgi_app, config: Config):
        self.config = config
        self._stop_signal: int | None = None
        self.server = create_server(
            wsgi_app,
            host=config.host,
            port=config.port,
            threads=config.threads,
            max_request_body_size=config.max_request_body_bytes,
            max_request_header_size=config.max_request_header_bytes,
            # No "Server: waitress" banner, and never a traceback in a response.
            ident="",
            expose_tracebacks=False,
            asyncore_use_poll=True,
        )

    @property
    def port(self) -> int:
        return int(self.server.effective_port)

    def request_stop(self, signum, _frame=None) -> None:
        # Runs between two polls of the main loop: only record the request.
        self._stop_signal = signum

    def serve(self) -> None:
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)
        log.info("ready", extra={"host": self.config.host, "port": self.port})
        while self._stop_signal is None:
            self._poll()
        log.info("stopping", extra={"signal": signal.Signals(self._stop_signal).name})
        self._drain()
        log.info("stopped")

    def _poll(self, timeout: float = POLL_SECONDS) -> None:
        wasyncore.loop(timeout=timeout, map=self.server._map, use_poll=True, count=1)

    def _drain(self) -> None:
        # Stop accepting. Not server.close(): that also closes the trigger the worker
        # threads use to wake this loop when a response is ready.
        wasyncore.dispatcher.close(self.server)
        deadline = time.monotonic() + self.config.shutdown_timeout_seconds
        while time.monotonic() < deadline:
            # Poll first, so bytes that arrived with the signal are read before judging idleness.
            self._poll(timeout=0.05)
            channels = list(self.server.active_channels.values())
            if not channels:
                break
            for channel in channels:
                if _is_idle(channel):
                    channel.will_close = True
        else:
            log.warning("shutdown_timeout", extra={"open_connections": len(channels)})
        self.server.task_dispatcher.shutdown(timeout=1)
        self.server.trigger.close()


def _is_idle(channel) -> bool:
    """Nothing half-received, nothing being processed, nothing left to send."""
    return channel.request is None and not channel.requests and not channel.total_outbufs_len
