"""A client-side deadline on every PostgreSQL round trip, COMMIT included.

libpq waits for the server in the kernel, and a server can keep it waiting for ever:
PostgreSQL turns statement_timeout off before a COMMIT waits on synchronous replication
(finish_xact_command), so a lost standby held the COMMIT, its thread and the counter row's
lock until the standby came back. psycopg2's documented way to bound a call on the client
side is a wait callback (extensions.set_wait_callback): psycopg2 then drives libpq without
blocking and calls back here to wait, and here the wait ends at the thread's deadline.
"""

import select
import threading
import time
from contextlib import contextmanager

import psycopg2
import psycopg2.extensions as ext

_local = threading.local()


class DeadlinePassed(ext.QueryCanceledError):
    """The server did not answer in time. `backend_pid` is the server process that may still
    be working on the call, for pg_cancel_backend; 0 when the connection was not made yet."""

    def __init__(self, seconds: float, backend_pid: int):
        super().__init__(f"no answer from the database within {seconds:g} s")
        self.backend_pid = backend_pid


@contextmanager
def deadline(seconds: float):
    """Every PostgreSQL call this thread makes in the block ends within `seconds` of the
    block's start, answered or not. Blocks nest; the inner one's deadline applies inside it."""
    outer = getattr(_local, "deadline", None)
    _local.deadline = (time.monotonic() + seconds, seconds)
    try:
        yield
    finally:
        _local.deadline = outer


def wait_until_deadline(conn) -> None:
    """psycopg2's wait callback: poll the connection until it is done, or the deadline."""
    at, seconds = getattr(_local, "deadline", None) or (None, None)
    while True:
        state = conn.poll()
        if state == ext.POLL_OK:
            return
        if state == ext.POLL_READ:
            events = select.POLLIN
        elif state == ext.POLL_WRITE:
            events = select.POLLOUT
        else:
            raise psycopg2.OperationalError(f"unexpected poll state {state}")
        timeout_ms = None
        if at is not None:
            remaining = at - time.monotonic()
            if remaining <= 0:
                raise DeadlinePassed(seconds, backend_pid(conn))
            timeout_ms = max(1, int(remaining * 1000))
        poller = select.poll()  # not select.select: it cannot watch a descriptor over 1023
        poller.register(conn.fileno(), events)
        poller.poll(timeout_ms)


def backend_pid(conn) -> int:
    try:
        return conn.info.backend_pid
    except psycopg2.Error:
        return 0


def install() -> None:
    """Bound every psycopg2 connection of this process (there is one callback per process).
    Outside a deadline block, calls wait as long as libpq would."""
    ext.set_wait_callback(wait_until_deadline)
