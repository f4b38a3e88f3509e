"""A database that hangs never takes the service down: the bulkhead and the circuit breaker.

The hung database is a real TCP peer that accepts connections and never answers, which is
what a primary in the middle of a failover looks like to a client.
"""

import threading
import time
from concurrent.futures import ThreadPoolExecutor

from support import Response, wait_until

# The ALB's health check gives up after 5 s, and then counts the target unhealthy.
HEALTH_CHECK_TIMEOUT = 5


def post_visit(server) -> Response:
    return server.post("/visits", timeout=30)


def test_health_checks_answer_while_concurrent_writes_hang_on_the_database(
    app_server, unresponsive_database
):
    server = app_server(DATABASE_URL=unresponsive_database, DB_TIMEOUT_SECONDS="2")
    health_failures, health_answers = [], 0
    with ThreadPoolExecutor(max_workers=16) as pool:
        posts = [pool.submit(post_visit, server) for _ in range(16)]
        deadline = time.monotonic() + 20  # bounded, whatever happens
        while not all(p.done() for p in posts) and time.monotonic() < deadline:
            try:
                health = server.get("/healthz", timeout=HEALTH_CHECK_TIMEOUT)
                health_answers += 1
                if health.status != 200:
                    health_failures.append(health.status)
            except OSError as error:
                health_failures.append(repr(error))
            time.sleep(0.05)
        answers = [p.result() for p in posts]

    assert health_failures == []
    assert health_answers > 0
    assert {a.status for a in answers} == {503}
    reasons = [a.json()["reason"] for a in answers]
    # Three (DB_MAX_CONCURRENCY: all threads but one) waited out the timeout; every other one
    # was turned away at once instead of queueing behind them.
    assert reasons.count("database timed out") <= 3
    assert reasons.count("database busy") == 16 - reasons.count("database timed out")


def test_once_the_database_is_lost_one_request_probes_and_the_others_fail_fast(
    app_server, unresponsive_database
):
    server = app_server(DATABASE_URL=unresponsive_database, DB_TIMEOUT_SECONDS="2")
    assert server.get("/readyz", timeout=30).json()["reason"] == "database timed out"
    server.wait_for_event("database_lost")

    probe = {}
    prober = threading.Thread(target=lambda: probe.update(answer=server.get("/visits", timeout=30)))
    prober.start()
    server.let_server_read()  # the probe now waits on the database
    fast = server.get("/visits", timeout=30)
    probe_still_waiting = prober.is_alive()
    prober.join()

    assert probe_still_waiting, "the second request waited for the probe instead of failing fast"
    assert fast.status == 503
    assert fast.json() == {"error": "database unavailable", "reason": "database timed out"}
    assert probe["answer"].status == 503


def test_a_database_killed_mid_writes_loses_no_201_and_counts_no_503(app_server, postgres_cluster):
    server = app_server(DATABASE_URL=postgres_cluster.url, DB_TIMEOUT_SECONDS="2")
    initial = server.get("/visits").json()["visits"]
    answers: list = []  # list.append is atomic: the writers share it
    stop = threading.Event()

    def write_visits():
        deadline = time.monotonic() + 60  # bounded, whatever happens
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                answers.append(server.post("/visits", timeout=10).status)
            except OSError as error:
                answers.append(repr(error))

    with ThreadPoolExecutor(max_workers=4) as pool:
        writers = [pool.submit(write_visits) for _ in range(4)]
        wait_until(lambda: answers.count(201) >= 20, what="20 visits before the crash")
        postgres_cluster.kill()
        killed_at = len(answers)
        wait_until(lambda: 503 in answers[killed_at:], what="a 503 while the database is down")
        postgres_cluster.start()
        restarted_at = len(answers)
        wait_until(
            lambda: answers[restarted_at:].count(201) >= 20, timeout=30, what="visits after it"
        )
        stop.set()
        for writer in writers:
            writer.result()

    assert set(answers) <= {201, 503}, "every POST got an answer, and only these two"
    final = server.get("/visits").json()["visits"]
    assert final == initial + answers.count(201)
