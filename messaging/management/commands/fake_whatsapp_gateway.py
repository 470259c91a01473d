"""python manage.py fake_whatsapp_gateway --port 8001 [--host 127.0.0.1] [--sessions default,other]
[--mode ok|down|slow|rate-limited|flaky] [--slow-seconds N] [--retry-after-seconds N] [--fail-ratio F]
[--retry-after-format seconds|http-date] [--max-attempts N] [--store FILE]

Serves the protocol of ``messaging/gateway.py`` (``messaging/fake_gateway.py`` has the details) until
SIGTERM or SIGINT.
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from messaging.fake_gateway import (
    DEFAULT_FAIL_RATIO,
    MAX_ATTEMPTS,
    MODES,
    RETRY_AFTER_FORMATS,
    RETRY_AFTER_SECONDS,
    FakeGateway,
    SettingError,
    StoreError,
)

#: The option that sets each of the gateway's settings, to name it in an error.
OPTIONS = {
    "mode": "--mode",
    "slowSeconds": "--slow-seconds",
    "retryAfterSeconds": "--retry-after-seconds",
    "retryAfterFormat": "--retry-after-format",
    "failRatio": "--fail-ratio",
    "max_attempts": "--max-attempts",
}


class Command(BaseCommand):
    help = "Run a fake WhatsApp gateway (POST /send, GET /messages, GET /attempts, GET /health, POST /control)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--port", type=int, default=8001, help="port to listen on; 0 picks a free one")
        parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
        parser.add_argument(
            "--sessions", default="default", help="comma-separated session ids it serves (default: default)"
        )
        parser.add_argument("--mode", choices=MODES, default="ok", help="behaviour at start (default ok)")
        parser.add_argument(
            "--slow-seconds", type=float, default=5.0, help="seconds /send waits in slow mode (default 5)"
        )
        parser.add_argument(
            "--retry-after-seconds",
            type=int,
            help="Retry-After (seconds) of a 429, a 503 when down and a failed flaky send "
            f"(default: none; a 429 says {RETRY_AFTER_SECONDS})",
        )
        parser.add_argument(
            "--retry-after-format",
            choices=RETRY_AFTER_FORMATS,
            default="seconds",
            help="Retry-After as seconds or as an HTTP date (default seconds)",
        )
        parser.add_argument(
            "--fail-ratio",
            type=float,
            default=DEFAULT_FAIL_RATIO,
            help="share of sends a flaky gateway fails (503), 0 to 1: 0.25 fails every 4th "
            f"(default {DEFAULT_FAIL_RATIO:g})",
        )
        parser.add_argument(
            "--max-attempts", type=int, default=MAX_ATTEMPTS, help=f"attempts kept in memory (default {MAX_ATTEMPTS})"
        )
        parser.add_argument(
            "--store",
            type=Path,
            help="JSON-lines file that keeps delivered messages across restarts (attempts: FILE's name + .attempts)",
        )

    def handle(
        self,
        *args: Any,
        port: int,
        host: str,
        sessions: str,
        mode: str,
        slow_seconds: float,
        retry_after_seconds: int | None,
        retry_after_format: str,
        fail_ratio: float,
        max_attempts: int,
        store: Path | None,
        **options: Any,
    ) -> None:
        session_ids = [s.strip() for s in sessions.split(",") if s.strip()]
        if not session_ids:
            raise CommandError("--sessions names no session; give at least one, e.g. --sessions default")
        try:
            gateway = FakeGateway(
                host=host,
                port=port,
                sessions=session_ids,
                mode=next(m for m in MODES if m == mode),  # argparse checked it against MODES; this narrows it
                slow_seconds=slow_seconds,
                retry_after_seconds=retry_after_seconds,
                retry_after_format=next(f for f in RETRY_AFTER_FORMATS if f == retry_after_format),  # as mode
                fail_ratio=fail_ratio,
                max_attempts=max_attempts,
                store=store,
            )
        except SettingError as exc:
            raise CommandError(f"{OPTIONS.get(exc.field, exc.field)}: {exc}") from exc
        except (ValueError, StoreError) as exc:
            raise CommandError(str(exc)) from exc
        except OSError as exc:
            raise CommandError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc

        stop = threading.Event()

        def request_stop(signum: int, frame: object) -> None:
            stop.set()

        signal.signal(signal.SIGTERM, request_stop)
        signal.signal(signal.SIGINT, request_stop)
        gateway.start()
        kept = (
            f", {len(gateway.messages())} message(s) and {gateway.attempts_total} attempt(s) from {store}"
            if store
            else ""
        )
        self.stdout.write(
            f"fake WhatsApp gateway listening on {gateway.url} "
            f"(bound to {gateway.host}; sessions: {', '.join(session_ids)}; mode: {describe(gateway)}{kept})"
        )
        self.stdout.flush()
        while not stop.wait(0.5):
            pass
        gateway.stop()
        self.stdout.write("fake WhatsApp gateway stopped")
        self.stdout.flush()


def describe(gateway: FakeGateway) -> str:
    """The mode and the settings that matter in it: ``flaky (failRatio 0.25, Retry-After 10 s)``."""
    settings = gateway.settings()
    details = []
    if gateway.mode == "slow":
        details.append(f"slowSeconds {settings['slowSeconds']:g}")
    if gateway.mode == "flaky":
        details.append(f"failRatio {settings['failRatio']:g}")
    if gateway.mode in ("down", "flaky", "rate-limited") and settings["retryAfterSeconds"] is not None:
        unit = " s" if settings["retryAfterFormat"] == "seconds" else " s, as an HTTP date"
        details.append(f"Retry-After {settings['retryAfterSeconds']}{unit}")
    return f"{gateway.mode} ({', '.join(details)})" if details else gateway.mode
