"""The QUEUEING settings: defaults, overrides by settings and environment, loud errors."""

from __future__ import annotations

import base64
import dataclasses
from pathlib import Path
from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured

from queueing import conf, declaration
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


# --- one declaration per setting, and everything derived from it ------------------------------------------

README = Path(__file__).resolve().parent.parent / "README.md"
#: Rows of the README's configuration table that are the project's own, read by project/settings.py.
PROJECT_SETTINGS = {"QUEUEING_VAR_DIR", "QUEUEING_LOG_LEVEL"}


def readme_configuration_rows() -> dict[str, tuple[str, str]]:
    """``{variable: (default, meaning)}`` of the README's "Configuration" table, backticks around cells removed."""
    section = README.read_text().split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split(" | ")]
        if line.startswith("| `") and len(cells) == 3:
            name, default, meaning = cells
            rows[name.strip("`")] = (default.removeprefix("`").removesuffix("`"), meaning)
    return rows


def test_every_setting_is_in_the_readme_table_with_its_default_and_meaning() -> None:
    rows = readme_configuration_rows()

    for declared in conf.SETTINGS:
        assert declared.env_var in rows, f"README's configuration table lacks {declared.env_var}"
        assert rows[declared.env_var] == (declared.default_text, declared.help), declared.env_var


def test_the_readme_table_names_no_queueing_setting_that_is_not_declared() -> None:
    listed = {name for name in readme_configuration_rows() if name.startswith(declaration.ENV_PREFIX)}

    assert listed - PROJECT_SETTINGS == {declared.env_var for declared in conf.SETTINGS}


def test_the_readme_check_catches_a_wrong_default(monkeypatch: pytest.MonkeyPatch) -> None:
    declared = conf.BY_KEY["MAX_RETRIES"]
    monkeypatch.setattr(conf, "SETTINGS", (dataclasses.replace(declared, default=4),))

    with pytest.raises(AssertionError, match="QUEUEING_MAX_RETRIES"):
        test_every_setting_is_in_the_readme_table_with_its_default_and_meaning()


def test_the_module_docstring_lists_every_setting_with_its_default_and_unit() -> None:
    doc = conf.__doc__ or ""

    for declared in conf.SETTINGS:
        row = next((line for line in doc.splitlines() if line.startswith(declared.key + " ")), "")
        assert row.split()[:3] == [declared.key, declared.default_text, declared.unit or "-"], declared.key


def test_the_dataclass_defaults_are_the_declared_ones() -> None:
    defaults = QueueingSettings()

    assert [getattr(defaults, declared.field) for declared in conf.SETTINGS] == [d.default for d in conf.SETTINGS]
    assert [f.name for f in dataclasses.fields(QueueingSettings)] == [d.field for d in conf.SETTINGS]
    assert "api_token" not in repr(defaults) and "alert_webhook_url" not in repr(defaults)  # secrets
    assert "encryption_keys" not in repr(defaults)


def other_value(declared: declaration.Setting) -> tuple[str, Any]:
    """An environment value for ``declared`` other than its default, and what it parses to."""
    if declared.kind is bool:
        return str(not declared.default).lower(), not declared.default
    if declared.kind is int:
        return str(declared.default + 1), declared.default + 1
    if declared.kind is float:
        return str(declared.default + 0.5), declared.default + 0.5
    if declared.key == "THROTTLE":  # its items must be queue=rate
        return "q1=5, q2=0.5", ("q1=5", "q2=0.5")
    if declared.key == "ENCRYPTION_KEYS":  # its items must be Fernet keys
        keys = (base64.urlsafe_b64encode(b"1" * 32).decode(), base64.urlsafe_b64encode(b"2" * 32).decode())
        return f"{keys[0]}, {keys[1]}", keys
    if declared.kind is tuple:
        return "a.Sink, b.Sink", ("a.Sink", "b.Sink")
    return "changed", "changed"


@pytest.mark.parametrize("declared", conf.SETTINGS, ids=lambda declared: declared.key)
def test_every_setting_is_read_from_its_environment_variable(
    monkeypatch: pytest.MonkeyPatch, declared: declaration.Setting
) -> None:
    text, expected = other_value(declared)
    monkeypatch.setenv(declared.env_var, text)
    get_settings.cache_clear()
    try:
        assert getattr(get_settings(), declared.field) == expected
    finally:
        monkeypatch.delenv(declared.env_var)
        get_settings.cache_clear()
