"""E-mail over SMTP (RFC 5321) with aiosmtplib: one connection per message.

The tenant names the SMTP host, so it goes through the same guard as webhook URLs: the
host is resolved, refused when private (unless HERALD_ALLOW_PRIVATE_URLS), and the socket is
connected to the checked address, while TLS still verifies the certificate against the name.

Replies map to error classes by RFC 5321's first digit: 4yz transient, 5yz permanent, with
530/534/535/538 (authentication) as configuration errors, and a 550/551/553 refusal of the
recipient as a dead address to suppress.
"""

from __future__ import annotations

import asyncio
import socket
from email.message import EmailMessage
from email.policy import Policy
from email.utils import formataddr, formatdate

import aiosmtplib

from app.providers import ssrf
from app.providers.base import OutboundMessage, SendResult, failed, sent, wrong_content
from app.providers.credentials import SmtpCredentials, SmtpOptions
from app.templates.content import EmailContent

CONNECT_TIMEOUT = 10.0
COMMAND_TIMEOUT = 30.0
TOTAL_TIMEOUT = 90.0
AUTH_CODES = frozenset({530, 534, 535, 538})
DEAD_MAILBOX_CODES = frozenset({550, 551, 553})
# Headers Herald sets itself; a tenant's extra headers cannot replace them.
RESERVED_HEADERS = frozenset(
    {"from", "to", "cc", "bcc", "subject", "date", "message-id", "x-herald-message-id", "reply-to"}
    | {"content-type", "content-transfer-encoding", "mime-version", "sender", "return-path"}
)
MAX_LINE = 998  # RFC 5322's hard limit on a line, CRLF not counted


class OneLineHeader(str):
    """A header written on one line as it is. The email package folds lines longer than 78
    characters, and a word longer than that (a List-Unsubscribe URL) it turns into RFC 2047
    encoded words, which no mail client reads as a URL. It keeps a value that has `name`
    and `fold` as it is, and folds it by calling `fold`."""

    name: str

    def __new__(cls, name: str, value: str) -> OneLineHeader:
        header = super().__new__(cls, value)
        header.name = name
        return header

    def fold(self, *, policy: Policy) -> str:
        return f"{self.name}: {self}{policy.linesep}"


def extra_header(name: str, value: str) -> str:
    """An extra header's value as it goes on the mail: on one line when it is printable
    ASCII that fits one; otherwise as given, for the email package to check (it refuses
    line breaks) and fold."""
    if value.isascii() and value.isprintable() and len(name) + 2 + len(value) <= MAX_LINE:
        return OneLineHeader(name, value)
    return value


def build_email(
    message: OutboundMessage, content: EmailContent, options: SmtpOptions
) -> EmailMessage:
    """The MIME message: multipart/alternative (text, then HTML) when both bodies exist."""
    if content.text is None and content.html is None:
        raise ValueError("the e-mail has neither a text nor an HTML body")
    mime = EmailMessage()
    mime["From"] = formataddr((options.from_name or "", options.from_email))
    mime["To"] = message.address
    mime["Subject"] = content.subject
    mime["Date"] = formatdate(usegmt=True)
    mime["Message-ID"] = message_id_header(message, options.from_email)
    mime["X-Herald-Message-Id"] = str(message.message_id)
    if options.reply_to:
        mime["Reply-To"] = options.reply_to
    for name, value in message.headers.items():
        if name.lower() not in RESERVED_HEADERS:
            mime[name] = extra_header(name, value)
    if content.text is not None:
        mime.set_content(content.text)
        if content.html is not None:
            mime.add_alternative(content.html, subtype="html")
    else:
        mime.set_content(content.html or "", subtype="html")
    return mime


def message_id_header(message: OutboundMessage, from_email: str) -> str:
    return f"<{message.message_id}@{from_email.rpartition('@')[2]}>"


def classify(code: int, text: str, *, recipient: bool = False) -> SendResult:
    """An SMTP reply as a result; `recipient`: the reply refused RCPT TO (the address)."""
    detail = f"SMTP {code} {text}".strip()
    if code in AUTH_CODES:
        return failed("config", detail, status_code=code)
    if 500 <= code < 600:
        dead = recipient and code in DEAD_MAILBOX_CODES
        return failed(
            "permanent", detail, status_code=code, suppress="hard_bounce" if dead else None
        )
    return failed("transient", detail, status_code=code)


class SmtpAdapter:
    provider = "smtp"
    channel = "email"

    def __init__(
        self, credentials: SmtpCredentials, options: SmtpOptions, *, allow_private: bool
    ) -> None:
        self.credentials = credentials
        self.options = options
        self.allow_private = allow_private

    async def send(self, message: OutboundMessage) -> SendResult:
        if not isinstance(message.content, EmailContent):
            return wrong_content(self, message)
        try:
            mime = build_email(message, message.content, self.options)
        except ValueError as error:
            return failed("permanent", f"cannot build the e-mail: {error}")
        try:
            return await asyncio.wait_for(self._deliver(message, mime), TOTAL_TIMEOUT)
        except TimeoutError:
            return failed("transient", "the SMTP server did not finish in time")

    async def _deliver(self, message: OutboundMessage, mime: EmailMessage) -> SendResult:
        try:
            sock = await self._connect()
        except ssrf.UnsafeURL as error:
            return failed("config", f"SMTP host refused: {error}")
        except OSError as error:  # includes UnresolvableHost
            return failed("transient", f"cannot connect to the SMTP server: {error}")
        try:
            await self._transact(sock, message, mime)
        except aiosmtplib.SMTPRecipientsRefused as refused:
            first = refused.recipients[0]
            return classify(first.code, first.message, recipient=True)
        except aiosmtplib.SMTPRecipientRefused as refused:
            return classify(refused.code, refused.message, recipient=True)
        except aiosmtplib.SMTPResponseException as error:
            return classify(error.code, error.message)
        except (
            aiosmtplib.SMTPServerDisconnected,
            aiosmtplib.SMTPConnectError,
            aiosmtplib.SMTPTimeoutError,
            OSError,
        ) as error:
            return failed("transient", f"SMTP connection failed: {type(error).__name__}")
        except aiosmtplib.SMTPException as error:
            # What is left is a capability mismatch (no STARTTLS, no AUTH, no SMTPUTF8):
            # the server and the settings disagree, and retrying will not change that.
            return failed("config", f"SMTP: {error}")
        finally:
            sock.close()
        return sent(message_id_header(message, self.options.from_email).strip("<>"), 250)

    async def _transact(
        self, sock: socket.socket, message: OutboundMessage, mime: EmailMessage
    ) -> None:
        security = self.options.security
        client = aiosmtplib.SMTP(
            hostname=self.options.host,  # with `sock`, used for TLS SNI and verification only
            sock=sock,
            username=self.credentials.username,
            password=self.credentials.password,
            use_tls=security == "tls",
            start_tls=security == "starttls",
            timeout=COMMAND_TIMEOUT,
        )
        async with client:
            await client.send_message(
                mime, sender=self.options.from_email, recipients=[message.address]
            )

    async def _connect(self) -> socket.socket:
        """A socket connected to a checked address of the configured host."""
        port = self.options.port
        addresses = await ssrf.resolve(self.options.host, port, allow_private=self.allow_private)
        loop = asyncio.get_running_loop()
        last_error: OSError = OSError("no address")
        for address in addresses:
            family = socket.AF_INET6 if ":" in address else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setblocking(False)
            try:
                await asyncio.wait_for(loop.sock_connect(sock, (address, port)), CONNECT_TIMEOUT)
            except OSError as error:  # TimeoutError is an OSError too
                sock.close()
                last_error = error
                continue
            return sock
        raise last_error
