"""The change feed against a real server and a real HTTP client (httpx, httpx-sse): JSON pages, SSE streams that
resume by Last-Event-ID with no gap and no repeat (also across a restart of pgchanges, with a window on disk),
409 for expired offsets, and what two principals see of one table."""

import json

import anyio
import httpx
import pytest
from httpx_sse import aconnect_sse

import pgchanges
from pgchanges.feed import Forbidden, Retention, bearer_token
from tests.conftest import wait_until

# httpx's (and httpcore's) response iterators are async generators that a client leaving a stream early does not
# close; under trio their collection warns. Only theirs: a generator of pgchanges left open still fails the test.
pytestmark = [pytest.mark.anyio, pytest.mark.filterwarnings("ignore:Async generator 'http(x|core)[._]:ResourceWarning")]
TOKENS = {"token-alice": "alice", "token-bob": "bob"}


def auth(token):
    return {"authorization": f"Bearer {token}"}


def url(app):
    return f"http://127.0.0.1:{app.ops.port}"


def feed_app(dsn, slot, **feed_options):
    app = pgchanges.App(dsn, source="logical", slot=slot, http="127.0.0.1:0", handler_timeout=None)
    feed_options.setdefault("tokens", TOKENS)
    app.feed("public.orders", **feed_options)
    return app


async def collect(client, path, count, *, headers=None, started=None, timeout=15.0):
    """The first ``count`` change events of an SSE stream (and the last id seen); ``started`` is set once the
    stream's first bytes (its position) arrived."""
    changes, last_id = [], None
    with anyio.move_on_after(timeout):
        async with aconnect_sse(client, "GET", path, headers=dict(headers or {})) as source:
            assert source.response.status_code == 200, await source.response.aread()
            async for event in source.aiter_sse():
                last_id = event.id or last_id
                if started is not None:
                    started.set()
                if event.data and event.event == "message":
                    changes.append((event.id, json.loads(event.data)))
                if len(changes) >= count:
                    return changes, last_id
    pytest.fail(f"timed out after {timeout}s with {len(changes)} of {count} events: {changes[-3:]}")


def ids(events):
    return [change["new"]["id"] for _, change in events]


async def test_a_page_then_a_stream_that_resumes_by_last_event_id_without_gap_or_repeat(dsn, db):
    db.execute("CREATE TABLE orders (id int PRIMARY KEY, owner text, total int)")
    app = feed_app(dsn, "feed_resume")
    async with anyio.create_task_group() as tg:
        await tg.start(app.serve)
        db.execute("INSERT INTO orders SELECT g, 'alice', g * 10 FROM generate_series(1, 5) g")
        async with httpx.AsyncClient(base_url=url(app), headers=auth("token-alice")) as client:

            async def page(**params):
                response = await client.get("/v1/changes", params={"table": "public.orders", **params})
                assert response.status_code == 200, response.text
                return response.json()

            async def all_five():
                found = await page(offset="-1")
                return found if len(found["changes"]) == 5 else None

            first = await eventually(all_five, "the five rows in the retained log")
            assert [c["new"]["id"] for c in first["changes"]] == [1, 2, 3, 4, 5] and first["up_to_date"] is True
            assert pgchanges.Change.from_dict(first["changes"][0]).new["total"] == 10  # the to_json() form
            assert (await page(offset=first["next_offset"]))["changes"] == []
            assert (await page())["changes"] == []  # no offset: from now
            two = await page(offset="-1", limit="2")
            assert [c["new"]["id"] for c in two["changes"]] == [1, 2] and two["up_to_date"] is False
            rest = await page(offset=two["next_offset"])
            assert [c["new"]["id"] for c in rest["changes"]] == [3, 4, 5]

            stream = f"/v1/changes?table=public.orders&live=sse&offset={two['next_offset']}"
            got, _ = await collect(client, stream, 2)
            assert ids(got) == [3, 4]
            db.execute("INSERT INTO orders SELECT g, 'bob', g FROM generate_series(6, 8) g")
            again, last = await collect(client, stream, 4, headers={"last-event-id": got[-1][0]})
            assert ids(again) == [5, 6, 7, 8]  # Last-Event-ID wins over the URL's offset, as EventSource needs

            started = anyio.Event()
            later = []

            async def follow():
                later.extend((await collect(client, stream, 2, headers={"last-event-id": last}, started=started))[0])

            async with anyio.create_task_group() as clients:
                clients.start_soon(follow)
                await started.wait()
                db.execute("INSERT INTO orders VALUES (9, 'bob', 1); UPDATE orders SET total = 0 WHERE id = 9")
            assert [c["op"] for _, c in later] == ["insert", "update"] and ids(later) == [9, 9]
            assert len({i for i, _ in [*got, *again, *later]}) == 8  # every offset distinct
        app.stop()


async def test_a_client_resumes_across_a_restart_of_pgchanges_with_a_window_on_disk(dsn, db, tmp_path):
    db.execute("CREATE TABLE orders (id int PRIMARY KEY, owner text, total int)")
    window = tmp_path / "feed-window"
    app = feed_app(dsn, "feed_restart", window=window)
    async with anyio.create_task_group() as tg:
        await tg.start(app.serve)
        db.execute("INSERT INTO orders SELECT g, 'alice', g FROM generate_series(1, 6) g")
        async with httpx.AsyncClient(base_url=url(app), headers=auth("token-alice")) as client:
            stream = "/v1/changes?table=public.orders&live=sse&offset=-1"
            caught_up, _ = await collect(client, stream, 6)
            behind, _ = await collect(client, stream, 2)
        app.stop()
    assert ids(caught_up) == [1, 2, 3, 4, 5, 6] and ids(behind) == [1, 2]

    db.execute("INSERT INTO orders SELECT g, 'alice', g FROM generate_series(7, 9) g")  # while pgchanges is down
    restarted = feed_app(dsn, "feed_restart", window=window)
    async with anyio.create_task_group() as tg:
        await tg.start(restarted.serve)
        db.execute("INSERT INTO orders VALUES (10, 'alice', 10)")
        async with httpx.AsyncClient(base_url=url(restarted), headers=auth("token-alice")) as client:
            stream = "/v1/changes?table=public.orders&live=sse"
            resumed, _ = await collect(client, stream, 4, headers={"last-event-id": caught_up[-1][0]})
            slow, _ = await collect(client, stream, 8, headers={"last-event-id": behind[-1][0]})
        restarted.stop()
    assert ids(resumed) == [7, 8, 9, 10]
    assert ids(slow) == [3, 4, 5, 6, 7, 8, 9, 10]
    assert [i for i, _ in slow[:4]] == [i for i, _ in caught_up[2:]]  # the same offsets as before the restart


async def test_an_expired_offset_is_answered_409_with_a_clear_error(dsn, db):
    db.execute("CREATE TABLE orders (id int PRIMARY KEY, owner text, total int)")
    app = feed_app(dsn, "feed_expired", retention=Retention(max_changes=3))
    async with anyio.create_task_group() as tg:
        await tg.start(app.serve)
        async with httpx.AsyncClient(base_url=url(app), headers=auth("token-bob")) as client:
            start = (await client.get("/v1/changes", params={"table": "public.orders"})).json()["next_offset"]
            db.execute("INSERT INTO orders SELECT g, 'bob', g FROM generate_series(1, 5) g")

            async def retained_three():
                found = (await client.get("/v1/changes", params={"table": "public.orders", "offset": "-1"})).json()
                return found if [c["new"]["id"] for c in found["changes"]] == [3, 4, 5] else None

            await eventually(retained_three, "the log to keep only the last three changes")
            for request in (
                client.get("/v1/changes", params={"table": "public.orders", "offset": start}),
                client.get(
                    "/v1/changes", params={"table": "public.orders", "live": "sse"}, headers={"last-event-id": start}
                ),
            ):
                expired = await request
                assert expired.status_code == 409, expired.text
                body = expired.json()
                assert body["error"] == "offset_expired" and "older than what the feed retains" in body["message"]
                assert body["oldest_offset"] != body["current_offset"]
            bad = await client.get("/v1/changes", params={"table": "public.orders", "offset": "nonsense"})
            assert bad.status_code == 400 and bad.json()["error"] == "bad_request"
        app.stop()

    restarted = feed_app(dsn, "feed_expired")  # no window on disk: a new log, older offsets mean nothing to it
    async with anyio.create_task_group() as tg:
        await tg.start(restarted.serve)
        async with httpx.AsyncClient(base_url=url(restarted), headers=auth("token-bob")) as client:
            gone = await client.get("/v1/changes", params={"table": "public.orders", "offset": body["current_offset"]})
        restarted.stop()
    assert gone.status_code == 409 and "another run of the feed" in gone.json()["message"]


def authorize(request):
    token = bearer_token(request)  # Authorization: Bearer …, else ?access_token=
    if token == "token-mallory":
        raise Forbidden("mallory may not read orders")
    return TOKENS.get(token)


def allow(principal, change):
    row = change.new or change.old
    return principal == "bob" or row["owner"] == principal


def hide(principal, table):
    return {"total"} if principal == "bob" else ()


async def test_two_principals_on_one_table_get_only_what_allow_lets_through(dsn, db):
    db.execute("CREATE TABLE orders (id int PRIMARY KEY, owner text, total int)")
    app = feed_app(dsn, "feed_auth", tokens=None, authorize=authorize, allow=allow, hide=hide)
    async with anyio.create_task_group() as tg:
        await tg.start(app.serve)
        async with httpx.AsyncClient(base_url=url(app)) as client:
            stream = "/v1/changes?table=public.orders&live=sse"
            seen = {}
            ready = {"alice": anyio.Event(), "bob": anyio.Event()}

            async def follow(name, count):
                found, _ = await collect(client, stream, count, headers=auth(f"token-{name}"), started=ready[name])
                seen[name] = found

            async with anyio.create_task_group() as clients:
                clients.start_soon(follow, "alice", 2)
                clients.start_soon(follow, "bob", 4)
                await ready["alice"].wait()
                await ready["bob"].wait()
                db.execute("INSERT INTO orders VALUES (1, 'alice', 10), (2, 'carol', 20), (3, 'alice', 30)")
                db.execute("UPDATE orders SET total = 21 WHERE id = 2")
            page = await client.get("/v1/changes?table=public.orders&offset=-1", headers=auth("token-alice"))
            anonymous = await client.get(stream)
            wrong = await client.get(stream, headers=auth("token-eve"))
            refused = await client.get(stream, headers=auth("token-mallory"))
            by_query = await client.get("/v1/changes?table=public.orders&offset=-1&access_token=token-alice")
            unknown = await client.get("/v1/changes?table=public.secrets", headers=auth("token-bob"))
            filtered = await client.get(
                "/v1/changes?table=public.orders&offset=-1&where=total.gte.20", headers=auth("token-alice")
            )
        app.stop()
    assert [(c["op"], c["new"]["id"]) for _, c in seen["alice"]] == [("insert", 1), ("insert", 3)]
    assert all(c["new"]["owner"] == "alice" and c["new"]["total"] in (10, 30) for _, c in seen["alice"])
    assert [(c["op"], c["new"]["id"]) for _, c in seen["bob"]] == [("insert", 1), ("insert", 2), ("insert", 3),
                                                                    ("update", 2)]  # fmt: skip
    assert all("total" not in c["new"] and "total" not in c["changed"] for _, c in seen["bob"])
    assert "carol" not in page.text and [c["new"]["id"] for c in page.json()["changes"]] == [1, 3]
    assert anonymous.status_code == 401 and anonymous.headers["www-authenticate"].startswith("Bearer")
    assert wrong.status_code == 401 and "token-eve" not in wrong.text
    assert refused.status_code == 403 and refused.json()["message"] == "mallory may not read orders"
    assert by_query.status_code == 200 and len(by_query.json()["changes"]) == 2
    assert unknown.status_code == 400 and "does not serve public.secrets" in unknown.json()["message"]
    assert [c["new"]["id"] for c in filtered.json()["changes"]] == [3]


async def test_a_long_poll_answers_as_soon_as_a_change_comes(dsn, db):
    db.execute("CREATE TABLE orders (id int PRIMARY KEY, owner text, total int)")
    app = feed_app(dsn, "feed_long_poll", open=True, tokens=None)
    async with anyio.create_task_group() as tg:
        await tg.start(app.serve)
        async with httpx.AsyncClient(base_url=url(app), timeout=30) as client:
            now = (await client.get("/v1/changes", params={"table": "public.orders"})).json()["next_offset"]
            params = {"table": "public.orders", "offset": now, "live": "long-poll", "timeout": "20"}
            answered = []

            async def poll():
                answered.append((await client.get("/v1/changes", params=params)).json())

            async with anyio.create_task_group() as polls:
                polls.start_soon(poll)
                await wait_until(lambda: app.feeds[0].fanout.views, "the poll to wait in its view")
                assert answered == []  # nothing yet: it waits
                db.execute("INSERT INTO orders VALUES (1, 'x', 1)")
            empty = (await client.get("/v1/changes", params={**params, "offset": answered[0]["next_offset"],
                                                             "timeout": "0.2"})).json()  # fmt: skip
            bad = await client.get("/v1/changes", params={**params, "timeout": "600"})
        app.stop()
    assert [c["new"]["id"] for c in answered[0]["changes"]] == [1] and answered[0]["up_to_date"] is True
    assert empty["changes"] == [] and empty["next_offset"] == answered[0]["next_offset"]
    assert bad.status_code == 400 and "timeout" in bad.json()["message"]


async def test_the_operator_endpoints_stay_beside_the_feed(dsn, db):
    db.execute("CREATE TABLE orders (id int PRIMARY KEY, owner text, total int)")
    app = feed_app(dsn, "feed_ops", open=True, tokens=None)
    async with anyio.create_task_group() as tg:
        await tg.start(app.serve)
        async with httpx.AsyncClient(base_url=url(app)) as client:
            ready = await client.get("/readyz")
            metrics = await client.get("/metrics")
            status = await client.get("/v1/status")
            page = await client.get("/")
            feed = await client.get("/v1/feed")
            head = await client.head("/v1/feed")
        app.stop()
    assert ready.status_code == 200 and metrics.status_code == 200 and "pgchanges_serving" in metrics.text
    assert status.json()["feed"]["tables"] == ["public.orders"] and status.json()["source"] == "logical"
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html") and "Live tail" in page.text
    assert feed.json()["clients"] == 0 and head.status_code == 200 and head.content == b""


async def eventually(check, what, timeout=15.0):
    seen = None
    with anyio.move_on_after(timeout):
        while not (seen := await check()):
            await anyio.sleep(0.02)
        return seen
    pytest.fail(f"timed out after {timeout}s waiting for {what}; last seen: {seen!r}")
