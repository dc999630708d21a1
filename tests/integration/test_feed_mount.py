"""The feed mounted in an application's own Starlette app, served by uvicorn, captured by an outbox consumer: a
stream that resumes by Last-Event-ID, a client whose disconnect the feed notices, a page under the mount."""

import json

import anyio
import httpx
import pytest
import uvicorn
from httpx_sse import aconnect_sse
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route

import pgchanges
from tests.conftest import wait_until

pytestmark = [pytest.mark.anyio, pytest.mark.filterwarnings("ignore:Async generator 'http(x|core)[._]:ResourceWarning")]


@pytest.fixture
def anyio_backend():
    return "asyncio"  # uvicorn runs on asyncio


async def read(client, path, count, headers=None, started=None):
    got = []
    with anyio.fail_after(15):
        async with aconnect_sse(client, "GET", path, headers=headers or {}) as source:
            async for event in source.aiter_sse():
                if started is not None:
                    started.set()
                if event.data:
                    got.append((event.id, json.loads(event.data)))
                if len(got) == count:
                    return got
    return got


async def test_a_feed_mounted_in_a_starlette_app_under_uvicorn(dsn, db):
    db.execute("CREATE TABLE orders (id int PRIMARY KEY, owner text)")
    app = pgchanges.App(dsn, source="outbox", consumer="feed", poll_interval=0.05, handler_timeout=None)
    feed = app.feed("public.orders", tokens={"t": "shop"})

    async def home(request):
        return PlainTextResponse("the shop")

    web = Starlette(routes=[Route("/", home), Mount("/feed", feed.asgi())])
    server = uvicorn.Server(uvicorn.Config(web, host="127.0.0.1", port=0, lifespan="off", log_level="warning"))
    async with anyio.create_task_group() as tg:
        await tg.start(app.serve)
        tg.start_soon(server.serve)
        await wait_until(lambda: server.started, "uvicorn to listen")
        port = server.servers[0].sockets[0].getsockname()[1]
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", headers={"authorization": "Bearer t"}) as c:
            assert (await c.get("/")).text == "the shop"
            stream = "/feed/v1/changes?table=public.orders&live=sse"
            started = anyio.Event()
            first = []

            async def follow():
                first.extend(await read(c, stream, 3, started=started))

            async with anyio.create_task_group() as clients:
                clients.start_soon(follow)
                await started.wait()
                db.execute("INSERT INTO orders SELECT g, 'a' FROM generate_series(1, 5) g")
            assert len(first) == 3 and all(ch["source"] == "outbox" for _, ch in first)
            await wait_until(lambda: feed.fanout.figures.clients == 0, "the feed to notice the client went away")
            rest = await read(c, stream, 2, headers={"last-event-id": first[-1][0]})
            delivered = [ch["new"]["id"] for _, ch in [*first, *rest]]
            assert sorted(delivered) == [1, 2, 3, 4, 5]  # no gap, no repeat (the outbox orders per row, in lanes)
            page = (await c.get("/feed/v1/changes", params={"table": "public.orders", "offset": "-1"})).json()
            denied = await c.get("/feed/v1/changes?table=public.orders", headers={"authorization": "Bearer nope"})
        server.should_exit = True
        app.stop()
    assert [ch["new"]["id"] for ch in page["changes"]] == delivered  # the log's one order, for every client
    assert denied.status_code == 401
