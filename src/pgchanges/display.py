"""How changes look in a terminal: one readable line per change (``tail``'s default format)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from pgchanges.change import Change

MAX_VALUE_CHARS = 60


def short(value: Any) -> str:
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= MAX_VALUE_CHARS else text[: MAX_VALUE_CHARS - 1] + "…"


def _row(row: Mapping[str, Any] | None) -> str:
    if not row:
        return ""
    return " ".join(f"{key}={short(value)}" for key, value in row.items())


def format_change(change: Change, now: datetime | None = None) -> str:
    stamp = (now or datetime.now()).strftime("%H:%M:%S.%f")[:-3]
    where = change.qualified_table or ""
    if change.op in ("insert", "upsert"):
        detail = _row(change.new)
    elif change.op == "update":
        old, new = change.old or {}, change.new or {}
        keys = change.changed or tuple(new)
        detail = " ".join(f"{k}: {short(old.get(k))} → {short(new.get(k))}" for k in keys) or "(no column changed)"
        if "id" in new and "id" not in keys:
            detail = f"id={short(new['id'])} {detail}"
    elif change.op == "delete":
        detail = _row(change.old)
    elif change.op == "ddl":
        extra = change.extra or {}
        where = ""
        detail = f"{extra.get('command_tag')} {extra.get('object_type')} {extra.get('object_identity')}"
    elif change.op == "gap":
        detail = f"changes may have been missed: {(change.extra or {}).get('reason', '')}"
    else:
        detail = _row(change.extra)
    return f"{stamp} {change.op:<8} {where} {detail}".rstrip()
