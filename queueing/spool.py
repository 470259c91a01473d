"""The last resort: failures that could be written neither to the database nor to the broker.

``RetryableTask.on_failure`` writes a final failure to the database; when the database is down it hands the
failure to the broker (``record_failed_job``); when the broker is down too, it appends it here, to a local
file, and fsyncs before it returns. ``replay()`` writes the spooled failures once either is back: at worker
start and every ``SPOOL_REPLAY_INTERVAL_SECONDS`` in each worker, at each sweep, and by hand
(``manage.py replay_spool``). How many wait is the status's ``spooled`` figure (``queueing/status/spooled.py``).

Layout (``SPOOL_DIR``, default ``<QUEUEING_VAR_DIR>/spool``), one directory per host:

- ``failures-<host>-<pid>.jsonl``: appended by one process, one JSON line per failure, each line fsynced.
  A writer holds ``flock`` on the file while it appends and checks, under the lock, that the file it holds
  is still the one at that path (a replay may have renamed it away); if not, it appends to a fresh file.
- ``replaying-<uuid>.jsonl``: a file a replay took (an atomic ``rename``), then compacted in place (write
  the entries still left to a temporary file, fsync, ``rename`` over it) and deleted once empty. A replay
  that crashes leaves it for the next one, which takes ``replaying-*`` files first.
- ``.replay.lock``: one replay at a time on a host (``flock``, released by the kernel if the replay dies).
- ``corrupt-<uuid>.jsonl``: lines that are not JSON (a writer killed mid-line), kept for a person.

Exactly once per original call: each entry carries the time of the failure (``failed_at``) and is written
with it; before writing, the replay looks for that very failure (task id and time) in the row's history
and skips it when it is already there, so a replay that crashed between the commit and the compaction
does not count the failure twice. A clone's failure is fenced by its claim token as always. An entry handed
to the broker instead carries ``failed_at`` too, and ``record_failed_job`` performs the same check.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import logging
import os
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from django.conf import settings
from django.db import DatabaseError, transaction
from django.utils import timezone
from kombu.exceptions import OperationalError
from redis.exceptions import RedisError

from queueing import recording, workflow
from queueing.conf import get_settings
from queueing.models import FailedJob
from queueing.recording import Failure
from queueing.registry import celery_app

logger = logging.getLogger(__name__)

WRITER_PREFIX = "failures-"
REPLAYING_PREFIX = "replaying-"
CORRUPT_PREFIX = "corrupt-"
SUFFIX = ".jsonl"
LOCK_NAME = ".replay.lock"

#: The task that writes a failure handed to the broker (``queueing/tasks.py``).
RECORD_FAILED_JOB = "queueing.record_failed_job"

#: What a publish or a Redis call raises when the broker cannot be reached.
BROKER_ERRORS: tuple[type[BaseException], ...] = (OperationalError, RedisError, OSError)


def spool_dir() -> Path:
    """Where this host's spool lives: ``SPOOL_DIR``, or ``<QUEUEING_VAR_DIR>/spool``."""
    configured = get_settings().spool_dir
    return Path(configured) if configured else Path(settings.VAR_DIR) / "spool"


def host() -> str:
    return socket.gethostname()


# --- writing ------------------------------------------------------------------------------------------------


def append(failure: Failure, *, failed_at: datetime | None = None) -> Path:
    """Append one failure to this process's spool file and fsync it. Returns the file.

    Raises ``OSError`` when the disk cannot take it (the caller logs the payload as a last trace).
    """
    entry = {
        "id": uuid.uuid4().hex,
        "failed_at": (failed_at or timezone.now()).isoformat(),
        "failure": dataclasses.asdict(failure),
    }
    line = (json.dumps(entry, ensure_ascii=False, default=str) + "\n").encode()
    directory = spool_dir()
    new_dir = not directory.exists()
    directory.mkdir(parents=True, exist_ok=True)
    if new_dir:
        _fsync_dir(directory.parent)
    path = directory / f"{WRITER_PREFIX}{host()}-{os.getpid()}{SUFFIX}"
    while True:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if not _same_file(fd, path):
                continue  # a replay renamed it away between our open and our lock: append to a fresh one
            created = os.fstat(fd).st_size == 0
            os.write(fd, line)
            os.fsync(fd)
            if created:
                _fsync_dir(directory)
            return path
        finally:
            os.close(fd)


def _same_file(fd: int, path: Path) -> bool:
    try:
        current = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (held.st_dev, held.st_ino) == (current.st_dev, current.st_ino)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --- reading ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    id: str
    failed_at: datetime
    failure: Failure

    @classmethod
    def parse(cls, line: str) -> Entry:
        data = json.loads(line)
        return cls(
            id=str(data["id"]),
            failed_at=datetime.fromisoformat(data["failed_at"]),
            failure=Failure(**data["failure"]),
        )


def _files(directory: Path) -> list[Path]:
    """Spool files to replay, those a crashed replay left first, oldest first."""
    if not directory.is_dir():
        return []
    prefixes = (WRITER_PREFIX, REPLAYING_PREFIX)
    found = [p for p in directory.iterdir() if p.suffix == SUFFIX and p.name.startswith(prefixes)]
    return sorted(found, key=lambda p: (not p.name.startswith(REPLAYING_PREFIX), p.stat().st_mtime, p.name))


def pending() -> int:
    """How many failures wait in this host's spool (lines in its files)."""
    count = 0
    for path in _files(spool_dir()):
        try:
            count += sum(1 for line in path.read_bytes().splitlines() if line.strip())
        except FileNotFoundError:
            continue  # replayed away while we counted
    return count


# --- replaying ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReplayResult:
    recorded: int = 0
    handed_to_broker: int = 0
    already_recorded: int = 0
    left: int = 0
    corrupt: int = 0
    skipped: bool = False  # another replay on this host holds the lock


@contextmanager
def _replay_lock(directory: Path) -> Iterator[bool]:
    fd = os.open(directory / LOCK_NAME, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


def replay(*, use_broker: bool = True) -> ReplayResult:
    """Write every spooled failure to the database, or hand it to the broker; keep what neither takes.

    Safe to call from several processes (one replays, the others return ``skipped``) and to interrupt at any
    point (see the module docstring). Never raises for an outage: what cannot be written stays spooled.
    """
    directory = spool_dir()
    if not _files(directory):
        return ReplayResult()
    totals: dict[str, int] = dict.fromkeys(("recorded", "handed_to_broker", "already_recorded", "left", "corrupt"), 0)
    with _replay_lock(directory) as held:
        if not held:
            return ReplayResult(skipped=True)
        for path in _files(directory):
            if path.name.startswith(WRITER_PREFIX):
                path = _take(path, directory)
            for key, value in _replay_file(path, directory, use_broker=use_broker).items():
                totals[key] += value
    result = ReplayResult(
        recorded=totals["recorded"],
        handed_to_broker=totals["handed_to_broker"],
        already_recorded=totals["already_recorded"],
        left=totals["left"],
        corrupt=totals["corrupt"],
    )
    if result.recorded or result.handed_to_broker or result.left or result.corrupt:
        logger.warning(
            "spool %s: %s recorded, %s handed to the broker, %s already recorded, %s still spooled, %s corrupt",
            directory,
            result.recorded,
            result.handed_to_broker,
            result.already_recorded,
            result.left,
            result.corrupt,
        )
    return result


def _take(path: Path, directory: Path) -> Path:
    """Rename a writer's file to a replay file, then wait for a writer that still appends to it to finish."""
    taken = directory / f"{REPLAYING_PREFIX}{uuid.uuid4().hex}{SUFFIX}"
    os.rename(path, taken)
    _fsync_dir(directory)
    fd = os.open(taken, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # a writer holding the lock finishes its line (and its fsync) first
    finally:
        os.close(fd)
    return taken


def _replay_file(path: Path, directory: Path, *, use_broker: bool) -> dict[str, int]:
    counts = dict.fromkeys(("recorded", "handed_to_broker", "already_recorded", "left", "corrupt"), 0)
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    left: list[str] = []
    corrupt: list[str] = []
    database_up, broker_up = True, use_broker
    for line in lines:
        try:
            entry = Entry.parse(line)
        except (ValueError, KeyError, TypeError):
            corrupt.append(line)
            continue
        if database_up:
            try:
                outcome = record_once(entry.failure, failed_at=entry.failed_at)
                counts["recorded" if outcome else "already_recorded"] += 1
                continue
            except DatabaseError as exc:
                logger.error("spool: database still unreachable (%r)", exc)
                database_up = False
        if broker_up and _hand_to_broker(entry):
            counts["handed_to_broker"] += 1
            continue
        broker_up = False
        left.append(line)
    if corrupt:
        _write_atomically(directory / f"{CORRUPT_PREFIX}{uuid.uuid4().hex}{SUFFIX}", corrupt, directory)
        counts["corrupt"] = len(corrupt)
        logger.error("spool: %s line(s) of %s are not JSON; kept in %s for a person", len(corrupt), path, directory)
    if left:
        _write_atomically(path, left, directory)
    else:
        path.unlink()
        _fsync_dir(directory)
    counts["left"] = len(left)
    return counts


def _hand_to_broker(entry: Entry) -> bool:
    record_failed_job = celery_app().tasks[RECORD_FAILED_JOB]
    try:
        record_failed_job.delay(dataclasses.asdict(entry.failure), failed_at=entry.failed_at.isoformat())
    except BROKER_ERRORS as exc:
        logger.error("spool: broker still unreachable (%r)", exc)
        return False
    return True


def _write_atomically(path: Path, lines: list[str], directory: Path) -> None:
    temporary = directory / f".tmp-{uuid.uuid4().hex}"
    with temporary.open("w") as out:
        out.write("".join(line + "\n" for line in lines))
        out.flush()
        os.fsync(out.fileno())
    os.replace(temporary, path)
    _fsync_dir(directory)


def record_once(failure: Failure, *, failed_at: datetime) -> bool:
    """Write a failure that happened at ``failed_at``, unless that very failure is already written.

    ``False``: it was (a replay that crashed after its commit, or the same entry handed over twice).
    """
    stamp = failed_at.isoformat()
    with transaction.atomic():
        job = FailedJob.objects.select_for_update().filter(origin_task_id=failure.origin_task_id).first()
        if job is not None and any(
            event.get("event") == "failed" and event.get("task_id") == failure.task_id and event.get("at") == stamp
            for event in job.history
        ):
            return False
        job = recording.record_failure(failure, now=failed_at)
    if failure.pending and recording.given_up_now(job):
        assert job is not None
        workflow.fail_workflow(job)  # the failing call left its workflow pending (``RetryableTask.__call__``)
    return True
