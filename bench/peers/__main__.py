"""``python -m bench.peers``: parse the options, install the peers, run the sections, write the results."""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import platform
import subprocess
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

from bench import peers as this_package
from bench.peers import database as pgdb
from bench.peers import report, roster
from bench.peers.checkout import REPO, describe, ensure_built, source_dir
from bench.peers.install import NODE_PACKAGES, PYTHON_PACKAGES, default_dir, install_peers
from bench.peers.profile import profile_run
from bench.peers.runs import Context, as_dicts, latency_run, logical_round, notify_run, rotated, rss_run
from bench.peers.workloads import mixed_changes, prepare_mixed, write_bulk, write_mixed

SECTIONS = ("logical", "notify", "latency", "rss", "profile", "batches")
DEFAULT_SECTIONS = SECTIONS[:5]  # batches (1,000-row transactions) only when asked for
FULL = {
    "rounds": 5,
    "big": 200_000,
    "mixed": 50_000,
    "notify_rows": 20_000,
    "latency_seconds": 6.0,
    "latency_rounds": 3,
    "rss_rows": 500_000,
}
QUICK = {
    "rounds": 1,
    "big": 20_000,
    "mixed": 5_000,
    "notify_rows": 5_000,
    "latency_seconds": 3.0,
    "latency_rounds": 1,
    "rss_rows": 100_000,
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.peers",
        description=this_package.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--quick", action="store_true", help="one round of small workloads (checks the harness)")
    p.add_argument("--only", default=",".join(DEFAULT_SECTIONS), help=f"comma list of: {', '.join(SECTIONS)}")
    p.add_argument("--backends", default="asyncio", help="pgchanges backends to run: asyncio, trio or both")
    p.add_argument("--skip", default="", help="comma list of consumer keys to leave out (e.g. wal2json,pg-listen)")
    p.add_argument("--baseline", type=Path, help="an older checkout (or its src/) to measure beside this one")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results", help="where peers.md and .json go")
    p.add_argument("--name", default="peers", help="file name of the results, without extension")
    p.add_argument(
        "--note", default="", help="a sentence for the report's opening (e.g. whether the machine was shared)"
    )
    for key, value in FULL.items():
        p.add_argument(f"--{key.replace('_', '-')}", type=type(value), help=f"default {value} (quick: {QUICK[key]})")
    args = p.parse_args(argv)
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.sections = [s for s in args.only.split(",") if s]
    if unknown := set(args.sections) - set(SECTIONS):
        p.error(f"unknown sections: {', '.join(sorted(unknown))}")
    return args


def log(message: str) -> None:
    print(time.strftime("%H:%M:%S"), message, flush=True)


def run_sections(ctx: Context, args: argparse.Namespace, logical: list[roster.Spec], notify: list[roster.Spec]) -> None:
    big = partial(write_bulk, table="items", total=args.big, per_txn=args.big)
    batches = partial(write_bulk, table="items", total=args.big, per_txn=1000)
    mixed = partial(write_mixed, txns=args.mixed)
    prepare = partial(prepare_mixed, txns=args.mixed)
    for rnd in range(args.rounds):
        if "logical" in args.sections:
            ctx.attempt(f"big-txn round {rnd}", logical_round, ctx, logical, "big-txn", rnd, args.big, big)
            n = mixed_changes(args.mixed)
            ctx.attempt(f"mixed round {rnd}", logical_round, ctx, logical, "mixed", rnd, n, mixed, prepare)
        if "batches" in args.sections:
            ctx.attempt(f"batches round {rnd}", logical_round, ctx, logical, "batches", rnd, args.big, batches)
        if "notify" in args.sections:
            log(f"  notify round {rnd}")
            for spec in rotated(notify, rnd):
                for paused in (False, True):
                    what = f"notify {'paused' if paused else 'live'} round {rnd}, {spec.name}"
                    ctx.attempt(what, notify_run, ctx, spec, rnd, args.notify_rows, 1000, paused=paused)
    if "latency" in args.sections:
        for rnd in range(args.latency_rounds):
            log(f"  latency round {rnd}")
            for spec in rotated([s for s in logical + notify if s.latency], rnd):
                ctx.attempt(f"latency round {rnd}, {spec.name}", latency_run, ctx, spec, rnd, args.latency_seconds)
    if "rss" in args.sections:
        for spec in logical:
            if spec.pgchanges and spec.key.endswith("-read"):
                ctx.attempt(f"rss, {spec.name}", rss_run, ctx, spec, args.rss_rows)
    if "profile" in args.sections:
        if ctx.setup.peers.py_spy.exists():
            log("  profiles (py-spy)")
            run_profiles(ctx, args, logical, notify, (big, mixed, prepare))
        else:
            ctx.skipped["profiles"] = f"py-spy not installed ({ctx.setup.peers.missing.get('py-spy', '?')})"


def run_profiles(
    ctx: Context, args: argparse.Namespace, logical: list[roster.Spec], notify: list[roster.Spec], writers: Any
) -> None:
    big, mixed, prepare = writers
    notify_rows = partial(write_bulk, table="items_pgc", total=args.notify_rows, per_txn=1000)
    ours = {(s.group, s.key): s for s in logical + notify}
    plan = []
    for variant, what in (("noop", "no-op handler"), ("read", "reads values")):
        key = ("logical", f"pgchanges-asyncio-{variant}")
        plan.append((key, f"logical, one transaction of {args.big:,} inserts, {what}", args.big, big, None))
        label = f"logical, {args.mixed:,} single-row transactions, {what}"
        plan.append((key, label, mixed_changes(args.mixed), mixed, prepare))
    label = f"notify, {args.notify_rows:,} rows in transactions of 1,000, reads values"
    plan.append((("notify", "pgchanges-asyncio-read"), label, args.notify_rows, notify_rows, None))
    for key, label, n, write, before in plan:
        if spec := ours.get(key):  # absent when left out with --skip
            ctx.attempt(f"profile {label}", profile_run, ctx, spec, label, n, write, before)


def versions(peers_dir: Any, dsn: str) -> dict[str, str]:
    def module(name: str) -> str:
        try:
            from importlib.metadata import version

            return version(name)
        except Exception:
            return "not installed"

    wal2json = subprocess.run(
        ["dpkg-query", "-W", "-f", "${Version}", "postgresql-15-wal2json"], capture_output=True, check=False, text=True
    ).stdout.strip()
    node = subprocess.run(["node", "--version"], capture_output=True, text=True, check=False).stdout.strip()
    out = {
        "postgresql": pgdb.server_version(dsn),
        "python": platform.python_version(),
        "psycopg": module("psycopg"),
        "anyio": module("anyio"),
        "trio": module("trio"),
        "node": node or "not installed",
        "wal2json": wal2json or "?",
    }
    out |= {f"{p} (npm)": peers_dir.node_version(p) for p in NODE_PACKAGES}
    out |= {f"{p} (PyPI)": v for p, v in PYTHON_PACKAGES.items()}
    return out


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    started, t0 = datetime.datetime.now(datetime.UTC), time.monotonic()
    src = source_dir(Path(os.environ.get("PGCHANGES_SRC", REPO)))
    baseline = source_dir(args.baseline) if args.baseline else None
    unbuilt = {str(s): ensure_built(s, log) for s in (src, baseline) if s}
    for where, files in unbuilt.items():
        if files:
            log(f"WARNING: {', '.join(files)} of {where} not built (or older than its source): pure Python runs")
    backends = tuple(b for b in args.backends.split(",") if b != "trio" or importlib.util.find_spec("trio"))
    cluster = pgdb.start_cluster()
    try:
        admin = cluster.dsn()
        peers = install_peers(default_dir(), cluster.bindir.parent / "lib", cluster.version)
        setup = roster.Setup(cluster.port, peers, src, baseline, backends)
        pgdb.create_database(admin, setup.dsn(roster.DB), roster.DB, src)
        if baseline:
            pgdb.create_database(admin, setup.dsn(roster.BASE_DB), roster.BASE_DB, baseline)
        unwanted = {k for k in args.skip.split(",") if k}
        logical, skipped = roster.available(roster.without(roster.logical_specs(setup), unwanted), peers)
        notify, skipped_n = roster.available(roster.without(roster.notify_specs(setup), unwanted), peers)
        ctx = Context(setup, Path(tempfile.mkdtemp(prefix="logs-", dir=default_dir())), log)
        log(
            f"measuring pgchanges from {src}" + (f" beside {baseline}" if baseline else "") + f"; logs in {ctx.log_dir}"
        )
        run_sections(ctx, args, logical, notify)
        meta = {
            "started": started.strftime("%Y-%m-%d %H:%M UTC"),
            "elapsed_s": round(time.monotonic() - t0),
            "quick": args.quick,
            "note": args.note,
            "pgchanges": describe(src),
            "baseline": describe(baseline) if baseline else None,
            "args": {k: v for k, v in vars(args).items() if isinstance(v, int | float | str | list)},
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
            "versions": versions(peers, setup.dsn(roster.DB)),
            "unbuilt": unbuilt,
            "compiled": ctx.compiled,
        }
    finally:
        cluster.stop()
    consumers = {s.key: {"name": s.name, "delivers": s.delivers} for s in logical + notify}
    result = {
        "meta": meta,
        "consumers": consumers,
        "skipped": skipped | skipped_n | ctx.skipped,
        "runs": as_dicts(ctx.runs),
        "latency": ctx.latency,
        "rss": ctx.rss,
        "profiles": ctx.profiles,
        "errors": ctx.errors,
    }
    result["floors"] = report.floors(result)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
    (args.out / f"{args.name}.md").write_text(report.render(result))
    log(f"done in {meta['elapsed_s']} s: {args.out / (args.name + '.md')}")


if __name__ == "__main__":
    main()
