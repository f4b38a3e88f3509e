"""The app against a real PostgreSQL server, including the server going away and coming back."""

import threading
import time

from support import PostgresCluster, wait_until


def visits(server) -> int:
    response = server.get("/visits")
    assert response.status == 200, response.text
    return response.json()["visits"]


def test_readyz_reports_postgresql_ready(app_server, postgres_url):
    server = app_server(DATABASE_URL=postgres_url)
    response = server.get("/readyz")
    assert response.status == 200
    assert response.json() == {"status": "ready", "database": "postgresql"}


def test_visits_are_stored_in_postgresql_and_survive_an_app_restart(app_server, postgres_url):
    first = app_server(DATABASE_URL=postgres_url)
    before = visits(first)
    assert first.post("/visits").json() == {"visits": before + 1}
    assert first.post("/visits").json() == {"visits": before + 2}
    assert first.terminate() == 0

    second = app_server(DATABASE_URL=postgres_url)
    assert visits(second) == before + 2


def test_database_outage_degrades_and_recovers_without_a_restart(app_server, postgres_cluster):
    server = app_server(DATABASE_URL=postgres_cluster.url, DB_TIMEOUT_SECONDS="2")
    server.post("/visits")
    server.post("/visits")

    postgres_cluster.stop()
    assert server.get("/").text == "Hello World"
    assert server.get("/healthz").status == 200
    ready = server.get("/readyz")
    assert ready.status == 503
    assert ready.json() == {"status": "unavailable", "reason": "database unreachable"}
    for method in ("GET", "POST"):
        response = server.get("/visits", method=method)
        assert response.status == 503
        assert response.json()["error"] == "database unavailable"

    postgres_cluster.start()
    wait_until(lambda: server.get("/readyz").status == 200, what="/readyz to recover")
    assert visits(server) == 2
    assert server.proc.poll() is None, "the app must recover without a restart"

    events = [e["event"] for e in server.log_events()]
    assert events.index("database_lost") < events.index("database_back")
    assert PostgresCluster.PASSWORD not in server.log


def test_app_starts_and_serves_while_the_database_is_down(app_server, postgres_cluster):
    postgres_cluster.stop()
    server = app_server(DATABASE_URL=postgres_cluster.url, DB_TIMEOUT_SECONDS="2")
    assert server.get("/").text == "Hello World"
    assert server.get("/readyz").status == 503

    postgres_cluster.start()
    # The schema did not exist when the app started; it is created on first use.
    wait_until(lambda: server.post("/visits").status == 201, what="the first visit to be stored")
    assert visits(server) == 1


def test_a_hung_database_costs_a_bounded_wait_and_blocks_nothing_else(
    app_server, unresponsive_database
):
    server = app_server(DATABASE_URL=unresponsive_database, DB_TIMEOUT_SECONDS="2")
    results = {}

    def ask_readyz():
        started = time.monotonic()
        results["readyz"] = server.get("/readyz", timeout=30)
        results["seconds"] = time.monotonic() - started

    waiter = threading.Thread(target=ask_readyz)
    waiter.start()
    # While /readyz waits on the database, the rest of the app keeps answering.
    assert server.get("/", timeout=5).text == "Hello World"
    waiter.join()
    assert results["readyz"].status == 503
    assert results["readyz"].json()["reason"] == "database timed out"
    # Bounded by the client-side deadline (DB_TIMEOUT_SECONDS, 2 s), not by TCP's minutes.
    assert results["seconds"] < 10
