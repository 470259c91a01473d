"""Stored text printed by the commands shows its control characters escaped, never obeyed by the terminal
(``queueing/management/terminal.py``)."""

from __future__ import annotations

import json
from datetime import datetime
from io import StringIO
from typing import Any

import pytest
import redis
from django.core.management import call_command

from queueing.management.terminal import printable, printable_json
from tests.test_groups import record

#: Clear the screen, go back to the start of the line, a hyperlink, a bell, a C1 CSI, a right-to-left override.
ESCAPES = "\x1b[2J\r\x1b]8;;http://evil.example/\x07\x9b31m\u202e"
ESCAPED = "\\x1b[2J\\r\\x1b]8;;http://evil.example/\\x07\\x9b31m\\u202e"


def no_control_characters(text: str) -> bool:
    """Nothing a terminal would act on, bar the line breaks between lines."""
    return printable(text, keep_newlines=True) == text


@pytest.mark.parametrize(
    ("stored", "shown"),
    [
        ("plain text, ünïcode and emoji 🙂", "plain text, ünïcode and emoji 🙂"),
        (ESCAPES, ESCAPED),
        ("one\nvalue\ton one line\x00", "one\\nvalue\\ton one line\\x00"),
        ("zero\u200bwidth\ufeff", "zero\\u200bwidth\\ufeff"),
    ],
)
def test_printable_writes_each_control_character_as_its_escape(stored: str, shown: str) -> None:
    assert printable(stored) == shown


def test_printable_keeps_a_plain_newline_only_when_asked() -> None:
    assert printable("line 1\nline 2\r\n", keep_newlines=True) == "line 1\nline 2\\r\n"
    assert printable("line 1\nline 2") == "line 1\\nline 2"


def test_printable_json_is_the_same_json_with_nothing_raw_a_terminal_would_obey() -> None:
    value = {"message": f"{ESCAPES}\x7f\x85 ünïcode 🙂", "n": 1}
    text = json.dumps(value, ensure_ascii=False)

    shown = printable_json(text)

    assert json.loads(shown) == value
    assert no_control_characters(shown), repr(shown)
    assert "ünïcode 🙂" in shown


@pytest.mark.django_db(transaction=True)
def test_check_queue_prints_a_stored_error_message_with_its_escapes_shown(
    configure: Any, broker: redis.Redis, now: datetime
) -> None:
    configure(STATUS_COUNTS_CACHE_SECONDS=0, STATUS_INSPECT_TIMEOUT_SECONDS=0.05)
    # Given failures whose stored error message would clear the screen and rewrite the line
    for n in range(2):
        record(n, at=now, message=f"gateway answered {ESCAPES} for +1555000{{n}}")

    # When an operator runs check_queue
    out = StringIO()
    call_command("check_queue", stdout=out, no_color=True)
    text = out.getvalue()

    # Then the message shows, escapes and all, and the terminal gets nothing to obey
    assert "Failure groups:" in text
    assert "gateway answered \\x1b[<n>J \\x1b]<n>;;<url>" in text  # the group's pattern: numbers and URLs masked
    assert no_control_characters(text), repr(text)

    # And its JSON carries the message exactly, in escapes a terminal does not obey
    out = StringIO()
    call_command("check_queue", "--json", stdout=out)
    assert no_control_characters(out.getvalue())
    [failure, *_] = json.loads(out.getvalue())["queues"]["default"]["recentFailed"]
    assert ESCAPES in failure["failedReason"]


@pytest.mark.django_db(transaction=True)
def test_retry_all_failed_dry_run_prints_a_tampered_task_name_with_its_escapes_shown(
    broker: redis.Redis, make_failed_job: Any
) -> None:
    make_failed_job(task_name=f"tests.tasks.succeed{ESCAPES}", exception_class=f"Boom\r{ESCAPES}")

    out = StringIO()
    call_command("retry_all_failed", "--dry-run", stdout=out, no_color=True)
    text = out.getvalue()

    assert f"tests.tasks.succeed{ESCAPED}" in text
    assert f"Boom\\r{ESCAPED}" in text
    assert no_control_characters(text), repr(text)
