"""The feed's parts without a database: offsets and their tokens, the retained log (retention, floor, repeats),
the window on disk, filters, authorization, views and the SSE bytes, and the CLI's token list."""

import argparse
import json
import socket
from datetime import UTC, datetime

import anyio
import pytest
from starlette.requests import Request

from pgchanges.change import Change, freeze
from pgchanges.cli import feed_commands
from pgchanges.errors import ConfigError
from pgchanges.feed import BearerTokens, Feed, Retention, bearer_token
from pgchanges.feed.auth import without_columns
from pgchanges.feed.fanout import Fanout
from pgchanges.feed.filters import BadRequest, parse_condition, parse_selection
from pgchanges.feed.log import RetainedLog
from pgchanges.feed.offsets import BadOffset, Key, KeyMaker, logical_key, parse_token, token
from pgchanges.feed.window import DiskWindow
from pgchanges.names import parse_table

ORDERS = [parse_table("public.orders")]


def change(n, *, lsn="0/16B3748", op="insert", table="orders", change_id=None, **row):
    new = freeze({"id": n, **row})
    return Change(change_id or f"{lsn}:{n}", op, "public", table, None if op == "delete" else new,
                  new if op == "delete" else None, (), 7, datetime(2026, 1, 1, tzinfo=UTC), lsn, "logical")  # fmt: skip


def test_tokens_round_trip_and_order_as_their_keys():
    for key in (Key(0, 0), Key(0x16B3748, 3), Key(2**40, 1, 5)):
        assert parse_token(token(0xABC, key)) == (0xABC, key)
    assert token(1, Key(2, 3)) == "1.2.3" and token(1, Key(2, 3, 4)) == "1.2.3.4"
    for bad in ("", "-2", "1.2", "x.y.z", "1.2.3.4.5", "1/2:3"):
        with pytest.raises(BadOffset):
            parse_token(bad)


def test_logical_keys_come_from_the_commit_lsn_and_a_repeat_is_recognised():
    assert logical_key(change(3, lsn="1/A")) == Key((1 << 32) | 0xA, 3)
    assert logical_key(change(1, change_id="snapshot:abc")) is None
    keys = KeyMaker("logical", Key(0, 0))
    first = keys.next(change(1, change_id="snapshot:x"))
    assert first == Key(0, 0, 1)  # a snapshot row: after the last key
    assert keys.next(change(1)) == Key(0x16B3748, 1)
    assert keys.next(change(2)) == Key(0x16B3748, 2)
    assert keys.next(change(1)) is None  # sent again after a restart: held already
    counted = KeyMaker("sequence", Key(41, 0))
    assert [counted.next(change(n)) for n in (1, 1)] == [Key(42, 0), Key(43, 0)]  # the log recognises ids


def test_the_log_forgets_past_its_retention_and_its_floor_says_what_resumes():
    book = RetainedLog("logical", Retention(max_changes=3), epoch=9)
    assert book.covers(9, Key(0, 0)) and not book.covers(8, Key(0, 0))
    book.commit(book.prepare([change(n) for n in range(1, 6)]))
    assert book.size == 3 and [e.change.new["id"] for e in book.entries(book.oldest - 1, 10)] == [3, 4, 5]
    assert book.floor == Key(0x16B3748, 2)
    assert not book.covers(9, Key(0x16B3748, 1)) and book.covers(9, Key(0x16B3748, 2))
    assert book.seq_after(Key(0x16B3748, 3)) == book.oldest  # after change 3: changes 4 and 5 follow
    assert book.prepare([change(4), change(5)]) == []  # repeats of what is held
    sequence = RetainedLog("sequence")
    sequence.commit(sequence.prepare([change(1, change_id="e1"), change(2, change_id="e2")]))
    assert [e.change.id for e in sequence.prepare([change(2, change_id="e2"), change(3, change_id="e3")])] == ["e3"]


def test_a_prepared_batch_the_window_refused_is_taken_when_the_source_sends_it_again():
    book = RetainedLog("logical")
    prepared = book.prepare([change(1), change(2)])
    book.abandon(prepared)
    assert len(book.prepare([change(1), change(2)])) == 2


def test_the_window_reads_back_epoch_floor_and_entries_and_skips_a_torn_line(tmp_path):
    window = DiskWindow(tmp_path / "w", fsync=False, segment_bytes=200)
    assert window.load("logical") == []
    book = RetainedLog("logical", Retention(max_changes=4), epoch=window.epoch, floor=window.floor)
    for n in range(1, 7):
        entries = book.prepare([change(n)])
        window.write(entries)
        book.commit(entries)
        window.forget(book.floor)
    window.close()
    segments = sorted((tmp_path / "w").glob("*.log"))
    assert len(segments) >= 2
    with segments[-1].open("ab") as torn:
        torn.write(b"1 2 3 {\"id\":")  # a crash mid-write
    again = DiskWindow(tmp_path / "w")
    entries = again.load("logical")
    assert again.epoch == window.epoch and again.floor == book.floor
    assert [e.change.new["id"] for e in entries if e.key > book.floor] == [3, 4, 5, 6]
    assert entries[0].token == token(window.epoch, entries[0].key).encode()
    assert Change.from_json(entries[-1].payload) == entries[-1].change
    with pytest.raises(ConfigError, match="window of its own"):
        DiskWindow(tmp_path / "w").load("sequence")


def test_filters_read_the_value_as_the_row_s_type():
    rows = [change(1, status="paid", total=10), change(2, status="sent", total=250), change(3, status=None, total=7)]

    def ids(*wheres):
        selection = parse_selection(["orders"], list(wheres), ORDERS)
        return [c.new["id"] for c in rows if selection.accepts(c)]

    assert ids() == [1, 2, 3]
    assert ids("status.eq.paid") == [1] and ids("status.neq.paid") == [2]  # NULL matches neither, as in SQL
    assert ids("total.gte.10") == [1, 2] and ids("total.lt.10", "status.is.null") == [3]
    assert ids("status.in.(paid,sent)") == [1, 2] and ids("total.eq.ten") == [] and ids("total.neq.ten") == [1, 2, 3]
    assert parse_selection(["orders"], ["a.eq.1", "a.eq.1"], ORDERS) == parse_selection(["public.orders"], ["a.eq.1"],
                                                                                          ORDERS)  # fmt: skip
    truncate = change(0, op="truncate")
    assert parse_selection(["orders"], ["status.eq.paid"], ORDERS).accepts(truncate)
    deleted = change(9, op="delete", status="paid")
    assert parse_selection(["orders"], ["status.eq.paid"], ORDERS).accepts(deleted)  # a delete's old row
    for bad, message in ((["x"], "does not serve"), ([], "at least one table")):
        with pytest.raises(BadRequest, match=message):
            parse_selection(bad, [], ORDERS)
    for bad in ("status", "status.like.x", "status.in.paid", "status.is.maybe"):
        with pytest.raises(BadRequest):
            parse_condition(bad)
    assert parse_selection(["orders"], [], [parse_table("public.*")]).tables == tuple(ORDERS)


def request(headers=(), query=b""):
    return Request({"type": "http", "headers": [(k.encode(), v.encode()) for k, v in headers], "query_string": query})


def test_bearer_tokens_from_the_header_or_the_query_and_none_for_a_wrong_one():
    tokens = BearerTokens({"t-alice": "alice", "t-bob": ("bob", "admin")})
    assert tokens(request([("authorization", "Bearer t-alice")])) == "alice"
    assert tokens(request([("authorization", "bearer t-bob")])) == ("bob", "admin")
    assert tokens(request(query=b"access_token=t-alice")) == "alice"
    assert tokens(request([("authorization", "Bearer t-eve")])) is None and tokens(request()) is None
    assert bearer_token(request([("authorization", "Basic abc")])) is None


def test_hidden_columns_leave_new_old_changed_and_types():
    at = datetime(2026, 1, 1, tzinfo=UTC)
    full = Change("1/1:1", "update", "public", "orders", freeze({"id": 1, "secret": at, "v": 2}),
                  freeze({"id": 1, "secret": at, "v": 1}), ("secret", "v"), 1, None, "1/1", "logical")  # fmt: skip
    data = json.loads(without_columns(full, {"secret"}))
    assert data["new"] == {"id": 1, "v": 2} and data["old"] == {"id": 1, "v": 1} and data["changed"] == ["v"]
    assert "secret" not in json.dumps(data.get("types", {}))


def test_one_view_per_selection_and_principal_and_each_verdict_taken_once():
    asked = []

    def allow(principal, c):
        asked.append((principal, c.new["id"]))
        return c.new["id"] % 2 == 1

    book = RetainedLog("logical")
    fanout = Fanout(book, allow=allow, hide=None)
    selection = parse_selection(["orders"], [], ORDERS)
    a, b = fanout.view(selection, "alice"), fanout.view(selection, "alice")
    assert a is b and fanout.view(selection, "bob") is not a
    book.commit(book.prepare([change(n) for n in range(1, 5)]))
    first = a.chunk(book, 0)
    assert a.chunk(book, 0) == first and first[1:] == (4, 2)
    assert first[0].count(b"\ndata: ") == 2 and b'"id":2,' not in first[0]
    assert asked == [("alice", 1), ("alice", 2), ("alice", 3), ("alice", 4)]  # once each, for both clients
    payloads, upto = a.page(book, 0, 1)
    assert len(payloads) == 1 and upto == 1


@pytest.mark.anyio
async def test_a_stream_says_where_it_starts_writes_pending_changes_at_once_and_keeps_alive():
    book = RetainedLog("logical", epoch=5)
    fanout = Fanout(book, allow=None, hide=None, keep_alive=0.05)
    book.commit(book.prepare([change(1), change(2)]))
    view = fanout.view(parse_selection(["orders"], ["id.gte.2"], ORDERS), "x")
    got = []
    async with anyio.create_task_group() as tg:

        async def read():
            async for chunk in fanout.stream(view, 0):
                got.append(chunk)
                if len(got) == 2:
                    book.commit(book.prepare([change(3), change(4)]))
                if b"keep-alive" in chunk:
                    fanout.close()
            tg.cancel_scope.cancel()

        tg.start_soon(read)
        tg.start_soon(fanout.tick)
    assert got[0] == b"retry: 2000\nid: 5.0.0\n\n"
    assert got[1].startswith(b"id: 5.16b3748.2\ndata: ") and got[1].count(b"data:") == 1
    assert got[2].count(b"data:") == 2  # both pending changes in one write
    assert got[3] == b": keep-alive\n\n" and fanout.figures.clients == 0 and fanout.views == {}


@pytest.mark.anyio
async def test_a_client_the_log_left_behind_is_dropped_with_a_reason():
    book = RetainedLog("logical", Retention(max_changes=2), epoch=5)
    fanout = Fanout(book, allow=None, hide=None)
    stream = fanout.stream(fanout.view(parse_selection(["orders"], [], ORDERS), "x"), 0)
    assert (await stream.__anext__()).startswith(b"retry:")  # connected; then it stops reading a while
    book.commit(book.prepare([change(n) for n in range(1, 6)]))  # and the log forgets where it was
    last = await stream.__anext__()
    with pytest.raises(StopAsyncIteration):
        await stream.__anext__()
    assert last.startswith(b"event: dropped\ndata: ")
    assert json.loads(last.split(b"data: ")[1])["error"] == "offset_expired"
    assert fanout.figures.dropped == {"behind": 1} and fanout.figures.clients == 0


def test_a_feed_says_who_may_read_it():
    for options in ({}, {"open": True, "tokens": {"t": "p"}}):
        with pytest.raises(ConfigError, match="say who may read"):
            Feed("orders", **options)
    feed = Feed(["orders", "items"], open=True)
    assert feed.tables == [parse_table("orders"), parse_table("items")]
    assert feed.resolve(None) == feed.resolve("now") == 0 and feed.resolve("-1") == 0


def test_the_feed_command_takes_tokens_from_the_environment_only():
    assert feed_commands.parse_tokens("alice=t1, bob=t2\n") == {"t1": "alice", "t2": "bob"}
    with pytest.raises(ConfigError, match="entry 2") as caught:
        feed_commands.parse_tokens("alice=t1,secret-token")
    assert "secret-token" not in str(caught.value)
    parser = argparse.ArgumentParser()
    feed_commands.add_commands(parser.add_subparsers())
    args = parser.parse_args(["feed", "public.orders", "--http", "127.0.0.1:0", "--dsn", "dbname=x", "--retain", "5"])
    with pytest.raises(ConfigError, match="PGCHANGES_FEED_TOKENS"):
        feed_commands.build_app(args, environ={})
    app = feed_commands.build_app(args, environ={"PGCHANGES_FEED_TOKENS": "ops=abc"})
    assert app.feeds[0].retention.max_changes == 5 and app.ops is not None and app.source_kind == "logical"


def test_the_feed_command_reports_a_taken_port_in_one_line():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        parser = argparse.ArgumentParser()
        feed_commands.add_commands(parser.add_subparsers())
        given = ["feed", "orders", "--http", f"127.0.0.1:{port}", "--dsn", "dbname=x port=1", "--open"]
        args = parser.parse_args(given)
        with pytest.raises(ConfigError, match=f"cannot listen on 127.0.0.1:{port}"):
            feed_commands.cmd_feed(args)
