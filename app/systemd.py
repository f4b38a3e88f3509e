"""sd_notify(3) without libsystemd: one datagram to the socket systemd names in NOTIFY_SOCKET."""

import logging
import socket

log = logging.getLogger("app.systemd")


def notify(address: str | None, message: str) -> None:
    """Tell systemd about a state change, e.g. "READY=1". Does nothing when not run by systemd."""
    if not address:
        return
    if address.startswith("@"):  # an abstract socket
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
    except OSError as exc:
        # systemd then times the start out and says so; the app itself can still serve.
        log.warning("systemd_notify_failed", extra={"message": message, "detail": str(exc)})
