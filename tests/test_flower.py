"""Flower against the project (``celery -A project flower``), always behind authentication, showing our tasks."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import requests

from tests import tasks
from tests.conftest import ROOT, wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

CREDENTIALS = ("flower-user", "flower-pass-0123")

#: How docs/api.md tells operators to start Flower: the shell refuses without FLOWER_BASIC_AUTH, and Flower
#: reads the variable itself (so the password is not on the command line, where ps would show it).
DOCUMENTED_COMMAND = ': "${FLOWER_BASIC_AUTH:?set FLOWER_BASIC_AUTH=user:password}"; celery -A project flower'


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def shell_env(subprocess_env: dict[str, str]) -> dict[str, str]:
    """The test environment, without any FLOWER_* of the caller, with the virtualenv's ``celery`` on PATH."""
    env = {k: v for k, v in subprocess_env.items() if not k.startswith("FLOWER_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


@pytest.fixture
def start_flower(subprocess_env: dict[str, str], broker: redis.Redis) -> Iterator[Callable[..., str]]:
    """``start_flower(extra_env, *args)``: the documented command on a free port; returns Flower's URL."""
    started: list[subprocess.Popen[str]] = []

    def start(extra_env: dict[str, str], *args: str) -> str:
        port = free_port()
        env = shell_env(subprocess_env) | extra_env
        process = subprocess.Popen(
            ["bash", "-c", f"{DOCUMENTED_COMMAND} --port={port} --address=127.0.0.1 {' '.join(args)}"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        started.append(process)
        url = f"http://127.0.0.1:{port}"

        def answers() -> bool:
            assert process.poll() is None, process.stdout.read() if process.stdout else ""
            try:
                return requests.get(url + "/healthcheck", timeout=2).status_code in (200, 401)
            except requests.ConnectionError:
                return False

        wait_for(answers, timeout=60, interval=0.2, what="Flower to answer")
        return url

    yield start
    for process in started:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)


def test_the_documented_command_refuses_to_start_without_credentials(subprocess_env: dict[str, str]) -> None:
    done = subprocess.run(
        ["bash", "-c", DOCUMENTED_COMMAND],
        cwd=ROOT,
        env=shell_env(subprocess_env),
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert done.returncode != 0
    assert "set FLOWER_BASIC_AUTH=user:password" in done.stderr


def test_flower_asks_for_credentials_and_answers_its_api_with_them(start_flower: Callable[..., str]) -> None:
    # Given Flower started as documented, its credentials in FLOWER_BASIC_AUTH (read by Flower itself)
    url = start_flower({"FLOWER_BASIC_AUTH": ":".join(CREDENTIALS)})

    # Then its pages and API refuse requests without them, or with wrong ones, and answer with them
    assert requests.get(url + "/api/workers", timeout=10).status_code == 401
    assert requests.get(url + "/", timeout=10).status_code == 401
    assert requests.get(url + "/api/workers", auth=("flower-user", "wrong"), timeout=10).status_code == 401
    response = requests.get(url + "/api/workers", auth=CREDENTIALS, timeout=10)
    assert response.status_code == 200
    assert isinstance(response.json(), dict)


def test_flower_lists_the_tasks_a_worker_runs(
    start_flower: Callable[..., str], celery_worker: Any, broker: redis.Redis
) -> None:
    url = start_flower({"FLOWER_BASIC_AUTH": ":".join(CREDENTIALS)})
    sent: list[str] = []

    # When tasks run on a worker (which sends task events: CELERY_WORKER_SEND_TASK_EVENTS)
    def listed() -> Any:
        # Flower sees events from the moment its receiver is connected: keep sending until one shows up
        sent.append(tasks.succeed.delay("flower").id)
        shown = requests.get(url + "/api/tasks", auth=CREDENTIALS, timeout=10).json()
        return next((shown[task_id] for task_id in sent if task_id in shown), None)

    # Then Flower lists them, with the worker's verdict
    task = wait_for(listed, timeout=60, interval=0.5, what="Flower to list a task")
    assert task["name"] == "tests.tasks.succeed"
    wait_for(
        lambda: (
            requests.get(url + f"/api/task/info/{task['uuid']}", auth=CREDENTIALS, timeout=10).json()["state"]
            == "SUCCESS"
        ),
        what="Flower to see the task succeed",
    )
