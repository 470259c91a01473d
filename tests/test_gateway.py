"""The gateway client's pure parts (``messaging/gateway.py``); ``test_fake_gateway.py`` drives it over HTTP."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from messaging.gateway import parse_retry_after

NOW = datetime(2026, 12, 1, 22, 0, 0, tzinfo=UTC)


def test_a_retry_after_in_seconds_is_that_many_seconds() -> None:
    assert parse_retry_after("120", now=NOW) == 120.0
    assert parse_retry_after(" 0 ", now=NOW) == 0.0


def test_a_retry_after_http_date_is_the_seconds_until_that_date() -> None:
    assert parse_retry_after(format_datetime(NOW + timedelta(minutes=2), usegmt=True), now=NOW) == 120.0


def test_a_retry_after_date_with_an_unknown_zone_is_read_as_gmt() -> None:
    assert parse_retry_after("Tue, 01 Dec 2026 22:00:10 -0000", now=NOW) == 10.0


def test_a_retry_after_date_in_the_past_means_now() -> None:
    assert parse_retry_after("Tue, 01 Dec 2026 21:00:00 GMT", now=NOW) == 0.0


@pytest.mark.parametrize("value", [None, "", "soon", "-5", "1.5", "\u00b2", "Tue, 99 Dec 2026 25:00:00 GMT"])
def test_a_missing_or_unreadable_retry_after_is_none(value: str | None) -> None:
    assert parse_retry_after(value, now=NOW) is None
