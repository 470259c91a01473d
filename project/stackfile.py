"""``var/devstack.json``: how commands run from the checkout find the stack that ``bin/start`` is running.

``bin/start`` (``project/devstack.py``) writes the file once its Redis answers, naming its own pid and its
``REDIS_URL``, and removes it when it stops. The settings read it only when ``REDIS_URL`` is not set and the
process that wrote it is still a running ``bin/start``: then ``manage.py`` commands and ``celery -A project``
in another terminal use that stack's broker (and say so on stderr), even when the embedded Redis had to take
another port than 6379. The file is mode 0600: the URL may hold a password.

Standard library only: the settings import this module.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

FILE_NAME = "devstack.json"
#: What the command line of the process that wrote the file holds (``python -m project.devstack``).
WRITER_MODULE = "project.devstack"


@dataclass(frozen=True)
class RunningStack:
    pid: int
    redis_url: str
    path: Path


def path_in(var_dir: Path) -> Path:
    return Path(var_dir) / FILE_NAME


def write(var_dir: Path, *, redis_url: str, pid: int | None = None) -> Path:
    """Name this process (or ``pid``) and its ``redis_url`` in ``var_dir``; replaces the file atomically."""
    path = path_in(var_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{FILE_NAME}.{os.getpid()}")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump({"pid": pid or os.getpid(), "redis_url": redis_url}, out)
    partial.replace(path)
    return path


def remove(var_dir: Path, *, pid: int | None = None) -> None:
    """Remove the file if it still names this process (or ``pid``): a later ``bin/start`` may have replaced it."""
    path = path_in(var_dir)
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        if json.loads(path.read_text())["pid"] == (pid or os.getpid()):
            path.unlink()


def running(var_dir: Path) -> RunningStack | None:
    """The stack named in ``var_dir``, if its ``bin/start`` still runs; ``None`` otherwise (no file, stale file)."""
    path = path_in(var_dir)
    try:
        data = json.loads(path.read_text())
        pid, redis_url = int(data["pid"]), str(data["redis_url"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return RunningStack(pid=pid, redis_url=redis_url, path=path) if is_devstack(pid) else None


def is_devstack(pid: int) -> bool:
    """Whether ``pid`` is a running ``bin/start`` (where /proc tells; elsewhere, whether it runs at all)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: it exists
    cmdline = Path(f"/proc/{pid}/cmdline")
    if not cmdline.parent.parent.joinpath("self").exists():
        return True  # no /proc: trust the pid
    try:
        # A pid left by a stack that was killed may belong to another process by now.
        return WRITER_MODULE.encode() in cmdline.read_bytes()
    except OSError:
        return False


def without_password(url: str) -> str:
    """``url`` with its password, if any, replaced by ``***``: for printing."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username or ''}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))
