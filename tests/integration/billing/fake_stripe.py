"""A local HTTP server answering the few Stripe API calls Herald makes, with the shapes
Stripe documents, and recording each request as the SDK sent it (form-encoded, v1).

Meter events are kept by identifier as Stripe keeps them: a second event with an identifier
Stripe holds is refused (400 invalid_request_error "An event already exists with identifier
…", `Stripe-Should-Retry: false`) and not counted. `fail_next` makes the next requests to a
path fail, for tests of what Herald does then.

It runs on a thread of its own (the standard library's threading server): the SDK under test
reaches it over real HTTP, exactly as it reaches api.stripe.com.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl


@dataclass
class Recorded:
    method: str
    path: str
    form: dict[str, str]
    headers: dict[str, str]


@dataclass
class FakeStripe:
    url: str = ""
    requests: list[Recorded] = field(default_factory=list)
    # Meter events accepted (billed), by identifier: a second event with one is refused.
    meter_events: dict[str, dict[str, str]] = field(default_factory=dict)
    # Per path, the statuses the next requests get instead of an answer.
    failures: dict[str, list[int]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def calls(self, path: str) -> list[Recorded]:
        with self.lock:
            return [r for r in self.requests if r.path == path]

    def fail_next(self, path: str, times: int = 1, status: int = 500) -> None:
        """The next `times` requests to `path` fail with `status` (an api_error, which the
        SDK is told not to retry itself: each failure is one request)."""
        with self.lock:
            self.failures.setdefault(path, []).extend([status] * times)

    def answer(self, path: str, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        now = int(time.time())
        with self.lock:
            pending = self.failures.get(path)
            status = pending.pop(0) if pending else None
        if status is not None:
            return status, {
                "error": {"type": "api_error", "message": "An error occurred (as asked)."}
            }
        if path == "/v1/customers":
            metadata = {k[9:-1]: v for k, v in form.items() if k.startswith("metadata[")}
            return 200, {
                "id": f"cus_{uuid.uuid4().hex[:14]}",
                "object": "customer",
                "created": now,
                "email": form.get("email"),
                "livemode": False,
                "metadata": metadata,
                "name": form.get("name"),
            }
        if path == "/v1/checkout/sessions":
            session_id = f"cs_test_{uuid.uuid4().hex}"
            return 200, {
                "id": session_id,
                "object": "checkout.session",
                "cancel_url": form.get("cancel_url"),
                "client_reference_id": form.get("client_reference_id"),
                "created": now,
                "customer": form.get("customer"),
                "livemode": False,
                "mode": form.get("mode"),
                "payment_status": "unpaid",
                "status": "open",
                "subscription": None,
                "success_url": form.get("success_url"),
                "url": f"https://checkout.stripe.com/c/pay/{session_id}",
            }
        if path == "/v1/billing_portal/sessions":
            session_id = f"bps_{uuid.uuid4().hex[:24]}"
            return 200, {
                "id": session_id,
                "object": "billing_portal.session",
                "created": now,
                "customer": form.get("customer"),
                "livemode": False,
                "return_url": form.get("return_url"),
                "url": f"https://billing.stripe.com/p/session/test_{session_id}",
            }
        if path == "/v1/billing/meter_events":
            identifier = form.get("identifier") or uuid.uuid4().hex
            with self.lock:
                held = identifier in self.meter_events
                if not held:
                    self.meter_events[identifier] = form
            if held:
                return 400, {
                    "error": {
                        "type": "invalid_request_error",
                        "message": f"An event already exists with identifier {identifier}.",
                    }
                }
            return 200, {
                "object": "billing.meter_event",
                "created": now,
                "event_name": form.get("event_name"),
                "identifier": identifier,
                "livemode": False,
                "payload": {
                    "stripe_customer_id": form.get("payload[stripe_customer_id]"),
                    "value": form.get("payload[value]"),
                },
                "timestamp": int(form.get("timestamp") or now),
            }
        return 404, {
            "error": {
                "type": "invalid_request_error",
                "message": f"Unrecognized request URL (POST: {path}).",
            }
        }


def start(fake: FakeStripe) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length).decode()
            form = dict(parse_qsl(body, keep_blank_values=True))
            with fake.lock:
                fake.requests.append(
                    Recorded(
                        "POST", self.path, form, {k.lower(): v for k, v in self.headers.items()}
                    )
                )
            status, answer = fake.answer(self.path, form)
            data = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Request-Id", f"req_{uuid.uuid4().hex[:14]}")
            if status >= 400:
                self.send_header("Stripe-Should-Retry", "false")
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    fake.url = f"http://127.0.0.1:{server.server_address[1]}"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server
