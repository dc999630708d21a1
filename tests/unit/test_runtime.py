"""The handler runtime's rules, without a server: one rule for a raising where, threads, policy, keyed order."""

import threading

import pytest

import pgchanges
from pgchanges.change import Change
from pgchanges.errors import ConfigError, HandlerFailed
from pgchanges.plain_run import SKIPPED
from pgchanges.routing import Router
from pgchanges.runtime import Runtime

pytestmark = pytest.mark.anyio


def change(n: int, table: str = "t") -> Change:
    return Change(f"c:{n}", "insert", "public", table, {"id": n}, None, (), 1, None, n, "test")


def runtime_with(*routes, policy="log", timeout=None) -> Runtime:
    router = Router()
    for handler, where, kwargs in routes:
        router.add("public.t", None, handler, where, **kwargs)
    return Runtime(router, policy, timeout)


@pytest.mark.parametrize("kind", ["async", "plain"])
async def test_a_raising_where_is_a_failure_of_its_handler_only(kind):
    seen, other = [], []

    def broken_filter(c):
        raise ValueError("bad filter")

    if kind == "async":

        async def handler(c):
            seen.append(c.position)

        async def neighbour(c):
            other.append(c.position)
    else:

        def handler(c):
            seen.append(c.position)

        def neighbour(c):
            other.append(c.position)

    runtime = runtime_with((handler, broken_filter, {}), (neighbour, None, {}))
    outcomes = await runtime.run_changes([change(1), change(2)])
    assert seen == []
    assert other == [1, 2]  # the other handler of the same changes ran
    assert runtime.failures == 2
    assert all(isinstance(o, ValueError) for o in outcomes)


async def test_keyed_runs_hold_back_a_failed_rows_later_changes_and_stop_its_handlers():
    calls = []

    def first(c):
        calls.append(("first", c.position))
        if c.position == 1:
            raise RuntimeError("row a fails")

    def second(c):
        calls.append(("second", c.position))

    runtime = runtime_with((first, None, {}), (second, None, {}))
    outcomes = await runtime.run_changes([change(1), change(2), change(3)], keys=["a", "b", "a"])
    assert isinstance(outcomes[0], RuntimeError)
    assert outcomes[1] is None and outcomes[2] is SKIPPED
    assert ("second", 1) not in calls  # the change is retried whole: its other handlers wait for it
    assert ("first", 2) in calls and ("second", 2) in calls
    assert ("first", 3) not in calls


@pytest.mark.parametrize("kind", ["async", "plain"])
async def test_stop_policy_raises_handler_failed_at_the_first_failure(kind):
    seen = []
    if kind == "async":

        async def handler(c):
            seen.append(c.position)
            raise RuntimeError("boom")
    else:

        def handler(c):
            seen.append(c.position)
            raise RuntimeError("boom")

    runtime = runtime_with((handler, None, {}), policy="stop")
    with pytest.raises(HandlerFailed, match="boom"):
        await runtime.run_changes([change(1), change(2)])
    assert seen == [1]


async def test_a_callable_policy_gets_the_change_and_the_error():
    got = []

    def handler(c):
        raise KeyError(c.position)

    runtime = runtime_with((handler, None, {}), policy=lambda c, exc: got.append((c.position, type(exc))))
    await runtime.run_changes([change(7)])
    assert got == [(7, KeyError)]


async def test_plain_handlers_run_in_one_worker_thread_and_async_ones_in_the_loop():
    threads = []

    def plain(c):
        threads.append(("plain", threading.get_ident()))

    runtime = runtime_with((plain, None, {}))
    await runtime.run_changes([change(i) for i in range(20)])
    idents = {ident for _, ident in threads}
    assert len(threads) == 20 and len(idents) == 1 and threading.get_ident() not in idents


async def test_a_late_handler_times_out_and_the_next_change_runs():
    release = threading.Event()
    seen = []

    def handler(c):
        if c.position == 1:
            release.wait(10)
        seen.append(c.position)

    runtime = runtime_with((handler, None, {}), timeout=0.2)
    try:
        outcomes = await runtime.run_changes([change(1), change(2)])
    finally:
        release.set()
    assert isinstance(outcomes[0], TimeoutError) and outcomes[1] is None
    assert 2 in seen


async def test_a_transaction_handler_gets_the_transaction_in_a_savepoint():
    events = []

    class FakeTransaction:  # stands in for the outbox transaction: records the savepoint around the handlers
        def savepoint(self):
            class Savepoint:
                async def __aenter__(self):
                    events.append("savepoint")

                async def __aexit__(self, *exc):
                    events.append("rolled back" if exc[0] else "released")

            return Savepoint()

    async def booked(c, tx):
        events.append(("handler", tx is transaction))
        raise RuntimeError("after writing")

    transaction = FakeTransaction()
    runtime = runtime_with((booked, None, {"transaction": True}))
    outcomes = await runtime.run_changes([change(1)], tx=transaction, keys=["a"])
    assert events == ["savepoint", ("handler", True), "rolled back"]
    assert isinstance(outcomes[0], RuntimeError)


def test_a_two_argument_handler_must_be_declared():
    app = pgchanges.App("postgresql://localhost/x", source="outbox")

    with pytest.raises(ConfigError, match="transaction=True"):

        @app.on("t")
        def guessed(change, tx): ...

    @app.on("t")
    def with_a_default(change, retries=3): ...  # one required argument: an ordinary handler

    @app.on("t", transaction=True)
    def declared(change, tx): ...

    assert [r.transaction for r in app.router.routes] == [False, True]


def test_a_misspelt_source_option_fails_when_the_app_is_made():
    with pytest.raises(ConfigError, match=r"unknown option\(s\) for source='outbox': lane; valid options: consumer"):
        pgchanges.App("postgresql://localhost/x", source="outbox", lane=4)
    with pytest.raises(ConfigError, match="unknown source 'outbx'"):
        pgchanges.App("postgresql://localhost/x", source="outbx")


async def test_a_batch_route_gets_the_batchs_changes_at_once_and_reports_each():
    got = []

    async def publish(changes):
        got.append([c.position for c in changes])
        return [None, RuntimeError("broker refused"), None]

    router = Router()
    router.add("public.t", None, publish, lambda c: c.position != 4, batch=True)
    runtime = Runtime(router)
    outcomes = await runtime.run_changes([change(1), change(2), change(3), change(4)])
    assert got == [[1, 2, 3]]  # the where filtered 4 out; one call for the batch
    assert outcomes[0] is None and isinstance(outcomes[1], RuntimeError) and outcomes[2] is None
    assert runtime.failures == 1


def test_a_batch_route_must_be_async():
    with pytest.raises(ConfigError, match="batch handler"):
        Router().add("public.t", None, lambda changes: None, batch=True)
