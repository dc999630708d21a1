"""Logs for machines: ``--log-format json`` writes one JSON object per line, and no secret in any form.

Each line has ``time`` (UTC, ISO 8601), ``level``, ``logger`` and ``message``, then the context where there
is one: ``change_id``, ``table``, ``handler`` (a failing handler's log line carries them), ``consumer``,
``slot`` and ``source`` (set once for everything an App logs while it serves, through a context variable that
its tasks and worker threads inherit, so no call site has to pass them), and ``exception`` with the
traceback. Every message and traceback goes through :func:`scrub` first: a password in a URL or in
``password=…`` is replaced with ``***``, and so is any password the process was given (:func:`forget`).
Only the standard library is needed: this works without the ops extra.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict

from pgchanges import conninfo as ci

#: Record attributes copied into the JSON object when a log call passes them (``extra={...}``).
CONTEXT_FIELDS = ("change_id", "table", "handler", "consumer", "slot", "source")

#: What an App sets while it serves (source, consumer, slot); copied into each record that lacks them.
serving_context: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar(
    "pgchanges_log_context", default=None
)
_secrets: set[str] = set()


def forget(conninfo: str) -> None:
    """Remember the password of ``conninfo`` so that it is scrubbed wherever it appears in a log line."""
    try:
        password = conninfo_to_dict(conninfo).get("password")
    except psycopg.ProgrammingError:  # unparsable: the patterns still apply
        return
    if password:
        _secrets.add(str(password))


def scrub(text: str) -> str:
    """``text`` with passwords removed (URL userinfo, ``password=``, and every password given to :func:`forget`)."""
    for secret in _secrets:
        text = text.replace(secret, "***")
    return ci._strip_secrets(text)  # the one set of secret patterns, kept in conninfo


class ContextFilter(logging.Filter):
    """Adds the serving context (source, consumer, slot) to records that do not carry their own."""

    def filter(self, record: logging.LogRecord) -> bool:
        context = serving_context.get()
        if context:
            for key, value in context.items():
                if not hasattr(record, key):
                    setattr(record, key, value)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": scrub(record.getMessage()),
        }
        for key in CONTEXT_FIELDS:
            value = getattr(record, key, None)
            if value is not None:
                out[key] = scrub(str(value))
        if record.exc_info:
            out["exception"] = scrub(self.formatException(record.exc_info))
        return json.dumps(out, ensure_ascii=False, default=str)


class ScrubbingFormatter(logging.Formatter):
    """The text format, scrubbed like the JSON one."""

    def format(self, record: logging.LogRecord) -> str:
        return scrub(super().format(record))


def configure(level: int, fmt: str = "text", stream: Any = None) -> None:
    """Log to ``stream`` (stderr) at ``level`` in ``fmt`` ("text" or "json"), replacing the root's handlers."""
    handler = logging.StreamHandler(stream or sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(ScrubbingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(ContextFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
