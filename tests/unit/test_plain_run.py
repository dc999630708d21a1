"""PlainRun: many plain-function calls in one worker thread, each with its own timeout and row order."""

import threading

import pytest

from pgchanges.plain_run import NOT_RUN, SKIPPED, PlainRun

pytestmark = pytest.mark.anyio


async def test_calls_run_in_order_in_one_thread():
    threads, order = [], []

    def call(i):
        def run():
            threads.append(threading.get_ident())
            order.append(i)

        return run

    run = PlainRun([call(i) for i in range(50)])
    await run.run(timeout=5)
    assert order == list(range(50))
    assert len(set(threads)) == 1 and threads[0] != threading.get_ident()
    assert run.outcomes == [None] * 50


async def test_a_failure_skips_later_calls_of_its_key_and_of_unknown_keys_only():
    def fail():
        raise ValueError("bad")

    ran = []
    calls = [fail, lambda: ran.append("a2"), lambda: ran.append("b1"), lambda: ran.append("unknown")]
    run = PlainRun(calls, keys=["a", "a", "b", None])
    await run.run(timeout=5)
    assert isinstance(run.outcomes[0], ValueError)
    assert run.outcomes[1:] == [SKIPPED, None, SKIPPED]
    assert ran == ["b1"] and run.failed == {"a"}


async def test_keys_failed_before_the_run_are_skipped():
    run = PlainRun([lambda: None, lambda: None], keys=["a", "b"], failed={"a"})
    await run.run(timeout=5)
    assert run.outcomes == [SKIPPED, None]


async def test_a_hung_call_times_out_and_the_run_stops_before_the_next():
    release = threading.Event()
    ran = []
    calls = [lambda: ran.append(1), lambda: release.wait(30), lambda: ran.append(3)]
    run = PlainRun(calls, keys=["a", "b", "c"])
    try:
        await run.run(timeout=0.2)
    finally:
        release.set()
    assert run.outcomes[0] is None
    assert isinstance(run.outcomes[1], TimeoutError)
    assert run.outcomes[2] is NOT_RUN
    assert ran == [1] and run.failed == {"b"}


async def test_slow_calls_that_each_finish_in_time_do_not_time_out():
    release = [threading.Event() for _ in range(4)]

    def wait(i):
        return lambda: release[i].wait(0.15)  # each under the timeout, together over it

    run = PlainRun([wait(i) for i in range(4)], keys=["a", "b", "c", "d"])
    await run.run(timeout=0.4)
    assert run.outcomes == [None] * 4


async def test_without_keys_the_first_exception_propagates():
    ran = []

    def fail():
        raise RuntimeError("stop")

    with pytest.raises(RuntimeError, match="stop"):
        await PlainRun([lambda: ran.append(1), fail, lambda: ran.append(3)]).run()
    assert ran == [1]
