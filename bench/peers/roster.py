"""Who is measured: pgchanges in its variants (and an older checkout, as a baseline) and the peer tools.

A :class:`Spec` says how to start one consumer (its argv from a slot or channel, N and the mode), what it
reads from (its database, slot plugin, or the table whose trigger notifies it) and what its handler gets.
``key`` is stable across runs (the report and the floors look rows up by it); ``name`` is for people.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench.peers.install import Peers

CLIENTS = Path(__file__).parent / "clients"
DB = "bench"  # the peers and the pgchanges being measured
BASE_DB = "bench_base"  # the baseline checkout, with its own schema (its migrations may differ)
PEER_CHANNEL = "peers_items"
PEER_PUBLICATION = "peers_pub"

PGC_TYPED = "int, str, int, Decimal, aware datetime, dict: what psycopg reads"
PGC_LAZY = "Change objects; values typed lazily, never read here"
JS_TYPED = "int8 and numeric as strings, int4 a number, timestamptz a Date (ms), jsonb an object"
ROW_JSON = "json.loads of row_to_json(NEW): numeric float, timestamptz str, jsonb dict"


@dataclass(frozen=True)
class Spec:
    key: str
    name: str
    group: str  # "logical" or "notify"
    delivers: str
    argv: Callable[[str, int, str], list[str]]  # (slot or channel, n, mode) -> argv
    env: dict[str, str]
    dbname: str = DB
    plugin: str | None = None  # logical: slot plugin, the slot made before the write; None: it makes its own
    temp_slot_like: str | None = None  # how to find the temporary slot of a consumer that makes its own
    notify_table: str = "items_peer"  # notify: the table whose trigger notifies this consumer
    cwd: Path | None = None
    latency: bool = True  # also measured in the latency section
    pgchanges: bool = False
    baseline: bool = False


@dataclass(frozen=True)
class Setup:
    """What the specs are made from: the cluster's port, the installed peers, the pgchanges checkouts."""

    port: int
    peers: Peers
    pgchanges_src: Path
    baseline_src: Path | None
    backends: tuple[str, ...]

    def dsn(self, dbname: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"  # a URL: asyncpg takes no other form

    def python_env(self, pythonpath: Path) -> dict[str, str]:
        return {**os.environ, "PYTHONPATH": str(pythonpath), "PYTHONDONTWRITEBYTECODE": "1"}


def pgchanges_specs(setup: Setup, group: str) -> list[Spec]:
    """pgchanges with a no-op handler and one reading every value, per backend; the baseline's alike."""
    checkouts = [(setup.pgchanges_src, False)]
    if setup.baseline_src is not None:
        checkouts.append((setup.baseline_src, True))
    specs = []
    for src, baseline in checkouts:
        dbname = BASE_DB if baseline else DB
        for backend in setup.backends if not baseline else setup.backends[:1]:
            for variant in ("noop", "read"):
                who = "baseline pgchanges" if baseline else "pgchanges"
                what = "reads values" if variant == "read" else "no-op handler"
                source = "" if group == "logical" else "notify "
                specs.append(
                    Spec(
                        key=f"{'baseline' if baseline else 'pgchanges'}-{backend}-{variant}",
                        name=f"{who} {source}{backend}, {what}",
                        group=group,
                        delivers=PGC_TYPED if variant == "read" else PGC_LAZY,
                        argv=_pgchanges_argv(setup, dbname, group, backend, variant),
                        env=setup.python_env(src),
                        dbname=dbname,
                        plugin="pgoutput" if group == "logical" else None,
                        notify_table="items_pgc",
                        latency=variant == "read",
                        pgchanges=True,
                        baseline=baseline,
                    )
                )
    return specs


def _pgchanges_argv(setup: Setup, dbname: str, group: str, backend: str, variant: str) -> Callable[..., list[str]]:
    script = str(CLIENTS / "pgchanges_client.py")
    table = "public.items" if group == "logical" else "public.items_pgc"

    def argv(key: str, n: int, mode: str) -> list[str]:
        cmd = [sys.executable, script, "--dsn", setup.dsn(dbname), "--source", group, "--table", table]
        cmd += ["--n", str(n), "--mode", mode, "--variant", variant, "--backend", backend]
        return [*cmd, "--slot", key] if group == "logical" else cmd

    return argv


def _python_peer(setup: Setup, peer: str, target: str) -> Callable[[str, int, str], list[str]]:
    def argv(key: str, n: int, mode: str) -> list[str]:
        cmd = [sys.executable, str(CLIENTS / "python_peers.py"), "--peer", peer, "--dsn", setup.dsn(DB)]
        return [*cmd, target, key, "--n", str(n), "--mode", mode]

    return argv


def _node_peer(setup: Setup, script: str, channel: bool) -> Callable[[str, int, str], list[str]]:
    def argv(key: str, n: int, mode: str) -> list[str]:
        cmd = ["node", script, "--port", str(setup.port), "--db", DB, "--n", str(n), "--mode", mode]
        return [*cmd, "--channel", key] if channel else cmd

    return argv


def logical_specs(setup: Setup) -> list[Spec]:
    node_env = dict(os.environ)
    peers = [
        Spec(
            "postgresjs",
            "postgres.js subscribe (node)",
            "logical",
            JS_TYPED + "; temporary slot only (no resume, no acknowledgement)",
            _node_peer(setup, "postgresjs.mjs", channel=False),
            node_env,
            cwd=setup.peers.node_dir,
            temp_slot_like="postgresjs_%",
        ),
        Spec(
            "wal2json",
            "psycopg2 + wal2json + json.loads",
            "logical",
            "JSON types: numeric float, timestamptz str, jsonb a JSON string",
            _python_peer(setup, "wal2json", "--slot"),
            setup.python_env(setup.peers.python_dir),
            plugin="wal2json",
        ),
        Spec(
            "server-floor",
            "libpq C loop, counts messages (server ceiling)",
            "logical",
            "raw bytes: nothing parsed, nothing acknowledged; naps 200 µs when nothing is buffered",
            _floor_argv(setup),
            dict(os.environ),
            plugin="pgoutput",
            latency=False,
        ),
    ]
    return [*pgchanges_specs(setup, "logical"), *peers]


def _floor_argv(setup: Setup) -> Callable[[str, int, str], list[str]]:
    conninfo = f"{setup.dsn(DB)}?replication=database"
    return lambda key, n, mode: [str(setup.peers.floor), conninfo, key, PEER_PUBLICATION, str(n), "200"]


def notify_specs(setup: Setup) -> list[Spec]:
    py_env = setup.python_env(setup.peers.python_dir)
    peers = [
        Spec(
            "asyncpg",
            "asyncpg add_listener + json.loads",
            "notify",
            ROW_JSON,
            _python_peer(setup, "asyncpg", "--channel"),
            py_env,
        ),
        Spec(
            "psycopg",
            "psycopg 3 notifies() + json.loads",
            "notify",
            ROW_JSON,
            _python_peer(setup, "psycopg", "--channel"),
            py_env,
        ),
        Spec(
            "pg-listen",
            "pg-listen (node)",
            "notify",
            "JSON.parse of row_to_json(NEW): numbers, strings, objects",
            _node_peer(setup, "pglisten.cjs", channel=True),
            dict(os.environ),
            cwd=setup.peers.node_dir,
        ),
    ]
    return [*pgchanges_specs(setup, "notify"), *peers]


def available(specs: list[Spec], peers: Peers) -> tuple[list[Spec], dict[str, str]]:
    """The specs whose tools are installed, and why each other one is left out."""
    needs = {
        "postgresjs": ("node",),
        "pg-listen": ("node",),
        "wal2json": ("wal2json", "psycopg2-binary"),
        "asyncpg": ("asyncpg",),
        "server-floor": ("pgfloor",),
    }
    kept, skipped = [], {}
    for spec in specs:
        missing = [peers.missing[n] for n in needs.get(spec.key, ()) if n in peers.missing]
        if missing:
            skipped[spec.name] = missing[0]
        else:
            kept.append(spec)
    return kept, skipped


def without(specs: list[Spec], keys: set[str]) -> list[Spec]:
    """``specs`` less those whose key is in ``keys`` (``--skip``)."""
    return [s for s in specs if s.key not in keys]
