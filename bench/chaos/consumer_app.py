"""The App the chaos consumer process serves: ``pgchanges run bench.chaos.consumer_app:app``.

Configured by the environment (the runner sets it): ``CHAOS_DSN``, ``CHAOS_SOURCE`` and ``CHAOS_OPTIONS``
(JSON: the source's options). Each delivered row version of ``public.chaos`` is one line on stdout,
``{"id": …, "ver": …, "op": "…", "t": epoch seconds}``, written before the source acknowledges it (the
handler returns first): a crash between the two repeats the line, which is what at-least-once means. A gap is
``{"gap": reason, "t": …}``. Plain functions, so one worker thread writes the lines in delivery order.
"""

from __future__ import annotations

import json
import os
import sys
import time

import pgchanges

app = pgchanges.App(
    os.environ.get("CHAOS_DSN", ""),
    source=os.environ.get("CHAOS_SOURCE", "notify"),
    **json.loads(os.environ.get("CHAOS_OPTIONS", "{}")),
)


def version_of(change: pgchanges.Change) -> tuple[int, int]:
    """(id, ver) of the row version a change is: a hard delete is version ``old.ver + 1``; a soft delete
    (polling: the row as the delete left it, in ``old``) is the row's own version."""
    if change.new is not None:
        return int(change.new["id"]), int(change.new["ver"])
    assert change.old is not None, f"a {change.op} without a row"
    soft = bool(change.old.get("deleted"))
    return int(change.old["id"]), int(change.old["ver"]) + (0 if soft else 1)


@app.on("public.chaos")
def delivered(change: pgchanges.Change) -> None:
    if change.op == "truncate":
        return
    row_id, ver = version_of(change)
    sys.stdout.write(json.dumps({"id": row_id, "ver": ver, "op": change.op[0], "t": time.time()}) + "\n")
    sys.stdout.flush()


@app.on_gap
def gap(change: pgchanges.Change) -> None:
    reason = str((change.extra or {}).get("reason", ""))
    sys.stdout.write(json.dumps({"gap": reason, "t": time.time()}) + "\n")
    sys.stdout.flush()
