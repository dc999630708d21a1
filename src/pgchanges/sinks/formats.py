"""Payload formats: the bytes a sink sends for one change.

* ``json``: exactly :meth:`Change.to_json` (what ``pgchanges tail --format json`` prints).
* ``cloudevents``: a CloudEvents 1.0 event in structured JSON mode: ``id`` = the change id, ``source``,
  ``type`` = ``pgchanges.<op>``, ``time`` (the commit time where the source knows it, else when it was
  forwarded), ``subject`` = ``schema.table``, ``datacontenttype``, and ``data`` = the change's JSON form.
* ``debezium``: the envelope Debezium's PostgreSQL connector writes (as its JsonConverter does with
  ``schemas.enable=false``): ``before``, ``after``, ``source`` (connector, db, schema, table, txId, lsn,
  ts_ms, snapshot …), ``op`` (``c`` create, ``u`` update — polling's upserts too —, ``d`` delete,
  ``t`` truncate, ``r`` a row of the initial snapshot), ``ts_ms``, ``transaction``. Values are in their
  plain JSON form (:mod:`pgchanges.valuecodec`), as in the json format.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from pgchanges import valuecodec
from pgchanges._version import __version__
from pgchanges.change import Change
from pgchanges.errors import ConfigError

FORMATS = ("json", "cloudevents", "debezium")
Formatter = Callable[[Change], bytes]
CONTENT_TYPES = {
    "json": "application/json",
    "cloudevents": "application/cloudevents+json",
    "debezium": "application/json",
}
DEBEZIUM_OPS = {"insert": "c", "update": "u", "upsert": "u", "delete": "d", "truncate": "t"}


def _dumps(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


def to_json(change: Change) -> bytes:
    return change.to_json_bytes()


def make_formatter(name: str, *, database: str) -> Formatter:
    """The formatter called ``name``; ``database`` names where the changes come from (CloudEvents ``source``,
    Debezium ``source.db`` and ``source.name``)."""
    if name == "json":
        return Change.to_json_bytes  # what to_json() does, without a frame of ours around it
    if name == "cloudevents":
        source = f"/pgchanges/{database}"
        return lambda change: _dumps(cloudevent(change, source))
    if name == "debezium":
        return lambda change: _dumps(debezium(change, database))
    raise ConfigError(f"unknown format {name!r}; choose from {', '.join(FORMATS)}")


def _now() -> datetime:
    return datetime.now(UTC)


def cloudevent(change: Change, source: str) -> dict[str, Any]:
    """The CloudEvents 1.0 attributes and data of ``change``."""
    return {
        "specversion": "1.0",
        "id": change.id,
        "source": source,
        "type": f"pgchanges.{change.op}",
        "time": (change.commit_time or _now()).isoformat(),
        "subject": change.qualified_table,
        "datacontenttype": "application/json",
        "data": change.to_dict(),
    }


def debezium(change: Change, database: str) -> dict[str, Any]:
    """The Debezium change-event envelope of ``change``."""
    snapshot = bool(change.extra and change.extra.get("snapshot"))
    op = "r" if snapshot else DEBEZIUM_OPS.get(change.op, change.op)
    committed = change.commit_time
    return {
        "before": _plain_row(change.old),
        "after": _plain_row(change.new),
        "source": {
            "version": __version__,
            "connector": "postgresql",
            "name": database,
            "ts_ms": int(committed.timestamp() * 1000) if committed else None,
            "snapshot": "true" if snapshot else "false",
            "db": database,
            "sequence": None,
            "schema": change.schema,
            "table": change.table,
            "txId": change.xid,
            "lsn": lsn_number(change.position) if change.source == "logical" else None,
            "xmin": None,
            "pgchanges": {"id": change.id, "source": change.source, "position": change.position},
        },
        "op": op,
        "ts_ms": int(time.time() * 1000),
        "transaction": None,
    }


def _plain_row(row: Any) -> dict[str, Any] | None:
    if row is None:
        return None
    return valuecodec.encode_row(row)[0]


def lsn_number(position: object) -> int | None:
    """An LSN written ``X/Y`` as the integer Debezium uses; None for anything else."""
    if not isinstance(position, str) or "/" not in position:
        return None
    high, _, low = position.partition("/")
    try:
        return (int(high, 16) << 32) | int(low, 16)
    except ValueError:
        return None
