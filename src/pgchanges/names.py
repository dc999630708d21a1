"""Table names as the user writes them, quoted as PostgreSQL needs them, and NOTIFY channel names.

A user writes ``orders``, ``public.orders`` or ``"Sales"."Order Items"``; :func:`parse_table` turns each into
a :class:`TableName`. Channel names are derived deterministically so that the trigger (which gets the channel
as an argument at install time) and the listener agree without a lookup, and names longer than PostgreSQL's
63-byte identifier limit get a hash suffix instead of being silently truncated into a collision.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from psycopg import sql

from pgchanges.errors import ConfigError

#: PostgreSQL truncates identifiers to NAMEDATALEN - 1 bytes.
MAX_IDENTIFIER_BYTES = 63
CHANNEL_PREFIX = "pgchanges:"
_UNQUOTED = re.compile(r"^[^\W\d][\w$]*$")


@dataclass(frozen=True, slots=True, order=True)
class TableName:
    """A schema-qualified table name, unquoted (the real characters of each part)."""

    schema: str
    table: str

    def __str__(self) -> str:
        return f"{_display_part(self.schema)}.{_display_part(self.table)}"

    @property
    def identifier(self) -> sql.Identifier:
        """The quoted, schema-qualified identifier for use in SQL text."""
        return sql.Identifier(self.schema, self.table)

    @property
    def channel(self) -> str:
        """The NOTIFY channel the notify trigger of this table signals."""
        return channel_name(f"{self.schema}.{self.table}")


def _display_part(part: str) -> str:
    plain = part.isidentifier() and part == part.lower() and part.isascii()
    return part if plain else '"' + part.replace('"', '""') + '"'


def channel_name(key: str) -> str:
    """A channel name for ``key`` that fits PostgreSQL's identifier limit without colliding."""
    name = CHANNEL_PREFIX + key
    if len(name.encode()) <= MAX_IDENTIFIER_BYTES:
        return name
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    head = name.encode()[: MAX_IDENTIFIER_BYTES - len(digest) - 1].decode(errors="ignore")
    return f"{head}~{digest}"


def parse_table(text: str, default_schema: str = "public") -> TableName:
    """Parse ``table``, ``schema.table`` or their double-quoted forms into a :class:`TableName`.

    Unquoted parts are folded to lower case, as PostgreSQL does; quoted parts keep their characters.
    """
    parts = _split_identifier(text)
    if len(parts) == 1:
        return TableName(default_schema, parts[0])
    if len(parts) == 2:
        return TableName(parts[0], parts[1])
    raise ConfigError(f"table name {text!r} has {len(parts)} parts; expected 'table' or 'schema.table'")


def _split_identifier(text: str) -> list[str]:
    parts: list[str] = []
    i, n = 0, len(text)
    while True:
        if i < n and text[i] == '"':
            i += 1
            buf: list[str] = []
            while True:
                j = text.find('"', i)
                if j < 0:
                    raise ConfigError(f"unterminated quote in table name {text!r}")
                buf.append(text[i:j])
                if j + 1 < n and text[j + 1] == '"':
                    buf.append('"')
                    i = j + 2
                    continue
                i = j + 1
                break
            part = "".join(buf)
        else:
            j = text.find(".", i)
            raw = text[i:] if j < 0 else text[i:j]
            part = raw.strip().lower()
            if part and not _UNQUOTED.match(part):
                raise ConfigError(f"{raw.strip()!r} in {text!r} needs double quotes (it is not a plain identifier)")
            i = n if j < 0 else j
        if not part:
            raise ConfigError(f"empty part in table name {text!r}")
        if len(part.encode()) > MAX_IDENTIFIER_BYTES:
            raise ConfigError(f"name {part!r} is longer than PostgreSQL's {MAX_IDENTIFIER_BYTES}-byte limit")
        parts.append(part)
        if i >= n:
            return parts
        if text[i] != ".":
            raise ConfigError(f"unexpected {text[i]!r} in table name {text!r}")
        i += 1
        if i >= n:
            raise ConfigError(f"table name {text!r} ends with a dot")
