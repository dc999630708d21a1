"""Where to connect: one libpq conninfo string built from whatever the user handed us.

Users give a DSN/URL, a dict of libpq keywords, a psycopg connection or a SQLAlchemy ``Engine``. pgchanges
opens its own dedicated connections (a LISTEN connection cannot be shared with a pool), so everything is
reduced to a conninfo string here. :func:`redact` is the only way a conninfo reaches a log or error message.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from pgchanges.errors import ConfigError

DEFAULT_APPLICATION_NAME = "pgchanges"

ConnectionSource = str | Mapping[str, Any] | psycopg.Connection[Any] | psycopg.AsyncConnection[Any] | None


def resolve(
    dsn: ConnectionSource = None,
    *,
    engine: Any = None,
    application_name: str = DEFAULT_APPLICATION_NAME,
) -> str:
    """A libpq conninfo string for ``dsn`` or ``engine``.

    With neither, ``DATABASE_URL`` is used if set, else an empty conninfo so libpq reads the ``PG*``
    environment variables.
    """
    if engine is not None:
        if dsn is not None:
            raise ConfigError("give either a DSN/connection or engine=, not both")
        base = _from_engine(engine)
    elif dsn is None:
        base = os.environ.get("DATABASE_URL", "")
    elif isinstance(dsn, str):
        base = dsn
    elif isinstance(dsn, psycopg.Connection | psycopg.AsyncConnection):
        base = _from_connection(dsn)
    elif isinstance(dsn, Mapping):
        base = make_conninfo("", **{k: str(v) for k, v in dsn.items() if v is not None})
    else:
        raise ConfigError(f"cannot connect with a {type(dsn).__name__}; give a DSN, dict, psycopg connection or engine")
    base = _normalise_url(base)
    try:
        params = conninfo_to_dict(base)
    except psycopg.ProgrammingError as exc:
        raise ConfigError(f"invalid connection string: {_strip_secrets(str(exc))}") from None
    extra: dict[str, Any] = {"application_name": application_name}  # liveness settings: db/connect.py
    if "application_name" in params:
        extra.pop("application_name")
    return make_conninfo(base, **extra)


def _normalise_url(dsn: str) -> str:
    # SQLAlchemy-style URLs name the driver: postgresql+psycopg:// -> postgresql://
    return re.sub(r"^postgres(?:ql)?\+[a-z0-9_]+://", "postgresql://", dsn)


def _from_engine(engine: Any) -> str:
    url = getattr(engine, "url", None)
    if url is None or not hasattr(url, "render_as_string"):
        raise ConfigError("engine= must be a SQLAlchemy Engine")
    if not str(url.drivername).startswith("postgresql"):
        raise ConfigError(f"engine= must point to PostgreSQL, not {url.drivername}")
    return str(url.set(drivername="postgresql").render_as_string(hide_password=False))


def _from_connection(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> str:
    params = conn.info.get_parameters()
    password = conn.info.password
    if password:
        params["password"] = password
    params.pop("application_name", None)
    return make_conninfo("", **params)


def redact(conninfo: str) -> str:
    """``conninfo`` with any password removed, safe to log."""
    try:
        params = conninfo_to_dict(conninfo)
    except psycopg.ProgrammingError:
        return _strip_secrets(conninfo)
    params.pop("password", None)
    params.pop("application_name", None)
    for key in list(params):
        if key.startswith("keepalives"):
            params.pop(key)
    shown = " ".join(f"{k}={v}" for k, v in params.items())
    return shown or "(libpq defaults / PG* environment)"


_SECRET_PATTERNS = [
    re.compile(r"(://[^:/@\s]*:)[^@\s]*@"),  # user:password@ in URLs
    re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE),
]


def _strip_secrets(text: str) -> str:
    text = _SECRET_PATTERNS[0].sub(r"\1***@", text)
    return _SECRET_PATTERNS[1].sub(r"\1***", text)


def describe_error(exc: BaseException, conninfo: str = "") -> str:
    """A one-line, password-free description of a connection or query error."""
    message = " ".join(str(exc).split()) or type(exc).__name__
    if conninfo:
        params = conninfo_to_dict(conninfo) if conninfo else {}
        password = params.get("password")
        if password:
            message = message.replace(str(password), "***")
    return _strip_secrets(message)
