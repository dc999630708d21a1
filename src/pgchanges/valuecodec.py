"""Lossless JSON for typed row values.

JSON has no decimal, timestamp, UUID or bytes. Rather than wrapping every such value in a tagged object (which
makes ``jq '.new.price'`` useless), a change's JSON keeps each value in its most readable plain form and adds a
``types`` sidecar naming the Python type of every column whose value is not plain JSON::

    {"new": {"id": 7, "price": "9.90", "at": "2024-05-01T10:00:00+00:00"},
     "types": {"new": {"price": "decimal", "at": "datetime"}}}

Plain forms: decimal → its exact string; datetime, date, time → ISO 8601; timedelta → ISO 8601 duration
seconds as ``"P<days>DT<seconds>S"``; UUID → canonical string; bytes → base64; float NaN/±Infinity →
``"NaN"``, ``"Infinity"``, ``"-Infinity"``; IP addresses and networks → their string. Lists of such values use
the element tag with ``[]`` appended (any nesting depth). A value of any other type is written as ``str(value)``
with tag ``"text"``: readable, but it comes back as a string.
"""

from __future__ import annotations

import base64
import ipaddress
import math
import uuid
from collections.abc import Callable, Mapping
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

_PLAIN = (str, int, bool, type(None))


def _encode_float(value: float) -> Any:
    if math.isfinite(value):
        return value
    return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")


def _encode_timedelta(value: timedelta) -> str:
    return f"P{value.days}DT{value.seconds}.{value.microseconds:06d}S"


def _decode_timedelta(text: str) -> timedelta:
    days, _, seconds = text[1:-1].partition("DT")
    return timedelta(days=int(days), seconds=float(Decimal(seconds)))


_ENCODERS: list[tuple[type, str, Callable[[Any], Any]]] = [
    (bool, "", lambda v: v),
    (Decimal, "decimal", str),
    (datetime, "datetime", lambda v: v.isoformat()),
    (date, "date", lambda v: v.isoformat()),
    (time, "time", lambda v: v.isoformat()),
    (timedelta, "timedelta", _encode_timedelta),
    (uuid.UUID, "uuid", str),
    (bytes, "bytes", lambda v: base64.b64encode(v).decode()),
    (memoryview, "bytes", lambda v: base64.b64encode(bytes(v)).decode()),
    # Interfaces subclass addresses, so they must be matched first.
    (ipaddress.IPv4Interface, "ip_interface", str),
    (ipaddress.IPv6Interface, "ip_interface", str),
    (ipaddress.IPv4Address, "ip_address", str),
    (ipaddress.IPv6Address, "ip_address", str),
    (ipaddress.IPv4Network, "ip_network", str),
    (ipaddress.IPv6Network, "ip_network", str),
]

_DECODERS: dict[str, Callable[[Any], Any]] = {
    "decimal": Decimal,
    "datetime": datetime.fromisoformat,
    "date": date.fromisoformat,
    "time": time.fromisoformat,
    "timedelta": _decode_timedelta,
    "uuid": uuid.UUID,
    "bytes": base64.b64decode,
    "float": float,
    "ip_address": ipaddress.ip_address,
    "ip_interface": ipaddress.ip_interface,
    "ip_network": ipaddress.ip_network,
    "text": str,
}


def encode_value(value: Any) -> tuple[Any, str]:
    """The plain JSON form of ``value`` and its tag ("" when the value is plain JSON already)."""
    if isinstance(value, _PLAIN):
        return value, ""
    if isinstance(value, float):
        plain = _encode_float(value)
        return plain, ("" if plain is value else "float")
    if isinstance(value, list | tuple):
        return _encode_list(value)
    if isinstance(value, dict | Mapping):
        return _encode_mapping(value)
    for cls, tag, encode in _ENCODERS:
        if isinstance(value, cls):
            return encode(value), tag
    return str(value), "text"


def _encode_list(values: list[Any] | tuple[Any, ...]) -> tuple[list[Any], str]:
    out: list[Any] = []
    tag = ""
    for item in values:
        plain, item_tag = encode_value(item)
        out.append(plain)
        if item_tag and item is not None:
            tag = tag or item_tag
    return out, (tag + "[]" if tag else "")


def _encode_mapping(value: Mapping[str, Any]) -> tuple[dict[str, Any], str]:
    # json/jsonb objects are plain JSON already; composite rows may hold typed values, which we stringify.
    out: dict[str, Any] = {}
    for key, item in value.items():
        plain, _ = encode_value(item)
        out[str(key)] = plain
    return out, ""


def encode_row(row: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """Plain JSON values of ``row`` and the tags of the columns that needed one."""
    out: dict[str, Any] = {}
    tags: dict[str, str] = {}
    for key, value in row.items():
        plain, tag = encode_value(value)
        out[key] = plain
        if tag:
            tags[key] = tag
    return out, tags


# Exact types, looked up once per value: encode_value's isinstance chain costs a call per type tried.
_PLAIN_EXACT = frozenset({str, int, bool, type(None)})
TAGGED_EXACT: dict[type, tuple[str, Callable[[Any], Any]]] = {
    cls: (tag, encode) for cls, tag, encode in _ENCODERS if tag and cls not in (memoryview,)
}


def encode_row_shallow(row: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """:func:`encode_row` for a JSON encoder that finishes the job: json objects (dicts) are left as they are,
    for :func:`nested_plain` to write what is not plain JSON inside them; the tags are the same.

    ``Change.to_json`` uses it, with ``allow_nan=False`` so that a NaN nested in a json value sends it to the
    exact walk (``to_dict``), which writes it as ``"NaN"``: the same text either way, in a third of the time
    for rows with json columns (bench/results/forward.md).
    """
    out: dict[str, Any] = {}
    tags: dict[str, str] = {}
    for key, value in row.items():
        cls = type(value)
        if cls in _PLAIN_EXACT or cls is dict:
            out[key] = value
            continue
        known = TAGGED_EXACT.get(cls)
        if known is not None:
            tags[key] = known[0]
            out[key] = known[1](value)
            continue
        plain, tag = encode_value(value)
        out[key] = plain
        if tag:
            tags[key] = tag
    return out, tags


def nested_plain(value: Any) -> Any:
    """``JSONEncoder.default`` for values :func:`encode_row_shallow` left inside json objects."""
    return encode_value(value)[0]


def decode_value(plain: Any, tag: str) -> Any:
    """The inverse of :func:`encode_value`."""
    if plain is None or not tag:
        return plain
    while tag.endswith("[]") and not isinstance(plain, list):  # shallower than the tag says (ragged nesting)
        tag = tag[:-2]
    if tag.endswith("[]"):
        inner = tag[:-2]
        return [decode_value(item, inner) for item in plain]
    if isinstance(plain, list):  # a sub-list deeper than the tag says (ragged nesting): same element type
        return [decode_value(item, tag) for item in plain]
    decode = _DECODERS.get(tag)
    return decode(plain) if decode else plain


def decode_row(row: Mapping[str, Any], tags: Mapping[str, str]) -> dict[str, Any]:
    out = dict(row)
    for key, tag in tags.items():
        if key in out:
            out[key] = decode_value(out[key], tag)
    return out
