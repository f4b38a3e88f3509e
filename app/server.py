"""Run a WSGI app on waitress, and stop it gracefully on SIGTERM or SIGINT.

waitress's own serve() exits on a signal without draining. Here a signal only sets a flag;
the loop then stops accepting, lets requests in flight finish (including their responses,
which waitress's main loop writes), closes idle keep-alive connections, and returns.
"""

import logging
import signal
import socket
import threading
import time

from waitress import wasyncore
from waitress.server import create_server
from waitress.task import ThreadedTaskDispatcher

from app.config import Config
from app.systemd import notify

log = logging.getLogger("app.server")

POLL_SECONDS = 0.2
# The WSGI environ key that tells the request log how long the request sat in waitress's
# queue before a thread took it.
QUEUE_WAIT_KEY = "hello.queue_wait_ms"
# Behind an ALB, which keeps its connections to a target open and idle for up to 60 s (its
# default idle timeout): close ours only later, so the ALB never sends a request down a
# connection we are closing (a 502). A client that stalls mid-request is cut off after it.
CHANNEL_TIMEOUT_SECONDS = 75
# waitress stops accepting at 100 connections by default, so 100 clients that each send half
# a request would lock out the ALB's health checks. The kernel's file limit is the real bound
# (the unit sets LimitNOFILE); channel_timeout reclaims stalled connections.
CONNECTION_LIMIT = 1000
# On SIGTERM, a connection that has not sent its first request yet was most likely accepted a
# moment before the signal, its request on the way (with socket activation, new connections
# keep coming to every worker). It gets this long to send it before it counts as idle.
FIRST_REQUEST_GRACE_SECONDS = 1.0

_queued = threading.local()


class _QueuedTask:
    """A waitress task (a channel with a request to serve) that knows when it was queued."""

    def __init__(self, task):
        self.task = task
        self.queued_at = time.monotonic()

    def service(self):
        _queued.wait_ms = round((time.monotonic() - self.queued_at) * 1000, 2)
        self.task.hello_has_served = True  # see _is_idle
        self.task.service()

    def __getattr__(self, name):  # cancel(), and whatever else waitress asks of a task
        return getattr(self.task, name)


class TimedTaskDispatcher(ThreadedTaskDispatcher):
    """waitress's thread pool, noting how long each task waited for a thread."""

    def add_task(self, task):
        super().add_task(_QueuedTask(task))


def with_queue_wait(wsgi_app):
    """Put the current request's queue wait into its environ, for the request log."""

    def app(environ, start_response):
        environ[QUEUE_WAIT_KEY] = getattr(_queued, "wait_ms", None)
        return wsgi_app(environ, start_response)

    return app


class GracefulServer:
    def __init__(self, wsgi_app, config: Config):
        self.config = config
        self._stop_signal: int | None = None
        dispatcher = TimedTaskDispatcher()
        dispatcher.set_thread_count(config.threads)
        if config.listen_fd is not None:
            # Socket activation: systemd owns the listening socket, and every worker accepts
            # from it. Closing our copy on SIGTERM leaves it open for the others.
            listen = {"sockets": [socket.socket(fileno=config.listen_fd)]}
        else:
            listen = {"host": config.host, "port": config.port}
        self.server = create_server(
            with_queue_wait(wsgi_app),
            # waitress's documented hook for a dispatcher of one's own (it calls it a shim).
            _dispatcher=dispatcher,
            **listen,
            threads=config.threads,
            connection_limit=CONNECTION_LIMIT,
            channel_timeout=CHANNEL_TIMEOUT_SECONDS,
            # How often idle and stalled channels are checked against channel_timeout.
            cleanup_interval=10,
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
        log.info(
            "ready",
            extra={
                "host": self.server.effective_host,
                "port": self.port,
                "socket": "systemd" if self.config.listen_fd is not None else "own",
            },
        )
        notify(self.config.notify_socket, "READY=1")
        while self._stop_signal is None:
            self._poll()
        # Stop accepting before saying so: a client told "stopping" must find the port shut.
        # Not server.close(): that also closes the trigger the worker threads use to wake
        # this loop when a response is ready.
        wasyncore.dispatcher.close(self.server)
        log.info("stopping", extra={"signal": signal.Signals(self._stop_signal).name})
        notify(self.config.notify_socket, "STOPPING=1")
        self._drain()
        log.info("stopped")

    def _poll(self, timeout: float = POLL_SECONDS) -> None:
        wasyncore.loop(timeout=timeout, map=self.server._map, use_poll=True, count=1)

    def _drain(self) -> None:
        deadline = time.monotonic() + self.config.shutdown_timeout_seconds
        while True:
            # Poll first, so bytes that arrived with the signal are read before judging idleness.
            self._poll(timeout=0.05)
            channels = list(self.server.active_channels.values())
            if not channels:
                break
            if time.monotonic() >= deadline:
                log.warning("shutdown_timeout", extra={"open_connections": len(channels)})
                break
            for channel in channels:
                if _is_idle(channel):
                    channel.will_close = True
        self.server.task_dispatcher.shutdown(timeout=1)
        self.server.trigger.close()


def _is_idle(channel) -> bool:
    """Nothing half-received, nothing being processed, nothing left to send, and not a fresh
    connection whose first request may still be on its way."""
    if channel.request is not None or channel.requests or channel.total_outbufs_len:
        return False
    fresh = time.time() - channel.creation_time < FIRST_REQUEST_GRACE_SECONDS
    return getattr(channel, "hello_has_served", False) or not fresh
