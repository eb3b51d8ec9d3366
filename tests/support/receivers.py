"""Real receivers on loopback for what the master sends out: a webhook endpoint
(:class:`WebhookReceiver`, a threaded ``http.server``) and an SMTP server
(:class:`SmtpSink`, aiosmtpd's controller), each recording what arrived.

The webhook receiver can be started on a chosen port, stopped and started again (a
receiver that is down, then up), and can answer slowly (``delay_s``: the benchmark's
200 ms receiver)."""

from __future__ import annotations

import email
import email.policy
import hashlib
import hmac
import json
import threading
import time
from dataclasses import dataclass, field
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.support.procs import free_port


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    at: float

    def json(self) -> Any:
        return json.loads(self.body)

    def signed_by(self, secret: str) -> bool:
        """The mlsm signature check, as docs/notifications.md tells receivers to do it."""
        ts = self.headers["x-mlsm-timestamp"]
        mac = hmac.new(secret.encode(), f"{ts}.".encode() + self.body, hashlib.sha256)
        return hmac.compare_digest("sha256=" + mac.hexdigest(), self.headers["x-mlsm-signature"])


@dataclass
class WebhookReceiver:
    port: int = field(default_factory=free_port)
    delay_s: float = 0.0
    status: int = 200
    received: list[Received] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def start(self) -> WebhookReceiver:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                n = int(self.headers.get("content-length", "0"))
                body = self.rfile.read(n)
                if owner.delay_s:
                    time.sleep(owner.delay_s)  # the receiver's own latency, as configured
                with owner._lock:
                    owner.received.append(
                        Received({k.lower(): v for k, v in self.headers.items()}, body, time.time())
                    )
                self.send_response(owner.status)
                self.send_header("content-length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                return None

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def events(self) -> list[dict[str, Any]]:
        with self._lock:
            return [r.json()["event"] for r in self.received]

    def __enter__(self) -> WebhookReceiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class SmtpSink:
    """An SMTP server on loopback (aiosmtpd) that keeps every message it is sent."""

    def __init__(self) -> None:
        from aiosmtpd.controller import Controller

        self.port = free_port()
        self.messages: list[EmailMessage] = []
        self.envelopes: list[tuple[str, list[str]]] = []
        sink = self

        class Handler:
            async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
                msg = email.message_from_bytes(envelope.content, policy=email.policy.default)
                assert isinstance(msg, EmailMessage)
                sink.messages.append(msg)
                sink.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos)))
                return "250 OK"

        self._controller = Controller(Handler(), hostname="127.0.0.1", port=self.port)

    def __enter__(self) -> SmtpSink:
        self._controller.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._controller.stop()
