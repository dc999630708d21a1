"""The chaos results table: per source and fault, runs, row versions written, delivered, lost, repeated, and
the worst detection and recovery times, from the runs in ``bench/results/chaos.json``."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from bench.chaos.faults import CUTS_CONNECTIONS
from bench.chaos.runner import DETECTION_BOUND

HEADER = (
    "| source | fault | runs | faults injected | seconds of load | row versions written | delivered | lost | "
    "repeated | worst repeat burst | out of order | worst detection (s) | worst recovery (s) | consumer exits | "
    "verdict |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n"
)


def _worst(values: list[float | None]) -> str:
    known = [v for v in values if v is not None]
    return f"{max(known):.1f}" if known else "-"


def rows(results: list[dict[str, Any]]) -> list[str]:
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for result in results:
        groups[(result["plan"]["source"], result["plan"]["label"])].append(result)
    out = []
    for (source, label), runs in sorted(groups.items()):
        verdicts = [r["verdict"] for r in runs]
        faults = [f for r in runs for f in r["faults"]]
        total = {k: sum(v[k] for v in verdicts) for k in ("written", "delivered", "lost", "repeated", "out_of_order")}
        lost = total["lost"]
        if source == "notify":
            uncovered = sum(v["uncovered"] for v in verdicts)
            lost_text = f"{lost} ({uncovered} outside a gap's window)"
        elif source == "polling":
            lost_text = f"{lost} (+{sum(v['superseded'] for v in verdicts)} superseded)"
        else:
            lost_text = str(lost)
        undetected = sum(1 for f in faults if f["kind"] in CUTS_CONNECTIONS and f["noticed"] is None)
        late = sum(1 for f in faults if f["noticed"] is not None and f["noticed"] > DETECTION_BOUND)
        detection = _worst([f["noticed"] for f in faults]) + (f" ({undetected} unnoticed)" if undetected else "")
        ok = all(v["ok"] for v in verdicts) and not undetected and not late
        out.append(
            f"| {source} | {label} | {len(runs)} | {len(faults)} | {sum(r['plan']['duration'] for r in runs):.0f} | "
            f"{total['written']} | {total['delivered']} | {lost_text} | {total['repeated']} | "
            f"{max(v['worst_repeat_burst'] for v in verdicts)} | {total['out_of_order']} | {detection} | "
            f"{_worst([f['recovered'] for f in faults])} | {sum(len(r.get('exits', [])) for r in runs)} | "
            f"{'ok' if ok else '**FAILED**'} |"
        )
    return out


def write(results: list[dict[str, Any]], path: Path) -> None:
    sessions = sorted(
        {f"{r.get('session', {}).get('started', '?')} ({r.get('session', {}).get('code', '?')})" for r in results}
    )
    failures = [_failure(r) for r in results if not r["verdict"]["ok"]]
    text = (
        "# Chaos results (issue 16)\n\n"
        "Written by `python -m bench.chaos` from `chaos.json` (every run, with each fault's times); "
        "docs/chaos.md says what each column means and what is checked. "
        f"Sessions: {', '.join(sessions)}. The machine (2 cores) was shared with other agents' work.\n\n"
        + HEADER
        + "\n".join(rows(results))
        + "\n"
        + ("\n## Runs that failed a check\n\n" + "\n".join(failures) + "\n" if failures else "")
    )
    path.write_text(text)


def _failure(result: dict[str, Any]) -> str:
    verdict = result["verdict"]
    checks = ("lost", "uncovered", "phantom", "unexplained", "excess_bursts", "out_of_order")
    broken = ", ".join(f"{k} {verdict[k]}" for k in checks if verdict.get(k))
    plan = result["plan"]
    return f"- {plan['source']} / {plan['label']} (seed {plan['seed']}): {broken}; worst repeat burst {verdict['worst_repeat_burst']}"
