"""SMTP against a real aiosmtpd server: both parts and our headers, the reply table,
authentication, servers without STARTTLS, unreachable and private hosts, header injection.
"""

from __future__ import annotations

import email
import email.policy
from collections.abc import Iterator
from email.message import EmailMessage
from typing import Any

import httpx
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP as SMTPServer
from aiosmtpd.smtp import AuthResult, Envelope, LoginPassword, Session

from tests.fakes import Mailbox
from tests.integration.providers.adapters.helpers import (
    EMAIL,
    SENDER,
    STRICT,
    UNSUBSCRIBE,
    UNSUBSCRIBE_TARGETS,
    adapter_for,
    assert_failure,
    outbound,
)
from tests.support import free_port


def _check_login(
    server: SMTPServer, session: Session, envelope: Envelope, mechanism: str, data: Any
) -> AuthResult:
    ok = isinstance(data, LoginPassword) and (data.login, data.password) == (b"mailer", b"right")
    return AuthResult(success=ok, handled=False)  # not handled: aiosmtpd answers 535


@pytest.fixture
def smtp_server() -> Iterator[tuple[Mailbox, int]]:
    mailbox = Mailbox()
    port = free_port()
    controller = Controller(mailbox, hostname="127.0.0.1", port=port)
    controller.start()
    yield mailbox, port
    controller.stop()


@pytest.fixture
def smtp_auth_server() -> Iterator[tuple[Mailbox, int]]:
    mailbox = Mailbox()
    port = free_port()
    controller = Controller(
        mailbox,
        hostname="127.0.0.1",
        port=port,
        authenticator=_check_login,
        auth_required=True,
        auth_require_tls=False,  # the test server has no certificate; production uses TLS
    )
    controller.start()
    yield mailbox, port
    controller.stop()


def smtp_options(port: int, **extra: Any) -> dict[str, Any]:
    return {"host": "127.0.0.1", "port": port, "security": "none", **SENDER, **extra}


async def test_smtp_delivers_both_parts_and_our_headers(
    http: httpx.AsyncClient, smtp_server: tuple[Mailbox, int]
) -> None:
    mailbox, port = smtp_server
    adapter = adapter_for("smtp", "email", {}, smtp_options(port, reply_to="help@acme.test"), http)
    message = outbound("email", "ada@example.com", EMAIL, {**UNSUBSCRIBE, "Subject": "forged"})

    result = await adapter.send(message)

    assert result.ok and result.status_code == 250
    assert result.provider_message_id == f"{message.message_id}@acme.test"
    [envelope] = mailbox.received
    assert envelope.mail_from == "hello@acme.test"
    assert envelope.rcpt_tos == ["ada@example.com"]
    assert isinstance(envelope.content, bytes)
    mime = email.message_from_bytes(envelope.content, policy=email.policy.default)
    assert isinstance(mime, EmailMessage)
    assert mime["From"] == "Acme <hello@acme.test>"
    assert mime["To"] == "ada@example.com"
    assert mime.get_all("Subject") == ["Your code"]  # a tenant header cannot replace ours
    assert mime["Reply-To"] == "help@acme.test"
    assert mime["Message-ID"] == f"<{message.message_id}@acme.test>"
    assert mime["X-Herald-Message-Id"] == str(message.message_id)
    # As sent: one line each, not folded into RFC 2047 encoded words a mail client would not
    # read as URLs.
    assert f"List-Unsubscribe: {UNSUBSCRIBE_TARGETS}\r\n".encode() in envelope.content
    assert b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n" in envelope.content
    assert mime.get_all("List-Unsubscribe") == [UNSUBSCRIBE_TARGETS]
    assert mime.get_content_type() == "multipart/alternative"
    plain, html = mime.iter_parts()
    assert (plain.get_content_type(), plain.get_content().strip()) == ("text/plain", "Code: 1234")
    assert html.get_content_type() == "text/html"
    assert html.get_content().strip() == "<p>Code: <b>1234</b></p>"


@pytest.mark.parametrize(
    ("address", "code", "error_class", "suppress"),
    [
        ("dead@example.com", 550, "permanent", "hard_bounce"),
        ("moved@example.com", 551, "permanent", "hard_bounce"),
        ("badname@example.com", 553, "permanent", "hard_bounce"),
        ("full@example.com", 552, "permanent", None),
        ("busy@example.com", 450, "transient", None),
        ("later@example.com", 451, "transient", None),
        ("spam@example.com", 554, "permanent", None),  # refused at DATA: not the address
        ("defer@example.com", 452, "transient", None),
    ],
)
async def test_smtp_reply_table(
    http: httpx.AsyncClient,
    smtp_server: tuple[Mailbox, int],
    address: str,
    code: int,
    error_class: str,
    suppress: str | None,
) -> None:
    mailbox, port = smtp_server
    adapter = adapter_for("smtp", "email", {}, smtp_options(port), http)
    result = await adapter.send(outbound("email", address, EMAIL))
    assert_failure(result, error_class, code, suppress=suppress)
    assert (result.error or "").startswith(f"SMTP {code} ")
    assert mailbox.received == []


async def test_smtp_authentication(
    http: httpx.AsyncClient, smtp_auth_server: tuple[Mailbox, int]
) -> None:
    mailbox, port = smtp_auth_server
    good = {"username": "mailer", "password": "right"}
    adapter = adapter_for("smtp", "email", good, smtp_options(port), http)
    assert (await adapter.send(outbound("email", "ada@example.com", EMAIL))).ok

    wrong = adapter_for("smtp", "email", {**good, "password": "wrong"}, smtp_options(port), http)
    assert_failure(await wrong.send(outbound("email", "ada@example.com", EMAIL)), "config", 535)

    anonymous = adapter_for("smtp", "email", {}, smtp_options(port), http)
    assert_failure(await anonymous.send(outbound("email", "a@example.com", EMAIL)), "config", 530)
    assert len(mailbox.received) == 1


async def test_smtp_without_starttls_support_is_a_config_error(
    http: httpx.AsyncClient, smtp_server: tuple[Mailbox, int]
) -> None:
    _, port = smtp_server
    adapter = adapter_for("smtp", "email", {}, smtp_options(port, security="starttls"), http)
    result = await adapter.send(outbound("email", "ada@example.com", EMAIL))
    assert_failure(result, "config", None)
    assert "STARTTLS" in (result.error or "")


async def test_smtp_unreachable_is_transient_and_private_hosts_are_refused(
    http: httpx.AsyncClient, smtp_server: tuple[Mailbox, int]
) -> None:
    mailbox, port = smtp_server
    closed = adapter_for("smtp", "email", {}, smtp_options(free_port()), http)
    assert_failure(await closed.send(outbound("email", "a@example.com", EMAIL)), "transient", None)

    guarded = adapter_for("smtp", "email", {}, smtp_options(port), http, STRICT)
    result = await guarded.send(outbound("email", "a@example.com", EMAIL))
    assert_failure(result, "config", None)
    assert "the address is not allowed" in (result.error or "")
    assert mailbox.received == []


async def test_smtp_refuses_header_injection(
    http: httpx.AsyncClient, smtp_server: tuple[Mailbox, int]
) -> None:
    mailbox, port = smtp_server
    adapter = adapter_for("smtp", "email", {}, smtp_options(port), http)
    injected = outbound("email", "ada@example.com\r\nBcc: all@example.com", EMAIL)
    assert_failure(await adapter.send(injected), "permanent", None)
    assert mailbox.received == []
