"""The notify source: triggers ``pg_notify`` a JSON payload per row; a dedicated connection LISTENs.

At-most-once: NOTIFY is not queued for a listener that is away. When the LISTEN connection drops, the source
reconnects with backoff and, once LISTEN is in place again (so nothing after the signal can be missed), emits
a ``gap`` change so handlers can resynchronise. Payloads over NOTIFY's 8000-byte limit were spilled into
``pgchanges.spill`` by the trigger; the source fetches them, in order, in the same batch.

Payloads are JSON (format 2 since schema version 11: ``notify_row_v2``, and since version 12 the statement
triggers of ``notify_rows_v3``; format 1 has the same keys, so events in flight across an upgrade and payloads
spilled before it read the same). They are parsed with fractions as
floats and parsed again with every digit only when a numeric value needs it (:mod:`pgchanges.sources.rows`).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import AsyncGenerator, Sequence
from typing import Any

import psycopg

from pgchanges.capture import ddl as ddl_capture
from pgchanges.capture import install as capture
from pgchanges.capture.ddl import DDL_CHANNEL
from pgchanges.capture.queries import fetch_all, query
from pgchanges.change import Change
from pgchanges.db.listener import Listener, Notification, Raw
from pgchanges.db.threaded import ThreadedConnection
from pgchanges.errors import ConnectionLost, NotInstalled
from pgchanges.names import TableName
from pgchanges.rowtypes import RowType, fetch_row_types
from pgchanges.sources.base import (
    CHANNELS,
    DDL,
    Event,
    EventFeed,
    Feed,
    Stopper,
    gap_marker,
    reconnect_with_backoff,
)
from pgchanges.sources.options import NotifyOptions
from pgchanges.sources.rows import ParsedRows, parse_exact, parse_json, row_change

#: How many recent event ids are remembered to drop an event that a second channel delivers again. The
#: notifications of one transaction arrive together, so this only needs to span one commit's worth.
RECENT_IDS = 10_000

log = logging.getLogger(__name__)


def parse_payload(text: str | bytes) -> dict[str, Any]:
    """A payload written by the notify trigger (either version: see ``notify_row_v2`` in capture/sql), parsed
    with fractions as floats (:func:`pgchanges.sources.rows.parse_json`)."""
    value: dict[str, Any] = parse_json(text)
    return value


def exact_rows(text: str | bytes) -> ParsedRows:
    """The rows of the payload ``text``, parsed again with every digit (fractions as Decimal)."""
    value: dict[str, Any] = parse_exact(text)
    return value.get("n"), value.get("o")


class _Payload:
    """A parsed payload and its text (for :func:`exact_rows`)."""

    __slots__ = ("data", "text")

    def __init__(self, data: dict[str, Any], text: str | bytes) -> None:
        self.data = data
        self.text = text


_Parsed = _Payload | Notification | Change  # a payload, a plain notification, or a DDL change


class NotifySource:
    """Changes of ``tables`` via triggers and LISTEN, plus raw notifications on ``channels``."""

    name = "notify"
    acknowledges = False  # at-most-once: nothing to acknowledge, handlers run while it reads on
    features = frozenset((CHANNELS, DDL))

    def __init__(
        self,
        conninfo: str,
        tables: Sequence[TableName],
        channels: Sequence[str] = (),
        options: NotifyOptions = NotifyOptions(),  # noqa: B008 - immutable
        *,
        auto_install: bool = True,
        ddl: bool = False,
    ) -> None:
        self._tables = list(dict.fromkeys(tables))
        self._table_channels = {t.channel: t for t in self._tables}
        self._ddl = ddl
        extra = [DDL_CHANNEL] if ddl else []
        self._listener = Listener(conninfo, [*self._table_channels, *channels, *extra])
        self._auto_install = auto_install
        self._options = options
        self._control = ThreadedConnection(conninfo, what="the notify source's query connection")
        self._stopper = Stopper()
        self._row_types: dict[int, RowType] = {}
        self._recent_ids: OrderedDict[int, None] = OrderedDict()
        self._reconnects = 0

    @property
    def reconnects(self) -> int:
        """How many times the LISTEN connection was re-established."""
        return self._reconnects

    @property
    def listener_pid(self) -> int | None:
        return self._listener.backend_pid

    async def open(self) -> None:
        await self._control.open()
        await self._control.call(self._prepare)
        await self._listener.open()

    def _prepare(self, conn: psycopg.Connection[Any]) -> None:
        if self._ddl and not ddl_capture.ddl_installed(conn):
            if not self._auto_install:
                raise NotInstalled("DDL capture is not installed; run `pgchanges install --ddl` as a superuser")
            ddl_capture.install_ddl(conn)
        if self._tables:
            capture.ensure_capture(conn, self._tables, "notify", auto_install=self._auto_install)
            conn.execute(query("purge_spill"), {"retention": self._options.spill_retention})

    async def close(self) -> None:
        await self._listener.close()
        await self._control.close()

    def stop(self) -> None:
        self._stopper.stop()

    async def feeds(self) -> Sequence[Feed]:
        return [EventFeed(self)]

    async def ack(self, changes: Sequence[Change]) -> None:
        """Nothing to acknowledge: NOTIFY is fire-and-forget."""

    async def batches(self) -> AsyncGenerator[list[Event], None]:
        stopper = self._stopper
        while not stopper.stopping:
            try:
                notifications = await stopper.wait(self._listener.receive_raw())
            except ConnectionLost as exc:
                reason = f"LISTEN connection lost: {exc}"
                log.warning("%s; reconnecting", reason)
                if not await self._reconnect():
                    return
                yield [gap_marker(self.name, reason)]
                continue
            if notifications is None:
                return
            yield await self._decode(notifications)

    async def _reconnect(self) -> bool:
        """LISTEN again (with backoff); False when stopped first. A gap follows, so nothing after it is missed."""
        reopened = await reconnect_with_backoff(
            self._listener.reopen,
            backoff=self._options.backoff,
            what="the LISTEN connection",
            logger=log,
            stopper=self._stopper,
        )
        if reopened:
            self._reconnects += 1
            log.warning("LISTEN re-established; changes may have been missed")
        return reopened

    async def _decode(self, notifications: list[Raw]) -> list[Event]:
        parsed: list[_Parsed] = []
        spilled: list[int] = []
        needs_types = False
        table_channels, stale = self._table_channels, self._stale
        for channel, text, pid in notifications:
            if channel not in table_channels:
                payload = text.decode()
                is_ddl = channel == DDL_CHANNEL
                parsed.append(ddl_capture.to_change(payload, pid) if is_ddl else Notification(channel, payload, pid))
                continue
            data = parse_payload(text)
            if self._seen_before(data["id"]):
                continue  # the same event on a second channel: its table matches several subscribed rules
            if "spill" in data:
                spilled.append(data["id"])
            elif not needs_types:
                needs_types = stale(data)
            parsed.append(_Payload(data, text))
        if spilled or needs_types:
            parsed = await self._control.call_reopening(self._fetch_spills_and_types, parsed, spilled)
        to_change = self._to_change
        return [to_change(item) if isinstance(item, _Payload) else item for item in parsed]

    def _seen_before(self, event_id: int) -> bool:
        """Whether ``event_id`` arrived already, on another channel (recent ids only: they come together)."""
        if len(self._table_channels) < 2:  # one channel: no event can come twice
            return False
        recent = self._recent_ids
        if event_id in recent:
            return True
        recent[event_id] = None
        if len(recent) > RECENT_IDS:
            recent.popitem(last=False)
        return False

    def _fetch_spills_and_types(
        self, conn: psycopg.Connection[Any], parsed: list[_Parsed], spilled: list[int]
    ) -> list[_Parsed]:
        if spilled:
            rows = {r.id: r.payload for r in fetch_all(conn, "spilled_payloads", {"ids": spilled})}
            unspill = self._unspill
            parsed = [unspill(i.data, rows) if isinstance(i, _Payload) and "spill" in i.data else i for i in parsed]
        stale = {i.data["r"] for i in parsed if isinstance(i, _Payload) and "r" in i.data and self._stale(i.data)}
        if stale:
            self._row_types.update(fetch_row_types(conn, stale))
        return parsed

    @staticmethod
    def _unspill(item: dict[str, Any], payloads: dict[int, str]) -> _Payload:
        payload = payloads.get(item["id"])
        if payload is not None:
            return _Payload(parse_payload(payload), payload)
        log.error("spilled payload %s of %s.%s is gone (older than the retention?)", item["id"], item["s"], item["t"])
        return _Payload({"gap": f"spilled payload {item['id']} expired", "s": item["s"], "t": item["t"]}, "")

    def _stale(self, item: dict[str, Any]) -> bool:
        """Whether the cached column types of the item's table are missing or no longer fit its row."""
        row_type = self._row_types.get(item["r"])
        row = item.get("n") or item.get("o")
        return row_type is None or (row is not None and not row_type.matches(row))

    def _to_change(self, payload: _Payload) -> Change:
        data, text = payload.data, payload.text
        if "gap" in data:
            return gap_marker(self.name, data["gap"], data["s"], data["t"])
        event_id = data["id"]
        return row_change(
            change_id=f"notify:{event_id}",
            op=data["op"],
            schema=data["s"],
            table=data["t"],
            new=data.get("n"),
            old=data.get("o"),
            exact=lambda: exact_rows(text),
            xid=data.get("x"),
            position=event_id,
            source="notify",
            row_type=self._row_types.get(data["r"]),
        )
