"""The compiled extension modules (``_speedups``, ``_jsonwrite``): loaded when built, each with a pure-Python twin.

They are built at install (pyproject.toml: ext-modules, optional, so a machine without a compiler still installs
pgchanges) and tested against their twins; ``PGCHANGES_PURE_PYTHON=1`` turns all of them off.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType


def compiled(name: str) -> ModuleType | None:
    """``pgchanges.<name>``, or None when it was not built or ``PGCHANGES_PURE_PYTHON`` is set."""
    if os.environ.get("PGCHANGES_PURE_PYTHON"):
        return None
    try:
        return importlib.import_module(f"pgchanges.{name}")
    except ImportError:
        return None
