"""Herald's own mail to dashboard users (e-mail verification, invitations, password resets,
quota warnings), through HERALD_SMTP_URL.

Not tenants' notifications, which go through their providers: this is the operator's SMTP
server, named by `smtp://[user:password@]host[:port]` (STARTTLS whenever the server offers
it, certificates verified) or `smtps://…` (TLS from the start, port 465 by default). With no
server configured, as in development, the message is written to the log instead, link and
all, so that a local sign-up can still be verified.
"""

from __future__ import annotations

from email.message import EmailMessage
from email.utils import formatdate, make_msgid, parseaddr
from urllib.parse import unquote, urlsplit

import aiosmtplib
import structlog

log = structlog.get_logger(__name__)

TIMEOUT_SECONDS = 10.0


class SystemMailer:
    def __init__(self, smtp_url: str | None, mail_from: str) -> None:
        self.smtp_url = smtp_url
        self.mail_from = mail_from

    async def send(self, *, to: str, subject: str, text: str) -> bool:
        """Send one plain-text message; False (logged) when the server could not take it."""
        if self.smtp_url is None:
            log.warning(
                "HERALD_SMTP_URL is unset: this mail was not sent, here it is",
                to=to,
                subject=subject,
                text=text,
            )
            return True
        message = EmailMessage()
        message["From"] = self.mail_from
        message["To"] = to
        # Subjects carry names people choose (a tenant's, an inviter's): a line break in one
        # would make a header no mail can carry, or add headers of its own.
        message["Subject"] = " ".join(subject.split())
        message["Date"] = formatdate(usegmt=True)
        message["Message-ID"] = make_msgid(domain=parseaddr(self.mail_from)[1].rpartition("@")[2])
        message.set_content(text)
        server = urlsplit(self.smtp_url)
        implicit_tls = server.scheme == "smtps"
        try:
            await aiosmtplib.send(
                message,
                hostname=server.hostname,
                port=server.port or (465 if implicit_tls else 25),
                username=unquote(server.username) if server.username else None,
                password=unquote(server.password) if server.password else None,
                use_tls=implicit_tls,
                timeout=TIMEOUT_SECONDS,
            )
        except (aiosmtplib.SMTPException, OSError) as error:
            log.error(
                "system mail not sent",
                to=to,
                subject=subject,
                error=f"{type(error).__name__}: {error}"[:300],
            )
            return False
        return True
