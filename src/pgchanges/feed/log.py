"""The retained log: the feed's one bounded, ordered copy of the changes its capture took, read by every client.

One capture (a batch route of the App's runtime) appends; every client only holds a position in it (a
sequence number), so a thousand clients cost a thousand integers, not a thousand queues, and a slow client
costs nothing until the log forgets its position, when it is dropped (:mod:`pgchanges.feed.fanout`).

Entries carry their key (:mod:`pgchanges.feed.offsets`), the :class:`~pgchanges.change.Change` and its JSON
(``Change.to_json()``, encoded once at append: the payload of every client that sees the whole row). The log
forgets its oldest entries past ``max_changes``, ``max_bytes`` or ``max_age`` seconds; its **floor** is the key
of the newest entry it forgot (or where it began), so it holds every change after the floor: an offset at or
above the floor (of the same epoch) resumes without a gap, an older one is expired (409).

Appending is two steps so that a window on disk (:mod:`pgchanges.feed.window`) can take the new entries
between them: :meth:`RetainedLog.prepare` keys and encodes (and drops what the log holds already),
:meth:`RetainedLog.commit` makes them visible and wakes the clients. Everything runs in the event loop's
thread: no locks.
"""

from __future__ import annotations

import time
from bisect import bisect_right
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from operator import attrgetter
from typing import NamedTuple

import anyio

from pgchanges.change import Change
from pgchanges.errors import ConfigError
from pgchanges.feed.offsets import ZERO, Key, KeyMaker, new_epoch, token

_KEY = attrgetter("key")
_COMPACT_AFTER = 4096  # forgotten entries kept in the list before it is compacted (one slice, not one pop each)


class Entry(NamedTuple):
    key: Key
    change: Change
    payload: bytes  # change.to_json(), UTF-8
    at: float  # time.monotonic() of the append
    token: bytes  # the offset clients see (:func:`pgchanges.feed.offsets.token`), ASCII


@dataclass(frozen=True)
class Retention:
    """How much the log keeps: at most ``max_changes`` entries and ``max_bytes`` of JSON, none older than
    ``max_age`` seconds (None: no age limit)."""

    max_changes: int = 100_000
    max_bytes: int = 256 * 1024 * 1024
    max_age: float | None = None

    def __post_init__(self) -> None:
        if self.max_changes < 1 or self.max_bytes < 1 or (self.max_age is not None and self.max_age <= 0):
            raise ConfigError(f"retention limits must be positive: {self}")


class RetainedLog:
    """Entries in delivery order, numbered by sequence (process-local; clients see tokens of keys)."""

    def __init__(
        self,
        scheme: str,
        retention: Retention | None = None,
        *,
        epoch: int | None = None,
        floor: Key = ZERO,
        entries: Iterable[Entry] = (),
    ) -> None:
        self.scheme = scheme
        self.retention = retention or Retention()
        self.epoch = new_epoch() if epoch is None else epoch
        self.floor = floor
        self._entries: list[Entry] = []
        self._first = 0  # index of the oldest live entry in _entries
        self._base = 1  # sequence number of _entries[0]
        self._bytes = 0
        self._ids: dict[str, Key] = {}  # sequence scheme: the ids held, to recognise a change delivered again
        self._event: anyio.Event | None = None
        self.appended_total = 0
        self.forgotten_total = 0
        self._keys = KeyMaker(scheme, floor)
        self._commit(list(entries))
        self.appended_total = 0

    # -- reading ---------------------------------------------------------------------------------------------

    @property
    def head(self) -> int:
        """The sequence number of the newest entry (one below the oldest's when empty)."""
        return self._base + len(self._entries) - 1

    @property
    def oldest(self) -> int:
        """The sequence number of the oldest entry held (head + 1 when empty)."""
        return self._base + self._first

    @property
    def head_key(self) -> Key:
        return self._entries[-1].key if len(self._entries) > self._first else self.floor

    @property
    def size(self) -> int:
        return len(self._entries) - self._first

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def entry(self, seq: int) -> Entry:
        return self._entries[seq - self._base]

    def entries(self, after: int, limit: int) -> Sequence[Entry]:
        """Up to ``limit`` entries after sequence number ``after`` (which must not be below the oldest - 1)."""
        start = after + 1 - self._base
        return self._entries[start : start + limit]

    def covers(self, epoch: int, key: Key) -> bool:
        """Whether every change after ``key`` (of log ``epoch``) is held: the offset resumes without a gap."""
        return epoch == self.epoch and self.floor <= key

    def seq_after(self, key: Key) -> int:
        """The sequence number after which the changes newer than ``key`` start (for a covered key)."""
        index = bisect_right(self._entries, key, lo=self._first, key=_KEY)
        return self._base + index - 1

    def token_at(self, seq: int) -> bytes:
        """The offset of position ``seq`` (the entry's; for the position before the oldest entry, the floor's)."""
        return self._entries[seq - self._base].token if seq >= self.oldest else token(self.epoch, self.floor).encode()

    async def next_wake(self) -> None:
        """Return at the next :meth:`wake` (an append, a keep-alive tick, the feed closing)."""
        if self._event is None:
            self._event = anyio.Event()
        await self._event.wait()

    # -- appending -------------------------------------------------------------------------------------------

    def prepare(self, changes: Sequence[Change]) -> list[Entry]:
        """Key and encode ``changes``, leaving out those the log holds already (not yet visible: :meth:`commit`)."""
        now = time.monotonic()
        made: list[Entry] = []
        ids = self._ids if self.scheme != "logical" else None
        next_key, epoch = self._keys.next, self.epoch
        for change in changes:
            if ids is not None and change.id in ids:
                continue  # delivered again (the outbox after a crash before its acknowledgement)
            key = next_key(change)
            if key is None:
                continue
            if ids is not None:
                ids[change.id] = key
            made.append(Entry(key, change, change.to_json_bytes(), now, token(epoch, key).encode()))
        return made

    def abandon(self, entries: Sequence[Entry]) -> None:
        """Prepared ``entries`` that will not be committed (the window could not take them): the source
        delivers them again, and they must not be taken for repeats then."""
        self._keys.last = self.head_key
        for entry in entries:
            self._ids.pop(entry.change.id, None)

    def commit(self, entries: Sequence[Entry]) -> None:
        """Make prepared ``entries`` visible, forget what the retention no longer allows, wake the readers."""
        if entries:
            self._commit(entries)
            self.appended_total += len(entries)
            self.wake()

    def _commit(self, entries: Sequence[Entry]) -> None:
        self._entries.extend(entries)
        self._bytes += sum(len(e.payload) for e in entries)
        if entries:
            self._keys.last = max(self._keys.last, entries[-1].key)
            if self.scheme != "logical":
                self._ids.update((e.change.id, e.key) for e in entries)
        self.trim()

    def trim(self) -> None:
        """Forget the oldest entries beyond the retention."""
        limits = self.retention
        cutoff = None if limits.max_age is None else time.monotonic() - limits.max_age
        entries, first, end = self._entries, self._first, len(self._entries)
        while first < end and (
            end - first > limits.max_changes
            or self._bytes > limits.max_bytes
            or (cutoff is not None and entries[first].at < cutoff)
        ):
            gone = entries[first]
            self._bytes -= len(gone.payload)
            self.floor = gone.key
            self._ids.pop(gone.change.id, None)
            first += 1
            self.forgotten_total += 1
        if first > _COMPACT_AFTER and first * 2 > end:
            del entries[:first]
            self._base += first
            first = 0
        self._first = first

    def wake(self) -> None:
        event, self._event = self._event, None
        if event is not None:
            event.set()
