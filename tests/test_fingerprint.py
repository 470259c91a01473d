"""The fingerprint of a failure (``queueing/fingerprint.py``): pure, no database."""

from __future__ import annotations

from queueing.fingerprint import fingerprint, normalise


def test_numbers_ids_urls_and_quoted_values_are_normalised() -> None:
    message = (
        "gateway at http://127.0.0.1:8123/send answered 503 for +15550100 "
        "(job 6f1c2b9e-55aa-4b7e-9d7c-0a1b2c3d4e5f, key 'abc def', object at 0x7f3a626e4a40, sha 9f86d081884c7d65)"
    )
    assert normalise(message) == (
        "gateway at <url> answered <n> for <n> (job <id>, key <str>, object at <id>, sha <id>)"
    )


def test_two_failures_that_differ_only_in_what_varies_share_a_fingerprint() -> None:
    one = fingerprint(task_name="t", exception_class="E", message="timeout after 2.5 s talking to 'gw-1'")
    two = fingerprint(task_name="t", exception_class="E", message='timeout after 10 s talking to "gw-2"')
    assert one == two
    assert len(one[0]) == 32


def test_the_task_the_exception_class_and_the_words_each_make_a_fingerprint_different() -> None:
    base = fingerprint(task_name="t", exception_class="E", message="gateway down")
    assert fingerprint(task_name="u", exception_class="E", message="gateway down") != base
    assert fingerprint(task_name="t", exception_class="F", message="gateway down") != base
    assert fingerprint(task_name="t", exception_class="E", message="session not found") != base


def test_words_with_letters_and_digits_that_are_not_ids_stay() -> None:
    assert normalise("HTTP/1.1 service   unavailable") == "HTTP/<n> service unavailable"
    assert normalise("ConnectionError: [Errno 111]") == "ConnectionError: [Errno <n>]"
