"""``pgchanges status``: the operator's figures from the database, as text for people and JSON for scripts.

The same figures as ``/metrics`` where the database knows them: what is captured, each outbox consumer's
backlog, lag (the oldest pending event's age), parked events and dead letters, each logical slot's retained
WAL, how far its confirmed position is behind, who holds it (the walsender's pid, application name and
address) and its decoding statistics, and each polling consumer's watermark, lag and position age.
"""

from __future__ import annotations

from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

import psycopg

from pgchanges.capture import ddl as ddl_capture
from pgchanges.capture import install as capture
from pgchanges.capture.logical_admin import _size as format_size  # `slots` prints sizes so: the same here
from pgchanges.ops.figures import watermark_lag
from pgchanges.ops.sampler import take_sample
from pgchanges.sources import poll_state


def gather(conn: psycopg.Connection[Any]) -> dict[str, Any]:
    """Everything ``status`` shows, as JSON-ready values (times in ISO 8601, ages in seconds)."""
    found = capture.captures(conn)
    sample = take_sample(conn, consumers=bool(found))
    now = datetime.now(UTC)
    return {
        "rules": [
            {"source": r.source, "pattern": str(r.pattern), "publication": r.publication} for r in capture.rules(conn)
        ],
        "ddl_followed": ddl_capture.ddl_installed(conn),
        "captured": [{"source": c.source, "table": str(c.table)} for c in found],
        "outbox_consumers": [
            {**_plain(asdict(c)), "lag_seconds": c.oldest_pending_seconds or 0.0} for c in sample.consumers
        ],
        "slots": [_plain(asdict(s)) for s in sample.slots],  # each with who holds it
        "polling": [
            {
                "consumer": consumer,
                "table": table,
                "watermark": position,
                "lag_seconds": watermark_lag(position.split(", ")[0]),
                "saved_at": saved.isoformat(),
                "position_age_seconds": max(0.0, (now - saved).total_seconds()),
            }
            for consumer, table, position, saved in poll_state.list_states(conn)
        ],
    }


def slot_rows(conn: psycopg.Connection[Any]) -> list[dict[str, Any]]:
    """The database's logical slots as :func:`gather` gives them."""
    return [_plain(asdict(s)) for s in take_sample(conn, consumers=False).slots]


def _plain(values: dict[str, Any]) -> dict[str, Any]:
    return {k: v.isoformat() if isinstance(v, datetime) else v for k, v in values.items()}


def format_slots(slots: list[dict[str, Any]]) -> str:
    """The slots with who holds them, for people."""
    lines = [f"{'slot':<32} {'retained':>10} {'behind':>10} {'spilled':>10}  held by"]
    for s in slots:
        name = s["name"] + (" (temporary)" if s["temporary"] else "")
        holder = "nobody"
        if s["active"]:
            holder = f"pid {s['active_pid']}"
            if s["application_name"]:
                holder += f" ({s['application_name']}" + (f" from {s['client_addr']})" if s["client_addr"] else ")")
        spilled = s["stats"].get("spill_bytes")
        lines.append(
            f"{name:<32} {_size(s['retained_bytes']):>10} {_size(s['lag_bytes']):>10} {_size(spilled):>10}  {holder}"
        )
    return "\n".join(lines)


def _size(value: int | None) -> str:
    return "-" if value is None else format_size(value)
