"""Subject templates: where a change goes, from ``{schema}``, ``{table}``, ``{op}`` and ``{key}``.

``pgchanges.{schema}.{table}`` names a NATS subject, ``pgchanges:{schema}.{table}`` a Redis stream,
``{schema}.{table}.{op}`` an AMQP routing key. ``{key}`` is the row's primary key, its values joined with
``.`` (empty for a truncate or a table without one). A template is checked when the forwarder is made: an
unknown placeholder is a ConfigError at once.
"""

from __future__ import annotations

import string
from collections.abc import Callable

from pgchanges import valuecodec
from pgchanges.change import Change
from pgchanges.errors import ConfigError

FIELDS = ("schema", "table", "op", "key")
_FORMATTER = string.Formatter()


def _plain(value: str) -> str:
    return value


class Template:
    """A parsed template; ``clean`` makes each substituted value safe for the broker (NATS subjects)."""

    def __init__(self, text: str, clean: Callable[[str], str] = _plain) -> None:
        try:
            parsed = list(_FORMATTER.parse(text))
        except ValueError as exc:
            raise ConfigError(f"invalid template {text!r}: {exc}") from None
        self.pieces: list[tuple[str, str | None]] = []
        for literal, name, spec, conversion in parsed:
            if name is not None and (name not in FIELDS or spec or conversion):
                raise ConfigError(f"template {text!r}: unknown placeholder {{{name}}}; use {', '.join(FIELDS)}")
            self.pieces.append((literal, name))
        if not text:
            raise ConfigError("a template may not be empty")
        self.text = text
        self.uses_key = any(name == "key" for _, name in self.pieces)
        self.clean = clean  # also what the key's values are cleaned with (see key_text)
        self._cache: dict[tuple[str | None, str | None, str], str] = {}

    def __repr__(self) -> str:
        return f"Template({self.text!r})"

    def render(self, change: Change, key: str) -> str:
        """The template filled in for ``change`` whose row key is ``key``."""
        if not self.uses_key:
            cached = self._cache.get((change.schema, change.table, change.op))
            if cached is not None:
                return cached
        values = {"schema": change.schema or "", "table": change.table or "", "op": change.op, "key": key}
        clean = self.clean
        out = "".join(
            literal + ("" if name is None else values[name] if name == "key" else clean(values[name]))
            for literal, name in self.pieces
        )
        if not self.uses_key:
            self._cache[(change.schema, change.table, change.op)] = out
        return out

    def wildcard(self) -> str:
        """The NATS subject filter that covers every subject this template makes: a placeholder that fills a
        whole token becomes ``*``; from a token that mixes text with a placeholder, or holds ``{key}`` (whose
        dots make more tokens), on, ``>``."""
        tokens = self.text.split(".")
        out: list[str] = []
        for token in tokens:
            names = [piece[1] for piece in _FORMATTER.parse(token) if piece[1]]
            if not names:
                out.append(token)
            elif token in ("{schema}", "{table}", "{op}"):
                out.append("*")
            else:
                out.append(">")
                break
        return ".".join(out)


def nats_token(value: str) -> str:
    """A value as one NATS subject token: no dots, spaces or wildcards, never empty."""
    cleaned = "".join("_" if c in ".*> \t\r\n" else c for c in value)
    return cleaned or "_"


def key_text(values: tuple[object, ...], clean: Callable[[str], str] = _plain) -> str:
    """A primary key's values as ``{key}`` shows them (their plain JSON form, each cleaned), joined with ``.``."""
    return ".".join(clean(str(valuecodec.encode_value(v)[0])) for v in values)
