"""var/devstack.json (project/stackfile.py): commands without REDIS_URL find the stack bin/start runs, and say so."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from project import stackfile

ROOT = Path(__file__).resolve().parent.parent
PRINT_BROKER = "from django.conf import settings; print(settings.CELERY_BROKER_URL)"
# (manage.py shell prints "N objects imported automatically" first: the last line is the answer)


@pytest.fixture
def devstack_process() -> Iterator[subprocess.Popen[bytes]]:
    """A process whose command line names project.devstack, as bin/start's does (it only sleeps)."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", stackfile.WRITER_MODULE])
    # Until it has exec'd, the new process's /proc/<pid>/cmdline is still pytest's.
    cmdline, deadline = Path(f"/proc/{process.pid}/cmdline"), time.monotonic() + 10
    while cmdline.exists() and stackfile.WRITER_MODULE.encode() not in cmdline.read_bytes():
        assert time.monotonic() < deadline, "the stand-in for bin/start did not start"
        time.sleep(0.01)
    yield process
    process.kill()
    process.wait()


def run_manage_py(var_dir: Path, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    return subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", PRINT_BROKER],
        cwd=ROOT,
        env={**clean, "QUEUEING_VAR_DIR": str(var_dir), **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_running_stack_is_found_with_its_redis_url(tmp_path: Path, devstack_process: subprocess.Popen[bytes]) -> None:
    path = stackfile.write(tmp_path, redis_url="redis://127.0.0.1:6380/0", pid=devstack_process.pid)

    assert stackfile.running(tmp_path) == stackfile.RunningStack(
        pid=devstack_process.pid, redis_url="redis://127.0.0.1:6380/0", path=path
    )
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # the URL may hold a password


def test_the_file_of_a_stack_that_is_gone_is_ignored(tmp_path: Path, devstack_process: subprocess.Popen[bytes]) -> None:
    stackfile.write(tmp_path, redis_url="redis://127.0.0.1:6380/0", pid=devstack_process.pid)

    devstack_process.kill()
    devstack_process.wait()

    assert stackfile.running(tmp_path) is None


@pytest.mark.skipif(not Path("/proc/self/cmdline").is_file(), reason="tells processes apart through /proc")
def test_a_pid_now_used_by_another_program_is_not_taken_for_the_stack(tmp_path: Path) -> None:
    stackfile.write(tmp_path, redis_url="redis://127.0.0.1:6380/0", pid=os.getpid())  # pytest, not bin/start

    assert stackfile.running(tmp_path) is None


def test_no_file_or_a_broken_one_means_no_stack(tmp_path: Path) -> None:
    assert stackfile.running(tmp_path) is None
    stackfile.path_in(tmp_path).write_text("{not json")
    assert stackfile.running(tmp_path) is None


def test_a_stack_removes_only_its_own_file(tmp_path: Path) -> None:
    # Given the file of another, later bin/start
    stackfile.write(tmp_path, redis_url="redis://127.0.0.1:6380/0", pid=os.getpid() + 1)

    # When this one stops, its file is left alone; the one that wrote it removes it
    stackfile.remove(tmp_path, pid=os.getpid())
    assert stackfile.path_in(tmp_path).exists()
    stackfile.remove(tmp_path, pid=os.getpid() + 1)
    assert not stackfile.path_in(tmp_path).exists()


@pytest.mark.slow
def test_without_redis_url_settings_take_the_running_stacks_redis_and_say_so(
    tmp_path: Path, devstack_process: subprocess.Popen[bytes]
) -> None:
    stackfile.write(tmp_path, redis_url="redis://:s3cret@127.0.0.1:6380/0", pid=devstack_process.pid)

    result = run_manage_py(tmp_path)

    assert result.stdout.strip().splitlines()[-1] == "redis://:s3cret@127.0.0.1:6380/0", result.stderr
    assert (
        "REDIS_URL is not set: using redis://:***@127.0.0.1:6380/0, the Redis of the stack bin/start runs "
        f"(pid {devstack_process.pid}, {stackfile.path_in(tmp_path)})"
    ) in result.stderr
    assert "s3cret" not in result.stderr


@pytest.mark.slow
def test_redis_url_wins_over_the_running_stack_and_nothing_is_said(
    tmp_path: Path, devstack_process: subprocess.Popen[bytes]
) -> None:
    stackfile.write(tmp_path, redis_url="redis://127.0.0.1:6380/0", pid=devstack_process.pid)

    result = run_manage_py(tmp_path, REDIS_URL="redis://127.0.0.1:6390/3")

    assert result.stdout.strip().splitlines()[-1] == "redis://127.0.0.1:6390/3", result.stderr
    assert "REDIS_URL is not set" not in result.stderr


@pytest.mark.slow
def test_without_a_running_stack_settings_use_the_default_redis(tmp_path: Path) -> None:
    result = run_manage_py(tmp_path)

    assert result.stdout.strip().splitlines()[-1] == "redis://127.0.0.1:6379/0", result.stderr
    assert "REDIS_URL is not set" not in result.stderr
