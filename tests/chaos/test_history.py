"""The chaos history checker (bench/chaos/history.py) on hand-made histories: what it must call lost,
repeated, out of order or covered by a gap, and what it must not."""

from __future__ import annotations

from bench.chaos.history import Delivery, Written, check


def ledger(*versions: tuple[int, int], t: float = 10.0) -> list[Written]:
    return [Written(i, v, "u" if v > 1 else "i", t) for i, v in versions]


def delivered(*versions: tuple[int, int, float]) -> list[Delivery]:
    return [Delivery(i, v, t) for i, v, t in versions]


def test_a_complete_history_is_ok() -> None:
    verdict = check("outbox", ledger((1, 1), (1, 2), (2, 1)), delivered((1, 1, 11), (2, 1, 12), (1, 2, 13)))
    assert verdict.ok and (verdict.written, verdict.delivered, verdict.lost, verdict.repeated) == (3, 3, 0, 0)


def test_a_missing_version_is_lost_on_a_durable_source() -> None:
    verdict = check("logical", ledger((1, 1), (1, 2)), delivered((1, 1, 11)))
    assert not verdict.ok and verdict.lost == 1 and verdict.lost_sample == [(1, 2)]


def test_polling_may_skip_a_version_a_later_one_replaced_but_not_the_last() -> None:
    skipped = check("polling", ledger((1, 1), (1, 2), (1, 3)), delivered((1, 1, 11), (1, 3, 12)))
    assert skipped.ok and skipped.superseded == 1 and skipped.lost == 0
    last_missing = check("polling", ledger((1, 1), (1, 2)), delivered((1, 1, 11)))
    assert not last_missing.ok and last_missing.lost == 1


def test_a_repeat_after_a_fault_is_explained_and_one_without_is_not() -> None:
    history = delivered((1, 1, 11), (1, 1, 21))
    after_fault = check("outbox", ledger((1, 1)), history, fault_times=[(15, 16)], repeat_bound=10)
    assert after_fault.ok and after_fault.repeated == 1 and after_fault.worst_repeat_burst == 1
    without = check("outbox", ledger((1, 1)), history, fault_times=[], repeat_bound=10)
    assert not without.ok and without.unexplained == 1


def test_more_repeats_than_can_be_in_flight_fail() -> None:
    written = ledger(*((i, 1) for i in range(1, 6)))
    history = [Delivery(i, 1, 11) for i in range(1, 6)] + [Delivery(i, 1, 21) for i in range(1, 6)]
    assert check("logical", written, history, fault_times=[(15, 16)], repeat_bound=5).ok
    too_many = check("logical", written, history, fault_times=[(15, 16)], repeat_bound=4)
    assert not too_many.ok and too_many.excess_bursts == 1


def test_a_version_delivered_after_a_newer_one_is_out_of_order() -> None:
    verdict = check("outbox", ledger((1, 1), (1, 2)), delivered((1, 2, 11), (1, 1, 12)))
    assert not verdict.ok and verdict.out_of_order == 1


def test_a_delivery_the_ledger_does_not_hold_is_a_phantom() -> None:
    verdict = check("outbox", ledger((1, 1)), delivered((1, 1, 11), (9, 1, 12)))
    assert not verdict.ok and verdict.phantom == 1


def test_notify_losses_inside_a_window_closed_by_a_gap_are_covered() -> None:
    written = [Written(1, 1, "i", 10), Written(2, 1, "i", 20), Written(3, 1, "i", 40)]
    history = delivered((1, 1, 11))
    covered = check("notify", written[:2], history, fault_times=[(19, 19.5)], gap_times=[25])
    assert covered.ok and covered.lost == 1 and covered.uncovered == 0
    outside = check("notify", written, history, fault_times=[(19, 19.5)], gap_times=[25])
    assert not outside.ok and outside.uncovered == 1 and outside.lost_sample == [(3, 1)]


def test_a_new_consumer_process_closes_a_notify_loss_window() -> None:
    written = [Written(1, 1, "i", 20)]
    assert check("notify", written, [], fault_times=[(19, 20)], restarts=[22]).ok
    assert not check("notify", written, [], fault_times=[(30, 31)], restarts=[32]).ok
