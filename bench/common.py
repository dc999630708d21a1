"""Shared benchmark helpers: a durable cluster, percentiles, pgbench runs, result files."""

from __future__ import annotations

import json
import platform
import re
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

from pgchanges.embedded import LocalCluster

RESULTS = Path(__file__).parent / "results"


def durable_cluster() -> LocalCluster:
    """A cluster with fsync on: write-path figures must include the real commit cost."""
    return LocalCluster(fast_unsafe=False, settings={"max_connections": "100"})


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def latency_summary(values_s: list[float]) -> dict[str, float]:
    ms = [v * 1000 for v in values_s]
    return {
        "count": len(ms),
        "p50_ms": round(statistics.median(ms), 3),
        "p99_ms": round(percentile(ms, 0.99), 3),
        "max_ms": round(max(ms), 3),
    }


def pgbench_tps(cluster: LocalCluster, dbname: str, script: str, clients: int, seconds: int) -> float:
    path = Path("/tmp") / f"pgchanges-bench-{clients}-{time.monotonic_ns()}.sql"
    path.write_text(script)
    path.chmod(0o644)
    cmd = [
        str(cluster.bindir / "pgbench"),
        "-n",
        "-h",
        "127.0.0.1",
        "-p",
        str(cluster.port),
        "-U",
        "postgres",
        "-c",
        str(clients),
        "-j",
        str(min(clients, 2)),
        "-T",
        str(seconds),
        "-f",
        str(path),
        dbname,
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    path.unlink()
    match = re.search(r"tps = ([\d.]+) \((?:without|excluding)", out)
    assert match, out
    return float(match.group(1))


def machine() -> dict[str, Any]:
    import os

    return {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()}


def write_results(name: str, data: dict[str, Any], markdown: str) -> None:
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(data, indent=2) + "\n")
    (RESULTS / f"{name}.md").write_text(markdown)
