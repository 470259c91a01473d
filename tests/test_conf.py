"""The QUEUEING settings: defaults, overrides by settings and environment, loud errors."""

from __future__ import annotations

from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured

from queueing.conf import QueueingSettings, get_settings


def test_the_defaults_are_the_seeds() -> None:
    defaults = QueueingSettings()
    assert (defaults.max_retries, defaults.retry_delay_seconds, defaults.check_interval_seconds) == (3, 300, 60)
    assert (defaults.immediate_retries, defaults.backoff_base_seconds, defaults.backoff_jitter) == (3, 2, False)
    assert defaults.lease_seconds == 1800


def test_settings_override_the_defaults(settings: Any) -> None:
    settings.QUEUEING = {"MAX_RETRIES": 5, "RETRY_DELAY": 600}
    conf = get_settings()
    assert (conf.max_retries, conf.retry_delay_seconds, conf.immediate_retries) == (5, 600.0, 3)


def test_environment_variables_override_settings(settings: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    settings.QUEUEING = {"MAX_RETRIES": 5}
    monkeypatch.setenv("QUEUEING_MAX_RETRIES", "7")
    monkeypatch.setenv("QUEUEING_BACKOFF_BASE", "0.25")
    monkeypatch.setenv("QUEUEING_BACKOFF_JITTER", "yes")
    get_settings.cache_clear()
    conf = get_settings()
    assert (conf.max_retries, conf.backoff_base_seconds, conf.backoff_jitter) == (7, 0.25, True)
    get_settings.cache_clear()


def test_an_unknown_key_is_rejected_with_the_known_ones_listed(settings: Any) -> None:
    settings.QUEUEING = {"MAX_RETRYS": 5}
    with pytest.raises(
        ImproperlyConfigured, match=r"unknown key\(s\) in settings.QUEUEING: MAX_RETRYS; known keys: MAX"
    ):
        get_settings()


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("QUEUEING_MAX_RETRIES", "three", "must be a whole number, got 'three'"),
        ("QUEUEING_RETRY_DELAY", "-1", "must be at least 0"),
        ("QUEUEING_CHECK_INTERVAL", "0", "must be at least 1"),
        ("QUEUEING_BACKOFF_JITTER", "maybe", "must be true or false"),
    ],
)
def test_a_bad_environment_value_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, message: str
) -> None:
    monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    try:
        with pytest.raises(ImproperlyConfigured, match=f"environment variable {name} {message}"):
            get_settings()
    finally:
        monkeypatch.delenv(name)
        get_settings.cache_clear()
