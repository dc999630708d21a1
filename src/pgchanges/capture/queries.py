"""Named SQL queries, loaded from ``capture/sql/queries.sql`` (sections headed ``-- name: <name>``)."""

from __future__ import annotations

import functools
import re
from importlib import resources

_HEADER = re.compile(r"^-- name: ([a-z_]+)\s*$", re.MULTILINE)


@functools.cache
def all_queries() -> dict[str, str]:
    text = resources.files("pgchanges.capture").joinpath("sql", "queries.sql").read_text(encoding="utf-8")
    parts = _HEADER.split(text)
    return {name: body.strip() for name, body in zip(parts[1::2], parts[2::2], strict=True)}


def query(name: str) -> str:
    """The SQL text of the query ``name`` (a KeyError names a query that does not exist)."""
    return all_queries()[name]
