"""Issue 8's "done when", end to end with real processes: probe before flooding.

A worker with Beat (``celery -A project worker -B``) runs the sweep every second against the test database and
a real Redis; the fake WhatsApp gateway runs in its own process and is switched down and up with
``POST /control``. Attempts are counted from the gateway's ``GET /attempts`` (deliveries are deduplicated by
the idempotency key and would hide a double send).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import requests
from django.test import Client

from queueing.models import FailedJob, FailureGroup
from tests.conftest import ROOT, free_port, stop, wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow, pytest.mark.timeout(300)]

TOKEN = "breaker-token"
MESSAGES = 200
CANARIES = 2
#: Short test delays: a failing group waits 1 s, then 2 s (the cap) between probes; one sweep a second.
SETTINGS = {
    "RETRY_DELAY": "1",
    "CHECK_INTERVAL": "1",
    "MAX_RETRIES": "3",
    "LEASE_SECONDS": "60",
    "BREAKER_CANARIES": str(CANARIES),
    "BREAKER_MAX_DELAY": "2",
    "BREAKER_FIRST_WAVE": "20",
}

Status = FailedJob.Status


class Gateway:
    def __init__(self, env: dict[str, str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = [sys.executable, "manage.py", "fake_whatsapp_gateway", "--port", str(self.port)]
        self.process = subprocess.Popen(command, env=env, cwd=ROOT)
        wait_for(self.healthy, timeout=30, what="the gateway to answer")

    def healthy(self) -> bool:
        try:
            return requests.get(self.url + "/health", timeout=1).ok
        except requests.RequestException:
            return False

    def control(self, **settings: Any) -> None:
        requests.post(self.url + "/control", json=settings, timeout=5).raise_for_status()

    def attempts(self) -> list[dict[str, Any]]:
        return requests.get(self.url + "/attempts", timeout=10).json()


@pytest.fixture
def env(subprocess_env: dict[str, str]) -> dict[str, str]:
    return {**subprocess_env, **{f"QUEUEING_{key}": value for key, value in SETTINGS.items()}}


@pytest.fixture
def gateway(env: dict[str, str]) -> Iterator[Gateway]:
    gw = Gateway(env)
    yield gw
    stop(gw.process)


@pytest.fixture
def worker(env: dict[str, str], gateway: Gateway, tmp_path: Path) -> Iterator[Path]:
    log = tmp_path / "worker.log"
    worker_env = {**env, "WHATSAPP_GATEWAY_URL": gateway.url, "WHATSAPP_GATEWAY_TIMEOUT_SECONDS": "2"}
    command = [sys.executable, "-m", "celery", "-A", "project", "worker", "-B", "-l", "info", "-c", "2"]
    command += ["-n", f"breaker-{os.getpid()}@%h", "--without-gossip", "--without-mingle"]
    with log.open("w") as out:
        process = subprocess.Popen(command, env=worker_env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        wait_for(lambda: "auto-retry started" in log.read_text(), timeout=60, what="the worker to start")
        yield log
    finally:
        stop(process)


def rounds(attempts: list[dict[str, Any]], *, gap_seconds: float = 0.5) -> list[int]:
    """The attempts in bursts (one burst per sweep round): how many each burst had."""
    times = sorted(datetime.fromisoformat(a["at"]).timestamp() for a in attempts)
    bursts: list[int] = []
    last = None
    for at in times:
        if last is None or at - last > gap_seconds:
            bursts.append(0)
        bursts[-1] += 1
        last = at
    return bursts


def test_a_long_outage_is_probed_by_a_few_canaries_and_every_message_goes_out_once_when_it_ends(
    gateway: Gateway, worker: Path, configure: Any
) -> None:
    configure(API_TOKEN=TOKEN)
    client = Client(headers={"Authorization": f"Bearer {TOKEN}"})

    # Given the gateway down (503) and 200 messages sent, each failing its attempts and recorded as failed
    gateway.control(mode="down")
    for n in range(MESSAGES):
        body = {"sessionId": "default", "to": f"+1555{n:07d}", "message": f"hello {n}"}
        response = client.post("/api/send-message", json.dumps(body), content_type="application/json")
        assert response.status_code == 202, response.content
    wait_for(lambda: FailedJob.objects.count() == MESSAGES, timeout=120, what="200 failed jobs recorded")
    wait_for(
        lambda: not FailedJob.objects.filter(attempts__lt=4).exists(),
        timeout=60,
        what="every original call's 4 attempts",
    )
    originals = len(gateway.attempts())
    group = FailureGroup.objects.get()
    probes_before = group.probes

    # When the outage lasts longer than three automatic rounds (four more probes fail)
    wait_for(
        lambda: (
            FailureGroup.objects.get().probes >= probes_before + 4
            and FailureGroup.objects.get().state == FailureGroup.State.OPEN
        ),
        timeout=60,
        what="four more failed probes",
    )
    outage = gateway.attempts()[originals:]
    group = FailureGroup.objects.get()

    # Then no job is dead, only canaries spent automatic retries, and each round tried only the canaries
    assert not FailedJob.objects.filter(status=Status.DEAD).exists()
    spent = FailedJob.objects.filter(retry_count__gt=0)
    assert spent.count() <= CANARIES * group.probes
    assert FailedJob.objects.filter(retry_count__gt=1).count() == 0  # the canaries take turns
    assert all(a["status"] == 503 for a in outage)
    bursts = rounds(outage)
    assert bursts and max(bursts) <= CANARIES, bursts
    assert len(outage) <= CANARIES * group.probes

    # When the gateway comes back
    gateway.control(mode="ok")
    back_at = time.monotonic()

    # Then within a few rounds every message is delivered, exactly once (one successful attempt each)
    wait_for(
        lambda: FailedJob.objects.filter(status=Status.RESOLVED).count() == MESSAGES,
        timeout=60,
        interval=0.2,
        what="every job resolved",
    )
    recovery_seconds = time.monotonic() - back_at
    # A probe (at most 2 s away), then waves of 20, 100 and the rest one sweep (1 s) apart; the worker (two
    # processes) runs the 200 calls in a few seconds more (measured: 9 s on an idle machine).
    assert recovery_seconds < 30, recovery_seconds
    attempts = gateway.attempts()
    delivered = Counter(a["idempotencyKey"] for a in attempts if a["status"] == 200)
    assert len(delivered) == MESSAGES and set(delivered.values()) == {1}
    assert not any(a["replayed"] for a in attempts)
    assert not FailedJob.objects.filter(status=Status.DEAD).exists()
    group = FailureGroup.objects.get()
    assert group.state == FailureGroup.State.CLOSED and group.wave <= 4
    print(f"outage bursts {bursts}; recovered {MESSAGES} messages in {recovery_seconds:.1f} s")
