"""The notify source: row triggers ``pg_notify`` a JSON payload; a dedicated connection LISTENs.

At-most-once: NOTIFY is not queued for a listener that is away. When the LISTEN connection drops, the source
reconnects with backoff and, once LISTEN is in place again (so nothing after the signal can be missed), emits
a ``gap`` change so handlers can resynchronise. Payloads over NOTIFY's 8000-byte limit were spilled into
``pgchanges.spill`` by the trigger; the source fetches them, in order, in the same batch.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import AsyncIterator, Sequence
from typing import Any

import anyio
import psycopg

from pgchanges.capture import ddl as ddl_capture
from pgchanges.capture import install as capture
from pgchanges.capture.ddl import DDL_CHANNEL
from pgchanges.change import Change
from pgchanges.db.connect import close_async, connect_async
from pgchanges.db.listener import Listener, Notification
from pgchanges.errors import ConnectError, ConnectionLost, NotInstalled
from pgchanges.names import TableName
from pgchanges.rowtypes import RowType, fetch_row_types
from pgchanges.sources.base import Backoff, Event, gap_marker
from pgchanges.sources.rows import parse_json, row_change

#: How many recent event ids are remembered to drop an event that a second channel delivers again. The
#: notifications of one transaction arrive together, so this only needs to span one commit's worth.
RECENT_IDS = 10_000

log = logging.getLogger(__name__)


def parse_payload(text: str) -> dict[str, Any]:
    """A payload written by the notify trigger."""
    value: dict[str, Any] = parse_json(text)
    return value


SPILL_RETENTION_SECONDS = 3600.0
_Parsed = dict[str, Any] | Notification | Change  # a decoded payload, a plain notification, or a DDL change


class NotifySource:
    """Changes of ``tables`` via triggers and LISTEN, plus raw notifications on ``channels``."""

    name = "notify"

    def __init__(
        self,
        conninfo: str,
        tables: Sequence[TableName],
        channels: Sequence[str] = (),
        *,
        auto_install: bool = True,
        backoff: Backoff = Backoff(),  # noqa: B008 - immutable
        spill_retention: float = SPILL_RETENTION_SECONDS,
        ddl: bool = False,
    ) -> None:
        self._conninfo = conninfo
        self._tables = list(dict.fromkeys(tables))
        self._table_channels = {t.channel: t for t in self._tables}
        self._ddl = ddl
        extra = [DDL_CHANNEL] if ddl else []
        self._listener = Listener(conninfo, [*self._table_channels, *channels, *extra])
        self._auto_install = auto_install
        self._backoff = backoff
        self._spill_retention = spill_retention
        self._control: psycopg.Connection[Any] | None = None
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
        self._control = await connect_async(self._conninfo)
        await anyio.to_thread.run_sync(self._prepare)
        await self._listener.open()

    def _prepare(self) -> None:
        assert self._control is not None
        if self._ddl and not ddl_capture.ddl_installed(self._control):
            if not self._auto_install:
                raise NotInstalled("DDL capture is not installed; run `pgchanges install --ddl` as a superuser")
            ddl_capture.install_ddl(self._control)
        if self._tables:
            capture.ensure_capture(self._control, self._tables, "notify", auto_install=self._auto_install)
            self._control.execute(
                "DELETE FROM pgchanges.spill WHERE created_at < now() - make_interval(secs => %s)",
                (self._spill_retention,),
            )

    async def close(self) -> None:
        await self._listener.close()
        control, self._control = self._control, None
        await close_async(control)

    async def ack(self, changes: Sequence[Change]) -> None:
        """Nothing to acknowledge: NOTIFY is fire-and-forget."""

    async def batches(self) -> AsyncIterator[list[Event]]:
        while True:
            try:
                notifications = await self._listener.receive()
            except ConnectionLost as exc:
                reason = f"LISTEN connection lost: {exc}"
                log.warning("%s; reconnecting", reason)
                await self._reconnect()
                yield [gap_marker(self.name, reason)]
                continue
            yield await self._decode(notifications)

    async def _reconnect(self) -> None:
        attempt = 0
        while True:
            await self._listener.close()
            try:
                await self._listener.open()
            except ConnectError as exc:
                delay = self._backoff.delay(attempt)
                log.warning("reconnect attempt %d failed (%s); retrying in %.2fs", attempt + 1, exc, delay)
                attempt += 1
                await anyio.sleep(delay)
                continue
            self._reconnects += 1
            log.warning("LISTEN re-established after %d failed attempt(s); changes may have been missed", attempt)
            return

    async def _decode(self, notifications: list[Notification]) -> list[Event]:
        parsed: list[_Parsed] = []
        spilled: list[int] = []
        needs_types = False
        table_channels, stale = self._table_channels, self._stale
        for note in notifications:
            if note.channel not in table_channels:
                parsed.append(ddl_capture.to_change(note.payload, note.pid) if note.channel == DDL_CHANNEL else note)
                continue
            data = parse_payload(note.payload)
            if self._seen_before(data["id"]):
                continue  # the same event on a second channel: its table matches several subscribed rules
            if "spill" in data:
                spilled.append(data["id"])
            elif not needs_types:
                needs_types = stale(data)
            parsed.append(data)
        if spilled or needs_types:
            parsed = await self._control_call(self._fetch_spills_and_types, parsed, spilled)
        to_change = self._to_change
        return [item if isinstance(item, Notification | Change) else to_change(item) for item in parsed]

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
            rows = dict(conn.execute("SELECT id, payload FROM pgchanges.spill WHERE id = ANY(%s)", (spilled,)))
            resolved: list[_Parsed] = []
            for item in parsed:
                resolved.append(self._unspill(item, rows) if isinstance(item, dict) and item.get("spill") else item)
            parsed = resolved
        stale = {item["r"] for item in parsed if isinstance(item, dict) and "r" in item and self._stale(item)}
        if stale:
            self._row_types.update(fetch_row_types(conn, stale))
        return parsed

    @staticmethod
    def _unspill(item: dict[str, Any], payloads: dict[int, str]) -> dict[str, Any]:
        payload = payloads.get(item["id"])
        if payload is not None:
            return parse_payload(payload)
        log.error("spilled payload %s of %s.%s is gone (older than the retention?)", item["id"], item["s"], item["t"])
        return {"gap": f"spilled payload {item['id']} expired", "s": item["s"], "t": item["t"]}

    def _stale(self, item: dict[str, Any]) -> bool:
        """Whether the cached column types of the item's table are missing or no longer fit its row."""
        row_type = self._row_types.get(item["r"])
        row = item.get("n") or item.get("o")
        return row_type is None or (row is not None and not row_type.matches(row))

    async def _control_call(self, func: Any, *args: Any) -> Any:
        """Run ``func(control_conn, *args)`` in a thread, reopening the control connection once if it broke."""
        for attempt in (1, 2):
            if self._control is None or self._control.closed or self._control.broken:
                await close_async(self._control)
                self._control = await connect_async(self._conninfo)
            try:
                return await anyio.to_thread.run_sync(func, self._control, *args)
            except psycopg.OperationalError:
                if attempt == 2:
                    raise
                log.warning("control connection lost; reconnecting")
                self._control = None
        raise AssertionError("unreachable")

    def _to_change(self, data: dict[str, Any]) -> Change:
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
            xid=data.get("x"),
            position=event_id,
            source="notify",
            row_type=self._row_types.get(data["r"]),
        )
