"""pgchanges: do something when rows in PostgreSQL change.

The public surface: :class:`App` for handlers, :func:`stream` for scripts, :class:`Change` for what both
deliver, and the error hierarchy. Everything else is internal.

Layout: the code lives in submodules (README.md's module map says which does what); this module only
re-exports the public names listed in ``__all__``, and makes each public class and function say it is
``pgchanges.<name>`` (in reprs, tracebacks, pickles and docs), so that where it is defined stays internal and
free to move. tests/unit/test_exports.py holds the surface to what is listed here.
"""

from inspect import get_annotations as _get_annotations
from types import FunctionType as _FunctionType
from typing import get_type_hints as _get_type_hints

from pgchanges._version import __version__ as __version__
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
    SinkError,
    SinkRejected,
    SinkUnavailable,
    TableNotFound,
)
from pgchanges.retry import RetryPolicy
from pgchanges.rowmaps import UNCHANGED_TOAST
from pgchanges.sources.outbox import Transaction
from pgchanges.stream import ChangeStream, stream

__all__ = [
    # handlers and scripts
    "App",
    "stream",
    "ChangeStream",
    # what they deliver
    "Change",
    "Op",
    "Notification",
    "UNCHANGED_TOAST",
    # the outbox source
    "RetryPolicy",
    "Transaction",
    # errors (all PgChangesError)
    "PgChangesError",
    "ConfigError",
    "ConnectError",
    "ConnectionLost",
    "ReplicationLost",
    "CaptureError",
    "TableNotFound",
    "PermissionDenied",
    "NotInstalled",
    "DecodeError",
    "HandlerFailed",
    "SinkError",
    "SinkUnavailable",
    "SinkRejected",
]


def _present_as_public() -> None:
    """Set ``__module__`` of the public classes and functions to ``"pgchanges"`` (as trio does).

    A class's string annotations are resolved first, in the module that defines them: ``typing.get_type_hints``
    looks names up in ``sys.modules[cls.__module__]``, which from now on is this module.
    """
    namespace = globals()
    for name in __all__:
        obj = namespace[name]
        if isinstance(obj, type):
            own = _get_annotations(obj)
            try:
                hints = _get_type_hints(obj, include_extras=True)
            except NameError:  # a name imported only for type checkers: leave the strings
                pass
            else:
                obj.__annotations__ = {key: hints[key] for key in own}
            obj.__module__ = __name__
        elif isinstance(obj, _FunctionType):
            obj.__module__ = __name__


_present_as_public()
