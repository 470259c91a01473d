"""python manage.py fake_whatsapp_gateway --port 8001 [--host 127.0.0.1] [--sessions default,other]
[--mode ok|down|slow|rate-limited] [--slow-seconds N] [--store FILE]

Serves the protocol of ``messaging/gateway.py`` (``messaging/fake_gateway.py`` has the details) until
SIGTERM or SIGINT.
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from messaging.fake_gateway import MODES, FakeGateway, StoreError


class Command(BaseCommand):
    help = "Run a fake WhatsApp gateway (POST /send, GET /messages, GET /health, POST /control)."

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
        parser.add_argument("--store", type=Path, help="JSON-lines file that keeps delivered messages across restarts")

    def handle(
        self,
        *args: Any,
        port: int,
        host: str,
        sessions: str,
        mode: str,
        slow_seconds: float,
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
                mode=mode,  # type: ignore[arg-type]  (argparse checked it against MODES)
                slow_seconds=slow_seconds,
                store=store,
            )
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
        kept = f", {len(gateway.messages())} message(s) from {store}" if store else ""
        self.stdout.write(
            f"fake WhatsApp gateway listening on {gateway.url} "
            f"(bound to {gateway.host}; sessions: {', '.join(session_ids)}; mode: {gateway.mode}{kept})"
        )
        self.stdout.flush()
        while not stop.wait(0.5):
            pass
        gateway.stop()
        self.stdout.write("fake WhatsApp gateway stopped")
        self.stdout.flush()
