"""The HA lab's load generator (lab/load.py, lab/locustfile.py) against the real app.
No Docker: the app runs as a local process on SQLite."""

import subprocess
import sys
import time

import pytest
from support import free_port

from lab.load import LOCUSTFILE, Load

PATHS = {("GET", "/"), ("GET", "/healthz"), ("POST", "/visits"), ("GET", "/visits")}


def visits(app) -> int:
    return app.get("/visits").json()["visits"]


def test_constant_load_reaches_every_route_and_counts_the_visits_it_created(app_server, tmp_path):
    app = app_server()
    before = visits(app)
    started = time.monotonic()
    with Load(app.port, tmp_path / "load", seconds=6, rate=20) as load:
        load.wait()
    took = time.monotonic() - started

    assert {(r.method, r.path) for r in load.requests} == PATHS
    assert all(r.ok for r in load.requests), load.failures()[:5]
    assert 60 <= load.count() <= 20 * 6 + 20  # bounded by rate x seconds, give or take a second
    posted = [r for r in load.requests if r.name == "POST /visits"]
    assert load.created() == sum(r.status == 201 for r in posted) == len(posted)
    assert load.ambiguous_writes() == 0
    assert visits(app) - before == load.created()
    assert took < 6 + 10, f"the load should stop by itself after its 6 s, took {took:.1f} s"
    assert load.error_window() is None
    assert load.p99_ms("/", since=load.requests[0].at) < 1000
    for locust_csv in ("locust_stats.csv", "locust_stats_history.csv"):
        assert (tmp_path / "load" / locust_csv).stat().st_size > 0


def test_an_outage_is_recorded_as_failures_without_an_answer(app_server, tmp_path):
    app = app_server()
    before = visits(app)
    with Load(app.port, tmp_path / "load", seconds=8, rate=20) as load:
        time.sleep(2)
        outage_began = time.time()
        app.terminate()
        time.sleep(1.5)
        app.start()
        outage_ended = time.time()
        time.sleep(1.5)

    failed = load.failures()
    assert failed, "requests sent while the app was down should have failed"
    assert all(r.status == 0 and r.error for r in failed), failed[:5]
    first, last = load.error_window()
    assert outage_began - 0.5 <= first <= last <= outage_ended
    assert last - first >= 1.0, "failures should span most of the 1.5 s outage"
    assert load.count(ok=True, since=outage_ended) > 0, "the load should recover after restart"
    assert load.count(ok=True, until=outage_began) > 0
    stored = visits(app) - before
    assert load.created() <= stored <= load.created() + load.ambiguous_writes()
    assert load.exit_code == 0, "stopped early, Locust should still shut down cleanly"
    assert (tmp_path / "load" / "locust_stats.csv").stat().st_size > 0


def test_a_server_that_never_answers_times_out_and_leaves_writes_ambiguous(
    unresponsive_database, tmp_path
):
    port = int(unresponsive_database.rsplit(":", 1)[1].split("/")[0])
    with Load(port, tmp_path / "load", seconds=3, rate=4, request_timeout=1) as load:
        pass  # entering waits for the first request, here the first timeout

    assert load.requests
    outcomes = {(r.status, r.ok, r.error) for r in load.requests}
    assert outcomes == {(0, False, "ReadTimeout: read timed out")}
    assert all(r.latency_ms >= 1000 for r in load.requests)
    assert load.created() == 0
    assert load.ambiguous_writes() == load.count("POST /visits")


def test_load_refuses_any_host_but_loopback(tmp_path):
    with pytest.raises(ValueError, match=r"127\.0\.0\.1 only"):
        Load(8080, tmp_path, host="10.0.0.1")
    assert not list(tmp_path.iterdir()), "nothing should have started"


def test_locustfile_run_by_hand_refuses_a_host_other_than_127_0_0_1(tmp_path):
    # Even `localhost`: it may resolve to ::1 or anything /etc/hosts says.
    rows = tmp_path / "requests.csv"
    locust = subprocess.run(
        [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless",
         "--host", f"http://localhost:{free_port()}", "-u", "1", "-r", "1", "-t", "3s",
         "--requests-csv", str(rows)],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )  # fmt: skip
    assert locust.returncode != 0
    assert "the host must be http://127.0.0.1:PORT" in locust.stderr
    assert not rows.exists()
