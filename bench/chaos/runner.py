"""One chaos run: one source, a write load, faults at random times, a drain, the checked history.

The consumer (``pgchanges run bench.chaos.consumer_app:app``, or ``pgchanges forward`` to NATS) runs in the
network namespace of a :class:`tests.partition.Partition`, so the partition faults cut exactly its
connections; pgbench and the runner reach the server from the host side, which is never cut. The run:

1. a fresh database with the chaos table and ledger (:mod:`bench.chaos.workload`), capture installed with the
   CLI; the consumer started; one probe row written and awaited, so the consumer is ready;
2. pgbench writes for ``duration`` seconds while faults, chosen at random from ``faults``, are injected one
   after another with a random quiet time between them;
3. the writers stop, the consumer drains (until every version is delivered, or no progress for a while);
4. the ledger and the deliveries are checked (:func:`bench.chaos.history.check`); each fault gets its
   detection time (fault start → the consumer's "lost connection" line) and recovery time (fault end → the
   next delivery).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from bench.chaos import faults as chaos_faults
from bench.chaos import history, workload
from tests.partition import Consumer, Partition, PartitionCluster

REPO = Path(__file__).resolve().parents[2]
APP = "bench.chaos.consumer_app:app"
SLOT = "chaos_slot"
#: The detection bound the issue sets, for every source and fault that cuts a connection.
DETECTION_BOUND = 30.0
SOURCE_OPTIONS: dict[str, dict[str, Any]] = {
    "notify": {},
    "outbox": {"consumer": "chaos"},
    "logical": {"slot": SLOT},
    "polling": {"column": "at", "consumer": "chaos", "interval": 0.5, "soft_delete": "deleted"},
}


#: The most one fault may make a source deliver again: what it can have handed on and not yet acknowledged.
#: Outbox: batch_size 200 x 8 lanes x 2 claims in flight; logical and polling: one batch (1000) and the
#: read-ahead of the stream (logical: a second batch).
REPEAT_BOUND = {"notify": 0, "outbox": 3200, "logical": 2000, "polling": 1000, "forward": 2000}


@dataclass
class Plan:
    source: str
    faults: list[str]
    duration: float
    label: str = ""  # the fault's name in the results ("mixed" for a mix)
    rate: float = 60.0  # pgbench transactions a second, all clients together
    clients: int = 4
    pause: tuple[float, float] = (4.0, 12.0)  # quiet seconds between faults
    seed: int = 0
    drain_limit: float = 240.0
    ordered: bool = False  # inject ``faults`` in their order (cycling) instead of at random (the CI version)


@dataclass
class FaultRecord:
    kind: str
    start: float
    end: float
    noticed: float | None
    recovered: float | None
    detail: dict[str, Any] = field(default_factory=dict)


class ChaosRig:
    """The world of one run, as :mod:`bench.chaos.faults` sees it."""

    def __init__(self, plan: Plan, partition: Partition, cluster: PartitionCluster, dbname: str) -> None:
        self.plan = plan
        self.source = "logical" if plan.source == "forward" else plan.source
        self.partition = partition
        self.cluster = cluster
        self.dbname = dbname
        self.admin_dsn = cluster.dsn("postgres")
        self.local = cluster.dsn(dbname)
        self.consumers: list[Consumer] = []
        self.restarts: list[float] = []
        self.nats_url = ""
        self.pythonpath = str(REPO)  # where consumer processes import from (a frozen copy comes first)
        self.ready_at = 0.0  # when the first consumer delivered a probe
        self.stream = f"CHAOS{plan.seed}"  # forwarding: a JetStream stream per run, so runs do not mix
        self.exits: list[dict[str, Any]] = []  # consumer processes that ended on their own (then restarted)

    @property
    def consumer(self) -> Consumer:
        return self.consumers[-1]

    def _args(self) -> tuple[list[str], dict[str, str]]:
        dsn = self.cluster.partitioned_dsn(self.dbname, application_name="chaos")
        env = {"PYTHONPATH": self.pythonpath, "CHAOS_DSN": dsn, "CHAOS_SOURCE": self.source}
        if self.plan.source == "forward":
            args = ["forward", "public.chaos", "--to", self.nats_url, "--source", "logical", "--slot", SLOT]
            return [*args, "--stream", self.stream, "--dsn", dsn], env
        env["CHAOS_OPTIONS"] = json.dumps(SOURCE_OPTIONS[self.source])
        return ["run", APP, "--dsn", dsn], env

    def supervise(self) -> None:
        """What a process supervisor does (systemd ``Restart=always``, ``RestartSec=1``): a consumer that
        exited on its own is recorded and started again."""
        consumer = self.consumer
        status = consumer.proc.poll()
        if status is None:
            return
        self.exits.append({"t": time.time(), "status": status, "last": (consumer.stderr or [""])[-1][-300:]})
        time.sleep(1.0)
        self.respawn()

    def respawn(self) -> None:
        args, env = self._args()
        self.consumers.append(Consumer(self.partition, args, env=env))
        self.restarts.append(time.time())

    def deliveries(self) -> tuple[list[history.Delivery], list[float]]:
        """Every row version delivered (every consumer process, in order) and the times of the gaps."""
        got: list[history.Delivery] = []
        gaps: list[float] = []
        for process, consumer in enumerate(self.consumers):
            for line in list(consumer.stdout):
                if not line.startswith("{") or not line.endswith("}"):
                    continue  # not ours, or torn by a SIGKILL (a line is one write: it should not be)
                item = json.loads(line)
                if "gap" in item:
                    gaps.append(float(item["t"]))
                else:
                    got.append(history.Delivery(int(item["id"]), int(item["ver"]), float(item["t"]), process))
        return got, gaps


def _cli(rig: ChaosRig, *args: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pgchanges.cli", *args, "--dsn", rig.local],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "PYTHONPATH": rig.pythonpath},
    )
    if done.returncode != 0:
        raise RuntimeError(f"pgchanges {' '.join(args)}: {done.stderr.strip()}")


def prepare(rig: ChaosRig) -> None:
    with psycopg.connect(rig.admin_dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(rig.dbname)))
    workload.create_schema(rig.local)
    if rig.source == "logical":
        _cli(rig, "install", "public.chaos", "--source", "logical", "--slot", SLOT, "--replica-identity", "full")
    elif rig.source in ("notify", "outbox"):
        _cli(rig, "install", "public.chaos", "--source", rig.source)


def await_probe(rig: ChaosRig, timeout: float = 90.0) -> int:
    """Write probe rows until one is delivered: then the consumer is listening (notify needs that). The id of
    that probe: notify cannot have seen the probes before it (nothing else is written before)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        wanted = workload.probe(rig.local)
        until = time.monotonic() + 3
        while time.monotonic() < until:
            if any(d.id == wanted for d in rig.deliveries()[0]) or rig.plan.source == "forward":
                return wanted
            time.sleep(0.2)  # the consumer's output fills a list from its threads
    raise RuntimeError(f"the consumer delivered no probe in {timeout:.0f}s; stderr: {rig.consumer.stderr[-8:]}")


def inject_faults(rig: ChaosRig, rng: random.Random, until: float) -> list[chaos_faults.Injected]:
    done: list[chaos_faults.Injected] = []
    while True:
        quiet_until = time.time() + rng.uniform(*rig.plan.pause)
        while time.time() < quiet_until:
            rig.supervise()
            time.sleep(0.2)  # the quiet time between faults
        if time.time() >= until:
            return done
        kinds = rig.plan.faults
        kind = kinds[len(done) % len(kinds)] if rig.plan.ordered else rng.choice(kinds)
        injected = chaos_faults.FAULTS[kind](rig, rng)
        done.append(injected)
        noticed = "-" if injected.noticed is None else f"{injected.noticed:.1f}s"
        print(f"  {rig.plan.source}: {kind} ({injected.end - injected.start:.1f}s, noticed {noticed})", flush=True)


def drain(rig: ChaosRig, judge: Any, limit: float) -> None:
    """Wait until ``judge()`` finds nothing lost, or nothing new came for 20 s (notify), or ``limit`` passed."""
    start = last_change = time.monotonic()
    last = -1
    while time.monotonic() - start < limit:
        verdict = judge()
        if verdict.lost == 0:
            return
        if verdict.deliveries != last:
            last, last_change = verdict.deliveries, time.monotonic()
        elif time.monotonic() - last_change > 20:
            return
        rig.supervise()
        time.sleep(1.0)  # the consumer works through its backlog; progress is checked once a second


def timings(records: list[chaos_faults.Injected], delivered: list[history.Delivery]) -> list[FaultRecord]:
    times = sorted(d.t for d in delivered)
    out = []
    for fault in records:
        after = next((t for t in times if t > fault.end), None)
        recovered = None if after is None else after - fault.end
        out.append(FaultRecord(fault.kind, fault.start, fault.end, fault.noticed, recovered, fault.detail))
    return out


def run(
    plan: Plan, partition: Partition, cluster: PartitionCluster, nats_url: str = "", source_dir: Path | None = None
) -> dict[str, Any]:
    """One run; the result as plain data (what ``bench/results/chaos.json`` holds). ``source_dir``: where the
    consumer processes import pgchanges from (:func:`bench.chaos.rigging.frozen_source`)."""
    rng = random.Random(plan.seed)  # fault times and kinds: reproducible, not secret
    rig = ChaosRig(plan, partition, cluster, f"chaos_{plan.source}_{plan.seed}_{int(time.time()) % 100000}")
    rig.nats_url = nats_url
    if source_dir is not None:
        rig.pythonpath = f"{source_dir}:{REPO}"
    prepare(rig)
    rig.respawn()
    writers = workload.Writers(rig.local, plan.source == "polling", plan.clients, plan.rate)
    began = time.time()
    try:
        await_probe(rig)
        rig.ready_at = time.time()
        writers.start()
        injected = inject_faults(rig, rng, began + plan.duration)
        writers.stop()
        workload.wait_until_server_accepts(rig.local)
        written = [history.Written(*w) for w in workload.ledger(rig.local)]
        judge = _judge(rig, written, injected)
        drain(rig, judge, plan.drain_limit)
        verdict = judge()
        records = timings(injected, verdict.delivered_list)
        diagnosis = diagnose(rig) if verdict.lost and rig.source != "notify" else {}
    finally:
        writers.stop()
        partition.heal()
        partition.unslow()
        processes = [{"exit": c.proc.poll(), "stderr": c.stderr[-6:]} for c in rig.consumers]
        for consumer in rig.consumers:
            consumer.stop()
        cleanup(rig)
        if plan.source == "forward":
            asyncio.run(_delete_stream(nats_url, rig.stream))  # the next run's stream takes the same subjects
    return {
        "plan": {**asdict(plan), "pause": list(plan.pause)},
        "seconds": round(time.time() - began, 1),
        "verdict": verdict.as_dict(),
        "faults": [asdict(r) for r in records],
        "diagnosis": diagnosis,
        "exits": rig.exits,
        "consumers": processes,  # each consumer process: its exit status when the run ended, its last lines
        "pgbench_runs": writers.runs,
        "pgbench_aborted_runs": writers.aborted_runs,
    }


def _judge(rig: ChaosRig, written: list[history.Written], injected: list[chaos_faults.Injected]) -> Any:
    """A function that reads what was delivered so far and checks it against ``written``."""
    source = rig.plan.source

    faults = [(f.start, f.end) for f in injected]
    closers = rig.restarts[1:]
    if source == "notify":  # the probes written before LISTEN was in place are a loss window of their own
        faults, closers = [(rig.restarts[0], rig.ready_at), *faults], [rig.ready_at, *closers]

    def judge() -> history.Verdict:
        delivered = nats_deliveries(rig.nats_url, rig.stream) if source == "forward" else rig.deliveries()[0]
        verdict = history.check(
            source if source == "forward" else rig.source,
            written,
            delivered,
            faults,
            rig.deliveries()[1],
            closers,
            REPEAT_BOUND[source],
        )
        verdict.delivered_list = delivered
        return verdict

    return judge


def diagnose(rig: ChaosRig) -> dict[str, Any]:
    """What the server shows when versions were not delivered: the sessions of the database and, for the
    outbox, what is queued (for the report of a run that failed)."""
    with psycopg.connect(rig.local, autocommit=True) as conn:
        sessions = conn.execute(
            """SELECT application_name, host(client_addr), state, wait_event_type, wait_event, left(query, 100),
                      extract(epoch FROM now() - state_change)::int
               FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"""
        ).fetchall()
        queued = {}
        if rig.source == "outbox":
            for table in ("events", "batches", "parked", "cut_marks", "sleepers"):
                row = conn.execute(sql.SQL("SELECT count(*) FROM pgchanges.{}").format(sql.Identifier(table)))
                queued[table] = row.fetchone()[0]  # type: ignore[index]
            queued["lanes_locked"] = conn.execute(
                "SELECT count(*) FROM pgchanges.lanes l WHERE NOT EXISTS (SELECT 1 FROM pgchanges.lanes x"
                " WHERE x.consumer = l.consumer AND x.lane = l.lane FOR UPDATE SKIP LOCKED)"
            ).fetchone()[0]  # type: ignore[index]
    return {"sessions": [list(map(str, s)) for s in sessions], "queued": queued}


def cleanup(rig: ChaosRig) -> None:
    try:
        workload.wait_until_server_accepts(rig.admin_dsn, timeout=10)
    except psycopg.OperationalError:  # stopped in the middle of a restart: start it again
        rig.cluster.pg_ctl_start()
    with psycopg.connect(rig.admin_dsn, autocommit=True) as admin:
        admin.execute(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE database = %s AND NOT active",
            (rig.dbname,),
        )
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(rig.dbname)))


def nats_deliveries(url: str, stream: str) -> list[history.Delivery]:
    """What the forwarder put into ``stream``, as deliveries in stream order, each at the time JetStream
    stored it."""

    async def read() -> list[history.Delivery]:
        import nats
        import nats.js.errors

        nc = await nats.connect(url)
        try:
            js = nc.jetstream()
            try:
                state = (await js.stream_info(stream)).state
            except nats.js.errors.NotFoundError:
                return []
            got = []
            for seq in range(state.first_seq, state.last_seq + 1) if state.messages else ():
                msg = await js.get_msg(stream, seq)
                delivery = _delivery(json.loads(msg.data or b"{}"), msg.time.timestamp() if msg.time else 0.0)
                if delivery is not None:
                    got.append(delivery)
            return got
        finally:
            await nc.close()

    return asyncio.run(read())


async def _delete_stream(url: str, stream: str) -> None:
    import nats
    import nats.js.errors

    nc = await nats.connect(url)
    try:
        await nc.jetstream().delete_stream(stream)
    except nats.js.errors.NotFoundError:
        pass
    finally:
        await nc.close()


def _delivery(change: dict[str, Any], t: float) -> history.Delivery | None:
    row = change.get("new") or change.get("old")
    if not row:
        return None
    ver = int(row["ver"]) + (1 if change.get("op") == "delete" and not row.get("deleted") else 0)
    return history.Delivery(int(row["id"]), ver, t)
