"""Offsets of the change feed: ordered keys derived from the source position, and the opaque tokens clients keep.

An offset names a place in one retained log (:mod:`pgchanges.feed.log`). Its key is a triple of integers,
ordered as the changes were delivered, and its token (what ``next_offset`` and SSE ``id:`` carry) is
``EPOCH.MAJOR.MINOR[.EXTRA]`` in hex:

* **epoch** names the log: a new log (a fresh process without a window on disk, or a deleted window) gets a
  new one, and a token of another epoch is answered 409 (nothing says what happened in between);
* **logical**: (commit LSN, number of the change in its transaction, 0): a change's id is
  ``"<commit LSN>:<n>"`` and the slot delivers transactions in commit order, so the key grows with delivery
  and a change the slot sends again after a restart has the key it had (it is recognised and dropped);
  a change without such an id (snapshot rows) takes the previous key with EXTRA + 1;
* **every other source**: (sequence, 0, 0), counted by the log. The outbox's event ids are not in delivery
  order (an event that commits late is cut after higher ids: see migration 0008), nor are notify's or
  polling's positions resumable, so these count; a window on disk keeps the count across restarts, and
  a change delivered again (the outbox after a crash before its acknowledgement) is recognised by its id.
"""

from __future__ import annotations

import re
import secrets
from typing import NamedTuple

from pgchanges.change import Change

_LOGICAL_ID = re.compile(r"^([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8}):(\d+)$")
_TOKEN = re.compile(r"^([0-9a-f]{1,16})\.([0-9a-f]{1,16})\.([0-9a-f]{1,16})(?:\.([0-9a-f]{1,16}))?$")


class Key(NamedTuple):
    """Where an entry sits in a log; compared as a tuple."""

    major: int
    minor: int
    extra: int = 0


ZERO = Key(0, 0, 0)


class BadOffset(ValueError):
    """A token that is not one this feed hands out."""


def new_epoch() -> int:
    """A fresh log's epoch (random: only equality matters)."""
    return secrets.randbits(48) | 1


def token(epoch: int, key: Key) -> str:
    """The opaque text of ``key`` in the log ``epoch``."""
    text = f"{epoch:x}.{key.major:x}.{key.minor:x}"
    return f"{text}.{key.extra:x}" if key.extra else text


def parse_token(text: str) -> tuple[int, Key]:
    """``(epoch, key)`` of a token; :class:`BadOffset` if it is not one."""
    found = _TOKEN.match(text.strip())
    if found is None:
        raise BadOffset(f"offset {text[:80]!r} is not an offset of this feed (use next_offset, an SSE id, or -1)")
    epoch, major, minor, extra = found.groups()
    return int(epoch, 16), Key(int(major, 16), int(minor, 16), int(extra or "0", 16))


def logical_key(change: Change) -> Key | None:
    """The key a logical change's id gives (commit LSN, number in its transaction), or None for other ids."""
    found = _LOGICAL_ID.match(change.id)
    if found is None:
        return None
    high, low, number = found.groups()
    return Key((int(high, 16) << 32) | int(low, 16), int(number), 0)


class KeyMaker:
    """Assigns each appended change its key; says when a change was appended before (a source's repeat).

    ``scheme`` is ``"logical"`` (keys from the LSN) or ``"sequence"`` (counted); ``last`` is the key of the
    log's newest entry (or its floor), so that counting and ordering go on from there after a restart.
    """

    def __init__(self, scheme: str, last: Key) -> None:
        self.scheme = scheme
        self.last = last

    def next(self, change: Change) -> Key | None:
        """The change's key, or None when the log holds it already (a key at or below the last one)."""
        last = self.last
        if self.scheme == "logical":
            derived = logical_key(change)
            if derived is None:
                key = Key(last.major, last.minor, last.extra + 1)
            elif derived <= last:
                return None  # the slot sent it again (a restart before the confirmation reached it)
            else:
                key = derived
        else:
            key = Key(last.major + 1, 0, 0)
        self.last = key
        return key
