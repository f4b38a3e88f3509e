"""The app as a real waitress server: bad input over a real socket, logs, graceful stop."""

import json
import signal
import socket

import pytest
from support import raw_exchange, read_response


@pytest.fixture
def server(app_server):
    return app_server()


def status_of(raw: bytes) -> int:
    return int(raw.split(b" ", 2)[1])


def test_root_answers_hello_world_over_http(server):
    response = server.get("/")
    assert response.status == 200
    assert response.text == "Hello World"
    assert response.headers["content-type"].startswith("text/plain")
    # No banner that advertises the server software.
    assert "server" not in response.headers


def test_head_root_answers_without_a_body(server):
    response = server.get("/", method="HEAD")
    assert response.status == 200
    assert response.body == b""


@pytest.mark.parametrize(
    ("request_bytes", "expected_status"),
    [
        (b"GET /does-not-exist HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 404),
        (b"PUT / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", 405),
        (b"THIS IS NOT HTTP\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: banana\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: x\r\nBroken header line\r\n\r\n", 400),
    ],
    ids=["unknown-path", "wrong-method", "garbage", "bad-content-length", "bad-header"],
)
def test_bad_requests_get_a_4xx_and_the_server_stays_up(server, request_bytes, expected_status):
    answer = raw_exchange(server.port, request_bytes)
    assert status_of(answer) == expected_status
    assert b"Traceback" not in answer
    assert server.get("/").text == "Hello World"


def test_body_over_one_mebibyte_is_refused_with_413(server):
    declared = 2 * 1024 * 1024
    head = f"POST /visits HTTP/1.1\r\nHost: x\r\nContent-Length: {declared}\r\n\r\n".encode()
    answer = raw_exchange(server.port, head + b"x" * 65536)
    assert status_of(answer) == 413
    assert server.get("/").status == 200


def test_chunked_body_over_one_mebibyte_is_refused_with_413(server):
    chunk = b"x" * 65536
    body = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(20))
    head = b"POST /visits HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    answer = raw_exchange(server.port, head + body + b"0\r\n\r\n")
    assert status_of(answer) == 413
    assert server.get("/").status == 200


def test_oversized_headers_are_refused(server):
    huge = b"X-Filler: " + b"a" * (128 * 1024) + b"\r\n"
    answer = raw_exchange(server.port, b"GET / HTTP/1.1\r\nHost: x\r\n" + huge + b"\r\n")
    assert status_of(answer) == 431
    assert server.get("/").status == 200


def test_each_request_is_one_json_log_line(server):
    server.get("/")
    server.get("/missing")
    requests = [e for e in server.log_events() if e["event"] == "request"]
    by_path = {(e["method"], e["path"]): e for e in requests}
    assert by_path[("GET", "/")]["status"] == 200
    assert by_path[("GET", "/missing")]["status"] == 404
    assert all(isinstance(e["duration_ms"], float | int) for e in requests)
    # How long each waited in waitress's queue for a thread.
    assert all(isinstance(e["queue_ms"], float | int) and e["queue_ms"] >= 0 for e in requests)


def test_lifecycle_is_logged(server):
    server.terminate()
    events = [e["event"] for e in server.log_events()]
    assert events.index("starting") < events.index("ready") < events.index("stopping")
    assert events[-1] == "stopped"


def sigterm_mid_request(server, sock: socket.socket, partial_request: bytes) -> None:
    """Send part of a request, then SIGTERM; return once the server says it is stopping."""
    sock.sendall(partial_request)
    server.let_server_read()
    server.proc.send_signal(signal.SIGTERM)
    server.wait_for_event("stopping")


def test_sigterm_stops_the_server_with_exit_code_0(server):
    assert server.terminate(timeout=10) == 0


def test_sigterm_lets_a_request_in_flight_finish(server):
    # Send a request's headers, then SIGTERM, then the rest of its body.
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sigterm_mid_request(
            server, sock, b"POST /visits HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nab"
        )
        sock.sendall(b"cde")
        answer = read_response(sock)
    assert status_of(answer) == 201
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1]) == {"visits": 1}
    assert server.proc.wait(timeout=10) == 0


def test_sigterm_does_not_wait_for_idle_keep_alive_connections(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status_of(read_response(sock)) == 200
        # The connection stays open and idle; the server must still stop promptly.
        assert server.terminate(timeout=5) == 0


def test_new_connections_are_refused_once_stopping(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sigterm_mid_request(
            server, sock, b"POST /visits HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n"
        )
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", server.port), timeout=2)
        sock.sendall(b"ok")
        assert status_of(read_response(sock)) == 201


def test_sigterm_with_no_shutdown_timeout_stops_at_once_and_cleanly(app_server):
    server = app_server(SHUTDOWN_TIMEOUT_SECONDS="0")
    assert server.get("/").status == 200
    assert server.terminate(timeout=10) == 0
    assert server.log_events()[-1]["event"] == "stopped"
    assert "Traceback" not in server.log


def test_health_checks_still_answer_while_many_clients_hold_half_sent_requests(server):
    # waitress's default connection_limit (100) let 100 such clients lock out the ALB's
    # health checks: new connections waited in the backlog until the ALB's 5 s timeout.
    stalled = []
    try:
        for _ in range(150):
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
            sock.sendall(b"POST /visits HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nhalf")
            stalled.append(sock)
        server.let_server_read()
        health = server.get("/healthz", timeout=5)  # the ALB's health-check timeout
        assert health.status == 200
    finally:
        for sock in stalled:
            sock.close()


def test_a_connection_accepted_just_before_sigterm_still_gets_its_answer(server):
    # With socket activation, a worker that is stopping may just have accepted a connection
    # whose request is still on its way; closing it as idle would fail that request.
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        server.let_server_read()  # accepted, nothing sent yet
        server.proc.send_signal(signal.SIGTERM)
        server.wait_for_event("stopping")
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status_of(read_response(sock)) == 200
    assert server.proc.wait(timeout=10) == 0
