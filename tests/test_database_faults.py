"""A database that hangs never takes the service down: the bulkhead, the circuit breaker and
the client-side deadline, and idempotency keys that tell the client what became of a write.

The hung database is a real TCP peer that accepts connections and never answers, which is
what a primary in the middle of a failover looks like to a client; or a real PostgreSQL
whose synchronous standby never answers, which holds every COMMIT.
"""

import itertools
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing

import psycopg2
from support import Response, open_loop, wait_until

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


def post_keyed(server, key: str, timeout: float = 10) -> Response:
    return server.post("/visits", headers={"Idempotency-Key": key}, timeout=timeout)


def outcome(answer) -> str:
    """What the client learned of its write: acknowledged, rejected, or unknown (no answer,
    or a 503 that says the COMMIT went unanswered)."""
    if not isinstance(answer, Response):
        return "unknown"
    if answer.status == 201:
        return "acknowledged"
    if answer.status == 503 and answer.json().get("outcome") == "unknown":
        return "unknown"
    return "rejected"


def settle_the_ledger(server, answers: dict[str, object], initial: int) -> dict[str, set[str]]:
    """Send every key once more, once the database is healthy, and check the promise: an
    acknowledged write was kept (the retry replays its answer), a rejected one was never
    counted (the retry records it now), and every key counts once. Returns the keys by
    outcome."""
    by_outcome: dict[str, set[str]] = {"acknowledged": set(), "rejected": set(), "unknown": set()}
    for key, answer in answers.items():
        by_outcome[outcome(answer)].add(key)
    retries = {key: post_keyed(server, key) for key in answers}
    assert {retry.status for retry in retries.values()} == {201}
    replayed = {key for key, retry in retries.items() if retry.headers.get("idempotent-replayed")}
    assert by_outcome["acknowledged"] <= replayed, "an acknowledged write was lost"
    for key in by_outcome["acknowledged"]:
        assert retries[key].json() == answers[key].json(), "a replay is the first answer"
    assert not by_outcome["rejected"] & replayed, "a rejected write was counted"
    assert server.get("/visits").json()["visits"] == initial + len(answers)
    return by_outcome


def test_a_database_killed_mid_writes_loses_no_201_and_counts_no_503(app_server, postgres_cluster):
    server = app_server(DATABASE_URL=postgres_cluster.url, DB_TIMEOUT_SECONDS="2")
    initial = server.get("/visits").json()["visits"]
    answers: dict[str, object] = {}  # each writer thread adds its own keys
    stop = threading.Event()

    def write_visits(writer: int):
        deadline = time.monotonic() + 60  # bounded, whatever happens
        for n in itertools.count():
            if stop.is_set() or time.monotonic() > deadline:
                return
            key = f"killed-{writer}-{n}"
            try:
                answers[key] = post_keyed(server, key)
            except OSError as error:
                answers[key] = error

    def statuses() -> list:
        return [getattr(answer, "status", None) for answer in list(answers.values())]

    with ThreadPoolExecutor(max_workers=4) as pool:
        writers = [pool.submit(write_visits, writer) for writer in range(4)]
        wait_until(lambda: statuses().count(201) >= 20, what="20 visits before the crash")
        postgres_cluster.kill()
        killed_at = len(answers)
        wait_until(lambda: 503 in statuses()[killed_at:], what="a 503 while the database is down")
        postgres_cluster.start()
        restarted_at = len(answers)
        wait_until(
            lambda: statuses()[restarted_at:].count(201) >= 20, timeout=30, what="visits after it"
        )
        stop.set()
        for writer in writers:
            writer.result()

    assert set(statuses()) <= {201, 503}, "every POST got an answer, and only these two"
    settle_the_ledger(server, answers, initial)


def test_concurrent_retries_with_one_idempotency_key_count_once(app_server, postgres_url):
    server = app_server(DATABASE_URL=postgres_url)
    initial = server.get("/visits").json()["visits"]
    key = f"one-key-many-retries-{uuid.uuid4().hex}"  # CI's database outlives the run
    with ThreadPoolExecutor(max_workers=3) as pool:
        answers = list(pool.map(lambda _: post_keyed(server, key), range(9)))
    assert {answer.status for answer in answers} == {201}
    assert {answer.json()["visits"] for answer in answers} == {initial + 1}
    assert server.get("/visits").json()["visits"] == initial + 1


def set_synchronous_standby(cluster, names: str) -> None:
    """synchronous_standby_names on `cluster`, in force once this returns."""
    with closing(psycopg2.connect(cluster.url)) as conn:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("ALTER SYSTEM SET synchronous_standby_names = %s", (names,))
            cur.execute("SELECT pg_reload_conf()")

    def in_force() -> bool:
        with closing(psycopg2.connect(cluster.url)) as conn, conn.cursor() as cur:
            cur.execute("SHOW synchronous_standby_names")
            return cur.fetchone()[0] == names

    wait_until(in_force, what=f"synchronous_standby_names = {names!r}")


def commits_waiting_on_a_standby(cluster) -> int:
    with closing(psycopg2.connect(cluster.url)) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'SyncRep'")
        return cur.fetchone()[0]


def test_a_commit_waiting_on_a_lost_standby_ends_at_the_deadline_and_frees_its_locks(
    app_server, postgres_cluster
):
    """A synchronous standby that never answers: PostgreSQL holds every COMMIT, with no
    statement_timeout, and the first one holds the counter row's lock. Under open-loop load,
    every request must still be answered within the deadline, and no COMMIT left waiting."""
    server = app_server(DATABASE_URL=postgres_cluster.url, DB_TIMEOUT_SECONDS="1")
    initial = server.post("/visits").json()["visits"]  # the schema, before the standby goes
    set_synchronous_standby(postgres_cluster, "lost_standby")
    rate, seconds = 10, 6
    keys = [f"lost-standby-{i}" for i in range(rate * seconds)]
    with ThreadPoolExecutor(max_workers=1) as background:
        pages = background.submit(
            open_loop, rate, rate * seconds, lambda _: server.get("/", timeout=5)
        )
        # The client waits 5 s: the deadline (1 s) and a cancel (the rest) fit well within.
        writes = open_loop(rate, rate * seconds, lambda i: post_keyed(server, keys[i], 5))
        pages = pages.result()

    assert [getattr(page, "status", page) for page in pages] == [200] * len(pages)
    assert all(isinstance(write, Response) for write in writes), "a write went unanswered"
    assert {write.status for write in writes} == {503}, "a COMMIT was acknowledged"
    unknown = [write for write in writes if outcome(write) == "unknown"]
    # A second COMMIT got as far as the standby: the first one's row lock went at its deadline.
    assert len(unknown) >= 2
    wait_until(
        lambda: commits_waiting_on_a_standby(postgres_cluster) == 0,
        timeout=5,
        what="no COMMIT still waiting on the lost standby",
    )

    set_synchronous_standby(postgres_cluster, "")
    settle_the_ledger(server, dict(zip(keys, writes, strict=True)), initial)
