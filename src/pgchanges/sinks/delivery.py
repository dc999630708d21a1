"""Delivering a batch's messages through a sink: windows in flight, per-row order, retries with backoff.

:meth:`Delivery.deliver` publishes the messages in *rounds*. A round is a window of at most ``window``
messages in commit order, with at most one per row: a change whose row (or, for a truncate or a table without
a primary key, whose table) already has a message in the round, or one held back, waits for the next round.
So a row's later change is sent only once the broker confirmed its earlier one, and when the earlier one
failed it is not sent at all (``SKIPPED``): a row's changes reach the broker in commit order, however many
are in flight.

Results: confirmed → ``None``; :class:`~pgchanges.errors.SinkUnavailable` → tried again in the next round,
after a backoff with jitter when a round made no progress; :class:`~pgchanges.errors.SinkRejected` → handed
to ``on_rejected``, whose answer is the change's outcome (a failure, or None once it went to a dead-letter
table). The call returns only when every message is settled that way: the source's position cannot pass an
unconfirmed change, and nothing beyond the batch is held in memory.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence

import anyio

from pgchanges.change import Change
from pgchanges.errors import SinkRejected, SinkUnavailable
from pgchanges.plain_run import SKIPPED, Outcome
from pgchanges.sinks.base import Message, Result, Sink
from pgchanges.sinks.bridge import Bridge
from pgchanges.sources.base import Backoff

log = logging.getLogger("pgchanges.forward")

#: A row: (schema, table, key values); key None means the whole table (truncate, or no primary key).
Row = tuple[str | None, str | None, object]
OnRejected = Callable[[Change, SinkRejected], Awaitable[Outcome]]
Item = Message | SinkRejected | None  # what to send; a message that could not be made; nothing (skipped)


class _Round:
    """Which pending messages go out together (see the module docstring)."""

    def __init__(self, rows: Sequence[Row], failed_rows: set[Row], failed_tables: set[Row]) -> None:
        self.rows = rows
        self.failed_rows = failed_rows  # rows whose change failed: their later changes are skipped
        self.failed_tables = failed_tables  # (schema, table, None) of every table with a failed change

    def plan(self, pending: list[int], limit: int) -> tuple[list[int], list[int], list[int]]:
        """(sent now, waiting for a later round, skipped behind a failure) of ``pending`` (in order)."""
        send: list[int] = []
        wait: list[int] = []
        skip: list[int] = []
        busy_rows: set[Row] = set()
        busy_tables: set[Row] = set()  # tables with any change in this round (or held back)
        whole_tables: set[Row] = set()  # tables with a whole-table change in this round (or held back)
        for index in pending:
            row = self.rows[index]
            table = (row[0], row[1], None)
            whole = row[2] is None
            if (row in self.failed_rows) or (whole and table in self.failed_tables):
                skip.append(index)
                self.failed_rows.add(row)
                continue
            clash = table in whole_tables or (table in busy_tables if whole else row in busy_rows)
            (wait if clash or len(send) >= limit else send).append(index)
            busy_rows.add(row)
            busy_tables.add(table)
            if whole:
                whole_tables.add(table)
        return send, wait, skip


class Delivery:
    """Publishes windows of messages through ``sink`` (in ``bridge``'s event loop) until each is settled."""

    def __init__(self, sink: Sink, bridge: Bridge, *, window: int, backoff: Backoff, on_rejected: OnRejected) -> None:
        self.sink = sink
        self._bridge = bridge
        self.window = window
        self._backoff = backoff
        self._on_rejected = on_rejected
        self._opened = False
        self._generation = 0  # how often the sink was opened: a failure of an older opening reopens nothing
        self._lock: anyio.Lock | None = None  # several feeds (outbox workers) deliver at once: one opens
        self.retries = 0  # rounds that met an unavailable broker (for tests and logs)

    async def deliver(self, items: Sequence[Item], rows: Sequence[Row], changes: Sequence[Change]) -> list[Outcome]:
        """One outcome per item (None: confirmed, or nothing to send); returns when all are settled. An item that
        is a SinkRejected already (its message could not be made) fails in its turn, like a refused one."""
        outcomes: list[Outcome] = [None] * len(items)
        pending = [i for i, m in enumerate(items) if m is not None]
        plan = _Round(rows, set(), set())
        attempt = 0
        while pending:
            send, wait, skip = plan.plan(pending, self.window)
            for index in skip:
                outcomes[index] = SKIPPED
            results = await self._results(items, send)
            again = [i for i, result in zip(send, results, strict=True) if isinstance(result, SinkUnavailable)]
            for index, result in zip(send, results, strict=True):
                if isinstance(result, SinkRejected):
                    outcomes[index] = outcome = await self._on_rejected(changes[index], result)
                    if outcome is not None:
                        plan.failed_rows.add(rows[index])
                        plan.failed_tables.add((rows[index][0], rows[index][1], None))
            pending = sorted(again + wait)
            if not again:
                attempt = 0
            elif len(again) == len(send):  # no progress at all: wait before the next try
                problem = results[0]
                assert isinstance(problem, SinkUnavailable)
                await self._pause(problem, attempt, len(pending))
                attempt += 1
        return outcomes

    async def _results(self, items: Sequence[Item], send: list[int]) -> list[Result]:
        """What became of the items at ``send``: published (messages), or failed already (the rest)."""
        ready = [m for i in send if isinstance(m := items[i], Message)]
        published = iter(await self._publish(ready))
        results: list[Result] = []
        for index in send:
            item = items[index]
            results.append(next(published) if isinstance(item, Message) else item)
        return results

    async def _publish(self, messages: list[Message]) -> list[Result]:
        if not messages:
            return []
        try:
            generation = await self._open()
        except SinkUnavailable as exc:
            return [exc] * len(messages)
        try:
            results = await self._bridge.run(self.sink.publish, messages)
        except SinkUnavailable as exc:
            if generation == self._generation:
                self._opened = False  # reconnect next time (the sink closed what it had)
            return [exc] * len(messages)
        if len(results) != len(messages):  # a sink's bug: take nothing for granted
            return [SinkUnavailable(f"{self.sink.name} answered for {len(results)} of {len(messages)}")] * len(messages)
        return results

    async def _open(self) -> int:
        """Open the sink unless it is open; which opening the caller publishes through. An open sink is the
        common case and takes no lock: acquiring one is a checkpoint, which would let a batch read ahead be
        prepared before this one is sent rather than while it is in flight (see :mod:`pgchanges.serving`)."""
        if self._opened:
            return self._generation
        if self._lock is None:
            self._lock = anyio.Lock()
        async with self._lock:
            if not self._opened:
                await self._bridge.run(self.sink.open)
                self._opened = True
                self._generation += 1
                log.info("forwarding to %s", self.sink.name)
        return self._generation

    async def _pause(self, problem: SinkUnavailable, attempt: int, waiting: int) -> None:
        self.retries += 1
        delay = self._backoff.delay(attempt)
        log.warning("%s; %d change(s) wait, retrying in %.2fs", problem, waiting, delay)
        await anyio.sleep(delay)

    async def close(self) -> None:
        self._opened = False
        await self._bridge.run(self.sink.close)  # also what a failed opening left behind
