"""Stand-ins for the providers we cannot reach, faked only at the wire.

`FakeProvider` is a local HTTP server that records every request and answers as told (per
path prefix, or one answer for all); `Mailbox` is an aiosmtpd handler that answers each
recipient by address marker and keeps what it accepts.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from aiosmtpd.smtp import SMTP as SMTPServer
from aiosmtpd.smtp import Envelope, Session


class QueueingHTTPServer(ThreadingHTTPServer):
    # socketserver's default listen backlog of 5 overflows when a batch opens 32
    # connections at once: the kernel would drop some, a fault of the test's own making.
    request_queue_size = 128
    daemon_threads = True


class FakeProvider:
    """A local HTTP server standing in for a provider: records requests, answers as told."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, dict[str, str], bytes]] = []
        self.status = 200
        self.headers: dict[str, str] = {}
        self.body = b""
        self.delay = 0.0
        self.routes: dict[str, tuple[int, bytes, dict[str, str]]] = {}
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length)
                headers = {name.lower(): value for name, value in self.headers.items()}
                fake.requests.append(("POST", self.path, headers, body))
                time.sleep(fake.delay)
                status, body, extra = fake.reply_for(self.path)
                self.send_response(status)
                for name, value in extra.items():
                    self.send_header(name, value)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = QueueingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def answer(self, status: int, body: Any = b"", headers: dict[str, str] | None = None) -> None:
        self.status, self.headers = status, headers or {}
        self.body = body if isinstance(body, bytes) else json.dumps(body).encode()
        if not isinstance(body, bytes):
            self.headers.setdefault("content-type", "application/json")

    def answer_path(self, prefix: str, status: int, body: Any) -> None:
        """Answer requests whose path starts with `prefix` so (JSON body)."""
        self.routes[prefix] = (
            status,
            json.dumps(body).encode(),
            {"content-type": "application/json"},
        )

    def reply_for(self, path: str) -> tuple[int, bytes, dict[str, str]]:
        for prefix, reply in self.routes.items():
            if path.startswith(prefix):
                return reply
        return self.status, self.body, self.headers

    def start(self) -> FakeProvider:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


RCPT_REPLIES = {
    "dead@": "550 5.1.1 User unknown",
    "moved@": "551 5.1.6 User not local",
    "badname@": "553 5.1.3 Mailbox name not allowed",
    "full@": "552 5.2.2 Mailbox full",
    "busy@": "450 4.2.1 Mailbox busy",
    "later@": "451 4.3.0 Try again later",
}
DATA_REPLIES = {"spam@": "554 5.7.1 Rejected as spam", "defer@": "452 4.3.1 Out of storage"}


@dataclass
class Mailbox:
    """An aiosmtpd handler: answers RCPT and DATA by address, keeps what it accepts."""

    received: list[Envelope] = field(default_factory=list)

    async def handle_RCPT(
        self,
        server: SMTPServer,
        session: Session,
        envelope: Envelope,
        address: str,
        options: list[str],
    ) -> str:
        for marker, reply in RCPT_REPLIES.items():
            if address.startswith(marker):
                return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTPServer, session: Session, envelope: Envelope) -> str:
        for marker, reply in DATA_REPLIES.items():
            if envelope.rcpt_tos[0].startswith(marker):
                return reply
        self.received.append(envelope)
        return "250 2.0.0 Queued"
