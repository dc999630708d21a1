from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from pgchanges.errors import ConfigError
from pgchanges.periodic import Schedule, parse_interval


@pytest.mark.parametrize(("text", "seconds"), [("30s", 30), ("5m", 300), ("2h", 7200), ("1d", 86400), (1.5, 1.5)])
def test_parse_interval(text, seconds):
    assert parse_interval(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "5", "5x", "-1s", "0s"])
def test_bad_intervals(text):
    with pytest.raises(ConfigError):
        parse_interval(text)


def test_every_is_aligned_to_the_interval():
    schedule = Schedule(interval=timedelta(minutes=5))
    assert schedule.next_after(datetime(2026, 1, 1, 10, 7, 30, tzinfo=UTC)) == datetime(2026, 1, 1, 10, 10, tzinfo=UTC)
    assert schedule.next_after(datetime(2026, 1, 1, 10, 10, tzinfo=UTC)) == datetime(2026, 1, 1, 10, 15, tzinfo=UTC)


def test_cron_in_a_time_zone_follows_daylight_saving():
    schedule = Schedule(cron="0 9 * * *", tz=ZoneInfo("America/New_York"))
    winter = schedule.next_after(datetime(2026, 1, 15, 12, tzinfo=UTC))
    summer = schedule.next_after(datetime(2026, 7, 15, 12, tzinfo=UTC))
    assert (winter.hour, summer.hour) == (14, 13)  # 09:00 local is 14:00 UTC in winter, 13:00 in summer


def test_bad_cron_is_a_clear_error():
    with pytest.raises(ConfigError, match="cron expression"):
        Schedule(cron="61 * * * *")
