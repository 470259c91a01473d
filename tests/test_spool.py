"""The spool: failures that neither the database nor the broker could take are kept on disk and replayed once."""

from __future__ import annotations

import dataclasses
import threading
import uuid
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from django.db import OperationalError
from django.utils import timezone
from kombu.exceptions import OperationalError as BrokerDown

from queueing import recording, spool, status, tasks
from queueing.models import FailedJob
from queueing.status import spooled

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def spool_in_tmp(tmp_path: Path, configure: Any) -> Path:
    configure(SPOOL_DIR=str(tmp_path / "spool"))
    return tmp_path / "spool"


def _failure(origin: str | None = None, **fields: Any) -> recording.Failure:
    origin = origin or uuid.uuid4().hex
    values: dict[str, Any] = {
        "task_name": "tests.tasks.always_fail",
        "task_id": origin,
        "origin_task_id": origin,
        "queue": "default",
        "args": ["k"],
        "kwargs": {},
        "exception_class": "tests.tasks.Boom",
        "exception_message": "gateway down",
        "traceback": "Traceback …",
        "attempts": 4,
        **fields,
    }
    return recording.Failure(**values)


def _spooled_files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.suffix == ".jsonl") if directory.exists() else []


def test_a_failure_neither_the_database_nor_the_broker_takes_is_spooled_on_disk(
    spool_in_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broker_down(*args: Any, **kwargs: Any) -> None:
        raise BrokerDown("Error 111 connecting to 127.0.0.1:6379. Connection refused.")

    monkeypatch.setattr(tasks.record_failed_job, "delay", broker_down)
    failure = _failure()

    # When the hand-over to the broker fails too
    tasks._record_later(failure, failed_at=timezone.now())

    # Then the failure is one line of this process's spool file
    [name] = _spooled_files(spool_in_tmp)
    assert name.startswith("failures-")
    assert spool.pending() == 1
    assert failure.origin_task_id in (spool_in_tmp / name).read_text()


def test_a_replay_writes_each_spooled_failure_once_and_empties_the_spool(spool_in_tmp: Path) -> None:
    failed_at = timezone.now() - timedelta(minutes=3)
    first, second = _failure(), _failure()
    spool.append(first, failed_at=failed_at)
    spool.append(second, failed_at=failed_at)

    result = spool.replay()

    assert (result.recorded, result.left, result.already_recorded) == (2, 0, 0)
    assert _spooled_files(spool_in_tmp) == []
    assert spool.pending() == 0
    job = FailedJob.objects.get(origin_task_id=first.origin_task_id)
    assert (job.status, job.attempts, job.args) == (FailedJob.Status.FAILED, 4, ["k"])
    assert job.first_failed_at == failed_at  # the time of the failure, not of the replay
    assert FailedJob.objects.count() == 2


def test_a_replay_that_crashed_after_its_commit_does_not_count_the_failure_twice(spool_in_tmp: Path) -> None:
    # Given a replay that wrote the failure, then died before it removed it from the spool
    failure = _failure()
    path = spool.append(failure, failed_at=timezone.now())
    copy = path.read_bytes()
    spool.replay()
    (spool_in_tmp / "replaying-crashed.jsonl").write_bytes(copy)

    # When the next replay runs
    result = spool.replay()

    # Then it finds the failure already written and leaves the row as it was
    assert (result.recorded, result.already_recorded) == (0, 1)
    job = FailedJob.objects.get(origin_task_id=failure.origin_task_id)
    assert job.attempts == 4
    assert [e["event"] for e in job.history] == ["failed"]
    assert _spooled_files(spool_in_tmp) == []


def test_a_failure_handed_to_the_broker_and_spooled_both_is_written_once(spool_in_tmp: Path) -> None:
    # A publish that raised although the message went out, then the spool: two copies of one failure
    failure, failed_at = _failure(), timezone.now()
    spool.append(failure, failed_at=failed_at)
    tasks.record_failed_job.run(dataclasses.asdict(failure), failed_at=failed_at.isoformat())

    assert spool.replay().already_recorded == 1
    assert FailedJob.objects.get(origin_task_id=failure.origin_task_id).attempts == 4


def test_what_cannot_be_written_yet_stays_spooled_until_the_database_is_back(
    spool_in_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    failure = _failure()
    spool.append(failure, failed_at=timezone.now())

    def database_down(*args: Any, **kwargs: Any) -> bool:
        raise OperationalError("could not connect to server: Connection refused")

    # Given the database and the broker are still down
    monkeypatch.setattr(spool, "record_once", database_down)
    monkeypatch.setattr(spool, "_hand_to_broker", lambda entry: False)
    result = spool.replay()
    assert (result.recorded, result.left) == (0, 1)
    assert spool.pending() == 1
    assert FailedJob.objects.count() == 0

    # When the database is back
    monkeypatch.undo()
    result = spool.replay()

    # Then the failure is written, once
    assert (result.recorded, result.left) == (1, 0)
    assert FailedJob.objects.filter(origin_task_id=failure.origin_task_id).count() == 1
    assert spool.pending() == 0


def test_when_only_the_broker_is_back_the_spool_hands_its_failures_to_it(
    spool_in_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent: list[tuple[dict[str, Any], str]] = []

    def database_down(*args: Any, **kwargs: Any) -> bool:
        raise OperationalError("could not connect to server: Connection refused")

    monkeypatch.setattr(spool, "record_once", database_down)
    monkeypatch.setattr(tasks.record_failed_job, "delay", lambda failure, failed_at: sent.append((failure, failed_at)))
    failed_at = timezone.now()
    spool.append(_failure(), failed_at=failed_at)

    result = spool.replay()

    assert (result.handed_to_broker, result.left) == (1, 0)
    assert [stamp for _, stamp in sent] == [failed_at.isoformat()]
    assert spool.pending() == 0


def test_a_line_that_is_not_json_is_kept_aside_for_a_person(spool_in_tmp: Path) -> None:
    spool.append(_failure(), failed_at=timezone.now())
    with next(spool_in_tmp.glob("failures-*")).open("a") as out:
        out.write('{"id": "torn", "failed_at": "2026-')  # a writer killed mid-line

    result = spool.replay()

    assert (result.recorded, result.corrupt) == (1, 1)
    assert [p.name.split("-")[0] for p in spool_in_tmp.glob("*.jsonl")] == ["corrupt"]
    assert spool.pending() == 0  # a corrupt file is not pending: no replay can write it


def test_writers_appending_while_a_replay_runs_lose_nothing(spool_in_tmp: Path) -> None:
    # Given four writers appending 25 failures each, while replays take the files away under them
    origins = [[uuid.uuid4().hex for _ in range(25)] for _ in range(4)]
    failed_at = timezone.now()

    def write(batch: list[str]) -> None:
        for origin in batch:
            spool.append(_failure(origin), failed_at=failed_at)

    writers = [threading.Thread(target=write, args=(batch,)) for batch in origins]
    for writer in writers:
        writer.start()
    while any(w.is_alive() for w in writers):
        spool.replay()
    spool.replay()

    # Then every failure is written, once
    assert FailedJob.objects.count() == 100
    assert spool.pending() == 0


def test_a_second_replay_on_the_same_host_waits_its_turn(spool_in_tmp: Path) -> None:
    spool.append(_failure(), failed_at=timezone.now())
    with spool._replay_lock(spool_in_tmp) as held:
        assert held
        assert spool.replay().skipped
    assert spool.replay().recorded == 1


def test_the_spooled_figure_names_this_host(spool_in_tmp: Path) -> None:
    spool.append(_failure(), failed_at=datetime.now(tz=timezone.get_current_timezone()))
    assert status.spooled_figures(_NoBroker())[spool.host()] == 1
    assert status.spooled_figures(None) == {spool.host(): 1}


class _NoBroker:
    def scan_iter(self, **_: Any) -> Any:
        raise BrokerDown("down")


def test_check_queue_and_the_status_api_show_the_spooled_failures_per_host(spool_in_tmp: Path, broker: Any) -> None:
    from io import StringIO

    from django.core.management import call_command

    from queueing import status

    spool.append(_failure(), failed_at=timezone.now())
    broker.set(f"{spooled.KEY_PREFIX}worker-7", 2)

    report = status.queue_status(wait_for_workers=False)
    assert report.spooled == {spool.host(): 1, "worker-7": 2}
    assert report.to_schema().model_dump()["spooled"] == {spool.host(): 1, "worker-7": 2}
    out = StringIO()
    call_command("check_queue", stdout=out)
    assert f"Spooled on {spool.host()}: 1" in out.getvalue()
    assert "Spooled on worker-7: 2" in out.getvalue()


def test_a_worker_publishes_its_spooled_figure_for_the_status(spool_in_tmp: Path, broker: Any) -> None:
    spool.append(_failure(), failed_at=timezone.now())
    status.publish_spooled_figure()
    assert int(broker.get(f"{spooled.KEY_PREFIX}{spool.host()}")) == 1
    assert 0 < broker.ttl(f"{spooled.KEY_PREFIX}{spool.host()}") <= 90


def test_replay_spool_writes_the_spooled_failures_now(spool_in_tmp: Path) -> None:
    from io import StringIO

    from django.core.management import call_command

    spool.append(_failure(), failed_at=timezone.now())
    out = StringIO()
    call_command("replay_spool", "--dry-run", stdout=out)
    assert "1 spooled failure(s); dry run, none written" in out.getvalue()
    call_command("replay_spool", stdout=out)
    assert "1 written, 0 handed to the broker" in out.getvalue()
    assert FailedJob.objects.count() == 1
