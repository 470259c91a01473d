"""The failed-job admin in a real (headless) browser: log in, filter, select, retry, read the message.

Needs Debian's Chromium at /usr/bin/chromium (``apt-get install -y chromium``) and Playwright for Python (the
``dev`` extra). Never run ``playwright install``: it downloads a browser of its own, which cannot work here.
Without them the test fails under CI (``CI`` set) and is skipped, saying what to install, elsewhere.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
import redis
from django.contrib.auth.models import User

from queueing.models import FailedJob
from queueing.schedule import ensure_sweep_schedule

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PASSWORD = "a-long-test-password-1"
TIMEOUT_MS = 15_000


def _require_browser() -> None:
    problems = []
    if not CHROMIUM.exists():
        problems.append(f"Chromium is missing at {CHROMIUM}: run `apt-get install -y chromium`")
    if importlib.util.find_spec("playwright") is None:
        problems.append("Playwright for Python is missing: run `.venv/bin/pip install -e '.[dev]'`")
    if problems:
        message = "; ".join(problems) + " (do not run `playwright install`: it downloads a browser of its own)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


@contextlib.contextmanager
def browser_page() -> Iterator[Any]:
    """A page of headless Chromium. Use no ORM inside: Playwright's event loop makes Django refuse it."""
    _require_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.set_default_timeout(TIMEOUT_MS)
            yield page
        finally:
            browser.close()


def _log_in(page: Any, base_url: str, next_path: str) -> None:
    """Through the real login form, landing on ``next_path``."""
    page.goto(f"{base_url}/admin/login/?{urlencode({'next': next_path})}")
    page.fill("#id_username", "operator")
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")
    page.wait_for_selector("#result_list")
    # The admin's actions.js binds the select-all box once the page has loaded: a click before that can be undone.
    page.wait_for_load_state("load")


def _run_retry_and_confirm(page: Any) -> str:
    page.select_option("select[name=action]", "retry_selected")
    page.click("button[name=index]")
    page.wait_for_selector("#queueing-preview")
    page.click("input[type=submit][value='Yes, retry them now']")
    return page.wait_for_selector(".messagelist .success").inner_text()


@pytest.fixture
def failed_jobs(make_failed_job: Callable[..., FailedJob]) -> dict[str, list[FailedJob]]:
    """Made before the browser starts: Playwright's event loop makes Django refuse ORM calls while it runs."""
    User.objects.create_user("operator", password=PASSWORD, is_staff=True, is_superuser=True)
    ensure_sweep_schedule()
    return {
        "failed": [
            make_failed_job(task_name="tests.tasks.succeed", exception_message=f"gateway down #{i}") for i in range(3)
        ],
        "other": [
            make_failed_job(status=FailedJob.Status.DEAD, exception_message="still dead"),
            make_failed_job(status=FailedJob.Status.RETRYING, exception_message="in flight"),
        ],
    }


def test_an_operator_retries_the_filtered_failed_jobs_from_the_admin_in_a_browser(
    live_server: Any, failed_jobs: dict[str, list[FailedJob]], broker: redis.Redis, tmp_path: Path
) -> None:
    with browser_page() as page:
        # Given an operator who logs in through the real login form, landing on the failed jobs
        _log_in(page, live_server.url, "/admin/queueing/failedjob/?status__exact=failed")
        rows = page.locator("#result_list tbody tr").count()
        policy = page.inner_text("#queueing-policy")
        page.screenshot(path=str(tmp_path / "changelist.png"), full_page=True)

        # When they select every row, pick "Retry selected now", run it and confirm
        page.check("#action-toggle")
        page.select_option("select[name=action]", "retry_selected")
        page.click("button[name=index]")
        preview = page.wait_for_selector("#queueing-preview").inner_text()
        note = page.inner_text("#queueing-note")
        page.screenshot(path=str(tmp_path / "confirmation.png"), full_page=True)
        page.click("input[type=submit][value='Yes, retry them now']")

        # Then the list says what happened, and the filter on failed jobs matches none any more
        message = page.wait_for_selector(".messagelist .success").inner_text()
        rows_after = page.locator("#result_list tbody tr").count()
        page.screenshot(path=str(tmp_path / "done.png"), full_page=True)

    assert rows == 3
    assert "does not count against the automatic limit" in policy
    assert "3 jobs will be sent again now" in preview
    assert "do not count against the automatic limit" in note
    assert message.startswith("3 jobs sent again.")
    assert "Manual retries do not count against the automatic limit" in message
    assert rows_after == 0
    # And the rows changed state in the database: sent again as manual retries, the others left alone
    for job in failed_jobs["failed"]:
        job.refresh_from_db()
        assert (job.status, job.manual_retry_count, job.retry_count) == (FailedJob.Status.RETRYING, 1, 0)
    assert [FailedJob.objects.get(pk=j.pk).status for j in failed_jobs["other"]] == ["dead", "retrying"]
    assert broker.llen("default") == 3
    _keep_screenshots(tmp_path)


def test_only_the_ticked_rows_are_retried(
    live_server: Any, failed_jobs: dict[str, list[FailedJob]], broker: redis.Redis
) -> None:
    with browser_page() as page:
        _log_in(page, live_server.url, "/admin/queueing/failedjob/?status__exact=failed")
        boxes = page.locator("#result_list tbody input.action-select")
        ticked = [boxes.nth(0).get_attribute("value"), boxes.nth(1).get_attribute("value")]
        boxes.nth(0).check()
        boxes.nth(1).check()
        message = _run_retry_and_confirm(page)

    assert message.startswith("2 jobs sent again.")
    statuses = dict(FailedJob.objects.filter(pk__in=[j.pk for j in failed_jobs["failed"]]).values_list("pk", "status"))
    assert {str(pk) for pk, status in statuses.items() if status == FailedJob.Status.RETRYING} == set(ticked)
    assert sorted(statuses.values()) == ["failed", "retrying", "retrying"]
    assert broker.llen("default") == 2


#: What a laptop shows of the admin: the size the layout test opens the list at.
LAPTOP = {"width": 1400, "height": 900}

#: Where each column an operator needs first ends, and whether the table or the page scrolls sideways.
LAYOUT_PROBE = """() => {
    const right = (name) => document.querySelector(`#result_list th.column-${name}`).getBoundingClientRect().right;
    const results = document.querySelector("#changelist-form .results");
    return {
        viewport: window.innerWidth,
        visible: Math.min(window.innerWidth, results.getBoundingClientRect().right),
        right: {attempts: right("attempts"), last_failed: right("last_failed"), next_retry: right("next_retry")},
        table_overflow: results.scrollWidth - results.clientWidth,
        page_overflow: document.documentElement.scrollWidth - window.innerWidth,
    };
}"""


@pytest.fixture
def realistic_jobs(make_failed_job: Callable[..., FailedJob], now: datetime) -> list[FailedJob]:
    """A page as an operator meets it: the example workload's long names and connection errors."""
    User.objects.create_user("operator", password=PASSWORD, is_staff=True, is_superuser=True)
    ensure_sweep_schedule()
    error = (
        "HTTPConnectionPool(host='whatsapp-gateway.internal', port=8001): Max retries exceeded with url: "
        "/api/send-message (Caused by NewConnectionError('<urllib3.connection.HTTPConnection object at "
        "0x7f3a2c1b5d90>: Failed to establish a new connection: [Errno 111] Connection refused'))"
    )
    jobs = []
    for i in range(12):
        at = now - timedelta(hours=i, minutes=7 * i, seconds=i)
        jobs.append(
            make_failed_job(
                task_name="messaging.tasks.send_whatsapp_message",
                queue="whatsapp-send",
                status=[FailedJob.Status.FAILED, FailedJob.Status.DEAD, FailedJob.Status.RETRYING][i % 3],
                exception_class="requests.exceptions.ConnectionError",
                exception_message=error,
                retry_count=i % 4,
                manual_retry_count=i % 2,
                attempts=4 * (1 + i % 4),
                first_failed_at=at - timedelta(days=1),
                last_failed_at=at,
                next_retry_at=None if i % 3 == 1 else now + timedelta(minutes=5 - i),
            )
        )
    return jobs


def test_the_columns_an_operator_needs_first_fit_a_laptop_screen(
    live_server: Any, realistic_jobs: list[FailedJob], tmp_path: Path
) -> None:
    with browser_page() as page:
        # Given an operator on a laptop (1,400 x 900) who opens the failed jobs, every filter in the sidebar
        page.set_viewport_size(LAPTOP)
        _log_in(page, live_server.url, "/admin/queueing/failedjob/")
        page.screenshot(path=str(tmp_path / "laptop.png"))

        # When we measure where the columns end, and whether anything scrolls sideways
        layout = page.evaluate(LAYOUT_PROBE)
        last_failed = page.locator("#result_list tbody td.field-last_failed").first.inner_text()
        next_retry = page.locator("#result_list tbody td.field-next_retry").first.inner_text()

    # Then Attempts, Last failed and Next retry end inside the window, with no scroll bar in the table or the page
    assert all(edge <= layout["visible"] for edge in layout["right"].values()), layout
    assert layout["table_overflow"] <= 0, layout
    assert layout["page_overflow"] <= 0, layout
    # And each time is told to the second, with its time zone, and how far from now it is
    time = re.compile(r"\d{4}-\d\d-\d\d\s\d\d:\d\d:\d\d\sUTC")
    assert time.search(last_failed) and "just now" in last_failed, last_failed
    assert time.search(next_retry) and re.search(r"in [45]\sminutes", next_retry), next_retry
    _keep_screenshots(tmp_path)


def _keep_screenshots(tmp_path: Path) -> None:
    """Copy the screenshots to ``$ADMIN_SCREENSHOTS_DIR`` when set, to look at them."""
    if target := os.environ.get("ADMIN_SCREENSHOTS_DIR"):
        Path(target).mkdir(parents=True, exist_ok=True)
        for png in tmp_path.glob("*.png"):
            (Path(target) / png.name).write_bytes(png.read_bytes())
