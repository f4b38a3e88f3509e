"""The HA lab's load generator (lab/load.py, lab/locustfile.py) against the real app, and
its reports (lab/report.py). No Docker: the app runs as a local process on SQLite."""

import re
import subprocess
import sys
import time

import pytest
from support import free_port

from lab.load import LOCUSTFILE, Load, Request
from lab.report import DrillResult, print_table, timeline_png, write_markdown

PATHS = {("GET", "/"), ("GET", "/healthz"), ("POST", "/visits"), ("GET", "/visits")}


def visits(app) -> int:
    return app.get("/visits").json()["visits"]


def test_constant_load_reaches_every_route_and_counts_the_visits_it_created(app_server, tmp_path):
    # Open loop on a busy machine: enough threads that no write meets the bulkhead.
    app = app_server(WAITRESS_THREADS="8")
    before = visits(app)
    started = time.monotonic()
    with Load(app.port, tmp_path / "load", seconds=6, rate=10) as load:
        load.wait()
    took = time.monotonic() - started

    assert {(r.method, r.path) for r in load.requests} == PATHS
    assert all(r.ok for r in load.requests), load.failures()[:5]
    assert 30 <= load.count() <= 10 * 6 + 10  # bounded by rate x seconds, give or take a second
    posted = [r for r in load.requests if r.name == "POST /visits"]
    assert load.created() == sum(r.status == 201 for r in posted) == len(posted)
    assert load.ambiguous_writes() == 0
    assert visits(app) - before == load.created()
    # Each write carried a key of its own, from this load's prefix, and the app answered it
    # as a first request: a retry of one returns its first answer.
    keys = [r.key for r in posted]
    assert len(set(keys)) == len(keys) and all(k.startswith(f"{load.key_prefix}-") for k in keys)
    retry = app.post("/visits", headers={"Idempotency-Key": keys[0]})
    assert retry.headers.get("idempotent-replayed") == "true"
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
    unanswered = {r.key for r in load.select("POST /visits") if r.status == 0}
    assert unanswered and load.writes("unknown") == unanswered
    assert load.exit_code == 0, "stopped early, Locust should still shut down cleanly"
    assert (tmp_path / "load" / "locust_stats.csv").stat().st_size > 0


def test_a_refused_request_is_recorded_with_the_reason_the_app_gave(app_server, tmp_path):
    # Nothing listens on the database's port: /visits answers 503, and says why.
    app = app_server(DATABASE_URL=f"postgresql://app:pw@127.0.0.1:{free_port()}/app")
    with Load(app.port, tmp_path / "load", seconds=3, rate=8) as load:
        load.wait()

    refused = load.failures("/visits")
    assert refused, "every /visits should have failed"
    assert load.failures() == refused, "/ and /healthz do not use the database"
    assert all(r.status == 503 and "database unreachable" in r.error for r in refused), refused[:3]


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


def synthetic_requests(start: float) -> list[Request]:
    """Two requests a second on two paths for 20 s; /visits fails from 8 s to 12 s."""
    rows = []
    for tick in range(40):
        at = start + tick / 2
        down = 8 <= tick / 2 < 12
        rows.append(Request(at, "GET", "/", 200, 3.0, True, ""))
        if down:
            rows.append(Request(at, "POST", "/visits", 0, 5000.0, False, "read timed out"))
        else:
            rows.append(Request(at, "POST", "/visits", 201, 8.0, True, ""))
    return rows


def drill_results(tmp_path) -> list[DrillResult]:
    start = 1_800_000_000.0
    rows = synthetic_requests(start)
    png = tmp_path / "docs" / "drills" / "db-failover.png"
    timeline_png(rows, start + 8, start + 12, "db-failover: writes resume within 10 s", png)
    return [
        DrillResult(
            name="db-failover",
            hypothesis="Writes resume within 10 s of the primary's loss, none lost",
            fault="stop the primary; promote the standby; move the db alias",
            requests=len(rows),
            failed=sum(not r.ok for r in rows),
            unknown=2,
            error_window_s=3.5,
            rto_s=4.0,
            full_service_s=4.5,
            rpo="0",
            passed=True,
            reasons=[],
            timeline=png,
            fault_start=start + 8,
            fault_end=start + 12,
        ),
        DrillResult(
            name="bad-deploy",
            hypothesis="A release that fails its health check never takes traffic",
            fault="deploy a release whose /healthz answers 500",
            requests=120,
            failed=7,
            unknown=0,
            error_window_s=2.0,
            rto_s=None,
            full_service_s=None,
            rpo="n/a",
            passed=False,
            reasons=["7 requests failed; the budget is 0"],
            timeline=None,
            fault_start=start,
            fault_end=start + 5,
        ),
    ]


def test_timeline_is_a_png_file(tmp_path):
    png = drill_results(tmp_path)[0].timeline
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert 5_000 < png.stat().st_size < 500_000


def test_markdown_report_has_a_row_per_drill_linking_its_timeline(tmp_path):
    results = drill_results(tmp_path)
    report = tmp_path / "docs" / "drills.md"
    write_markdown(results, report, machine="2 cores, 23.5 GiB", notes=["lab up: 95 s"])
    text = report.read_text()

    assert "make drills" in text and "2 cores, 23.5 GiB" in text and "lab up: 95 s" in text
    assert (
        "| drill | requests | failed | unknown | error window | RTO | full service | RPO | pass |"
        in text
    )
    rows = [line for line in text.splitlines() if line.startswith("| [") or "| bad-deploy" in line]
    assert len(rows) == 2, text
    assert "[db-failover](drills/db-failover.png)" in rows[0] and "| pass |" in rows[0]
    assert rows[1].startswith("| bad-deploy |") and "| FAIL |" in rows[1]
    assert "![db-failover timeline](drills/db-failover.png)" in text
    assert "7 requests failed; the budget is 0" in text


def test_table_lines_up_its_columns(tmp_path, capsys):
    print_table(drill_results(tmp_path), notes=["suite: 4 min"])
    header, rule, *rows, note = capsys.readouterr().out.splitlines()

    spans = [match.span() for match in re.finditer(r"-+", rule)]

    def cells(line):
        return [line[start:end].strip() for start, end in spans]

    assert cells(header) == [
        "drill", "requests", "failed", "unknown", "error window", "RTO", "full service", "RPO",
        "pass",
    ]  # fmt: skip
    assert cells(rows[0]) == [
        "db-failover", "80", "8", "2", "3.5 s", "4.0 s", "4.5 s", "0", "pass"
    ]  # fmt: skip
    assert cells(rows[1]) == [
        "bad-deploy", "120", "7", "0", "2.0 s", "n/a", "n/a", "n/a", "FAIL"
    ]  # fmt: skip
    assert note == "suite: 4 min"
