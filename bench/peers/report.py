"""The report of a run: medians, per-round ratios, the floors of issue 15, and the Markdown page.

Pure functions of the result dictionary that ``bench.peers`` writes as JSON (``runs``, ``latency``, ``rss``,
``meta``), so a report can be redone from a saved JSON: ``python -m bench.peers.report results.json``.
Every ratio is the **median of per-round ratios** (both consumers measured in the same round), never a
ratio of medians: on a shared machine a slow round slows both sides of its ratio.
"""

from __future__ import annotations

import json
import statistics
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

REF = "pgchanges-asyncio-read"  # the row every ratio is taken against
NOOP = "pgchanges-asyncio-noop"
BASE_NOOP = "baseline-asyncio-noop"
NO_REGRESSION = 0.95  # a no-op rate counts as regressed below this share of the baseline's, same run
LATENCY_SLACK = 1.2  # a p99 counts as regressed above this multiple of the baseline's (or the slowest peer's)
RSS_LIMIT_MB = 200.0
RSS_ROWS = 500_000
TIMES, DASH = "\u00d7", "\u2013"  # written so, for the linter's ambiguous-character rule

SHORT = {
    "big-txn": "logical one transaction",
    "mixed": "logical single-row transactions",
    "batches": "logical 1,000-row transactions",
    "notify-live": "notify live",
    "notify-paused": "notify paused",
}
TITLES = {
    "big-txn": "Logical: one transaction of {n:,} inserts",
    "mixed": "Logical: {n:,} single-row transactions from 4 connections, 50 % insert, 30 % update, 20 % delete",
    "batches": "Logical: {n:,} inserts in transactions of 1,000",
    "notify": "NOTIFY: {n:,} inserts in transactions of 1,000",
}


def median(values: Iterable[float]) -> float | None:
    got = list(values)
    return statistics.median(got) if got else None


def median_ratio(runs: list[dict[str, Any]], workload: str, key: str, ref: str) -> float | None:
    """Median over rounds of rate(key) / rate(ref), taking only rounds that measured both."""
    by_round: dict[int, dict[str, float]] = {}
    for r in runs:
        if r["workload"] == workload:
            by_round.setdefault(r["round"], {})[r["key"]] = r["rate"]
    return median(v[key] / v[ref] for v in by_round.values() if key in v and ref in v and v[ref] > 0)


def rows_of(runs: list[dict[str, Any]], workload: str) -> list[dict[str, Any]]:
    """One summary row per consumer of ``workload``, in the order they were first measured."""
    wl = [r for r in runs if r["workload"] == workload]
    out = []
    for key in dict.fromkeys(r["key"] for r in wl):
        mine = [r for r in wl if r["key"] == key]
        cpu = median(r["cpu_s"] for r in mine)
        n = mine[0]["n"]
        out.append(
            {
                "key": key,
                "name": mine[0]["name"],
                "n": n,
                "rounds": len(mine),
                "rate": median(r["rate"] for r in mine),
                "ratio": median_ratio(runs, workload, key, REF),
                "ratio_noop": median_ratio(runs, workload, key, NOOP),
                "cpu_s": cpu,
                "us_per_change": None if cpu is None else cpu / n * 1e6,
                "walsender_cpu_s": median(r["walsender_cpu_s"] for r in mine),
                "rss_mb": median(r["rss_mb"] for r in mine),
                "first_change_ms": median(r["first_change_ms"] for r in mine),
                "write_s": median(r["write_s"] for r in mine),
            }
        )
    return out


def latency_of(latency: list[dict[str, Any]], key: str, group: str) -> tuple[float, float] | None:
    mine = [x for x in latency if x["key"] == key and x["group"] == group]
    if not mine:
        return None
    return statistics.median(x["p50_ms"] for x in mine), statistics.median(x["p99_ms"] for x in mine)


def _floor(what: str, target: str, value: float | None, met: bool | None, note: str = "") -> dict[str, Any]:
    return {"floor": what, "target": target, "value": value, "met": met, "note": note}


def floors(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The floor lines of issue 15, each met (True), not met (False) or not measured in this run (None)."""
    runs, out = result["runs"], []
    for workload, what in (("big-txn", "one transaction"), ("mixed", "single-row transactions")):
        value = median_ratio(runs, workload, REF, "postgresjs")
        out.append(
            _floor(
                f"logical, {what}, reads every value ÷ postgres.js subscribe",
                "≥ 0.6",
                value,
                None if value is None else value >= 0.6,
            )
        )
    value = median_ratio(runs, "notify-live", REF, "asyncpg")
    out.append(
        _floor(
            "notify live, reads every value ÷ asyncpg add_listener + json.loads",
            "≥ 0.9",
            value,
            None if value is None else value >= 0.9,
        )
    )
    baseline = result["meta"].get("baseline")
    for workload in ("big-txn", "mixed", "notify-live", "notify-paused"):
        value = median_ratio(runs, workload, NOOP, BASE_NOOP)
        note = "" if baseline else "run with --baseline to judge"
        out.append(
            _floor(
                f"no-op handler, {SHORT[workload]}, ÷ baseline",
                f"≥ {NO_REGRESSION}",
                value,
                None if value is None else value >= NO_REGRESSION,
                note,
            )
        )
    out += _latency_floors(result)
    out.append(_rss_floor(result))
    return out


def _latency_floors(result: dict[str, Any]) -> list[dict[str, Any]]:
    lat, out = result["latency"], []
    for group in ("logical", "notify"):
        ours = latency_of(lat, REF, group)
        base = latency_of(lat, "baseline-asyncio-read", group)
        peer_keys = {
            x["key"] for x in lat if x["group"] == group and not x["key"].startswith(("pgchanges", "baseline"))
        }
        peer_p99 = [p[1] for k in peer_keys if (p := latency_of(lat, k, group))]
        what = f"latency p99 at 1,000 changes/s, {group}, ms"
        if ours is None:
            out.append(_floor(what, "no regression", None, None))
        elif base is not None:
            out.append(
                _floor(
                    f"{what} (baseline {base[1]:.2f})",
                    f"≤ {LATENCY_SLACK} {TIMES} baseline",
                    ours[1],
                    ours[1] <= LATENCY_SLACK * base[1],
                )
            )
        elif peer_p99:
            worst = max(peer_p99)
            out.append(
                _floor(
                    f"{what} (slowest peer {worst:.2f})",
                    f"≤ {LATENCY_SLACK} {TIMES} slowest peer",
                    ours[1],
                    ours[1] <= LATENCY_SLACK * worst,
                    "no baseline in this run: judged against the peers",
                )
            )
    return out


def _rss_floor(result: dict[str, Any]) -> dict[str, Any]:
    what, target = f"peak RSS through a {RSS_ROWS:,}-row transaction, MB", f"< {RSS_LIMIT_MB:.0f}"
    ours = [x for x in result["rss"] if not x["key"].startswith("baseline")]
    if not ours:
        return _floor(what, target, None, None)
    worst = max(ours, key=lambda x: x["rss_mb"])
    note = "" if worst["rows"] >= RSS_ROWS else f"measured through {worst['rows']:,} rows only"
    return _floor(what, target, worst["rss_mb"], worst["rss_mb"] < RSS_LIMIT_MB, note)


def fmt(value: float | None, spec: str = ",.0f") -> str:
    return DASH if value is None else format(value, spec)


def mark(met: bool | None) -> str:
    return {True: "**met**", False: "**not met**", None: "not measured"}[met]


def floor_table(result: dict[str, Any]) -> list[str]:
    lines = ["| floor | target | this run | |", "|---|---|---|---|"]
    for f in floors(result):
        value = fmt(f["value"], ".2f")
        lines.append(
            f"| {f['floor']} | {f['target']} | {value} | {mark(f['met'])}"
            + (f", {f['note']}" if f["note"] else "")
            + " |"
        )
    return lines


def logical_table(result: dict[str, Any], workload: str, delivers: dict[str, str]) -> list[str]:
    lines = [
        f"| consumer | changes/s | {TIMES} pgchanges reads values | {TIMES} pgchanges no-op | CPU s | µs/change | "
        "walsender CPU s | peak RSS MB | first change ms | what the handler gets |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows_of(result["runs"], workload):
        bold = "**" if r["key"] in (REF, NOOP) else ""
        lines.append(
            f"| {bold}{r['name']}{bold} | {fmt(r['rate'])} | {fmt(r['ratio'], '.2f')} | {fmt(r['ratio_noop'], '.2f')} "
            f"| {fmt(r['cpu_s'], '.2f')} | {fmt(r['us_per_change'], '.1f')} | {fmt(r['walsender_cpu_s'], '.2f')} "
            f"| {fmt(r['rss_mb'], '.0f')} | {fmt(r['first_change_ms'], '.0f')} | {delivers.get(r['key'], '')} |"
        )
    return lines


def notify_table(result: dict[str, Any], delivers: dict[str, str]) -> list[str]:
    live = {r["key"]: r for r in rows_of(result["runs"], "notify-live")}
    paused = {r["key"]: r for r in rows_of(result["runs"], "notify-paused")}
    lines = [
        f"| consumer | live changes/s | {TIMES} pgchanges | writer s | paused changes/s | {TIMES} pgchanges | CPU s (paused) "
        "| µs/change | peak RSS MB | what the handler gets |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key in dict.fromkeys([*live, *paused]):
        lv, pa = live.get(key, {}), paused.get(key, {})
        name = (lv or pa)["name"]
        bold = "**" if key in (REF, NOOP) else ""
        lines.append(
            f"| {bold}{name}{bold} | {fmt(lv.get('rate'))} | {fmt(lv.get('ratio'), '.2f')} "
            f"| {fmt(lv.get('write_s'), '.2f')} | {fmt(pa.get('rate'))} | {fmt(pa.get('ratio'), '.2f')} "
            f"| {fmt(pa.get('cpu_s'), '.2f')} | {fmt(pa.get('us_per_change'), '.1f')} | {fmt(pa.get('rss_mb'), '.0f')} "
            f"| {delivers.get(key, '')} |"
        )
    return lines


def latency_table(result: dict[str, Any]) -> list[str]:
    lat = result["latency"]
    lines = [
        "| consumer | source | p50 ms | p99 ms | max ms (worst round) | samples per round |",
        "|---|---|---|---|---|---|",
    ]
    for key, group in dict.fromkeys((x["key"], x["group"]) for x in lat):
        mine = [x for x in lat if x["key"] == key and x["group"] == group]
        p50, p99 = latency_of(lat, key, group) or (0.0, 0.0)
        lines.append(
            f"| {mine[0]['name']} | {group} | {p50:.3f} | {p99:.3f} | {max(x['max_ms'] for x in mine):.1f} "
            f"| {mine[0]['count']:,} |"
        )
    return lines


def rss_table(result: dict[str, Any]) -> list[str]:
    lines = ["| consumer | rows in the transaction | peak RSS MB |", "|---|---|---|"]
    lines += [f"| {x['name']} | {x['rows']:,} | {x['rss_mb']:.0f} |" for x in result["rss"]]
    return lines


def profile_tables(profiles: dict[str, dict[str, Any]]) -> list[str]:
    out: list[str] = []
    for label, prof in profiles.items():
        out += [f"**{label}** ({prof['samples']:,} busy samples at 1 kHz)", "", "| kind of work | % |", "|---|---|"]
        out += [f"| {name} | {share} |" for name, share in prof["categories"]]
        out += ["", "| function, self time | % | function, inclusive | % |", "|---|---|---|---|"]
        pairs = zip(prof["self"], prof["inclusive"], strict=False)
        out += [f"| `{s[0]}` | {s[1]} | `{i[0]}` | {i[1]} |" for s, i in pairs]
        out.append("")
    return out


def render(result: dict[str, Any]) -> str:
    """The Markdown page of a run."""
    meta, runs = result["meta"], result["runs"]
    delivers = {k: c["delivers"] for k, c in result["consumers"].items()}
    out = [f"# pgchanges beside the peer tools{' (quick run)' if meta.get('quick') else ''}", "", *intro(meta), ""]
    out += ["## Floors of issue 15", "", *floor_table(result), ""]
    for workload in ("big-txn", "batches", "mixed"):
        if got := rows_of(runs, workload):
            out += [f"## {TITLES[workload].format(n=got[0]['n'])}", "", *logical_table(result, workload, delivers), ""]
    if got := rows_of(runs, "notify-live") or rows_of(runs, "notify-paused"):
        out += [
            f"## {TITLES['notify'].format(n=got[0]['n'])}",
            "",
            NOTIFY_NOTE,
            "",
            *notify_table(result, delivers),
            "",
        ]
    if result["latency"]:
        out += ["## Latency, commit → handler, at 1,000 single-row transactions/s", "", *latency_table(result), ""]
    if result["rss"]:
        out += ["## Peak RSS of pgchanges through one big transaction", "", *rss_table(result), ""]
    if result.get("profiles"):
        out += [
            "## Where pgchanges spends its time (py-spy)",
            "",
            PROFILE_NOTE,
            "",
            *profile_tables(result["profiles"]),
        ]
    if result.get("errors"):
        out += ["## Failed during the run", ""] + [f"* {e['what']}: {e['error']}" for e in result["errors"]] + [""]
    if result.get("skipped"):
        out += ["## Left out of this run", ""] + [f"* {name}: {why}" for name, why in result["skipped"].items()] + [""]
    out += ["## Versions", "", "| component | version |", "|---|---|"]
    out += [f"| {k} | {v} |" for k, v in meta["versions"].items()] + ["", METHOD, "", HOW_TO_RUN]
    return "\n".join(out) + "\n"


def intro(meta: dict[str, Any]) -> list[str]:
    args = meta["args"]
    rounds = f"{args['rounds']} round{'s' if args['rounds'] != 1 else ''}"
    kind = (
        f"**A quick validation run** (`--quick`: {rounds}, small workloads): its figures show the harness "
        "works, not where pgchanges stands; the full run is the command under *How to run*."
        if meta.get("quick")
        else f"Medians of {args['rounds']} rounds."
    )
    base = f" beside the baseline checkout {meta['baseline']}" if meta.get("baseline") else ""
    ran = meta.get("compiled") or {}
    built = ""
    for who, mine in (("pgchanges", False), ("the baseline", True)):
        mods = sorted({m for k, v in ran.items() if k.startswith("baseline") == mine for m in v})
        if any(k.startswith("baseline") == mine for k in ran):
            built += f"Compiled modules {who} ran: {', '.join(f'`{m}`' for m in mods) or 'none'}. "
    unbuilt = [f"{', '.join(v)} of {k}" for k, v in (meta.get("unbuilt") or {}).items() if v]
    built += f"**Not built, so pure Python ran: {'; '.join(unbuilt)}.** " if unbuilt else ""
    return [
        f"`python -m bench.peers` on {meta['started']}, {meta['elapsed_s']} s in all: pgchanges {meta['pgchanges']}"
        f"{base}, on {meta['machine']['cpus']} cores ({meta['machine']['platform']}), one throwaway PostgreSQL "
        f"{meta['versions'].get('postgresql', '?')} cluster with fsync on. {kind} Every ratio is the median of "
        "per-round ratios (both consumers measured in the same round); above 1 the row is faster than pgchanges "
        "reading values. " + built + (meta.get("note") or ""),
    ]


PROFILE_NOTE = (
    "`py-spy record --rate 1000 --nonblocking` on a pgchanges asyncio consumer while it drains (frozen while the "
    "rows were written); shares of its busy samples, line numbers folded into their function."
)
NOTIFY_NOTE = (
    "*live*: the consumer runs while the rows are written, timed from the first COMMIT to the last notification "
    "handled, so each tool's trigger is on the write path (pgchanges' own capture trigger; the peers' plain "
    "`pg_notify('peers_items', row_to_json(NEW)::text)`); *writer s* is how long the writes took. *paused*: the "
    "consumer is frozen while the rows are written and timed from its resume: its own capacity."
)

METHOD_TEXT = """## How it was measured

* **Logical drains.** Per round and workload, every consumer is started with its own replication slot
  (postgres.js makes its own temporary one when it subscribes) and frozen with SIGSTOP once its walsender
  streams. The workload is written once, so every slot sees the same WAL. When every walsender has gone idle
  (its socket is full), the consumers are resumed one at a time and each is timed from its resume to its N-th
  change in the handler, alone on the machine, in an order that rotates and reverses between rounds.
* **CPU s** is utime+stime of the consumer's process group during its drain, **µs/change** the same per
  change, **walsender CPU s** the server process feeding it, **peak RSS** the group's VmHWM, **first change**
  how long after the resume the first change reached the handler: all from /proc at 100 Hz, so short drains
  carry ±10 ms of CPU.
* **Handlers.** *no-op* touches nothing; *reads values* reads every value (`dict(change.new)`, and
  `dict(change.old)` when there is one). The peers parse every value before their callback runs, whatever it
  does, so they compare with *reads values*. They also deliver less: postgres.js gives numeric and int8 as
  strings and timestamps in milliseconds and acknowledges nothing durably; wal2json gives numeric as a float.
* **The libpq C loop** is no peer: it parses and acknowledges nothing, and shows what the server can feed one
  reader here (it naps 200 µs whenever nothing is buffered, so the walsender sends in bulk, as it does for
  any consumer slower than itself; a loop that reads every message at once makes the walsender slower).
* **Latency**: one consumer at a time, live, while a writer inserts 1,000 single-row transactions a second,
  each stamped with `clock_timestamp()` in its jsonb; the handler subtracts the stamp from its own clock (so the
  figure includes the COMMIT and its fsync).
* **Peak RSS**: a pgchanges consumer reading values, live, through one transaction of 500,000 inserts.
* **Floors**: the thresholds of issue 15. Its "no regression" has no number; here a no-op rate regresses
  below {NO_REGRESSION} {TIMES} the baseline's in the same rounds, a p99 latency above {LATENCY_SLACK} {TIMES} the
  baseline's (without a baseline: the slowest peer's), and peak RSS at {RSS_LIMIT_MB:.0f} MB.
* **Baseline** (`--baseline`): an older checkout's pgchanges in its own database (`bench_base`, with its own
  capture schema), measured in the same rounds; its workload is written after the measured database's, and
  every slot skips the other database's WAL while frozen, before it is timed.
* Python consumers all run on the project's interpreter; asyncpg and psycopg2 come from the benchmark's own
  install directory (`$PGCHANGES_PEERS_DIR`, default `/tmp/pgchanges-peers`), never from the package's
  dependencies. The machine may be shared: read the ratios, not the absolute rates."""

METHOD = METHOD_TEXT.format(
    NO_REGRESSION=NO_REGRESSION, LATENCY_SLACK=LATENCY_SLACK, RSS_LIMIT_MB=RSS_LIMIT_MB, TIMES=TIMES
)
HOW_TO_RUN = """## How to run

```
.venv/bin/python -m bench.peers                       # the full run (≈ 15 min, ≈ 20 with --baseline)
.venv/bin/python -m bench.peers --quick               # one small round: checks the harness
.venv/bin/python -m bench.peers --only logical,latency --rounds 3 --backends asyncio,trio
git worktree add /tmp/pgchanges-before <rev>          # before/after, in one run:
.venv/bin/python -m bench.peers --baseline /tmp/pgchanges-before
PGCHANGES_SRC=/tmp/pgchanges-before .venv/bin/python -m bench.peers --out /tmp/before   # an old checkout alone
.venv/bin/python -m bench.peers.report bench/results/peers.json    # the page again from its JSON
```"""


def main() -> None:
    source = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parents[1] / "results" / "peers.json"
    result = json.loads(source.read_text())
    source.with_suffix(".md").write_text(render(result))


if __name__ == "__main__":
    main()
