"""The public surface of pgchanges, held to one list (after trio's ``_tests/test_exports.py``).

To add a public name: export it in src/pgchanges/__init__.py (import and ``__all__``), add it to
:data:`SURFACE` here (to :data:`ERRORS` too if it is an error), and document it in README.md.
"""

import importlib.metadata
import pickle
import re
import tomllib
import traceback
import types
import typing
from pathlib import Path

import pytest

import pgchanges

ROOT = Path(__file__).resolve().parents[2]

#: Every error pgchanges raises on purpose: each one a :class:`pgchanges.PgChangesError`.
ERRORS = {
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
}
#: The whole public surface.
SURFACE = {
    "App",  # handlers: @app.on(...), app.run() / await app.serve()
    "stream",  # scripts: async with pgchanges.stream(...) as changes
    "ChangeStream",  # what stream() yields
    "Change",  # what both deliver
    "Op",  # the Literal type of Change.op
    "Notification",  # a plain NOTIFY, for @app.on_notify
    "UNCHANGED_TOAST",  # the value of a TOASTed column an update left alone (logical source)
    "RetryPolicy",  # the outbox source's retries
    "Transaction",  # the outbox source's exactly-once handlers take it
    *ERRORS,
}


PUBLIC = [(name, getattr(pgchanges, name)) for name in sorted(pgchanges.__all__)]
CLASSES = [(name, obj) for name, obj in PUBLIC if isinstance(obj, type)]
FUNCTIONS = [(name, obj) for name, obj in PUBLIC if isinstance(obj, types.FunctionType)]


def test_all_is_the_surface():
    assert len(pgchanges.__all__) == len(set(pgchanges.__all__)), "a name listed twice"
    assert set(pgchanges.__all__) == SURFACE


def test_nothing_else_public_leaks():
    """Besides ``__all__``, the only public names are the submodules (which Python binds on import)."""
    leaked = [
        name
        for name, value in vars(pgchanges).items()
        if not name.startswith("_")
        and name not in pgchanges.__all__
        and not (isinstance(value, types.ModuleType) and value.__name__ == f"pgchanges.{name}")
    ]
    assert leaked == []


def test_readme_names_only_exported_things():
    """Every ``pgchanges.Name`` that README.md's examples use (class or constant) is exported."""
    readme = (ROOT / "README.md").read_text()
    assert set(re.findall(r"\bpgchanges\.([A-Z]\w*)", readme)) <= set(pgchanges.__all__)


@pytest.mark.parametrize(("name", "obj"), CLASSES + FUNCTIONS)
def test_public_classes_and_functions_say_they_are_pgchanges(name, obj):
    assert obj.__module__ == "pgchanges"
    assert obj.__qualname__ == name  # so that pgchanges.<qualname> finds it again (pickle, docs)
    assert obj.__doc__, f"{name} has no docstring"


@pytest.mark.parametrize(("name", "cls"), CLASSES)
def test_type_hints_still_resolve(name, cls):
    """``get_type_hints`` looks names up in ``sys.modules[cls.__module__]``, now pgchanges: it still works."""
    typing.get_type_hints(cls)


def test_errors_are_one_hierarchy():
    exceptions = {name for name, cls in CLASSES if issubclass(cls, BaseException)}
    assert exceptions == ERRORS
    assert all(issubclass(getattr(pgchanges, name), pgchanges.PgChangesError) for name in ERRORS)


def test_values_pickle_and_print_under_their_public_names():
    change = pgchanges.Change(
        id="notify:1",
        op="insert",
        schema="public",
        table="t",
        new={"id": 1},
        old=None,
        changed=(),
        xid=7,
        commit_time=None,
        position=1,
        source="notify",
    )
    values = [change, pgchanges.Notification("c", "hello", 42), pgchanges.RetryPolicy(max_attempts=3)]
    for value in values:
        data = pickle.dumps(value)
        assert b"pgchanges." not in data, data  # found as pgchanges.<name>, not in the module that defines it
        assert pickle.loads(data) == value
        assert repr(value).startswith(f"{type(value).__name__}(")
    assert pickle.loads(pickle.dumps(pgchanges.UNCHANGED_TOAST)) is pgchanges.UNCHANGED_TOAST
    for name in sorted(ERRORS):
        error = getattr(pgchanges, name)("what went wrong")
        again = pickle.loads(pickle.dumps(error))
        assert type(again) is type(error) and again.args == error.args
        assert traceback.format_exception_only(error) == [f"pgchanges.{name}: what went wrong\n"]


def test_one_version():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "version" not in project and "version" in project["dynamic"]
    installed = importlib.metadata.version("pgchanges")
    assert pgchanges.__version__ == installed, "the installed metadata is older: pip install -e . again"
