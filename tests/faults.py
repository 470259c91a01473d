"""The fault suite's harness: a Redis and a database of the test's own, real workers, and the invariants.

Nothing here stops the shared services: each scenario gets

- a private ``redis-server`` on a spare port, without persistence, that it may kill and start again;
- a private database: on the PostgreSQL run, a PostgreSQL cluster of its own (``initdb``/``pg_ctl`` from
  ``/usr/lib/postgresql/*/bin``, run as the ``postgres`` user when the tests run as root), one database per
  scenario copied from a migrated template; on the SQLite run, a copy of a migrated SQLite file, "taken
  down" by moving the file away and putting a directory in its place (a new connection then fails at
  once, as a refused PostgreSQL connection does);
- real workers (``celery worker`` subprocesses in their own session, so a whole node can be killed).

The rows are read with a plain DB-API connection, not the test's Django database.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.conftest import FAST, ROOT, free_port, wait_for

#: The fault tasks write a line per event to ``<FAULTS_LEDGER>/<key>``: works while Redis is down.
LEDGER_ENV = "FAULTS_LEDGER"


# --- Redis ---------------------------------------------------------------------------------------------------


class PrivateRedis:
    """A ``redis-server`` of the test's own (no RDB, no AOF: a restart loses everything, as without persistence)."""

    def __init__(self, directory: Path) -> None:
        self.directory, self.port = directory, free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> PrivateRedis:
        if shutil.which("redis-server") is None:
            pytest.skip("no redis-server on the PATH: the fault scenarios start a Redis of their own")
        self.directory.mkdir(parents=True, exist_ok=True)
        command = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self.process = subprocess.Popen(
            [*command, "--dir", str(self.directory)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_for(self.answers, timeout=10, what="the private Redis to answer")
        return self

    def kill(self) -> None:
        """Stop it the hard way (SIGKILL): what it held in memory is gone."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        assert not self.answers()

    def answers(self) -> bool:
        try:
            return bool(self.client().ping())
        except redis.RedisError:
            return False

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, socket_timeout=1, socket_connect_timeout=1)


# --- the database --------------------------------------------------------------------------------------------


def _as_postgres(command: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


def _pg_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not found:
        pytest.skip(f"no {name} in /usr/lib/postgresql/*/bin: the PostgreSQL fault scenarios need a local server")
    return found[-1]


class PrivatePostgres:
    """A PostgreSQL cluster of the test session's own, on a spare port; stopped and started by scenarios."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="faults-pg-"))
        self.data, self.port = self.root / "data", free_port()
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
        subprocess.run(
            _as_postgres([_pg_bin("initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync"]),
            check=True,
            capture_output=True,
        )

    def url(self, name: str) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{name}"

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off"
        command = [_pg_bin("pg_ctl"), "-D", str(self.data), "-o", options, "-l", str(self.root / "log"), "-w"]
        subprocess.run(_as_postgres([*command, "start"]), check=True, capture_output=True)

    def stop(self) -> None:
        """``pg_ctl stop -m fast``: open connections are cut, new ones refused."""
        command = [_pg_bin("pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop"]
        subprocess.run(_as_postgres(command), check=True, capture_output=True)

    def create(self, name: str, *, template: str = "template1") -> None:
        command = [_pg_bin("createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-T", template]
        subprocess.run([*command, name], check=True, capture_output=True)

    def destroy(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


@dataclass
class Database:
    """One scenario's database: its URL, a way to take it down and bring it back, and its rows."""

    kind: str  # "sqlite" or "postgres"
    url: str
    path: Path | None = None  # SQLite
    server: PrivatePostgres | None = None  # PostgreSQL
    down_since: float | None = field(default=None)

    def down(self) -> None:
        if self.server is not None:
            self.server.stop()
        else:
            assert self.path is not None
            self.path.rename(self.path.with_suffix(".away"))
            self.path.mkdir()  # a new connection now fails: "unable to open database file"
        self.down_since = time.monotonic()

    def up(self) -> None:
        if self.server is not None:
            self.server.start()
        else:
            assert self.path is not None
            self.path.rmdir()
            self.path.with_suffix(".away").rename(self.path)
        self.down_since = None

    def query(self, sql: str, *params: Any) -> list[dict[str, Any]]:
        if self.kind == "sqlite":
            assert self.path is not None
            with sqlite3.connect(self.path) as conn:
                conn.row_factory = sqlite3.Row
                return [dict(row) for row in conn.execute(sql, params)]
        import psycopg
        from psycopg.rows import dict_row

        with psycopg.connect(self.url, row_factory=dict_row) as conn:
            return list(conn.execute(sql.replace("?", "%s"), params).fetchall())

    def jobs(self) -> list[dict[str, Any]]:
        return self.query("select * from queueing_failedjob order by id")

    def execute_python(self, env: dict[str, str], code: str, *, timeout: float = 60) -> str:
        """Run ``code`` in ``manage.py shell`` against this database (the sweep, an operator's verb …)."""
        done = subprocess.run(
            [sys.executable, "manage.py", "shell", "-c", code],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout


def _migrate(url: str) -> None:
    env = {**os.environ, "DATABASE_URL": url, "DJANGO_SETTINGS_MODULE": "project.settings"}
    subprocess.run([sys.executable, "manage.py", "migrate", "-v", "0"], env=env, cwd=ROOT, check=True)


@pytest.fixture(scope="session")
def database_template() -> Iterator[tuple[str, Any]]:
    """A migrated database to copy per scenario, of the kind this run tests (``DATABASE_URL``)."""
    if os.environ.get("DATABASE_URL", "sqlite").startswith("postgres"):
        server = PrivatePostgres()
        server.start()
        server.create("template_faults")
        _migrate(server.url("template_faults"))
        try:
            yield "postgres", server
        finally:
            server.destroy()
        return
    directory = Path(tempfile.mkdtemp(prefix="faults-sqlite-"))
    template = directory / "template.sqlite3"
    _migrate(f"sqlite:///{template}")
    try:
        yield "sqlite", template
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def database(database_template: tuple[str, Any], tmp_path: Path) -> Iterator[Database]:
    kind, source = database_template
    if kind == "sqlite":
        path = tmp_path / "db.sqlite3"
        shutil.copy(source, path)
        yield Database(kind, f"sqlite:///{path}", path=path)
        return
    server: PrivatePostgres = source
    name = f"faults_{uuid.uuid4().hex[:12]}"
    server.create(name, template="template_faults")
    database = Database(kind, server.url(name), server=server)
    yield database
    if database.down_since is not None:
        server.start()  # the next scenario needs the server


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path / "redis").start()
    yield server
    server.kill() if server.answers() else None


# --- the processes -------------------------------------------------------------------------------------------


@pytest.fixture
def fault_env(database: Database, private_redis: PrivateRedis, tmp_path: Path) -> dict[str, str]:
    """The environment of a scenario's processes: its own database, broker, spool and ledger; fast settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("QUEUEING_", "CELERY_"))}
    env.update({f"QUEUEING_{k}": str(v) for k, v in FAST.items()})
    (tmp_path / "ledger").mkdir()
    env.update(
        {
            "DATABASE_URL": database.url,
            "REDIS_URL": private_redis.url,
            "DJANGO_SETTINGS_MODULE": "tests.fault_settings",
            "PYTHONUNBUFFERED": "1",
            "QUEUEING_VAR_DIR": str(tmp_path / "var"),
            "QUEUEING_SPOOL_DIR": str(tmp_path / "spool"),
            "QUEUEING_SPOOL_REPLAY_INTERVAL_SECONDS": "0.5",
            LEDGER_ENV: str(tmp_path / "ledger"),
        }
    )
    return env


class Worker:
    """A ``celery worker`` in a session of its own: SIGTERM (warm shutdown) or SIGKILL to the whole node."""

    def __init__(
        self,
        env: dict[str, str],
        log: Path,
        *,
        concurrency: int = 1,
        extra: tuple[str, ...] = (),
        queues: str = "default",
    ) -> None:
        self.env, self.log, self.concurrency, self.extra, self.queues = env, log, concurrency, extra, queues
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Worker:
        command = [sys.executable, "-m", "celery", "-A", "project", "worker", "-P", "prefork", "-l", "info"]
        command += ["-c", str(self.concurrency), "--include", "tests.fault_tasks,tests.tasks", "-Q", self.queues]
        command += ["-n", f"faults-{uuid.uuid4().hex[:8]}@%h", "--without-gossip", "--without-mingle", *self.extra]
        with self.log.open("a") as out:
            self.process = subprocess.Popen(
                command, env=self.env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True
            )
        wait_for(lambda: "auto-retry started" in self.log.read_text(), timeout=60, what="the worker to start")
        return self

    def terminate(self, *, timeout: float = 60) -> None:
        """Warm shutdown: the main process stops taking work and waits for the running tasks."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=timeout)

    def children(self) -> list[int]:
        """The pool's child processes (the ones that run the calls)."""
        assert self.process is not None
        found = subprocess.run(["pgrep", "-P", str(self.process.pid)], capture_output=True, text=True).stdout
        return [int(pid) for pid in found.split()]

    def kill_node(self) -> None:
        """The whole node dies at once: SIGKILL to the main process and every child."""
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        try:
            self.terminate(timeout=20)
        except subprocess.TimeoutExpired:
            self.kill_node()


@pytest.fixture
def workers(fault_env: dict[str, str], tmp_path: Path) -> Iterator[Any]:
    """``workers(concurrency=2, extra=(...))`` starts one more worker; all are stopped at the end."""
    started: list[Worker] = []

    def start(
        *,
        concurrency: int = 1,
        extra: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
        queues: str = "default",
    ) -> Worker:
        log = tmp_path / f"worker-{len(started)}.log"
        worker = Worker(env or fault_env, log, concurrency=concurrency, extra=extra, queues=queues)
        started.append(worker)
        return worker.start()

    yield start
    for worker in started:
        worker.stop()


# --- sending and the ledger ----------------------------------------------------------------------------------


def send(env: dict[str, str], task: str, *args: Any, task_id: str | None = None, queue: str = "default") -> str:
    """Publish one call to the scenario's broker, as a producer of the project would (no worker involved)."""
    from celery import Celery

    app = Celery(broker=env["REDIS_URL"], set_as_current=False)
    app.conf.task_default_queue = "default"
    task_id = task_id or str(uuid.uuid4())
    app.send_task(task, args=list(args), task_id=task_id, queue=queue)
    return task_id


def ledger(env: dict[str, str], key: str) -> list[str]:
    path = Path(env[LEDGER_ENV]) / key
    return path.read_text().split() if path.exists() else []


# --- the invariants ------------------------------------------------------------------------------------------


def check_invariants(
    database: Database,
    *,
    origins: list[str],
    max_retries: int = FAST["MAX_RETRIES"],
    gateway_attempts: list[dict[str, Any]] | None = None,
) -> dict[str, str]:
    """What every scenario must leave behind. Returns each logical job's outcome (``status`` or ``ok``).

    - every logical job is resolved (ran to success: no row, or a ``resolved`` row), ``dead``, or
      legitimately waiting (``failed``, or ``retrying`` within its lease);
    - at most one ``FailedJob`` per original call;
    - ``retry_count`` never above the limit;
    - no row ``retrying`` past its lease;
    - no second successful delivery at the gateway: per idempotency key, at most one attempt answered
      ``200`` that was not a replay (counted from the gateway's ``/attempts``, not its deliveries).
    """
    rows = database.jobs()
    per_origin: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        per_origin.setdefault(row["origin_task_id"], []).append(row)
    assert all(len(found) == 1 for found in per_origin.values()), f"two rows for one call: {per_origin}"
    now = datetime.now(tz=UTC)
    outcomes: dict[str, str] = {}
    for origin in origins:
        row = per_origin.get(origin, [None])[0]
        if row is None:
            outcomes[origin] = "ok"
            continue
        assert row["retry_count"] <= max_retries, row
        assert row["status"] in {"failed", "retrying", "resolved", "dead"}, row
        if row["status"] == "retrying":
            lease = row["lease_expires_at"]
            lease = datetime.fromisoformat(lease) if isinstance(lease, str) else lease
            lease = lease if lease.tzinfo else lease.replace(tzinfo=UTC)
            assert lease > now, f"job {row['id']} is retrying past its lease"
        outcomes[origin] = row["status"]
    for row in rows:
        assert row["retry_count"] <= max_retries, row
    if gateway_attempts is not None:
        delivered: dict[str, int] = {}
        for attempt in gateway_attempts:
            if attempt.get("status") == 200 and not attempt.get("replayed"):
                key = str(attempt.get("idempotencyKey"))
                delivered[key] = delivered.get(key, 0) + 1
        assert all(n == 1 for n in delivered.values()), f"a second successful delivery: {delivered}"
    return outcomes


def history(row: dict[str, Any]) -> list[dict[str, Any]]:
    value = row["history"]
    return json.loads(value) if isinstance(value, str) else list(value)
