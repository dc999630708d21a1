"""pgchanges: do something when rows in PostgreSQL change.

The public surface: :class:`App` for handlers, :func:`stream` for scripts, :class:`Change` for what both
deliver, and the error hierarchy. Everything else is internal.
"""

from pgchanges.app import App
from pgchanges.change import Change, Op
from pgchanges.db.listener import Notification
from pgchanges.errors import (
    CaptureError,
    ConfigError,
    ConnectError,
    ConnectionLost,
    DecodeError,
    HandlerFailed,
    NotInstalled,
    PermissionDenied,
    PgChangesError,
    ReplicationLost,
    TableNotFound,
)
from pgchanges.pgoutput import UNCHANGED_TOAST
from pgchanges.sources.outbox import RetryPolicy, Transaction
from pgchanges.stream import ChangeStream, stream

__all__ = [
    "App",
    "CaptureError",
    "Change",
    "ChangeStream",
    "ConfigError",
    "ConnectError",
    "ConnectionLost",
    "DecodeError",
    "HandlerFailed",
    "NotInstalled",
    "Notification",
    "Op",
    "PermissionDenied",
    "PgChangesError",
    "ReplicationLost",
    "RetryPolicy",
    "TableNotFound",
    "UNCHANGED_TOAST",
    "Transaction",
    "stream",
]
__version__ = "0.1.0"
