"""The seed's scenario, end to end, with real processes only.

`celery -A project worker -B` (worker, Beat and the sweep in one command) runs against the test database and
a real Redis; the fake WhatsApp gateway is a real HTTP server in its own process, killed and started again.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from django.test import Client

from queueing.models import FailedJob
from tests.conftest import ROOT, free_port, stop, wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow, pytest.mark.timeout(240)]

TOKEN = "scenario-token"


class Gateway:
    """The fake gateway as a separate process that can crash (SIGKILL) and come back on the same port."""

    def __init__(self, env: dict[str, str], store: Path) -> None:
        self.env, self.store, self.port = env, store, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[Any] | None = None

    def start(self) -> None:
        command = [sys.executable, "manage.py", "fake_whatsapp_gateway", "--port", str(self.port)]
        self.process = subprocess.Popen([*command, "--store", str(self.store)], env=self.env, cwd=ROOT)
        wait_for(self.healthy, timeout=30, what="the gateway to answer")

    def crash(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait(timeout=10)
        assert not self.healthy()

    def healthy(self) -> bool:
        try:
            return requests.get(self.url + "/health", timeout=1).ok
        except requests.RequestException:
            return False

    def messages(self) -> list[dict[str, Any]]:
        return requests.get(self.url + "/messages", timeout=5).json()


@pytest.fixture
def scenario_env(subprocess_env: dict[str, str], tmp_path: Path) -> dict[str, str]:
    env = dict(subprocess_env)
    env.update({"QUEUEING_RETRY_DELAY": "1", "QUEUEING_MAX_RETRIES": "50", "QUEUEING_CHECK_INTERVAL": "1"})
    return env


@pytest.fixture
def gateway(scenario_env: dict[str, str], tmp_path: Path) -> Iterator[Gateway]:
    gw = Gateway(scenario_env, tmp_path / "delivered.jsonl")
    yield gw
    if gw.process is not None:
        stop(gw.process)


@pytest.fixture
def worker_with_beat(scenario_env: dict[str, str], gateway: Gateway, tmp_path: Path) -> Iterator[Path]:
    log = tmp_path / "worker.log"
    env = {**scenario_env, "WHATSAPP_GATEWAY_URL": gateway.url, "WHATSAPP_GATEWAY_TIMEOUT_SECONDS": "2"}
    command = [sys.executable, "-m", "celery", "-A", "project", "worker", "-B", "-l", "info", "-c", "2"]
    command += ["-n", f"scenario-{os.getpid()}@%h", "--without-gossip", "--without-mingle"]
    with log.open("w") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        wait_for(lambda: "auto-retry started" in log.read_text(), timeout=60, what="the worker to start")
        yield log
    finally:
        stop(process)


def test_messages_sent_while_the_gateway_is_down_go_out_by_themselves_once_it_is_back(
    gateway: Gateway, worker_with_beat: Path, configure: Any
) -> None:
    configure(API_TOKEN=TOKEN)
    client = Client(headers={"Authorization": f"Bearer {TOKEN}"})

    # Given a gateway that crashed
    gateway.start()
    gateway.crash()

    # When three messages are sent through the API
    job_ids = []
    for n in range(3):
        body = {"sessionId": "default", "to": f"+1555000{n}", "message": f"hello {n}"}
        response = client.post("/api/send-message", json.dumps(body), content_type="application/json")
        assert response.status_code == 202, response.content
        job_ids.append(response.json()["jobId"])

    # Then each is recorded as a failed job, and the sweep keeps retrying it while the gateway is down
    wait_for(
        lambda: FailedJob.objects.filter(origin_task_id__in=job_ids, retry_count__gte=1).count() == 3,
        timeout=60,
        what="three failed jobs retried at least once by the sweep",
    )
    assert FailedJob.objects.count() == 3
    assert not FailedJob.objects.filter(status=FailedJob.Status.RESOLVED).exists()

    # When the gateway comes back, with nobody touching anything
    gateway.start()

    # Then every message is delivered, exactly once, and every job is resolved
    wait_for(
        lambda: FailedJob.objects.filter(origin_task_id__in=job_ids, status=FailedJob.Status.RESOLVED).count() == 3,
        timeout=60,
        what="all three jobs resolved",
    )
    delivered = gateway.messages()
    assert sorted(m["message"] for m in delivered) == ["hello 0", "hello 1", "hello 2"]
    assert sorted(m["idempotencyKey"] for m in delivered) == sorted(job_ids)
    assert len(gateway.store.read_text().splitlines()) == 3
    log = worker_with_beat.read_text()
    assert "auto-retry started" in log
    assert '"check_interval_seconds": 1' in log
