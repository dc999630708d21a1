"""One exception hierarchy for everything pgchanges raises on purpose.

Every error carries a message meant for a person: the CLI prints ``str(error)`` as its one line, so messages
must never contain a password (build them from :func:`pgchanges.conninfo.redact`).
"""

from __future__ import annotations


class PgChangesError(Exception):
    """Base class of every error pgchanges raises on purpose."""


class ConfigError(PgChangesError):
    """The caller asked for something that cannot work (bad option, bad table name, bad DSN syntax)."""


class ConnectError(PgChangesError):
    """The database could not be reached or refused the login."""


class CaptureError(PgChangesError):
    """Installing, checking or removing capture objects failed."""


class TableNotFound(CaptureError):
    """A table named by the caller does not exist."""


class PermissionDenied(CaptureError):
    """The role lacks a privilege pgchanges needs; the message says which one to grant."""


class NotInstalled(CaptureError):
    """Capture is not installed for a table that a subscription needs."""


class DecodeError(PgChangesError):
    """Bytes from the server could not be decoded into a change."""


class HandlerFailed(PgChangesError):
    """A handler raised and the error policy is ``"stop"``."""


class ConnectionLost(ConnectError):
    """An open connection broke (backend terminated, server restarted, network gone); sources reconnect."""


class ReplicationLost(ConnectionLost):
    """The replication connection broke."""


class SinkError(PgChangesError):
    """Forwarding changes to a broker or webhook failed; the message names the sink without its secrets."""


class SinkUnavailable(SinkError):
    """The broker or endpoint cannot take a message now (down, refusing, timed out); it is tried again."""


class SinkRejected(SinkError):
    """The broker or endpoint can never take this message (too large, refused as invalid): the change failed."""
