"""``bin/start`` (``python -m project.devstack``) starts the whole system from nothing and stops all of it.

Real processes: an embedded Redis, a worker with Beat, runserver, the fake gateway and Flower, on free ports,
with a SQLite database and var/ in a temporary directory. No database fixture: the stack has its own.
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from project import devstack

ROOT = Path(__file__).resolve().parent.parent
#: The whole test must end well within 90 s; these deadlines add up to less.
START_DEADLINE_SECONDS = 45
DELIVERY_DEADLINE_SECONDS = 15
STOP_DEADLINE_SECONDS = 25


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def poll(check: Callable[[], Any], *, deadline_seconds: float, what: str, output: Output | None = None) -> Any:
    """``check()``'s first truthy result; fails naming ``what`` if there is none before the deadline, with the
    stack's ``output`` as it is then (and what its processes are doing: ``Output.report``)."""
    deadline = time.monotonic() + deadline_seconds
    while True:
        try:
            if result := check():
                return result
        except requests.RequestException:
            pass
        if time.monotonic() > deadline:
            report = f"\n{output.report()}" if output is not None else ""
            raise AssertionError(f"{what}: not within {deadline_seconds}s{report}")
        time.sleep(0.25)


class Output:
    """A process's output, read in a thread, searchable while it runs."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.process = process
        self.lines: list[str] = []
        self._new: queue.Queue[str] = queue.Queue()
        self._thread = threading.Thread(target=self._read, args=(process,), daemon=True)
        self._thread.start()

    def _read(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            self.lines.append(line)

    def search(self, pattern: str) -> re.Match[str] | None:
        for line in list(self.lines):
            if match := re.search(pattern, line):
                return match
        return None

    def text(self) -> str:
        return "".join(self.lines)

    def report(self) -> str:
        """What a start that timed out was doing: each process of the stack (state, kernel wait, CPU time), then
        where the threads of every Python process are (the stack: SIGUSR1, its faulthandler; each child: SIGABRT,
        PYTHONFAULTHANDLER in stack_env, which ends it), then the output, the dumps included."""
        process = self.process
        if process.poll() is not None:
            return f"the stack exited (status {process.returncode}); its output:\n{self.text()}"
        pgids = {int(pid) for pid in re.findall(r"started \S+ \(pid (\d+)\)", self.text())}
        ps = subprocess.run(
            ["ps", "-ewwo", "pid,ppid,pgid,stat,wchan:24,etime,time,args", "--sort", "pgid"],
            capture_output=True,
            text=True,
        ).stdout.splitlines()
        # the stack itself, and each child's process group (the child and its own children)
        tree = [line for line in ps[1:] if line.split()[0] == str(process.pid) or int(line.split()[2]) in pgids]
        load = Path("/proc/loadavg").read_text().strip() if Path("/proc/loadavg").is_file() else "?"
        if any(line.startswith("devstack: ") for line in self.lines):  # its main() runs: the handler is set
            process.send_signal(signal.SIGUSR1)
        for line in tree:
            pid, pgid, command = int(line.split()[0]), int(line.split()[2]), line.split(None, 7)[7]
            if pgid in pgids and "python" in command:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGABRT)
        deadline = time.monotonic() + 5
        while self.text().count("most recent call first") < len(tree) and time.monotonic() < deadline:
            time.sleep(0.1)
        return "\n".join(
            [
                f"the stack still ran (pid {process.pid}); its processes (load average {load}):",
                *ps[:1],
                *tree,
                f"its output, with where each thread was:\n{self.text()}",
            ]
        )


def process_groups_alive(pgids: set[int]) -> list[str]:
    """Processes (not zombies) still running in any of ``pgids``, as ``pid cmdline``."""
    alive = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        # Fields after the command name (which is in parentheses and may hold spaces): state ppid pgrp …
        state, _ppid, pgrp = stat.rsplit(")", 1)[1].split()[:3]
        if int(pgrp) in pgids and state != "Z":
            alive.append(f"{entry.name} {cmdline.strip()}")
    return alive


def stack_env(tmp_path: Path) -> dict[str, str]:
    """The environment of a fresh checkout's shell: no Redis, token or URLs set; var/ and the database in tmp."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in {"REDIS_URL", "QUEUEING_API_TOKEN", "WHATSAPP_GATEWAY_URL", "FLOWER_URL", "DJANGO_DEBUG"}
        and not key.startswith("FLOWER_")
    }
    return env | {
        "QUEUEING_VAR_DIR": str(tmp_path / "var"),
        "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
        "PYTHONUNBUFFERED": "1",
        # A process of the stack that gets SIGABRT prints where its threads are (Output.report, on a timeout).
        "PYTHONFAULTHANDLER": "1",
    }


@contextlib.contextmanager
def running_stack(
    tmp_path: Path, ports: dict[str, int], *, redis_port: int = 0
) -> Iterator[tuple[subprocess.Popen[str], Output]]:
    """``bin/start`` on ``ports`` (web, gateway, flower), stopped (SIGTERM, then killed) when the block ends."""
    process = subprocess.Popen(
        [
            *(sys.executable, "-m", "project.devstack"),
            *("--web-port", str(ports["web"]), "--gateway-port", str(ports["gateway"])),
            *("--flower-port", str(ports["flower"]), "--redis-port", str(redis_port)),
        ],
        cwd=ROOT,
        env=stack_env(tmp_path),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output = Output(process)
    try:
        yield process, output
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=STOP_DEADLINE_SECONDS)
            except subprocess.TimeoutExpired:
                # The stack could not stop itself: kill it, then each child's process group.
                process.kill()
                process.wait()
                for match in re.finditer(r"started \S+ \(pid (\d+)\)", output.text()):
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(int(match.group(1)), signal.SIGKILL)


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], Output, dict[str, int]]]:
    ports = dict(zip(("web", "gateway", "flower"), free_ports(3), strict=True))
    with running_stack(tmp_path, ports) as (process, output):
        yield process, output, ports


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="counts leftover processes through /proc")
def test_the_stack_starts_from_nothing_delivers_a_message_and_stops_every_child(
    stack: tuple[subprocess.Popen[str], Output, dict[str, int]],
) -> None:
    process, output, ports = stack
    web = f"http://127.0.0.1:{ports['web']}"
    gateway = f"http://127.0.0.1:{ports['gateway']}"
    flower = f"http://127.0.0.1:{ports['flower']}"
    started = time.monotonic()

    # Given the stack, started with no Redis, no database and no token
    poll(
        lambda: requests.get(f"{web}/admin/login/", timeout=2).status_code == 200,
        deadline_seconds=START_DEADLINE_SECONDS,
        what="the web server answering /admin/login/",
        output=output,
    )
    poll(
        lambda: requests.get(f"{gateway}/health", timeout=2).json()["status"] == "ok",
        deadline_seconds=START_DEADLINE_SECONDS,
        what="the gateway answering /health",
        output=output,
    )
    summary = poll(
        lambda: output.search(r"API token\s+(\S+)"),
        deadline_seconds=START_DEADLINE_SECONDS,
        what="the printed API token",
        output=output,
    )
    token = summary.group(1)
    password = output.search(r"Admin .* user admin, password (\S+)")
    assert password is not None, output.text()
    assert "embedded Redis answers at redis://127.0.0.1:" in output.text()

    # Flower is up, and only with the password
    assert requests.get(f"{flower}/", timeout=5).status_code == 401
    assert requests.get(f"{flower}/", auth=("admin", password.group(1)), timeout=5).status_code == 200

    # When a message is sent through the API with the printed token
    response = requests.post(
        f"{web}/api/send-message",
        json={"sessionId": "default", "to": "+15550100", "message": "hello from the test"},
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )
    assert response.status_code == 202, response.text
    job_id = response.json()["jobId"]

    # Then the worker delivers it to the gateway, keyed by the job id
    delivered = poll(
        lambda: [m for m in requests.get(f"{gateway}/messages", timeout=2).json() if m["idempotencyKey"] == job_id],
        deadline_seconds=DELIVERY_DEADLINE_SECONDS,
        what="the message at the gateway",
        output=output,
    )
    assert delivered[0]["message"] == "hello from the test"

    # When the stack gets SIGTERM
    pids = {int(m) for m in re.findall(r"started \S+ \(pid (\d+)\)", output.text())}
    assert len(pids) == 5, output.text()  # redis, worker, web, gateway, flower
    process.send_signal(signal.SIGTERM)

    # Then it exits cleanly and no process of any child's group is left
    assert process.wait(timeout=STOP_DEADLINE_SECONDS) == 0, output.text()
    assert process_groups_alive(pids) == []
    assert "devstack: stopped" in output.text()
    assert time.monotonic() - started < 90


def test_a_port_in_use_is_refused_naming_the_flag_that_moves_it() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        stack = devstack.Stack(devstack.parse_args(["--web-port", str(port)]))

        with pytest.raises(devstack.StartupFailed, match=f"port {port} \\(web\\) is in use.*--web-port"):
            stack.check_ports()


def test_skipped_services_need_no_port() -> None:
    stack = devstack.Stack(devstack.parse_args(["--no-gateway", "--no-flower"]))

    assert [name for name, _, _ in stack.wanted_ports()] == ["web"]


def test_a_redis_url_with_a_password_is_printed_without_it() -> None:
    assert devstack.without_password("redis://:s3cret@redis.example:6379/0") == "redis://:***@redis.example:6379/0"
    assert devstack.without_password("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"


def answered(client: socket.socket, *, redis: bool = False) -> bytes:
    """One request the server answers, read to its end (a socket closed with unread data sends a reset, and a reset
    ends the peer's TIME-WAIT). An HTTP server is asked to close the connection after its answer, Redis to PING."""
    client.settimeout(20)
    if redis:
        client.sendall(b"PING\r\n")
        return client.recv(64)  # "+PONG\r\n", all of it
    client.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
    answer = b""
    while chunk := client.recv(65536):
        answer += chunk
    return answer


def time_wait_ports() -> set[int]:
    """Local TCP ports of this machine that have a socket in TIME-WAIT (state 06 in /proc/net/tcp*)."""
    ports = set()
    for table in (Path("/proc/net/tcp"), Path("/proc/net/tcp6")):
        with contextlib.suppress(OSError):
            for line in table.read_text().splitlines()[1:]:
                local, state = line.split()[1], line.split()[3]
                if state == "06":
                    ports.add(int(local.rsplit(":", 1)[1], 16))
    return ports


def test_a_port_left_in_time_wait_by_a_stopped_server_is_free() -> None:
    # Given a server that bound as the stack's servers do (SO_REUSEADDR), closed a connection first, and stopped
    with socket.socket() as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        client = socket.create_connection(("127.0.0.1", port))
        accepted, _ = server.accept()
        accepted.close()
        client.close()
    if Path("/proc/net/tcp").is_file():
        assert port in poll(time_wait_ports, deadline_seconds=5, what="a TIME-WAIT socket on the port")

    # Then the port counts as free: the next server can listen there
    assert devstack.port_is_free(port)
    with socket.socket() as again:
        again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        again.bind(("127.0.0.1", port))


def ready(process: subprocess.Popen[str], output: Output, ports: dict[str, int]) -> None:
    """Wait for the web server, the gateway and the summary of a stack started by ``running_stack``."""

    def answers(url: str) -> bool:
        if process.poll() is not None:
            raise AssertionError(f"the stack exited (status {process.returncode}):\n{output.text()}")
        return requests.get(url, timeout=2).status_code == 200

    for url in (f"http://127.0.0.1:{ports['web']}/admin/login/", f"http://127.0.0.1:{ports['gateway']}/health"):
        poll(
            lambda url=url: answers(url),
            deadline_seconds=START_DEADLINE_SECONDS,
            what=f"{url} answering",
            output=output,
        )
    poll(
        lambda: output.search(r"API token"), deadline_seconds=START_DEADLINE_SECONDS, what="the summary", output=output
    )


@pytest.mark.slow
@pytest.mark.timeout(150)
@pytest.mark.skipif(not Path("/proc/net/tcp").is_file(), reason="finds TIME-WAIT sockets through /proc/net/tcp")
def test_the_stack_starts_again_at_once_on_the_same_ports_after_it_stopped(tmp_path: Path) -> None:
    web, gateway, flower, redis_port = free_ports(4)
    servers = {"web": web, "gateway": gateway, "flower": flower}

    # Given a stack that ran with a connection open to each of its servers (a browser, a curl) and stopped
    with running_stack(tmp_path, servers, redis_port=redis_port) as (process, output):
        ready(process, output, servers)
        assert f"embedded Redis answers at redis://127.0.0.1:{redis_port}/0" in output.text()
        clients = [socket.create_connection(("127.0.0.1", port)) for port in (*servers.values(), redis_port)]
        for client in clients:
            # accepted and served, not left in the listen backlog (a listener closing on that sends a reset)
            assert answered(client, redis=client.getpeername()[1] == redis_port), client.getpeername()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=STOP_DEADLINE_SECONDS) == 0, output.text()
    for client in clients:
        client.close()
    # (what Ctrl-C leaves: the servers' side of those connections waits in TIME-WAIT for up to a minute)
    poll(
        lambda: {web, gateway, flower, redis_port} <= time_wait_ports(),
        deadline_seconds=5,
        what=f"TIME-WAIT sockets on the stack's ports {servers} and Redis's {redis_port}",
    )

    # When it is started again at once, on the same ports
    with running_stack(tmp_path, servers, redis_port=redis_port) as (process, output):
        # Then every server starts there
        ready(process, output, servers)
        assert "is in use" not in output.text()
        assert "is taken" not in output.text()
        assert f"embedded Redis answers at redis://127.0.0.1:{redis_port}/0" in output.text()
        assert requests.get(f"http://127.0.0.1:{flower}/", timeout=5).status_code == 401
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=STOP_DEADLINE_SECONDS) == 0, output.text()


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_commands_in_another_terminal_find_the_running_stack_on_its_own_redis_port(
    stack: tuple[subprocess.Popen[str], Output, dict[str, int]], tmp_path: Path
) -> None:
    process, output, ports = stack
    ready(process, output, ports)
    url = output.search(r"embedded Redis answers at (redis://127\.0\.0\.1:(\d+)/0)")
    assert url is not None and url.group(2) != "6379", output.text()  # not the default port (--redis-port 0)
    terminal = stack_env(tmp_path)  # no REDIS_URL
    poll(
        lambda: output.search(r"worker \|.* ready\."),
        deadline_seconds=START_DEADLINE_SECONDS,
        what="the worker",
        output=output,
    )

    # When a celery command runs from the checkout without REDIS_URL
    ping = subprocess.run(
        [
            *(sys.executable, "-m", "celery", "-A", "project", "inspect", "ping", "--timeout", "10"),
            *("--destination", f"celery@{socket.gethostname()}"),  # bin/start's worker: answers without waiting
        ],
        cwd=ROOT,
        env=terminal,
        capture_output=True,
        text=True,
        timeout=60,
    )

    # Then it reaches the stack's worker, and says which broker it took and from where
    assert "pong" in ping.stdout, ping.stdout + ping.stderr
    notice = f"REDIS_URL is not set: using {url.group(1)}, the Redis of the stack bin/start runs (pid {process.pid}"
    assert notice in ping.stderr

    # And so does a manage.py command
    shell = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", "from django.conf import settings; print(settings.REDIS_URL)"],
        cwd=ROOT,
        env=terminal,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert shell.stdout.strip().splitlines()[-1] == url.group(1), shell.stdout + shell.stderr
    assert notice in shell.stderr

    # When the stack stops, its file goes with it
    stack_file = tmp_path / "var" / "devstack.json"
    assert stack_file.is_file()
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=STOP_DEADLINE_SECONDS) == 0, output.text()
    assert not stack_file.exists()


def test_setting_django_up_imports_the_celery_task_class_before_any_thread_could_finalize_the_app() -> None:
    # runserver's autoreloading child deadlocked when its checks finalized the Celery app (importing the task
    # class under the app's finalize lock) while its reloader imported the same module through the URLconf
    # (queueing/apps.py); with the module imported at set-up, no thread imports it under that lock.
    env = {key: value for key, value in os.environ.items() if key != "DATABASE_URL"}
    code = "import sys, django; django.setup(); print('queueing.tasks' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**env, "DJANGO_SETTINGS_MODULE": "project.settings"},
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.stdout.strip().splitlines()[-1:] == ["True"], result.stdout + result.stderr
