"""The retained log's window on disk: what lets a client resume across a restart of pgchanges.

With ``window="/var/lib/pgchanges/feed"`` the feed writes every entry to that directory before it is
visible and before the source is acknowledged, and a restarted feed reads the window back: the same epoch,
the same offsets, the same floor, so a client's ``Last-Event-ID`` from before the restart resumes without a
gap, and changes the source sends again (those whose acknowledgement the crash cut off) are recognised and
dropped (:mod:`pgchanges.feed.offsets`). Without a window a restart starts a new epoch: older offsets are
answered 409.

Layout: ``meta.json`` (epoch, scheme, floor; replaced atomically) and segments ``00000001.log``, … of lines
``MAJOR MINOR EXTRA <Change.to_json()>``. A new segment starts past ``segment_bytes``; a segment whose every
entry the log forgot is deleted. ``fsync=True`` (the default) syncs each append before the source is
acknowledged: a machine crash then loses nothing the source was told was taken. Everything here is blocking
file I/O, called from a worker thread.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO

from pgchanges.change import Change
from pgchanges.errors import ConfigError
from pgchanges.feed.log import Entry
from pgchanges.feed.offsets import ZERO, Key, new_epoch, token

SEGMENT_BYTES = 16 * 1024 * 1024


class DiskWindow:
    """A directory holding the retained log's entries; see the module docstring."""

    def __init__(self, path: str | os.PathLike[str], *, fsync: bool = True, segment_bytes: int = SEGMENT_BYTES) -> None:
        self.path = Path(path)
        self.fsync = fsync
        self.segment_bytes = segment_bytes
        self.epoch = 0
        self.floor = ZERO
        self._segments: list[tuple[Path, Key]] = []  # oldest first, with the key of each one's last entry
        self._file: IO[bytes] | None = None
        self._size = 0

    def load(self, scheme: str) -> list[Entry]:
        """Open (or create) the window; the entries it holds, oldest first (epoch and floor are set)."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot use {self.path} as the feed's window: {exc.strerror or exc}") from None
        meta_path = self.path / "meta.json"
        if meta_path.exists():
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            if meta.get("scheme") != scheme:
                raise ConfigError(
                    f"the feed window {self.path} holds offsets of a {meta.get('scheme')} source, not {scheme}: "
                    "give this feed a window of its own"
                )
            self.epoch, self.floor = int(meta["epoch"]), Key(*meta["floor"])
        else:
            self.epoch = new_epoch()
            self._write_meta(scheme)
        self._scheme = scheme
        entries = self._read_segments()
        return entries

    def _read_segments(self) -> list[Entry]:
        now = time.monotonic()
        entries: list[Entry] = []
        for segment in sorted(self.path.glob("*.log")):
            last = self.floor
            with segment.open("rb") as lines:
                for line in lines:
                    if not line.endswith(b"\n"):
                        break  # a torn last line: its batch was never acknowledged, the source sends it again
                    major, minor, extra, payload = line.rstrip(b"\n").split(b" ", 3)
                    key = Key(int(major), int(minor), int(extra))
                    last = key
                    if key > self.floor:
                        change = Change.from_json(payload)
                        entries.append(Entry(key, change, payload, now, token(self.epoch, key).encode()))
            self._segments.append((segment, last))
        return entries

    def write(self, entries: Sequence[Entry]) -> None:
        """Append ``entries`` (and sync them, with ``fsync``)."""
        if not entries:
            return
        if self._file is None or self._size >= self.segment_bytes:
            self._next_segment()
        assert self._file is not None
        data = b"".join(b"%d %d %d %s\n" % (e.key.major, e.key.minor, e.key.extra, e.payload) for e in entries)
        self._file.write(data)
        self._file.flush()
        if self.fsync:
            os.fsync(self._file.fileno())
        self._size += len(data)
        path, _ = self._segments[-1]
        self._segments[-1] = (path, entries[-1].key)

    def _next_segment(self) -> None:
        if self._file is not None:
            self._file.close()
        number = int(self._segments[-1][0].stem) + 1 if self._segments else 1
        path = self.path / f"{number:08d}.log"
        self._file = path.open("ab")
        self._size = path.stat().st_size
        self._segments.append((path, self.floor))

    def forget(self, floor: Key) -> None:
        """The log forgot every entry up to ``floor``: delete the segments that hold nothing newer."""
        if floor <= self.floor:
            return
        self.floor = floor
        self._write_meta(self._scheme)
        while len(self._segments) > 1 and self._segments[0][1] <= floor:
            path, _ = self._segments.pop(0)
            path.unlink(missing_ok=True)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def _write_meta(self, scheme: str) -> None:
        meta = {"epoch": self.epoch, "scheme": scheme, "floor": list(self.floor)}
        temporary = self.path / "meta.json.tmp"
        temporary.write_text(json.dumps(meta), encoding="utf-8")
        os.replace(temporary, self.path / "meta.json")
