"""Table names as the user writes them, quoted as PostgreSQL needs them, and NOTIFY channel names.

A user writes ``orders``, ``public.orders`` or ``"Sales"."Order Items"``; :func:`parse_table` turns each into
a :class:`TableName`. Channel names are derived deterministically so that the trigger (which gets the channel
as an argument at install time) and the listener agree without a lookup, and names longer than PostgreSQL's
63-byte identifier limit get a hash suffix instead of being silently truncated into a collision.
"""

from __future__ import annotations

import functools
import hashlib
import re
from dataclasses import dataclass

from psycopg import sql

from pgchanges.errors import ConfigError

#: PostgreSQL truncates identifiers to NAMEDATALEN - 1 bytes.
MAX_IDENTIFIER_BYTES = 63
CHANNEL_PREFIX = "pgchanges:"
_UNQUOTED = re.compile(r"^[^\W\d][\w$]*$")
_UNQUOTED_PATTERN = re.compile(r"^[\w$*?]+$")


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
        """The NOTIFY channel the notify triggers of this table (or pattern) signal."""
        return channel_name(f"{self.schema}.{self.table}")

    @property
    def is_pattern(self) -> bool:
        """Whether a part holds a wildcard: ``*`` (any characters) or ``?`` (one character)."""
        return any(c in part for part in (self.schema, self.table) for c in WILDCARDS)

    @property
    def like_patterns(self) -> tuple[str, str]:
        """Schema and table as SQL LIKE patterns (exact names escaped, wildcards translated)."""
        return _to_like(self.schema), _to_like(self.table)

    @classmethod
    def from_like_patterns(cls, schema_like: str, table_like: str) -> TableName:
        """The name or pattern whose :attr:`like_patterns` are these (as stored in capture rules)."""
        return cls(_from_like(schema_like), _from_like(table_like))

    def matches(self, schema: str | None, table: str | None) -> bool:
        """Whether the table ``schema.table`` is this name or matches this pattern."""
        if schema is None or table is None:
            return False
        if not self.is_pattern:
            return schema == self.schema and table == self.table
        return _glob(self.schema).fullmatch(schema) is not None and _glob(self.table).fullmatch(table) is not None


WILDCARDS = ("*", "?")


def _to_like(part: str) -> str:
    escaped = part.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%").replace("?", "_")


def _from_like(pattern: str) -> str:
    out: list[str] = []
    chars = iter(pattern)
    for char in chars:
        if char == "\\":
            out.append(next(chars, ""))
        else:
            out.append({"%": "*", "_": "?"}.get(char, char))
    return "".join(out)


@functools.cache
def _glob(part: str) -> re.Pattern[str]:
    return re.compile(".*".join(".".join(re.escape(x) for x in piece.split("?")) for piece in part.split("*")), re.S)


def _display_part(part: str) -> str:
    plain = (part.isidentifier() or bool(_UNQUOTED_PATTERN.match(part))) and part == part.lower() and part.isascii()
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
    ``*`` and ``?`` are wildcards (``public.*``, ``sales.order_*``): the name is then a pattern that matches
    tables existing now and created later.
    """
    parts = _split_identifier(text)
    if len(parts) == 1:
        return TableName(default_schema, parts[0])
    if len(parts) == 2:
        return TableName(parts[0], parts[1])
    raise ConfigError(f"table name {text!r} has {len(parts)} parts; expected 'table' or 'schema.table'")


def _has_wildcard(part: str) -> bool:
    return any(c in part for c in WILDCARDS)


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
            if part and not (_UNQUOTED.match(part) or (_UNQUOTED_PATTERN.match(part) and _has_wildcard(part))):
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
