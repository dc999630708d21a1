"""The peers benchmark's arithmetic and report (bench/peers): ratios, floors, the page; no peers, no server."""

from __future__ import annotations

import os
from typing import Any

import pytest

from bench.peers import report
from bench.peers.checkout import unbuilt
from bench.peers.install import Peers
from bench.peers.profile import summarize
from bench.peers.roster import Setup
from bench.peers.runs import Context, rotated
from bench.peers.workloads import MIXED_CONNECTIONS, mixed_base_rows, mixed_changes


def run(key: str, workload: str, rnd: int, rate: float, **extra: Any) -> dict[str, Any]:
    row = {"key": key, "name": key, "workload": workload, "round": rnd, "n": 1000, "rate": rate, "cpu_s": 0.5,
           "rss_mb": 40.0, "first_change_ms": 1.0, "walsender_cpu_s": 0.1, "write_s": 0.0}  # fmt: skip
    return row | extra


def result(runs: list[dict[str, Any]], *, baseline: str | None = None, latency: Any = (), rss: Any = ()) -> dict:
    meta = {"baseline": baseline, "quick": True, "started": "now", "elapsed_s": 1, "pgchanges": "0 (commit x)",
            "note": "", "args": {"rounds": 2}, "machine": {"cpus": 2, "platform": "linux"},
            "versions": {"postgresql": "15"}}  # fmt: skip
    consumers = {r["key"]: {"name": r["key"], "delivers": f"what {r['key']} gets"} for r in runs}
    return {"meta": meta, "consumers": consumers, "skipped": {}, "runs": runs, "latency": list(latency),
            "rss": list(rss)}  # fmt: skip


def test_ratios_are_medians_of_per_round_ratios_not_ratios_of_medians():
    # round 0 is slow for both, round 2 fast for both: per round the peer is 2x, 2x, 3x
    runs = [
        run("pgchanges-asyncio-read", "big-txn", 0, 10.0), run("postgresjs", "big-txn", 0, 20.0),
        run("pgchanges-asyncio-read", "big-txn", 1, 100.0), run("postgresjs", "big-txn", 1, 200.0),
        run("pgchanges-asyncio-read", "big-txn", 2, 1000.0), run("postgresjs", "big-txn", 2, 3000.0),
    ]  # fmt: skip
    assert report.median_ratio(runs, "big-txn", "postgresjs", report.REF) == pytest.approx(2.0)
    assert report.median_ratio(runs, "mixed", "postgresjs", report.REF) is None


def test_a_round_that_missed_either_consumer_is_left_out_of_the_ratio():
    runs = [run(report.REF, "mixed", 0, 10.0), run("postgresjs", "mixed", 0, 30.0), run("postgresjs", "mixed", 1, 1.0)]
    assert report.median_ratio(runs, "mixed", "postgresjs", report.REF) == pytest.approx(3.0)


def floor(res: dict, starts: str) -> dict[str, Any]:
    (found,) = [f for f in report.floors(res) if f["floor"].startswith(starts)]
    return found


def test_floors_are_met_or_not_by_the_issue_thresholds():
    runs = [
        run(report.REF, "big-txn", 0, 61.0), run("postgresjs", "big-txn", 0, 100.0),
        run(report.REF, "mixed", 0, 59.0), run("postgresjs", "mixed", 0, 100.0),
        run(report.REF, "notify-live", 0, 90.0), run("asyncpg", "notify-live", 0, 100.0),
    ]  # fmt: skip
    res = result(runs)
    assert floor(res, "logical, one transaction")["met"] is True
    assert floor(res, "logical, single-row")["met"] is False
    assert floor(res, "notify live")["met"] is True
    assert floor(res, "no-op handler, logical one transaction")["met"] is None  # no baseline in this run: not judged
    assert "--baseline" in floor(res, "no-op handler, logical one transaction")["note"]


def test_no_op_rates_are_judged_against_the_baseline_of_the_same_run():
    runs = [run(report.NOOP, "big-txn", 0, 90.0), run(report.BASE_NOOP, "big-txn", 0, 100.0),
            run(report.NOOP, "mixed", 0, 99.0), run(report.BASE_NOOP, "mixed", 0, 100.0)]  # fmt: skip
    res = result(runs, baseline="0 (commit y)")
    assert floor(res, "no-op handler, logical one transaction")["met"] is False
    assert floor(res, "no-op handler, logical single-row")["met"] is True


def latency(key: str, group: str, p99: float) -> dict[str, Any]:
    return {"key": key, "name": key, "group": group, "round": 0, "count": 10, "p50_ms": p99 / 2, "p99_ms": p99,
            "max_ms": p99}  # fmt: skip


def test_latency_without_a_baseline_is_judged_against_the_slowest_peer():
    lat = [
        latency(report.REF, "logical", 0.9), latency("postgresjs", "logical", 0.5), latency("wal2json", "logical", 0.8),
        latency(report.REF, "notify", 1.0), latency("asyncpg", "notify", 0.4),
    ]  # fmt: skip
    res = result([], latency=lat)
    assert floor(res, "latency p99 at 1,000 changes/s, logical")["met"] is True  # 0.9 <= 1.2 x 0.8
    assert floor(res, "latency p99 at 1,000 changes/s, notify")["met"] is False  # 1.0 > 1.2 x 0.4


def test_peak_rss_floor_counts_only_the_measured_checkout_and_says_when_the_transaction_was_smaller():
    rss = [{"key": "pgchanges-asyncio-read", "name": "a", "rows": 100_000, "rss_mb": 60.0},
           {"key": "baseline-asyncio-read", "name": "b", "rows": 100_000, "rss_mb": 500.0}]  # fmt: skip
    got = floor(result([], rss=rss), "peak RSS")
    assert (got["value"], got["met"]) == (60.0, True)
    assert "100,000 rows only" in got["note"]


def test_the_page_has_the_floors_every_workload_and_what_each_handler_gets():
    runs = [run(report.REF, "big-txn", 0, 50_000.0), run("postgresjs", "big-txn", 0, 100_000.0),
            run(report.REF, "notify-live", 0, 80.0), run("asyncpg", "notify-paused", 0, 100.0)]  # fmt: skip
    page = report.render(result(runs))
    assert "quick run" in page
    assert (
        "| logical, one transaction, reads every value ÷ postgres.js subscribe | ≥ 0.6 | 0.50 | **not met** |" in page
    )
    assert "## Logical: one transaction of 1,000 inserts" in page
    assert "| postgresjs | 100,000 | 2.00 |" in page
    assert "what asyncpg gets" in page and "## NOTIFY" in page


def test_rotation_puts_every_consumer_first_and_last_equally_often():
    items = ["a", "b", "c"]
    orders = [rotated(items, r) for r in range(6)]
    assert all(sorted(order) == items for order in orders)
    for item in items:
        assert sum(order[0] == item for order in orders) == 2
        assert sum(order[-1] == item for order in orders) == 2
    assert orders[1] == ["a", "c", "b"]  # odd rounds reversed: b, c, a backwards


@pytest.mark.parametrize("txns", [100, 2_000, 5_000, 50_000, 12_345])
def test_the_mixed_workload_never_runs_out_of_rows_to_delete(txns):
    per_conn = mixed_changes(txns) // MIXED_CONNECTIONS
    deletes_per_conn = sum(1 for k in range(per_conn) if k % 10 >= 8)
    assert deletes_per_conn <= mixed_base_rows(txns) // MIXED_CONNECTIONS // 2


def test_profiles_leave_idle_samples_out_and_sum_self_and_inclusive_time(tmp_path):
    raw = tmp_path / "profile.txt"
    top = "main (pgchanges_client.py:10);"
    raw.write_text(
        f"{top}_run_once (asyncio/base_events.py:1);select (selectors.py:469) 500\n"
        f"{top}batches (pgchanges/sources/logical.py:88);decode (pgchanges/pgoutput.py:5) 30\n"
        f"{top}batches (pgchanges/sources/logical.py:90);read (pgchanges/db/replication.py:7) 10\n"
    )
    got = summarize(raw)
    assert got["samples"] == 40  # the 500 samples waiting in select are idle
    assert dict(got["categories"]) == {"pgoutput decoding": 75.0, "replication and LISTEN socket I/O": 25.0}
    assert ("batches (pgchanges/sources/logical.py)", 100.0) in got["inclusive"]  # two lines, one function
    assert got["self"][0] == ("decode (pgchanges/pgoutput.py)", 75.0)


def test_a_compiled_module_older_than_its_c_source_counts_as_unbuilt(tmp_path):
    package = tmp_path / "pgchanges"
    package.mkdir()
    (package / "_fast.c").write_text("/* c */")
    assert unbuilt(tmp_path) == ["pgchanges/_fast.c"]
    built = package / "_fast.cpython-311-x86_64-linux-gnu.so"
    built.write_bytes(b"")
    assert unbuilt(tmp_path) == []
    os.utime(built, (0, 0))
    assert unbuilt(tmp_path) == ["pgchanges/_fast.c"]


def test_a_failed_measurement_is_recorded_and_the_run_goes_on(tmp_path):
    setup = Setup(port=1, peers=Peers(tmp_path, {}), pgchanges_src=tmp_path, baseline_src=None, backends=("asyncio",))
    lines: list[str] = []
    ctx = Context(setup, tmp_path, lines.append)

    def broken() -> None:
        raise TimeoutError("no DONE within 60 s")

    ctx.attempt("mixed round 0", broken)
    ctx.attempt("mixed round 1", lambda: None)
    assert ctx.errors == [{"what": "mixed round 0", "error": "TimeoutError: no DONE within 60 s"}]
    assert lines == ["FAILED mixed round 0: TimeoutError: no DONE within 60 s"]
