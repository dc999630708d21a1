"""``python -m bench.chaos``: chaos runs of the sources, their results, the table (see docs/chaos.md).

Each source named by ``--sources`` gets one run per fault of ``--faults`` (each on its own, ``--duration``
seconds) and, with ``--mixed`` seconds, one run that mixes them all. Results are appended to
``bench/results/chaos.json`` (``--out``) and the table ``bench/results/chaos.md`` is written from all of them.
Needs root (a network namespace and a veth pair) and pgbench.
"""

from __future__ import annotations

import argparse
import json
import platform
import signal
import sys
import time
from pathlib import Path
from typing import Any

from bench.chaos import report, rigging, runner
from bench.chaos.faults import FAULTS
from bench.common import RESULTS
from tests.partition import skip_reason

SOURCES = ("notify", "outbox", "logical", "polling", "forward")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__.splitlines()[0])
    p.add_argument("--sources", default="outbox,logical,polling,notify,forward")
    p.add_argument("--faults", default=",".join(FAULTS), help=f"comma-separated, of: {', '.join(FAULTS)}; or none")
    p.add_argument("--duration", type=float, default=60.0, help="seconds of load per single-fault run")
    p.add_argument("--mixed", type=float, default=0.0, help="seconds of load of the mixed run per source (0: none)")
    p.add_argument("--rate", type=float, default=60.0, help="pgbench transactions a second (all clients)")
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", type=Path, default=RESULTS / "chaos.json")
    p.add_argument("--fresh", action="store_true", help="replace the results file instead of appending to it")
    p.add_argument(
        "--tree",
        default="head",
        choices=("head", "worktree"),
        help="the pgchanges the consumers run: the last commit (default) or the working tree, copied once",
    )
    p.add_argument("--merge", nargs="+", type=Path, metavar="JSON", help="only merge these results into --out")
    return p.parse_args(argv)


def plans(args: argparse.Namespace) -> list[runner.Plan]:
    kinds = [] if args.faults == "none" else args.faults.split(",")
    unknown = set(kinds) - set(FAULTS)
    if unknown:
        raise SystemExit(f"unknown faults: {', '.join(sorted(unknown))}")
    out = []
    for n, source in enumerate(args.sources.split(",")):
        if source not in SOURCES:
            raise SystemExit(f"unknown source {source!r}; one of {', '.join(SOURCES)}")
        common = {"rate": args.rate, "clients": args.clients}
        for k, kind in enumerate(kinds):
            out.append(runner.Plan(source, [kind], args.duration, kind, seed=args.seed + 100 * n + k, **common))
        if args.mixed and kinds:
            out.append(runner.Plan(source, kinds, args.mixed, "mixed", seed=args.seed + 100 * n + 99, **common))
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.merge:
        merged = [run for path in args.merge for run in json.loads(path.read_text())]
        args.out.write_text(json.dumps(merged, indent=1) + "\n")
        report.write(merged, args.out.with_suffix(".md"))
        return 0
    reason = skip_reason()
    if reason is not None:
        print(f"chaos: {reason}", file=sys.stderr)
        return 2
    todo = plans(args)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the partition and the cluster are removed
    results: list[dict[str, Any]] = [] if args.fresh or not args.out.exists() else json.loads(args.out.read_text())
    session = {"started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": platform.machine(),
               "argv": sys.argv[1:]}  # fmt: skip
    world = rigging.chaos_world(any(p.source == "forward" for p in todo))
    with rigging.frozen_source(args.tree) as (source_dir, code), world as (partition, cluster, url):
        session["code"] = code
        for plan in todo:
            print(f"chaos: {plan.source} / {plan.label} for {plan.duration:.0f}s ({code})", flush=True)
            result = runner.run(plan, partition, cluster, nats_url=url, source_dir=source_dir)
            result["session"] = session
            results.append(result)
            args.out.write_text(json.dumps(results, indent=1) + "\n")
            report.write(results, args.out.with_suffix(".md"))
            verdict = result["verdict"]
            print(f"chaos: {plan.source} / {plan.label}: written {verdict['written']}, delivered "
                  f"{verdict['delivered']}, lost {verdict['lost']}, repeated {verdict['repeated']}, "
                  f"ok {verdict['ok']}", flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
