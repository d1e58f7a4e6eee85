"""What an e-mail gets at send time: its recipient's unsubscribe link, in the headers and
in place of `{{ unsubscribe_url }}`.

A message of a non-critical notification carries exactly one `List-Unsubscribe` (the HTTPS
link, then a `mailto:` when HERALD_UNSUBSCRIBE_MAILTO is set) and `List-Unsubscribe-Post:
List-Unsubscribe=One-Click` (RFC 8058). A critical one (one-time codes, resets, receipts:
transactional mail, which the bulk-sender rules exempt) carries neither, and its
`{{ unsubscribe_url }}` becomes empty: there is nothing it could opt out of.

The placeholder rendering put in place of `{{ unsubscribe_url }}` is only ever replaced with
the link of the message's own recipient, built here from the message's own ids: a tenant
who writes the placeholder into data or a template gets that same link, never another
recipient's.
"""

from __future__ import annotations

import html
import uuid
from dataclasses import dataclass

from app.crypto import keyring_for
from app.settings import Settings
from app.templates.content import UNSUBSCRIBE_URL_PLACEHOLDER, Content, EmailContent
from app.unsubscribe.tokens import TokenClaims, UnsubscribeTokens

ONE_CLICK = "List-Unsubscribe=One-Click"


@dataclass(frozen=True)
class Unsubscribable:
    """What a message says of itself that its link needs."""

    tenant_id: uuid.UUID
    mode: str
    recipient_id: uuid.UUID
    category: str
    critical: bool


class UnsubscribeLinks:
    """Links under `public_url` (/u/{token}); the mailto address, if any, beside them."""

    def __init__(
        self, tokens: UnsubscribeTokens, public_url: str, mailto: str | None = None
    ) -> None:
        self.tokens = tokens
        self.public_url = public_url.rstrip("/")
        self.mailto = mailto

    def url(self, claims: TokenClaims) -> str:
        return self._url(self.tokens.make(claims))

    def _url(self, token: str) -> str:
        return f"{self.public_url}/u/{token}"

    def for_email(
        self, message: Unsubscribable, content: Content
    ) -> tuple[Content, dict[str, str]]:
        """The content with its link in place, and the headers to send it with."""
        if message.critical:
            return _substitute(content, ""), {}
        token = self.tokens.make(
            TokenClaims(
                tenant_id=message.tenant_id,
                mode=message.mode,
                recipient_id=message.recipient_id,
                category=message.category,
            )
        )
        url = self._url(token)
        targets = f"<{url}>"
        if self.mailto is not None:
            targets += f", <mailto:{self.mailto}?subject=unsubscribe-{token}>"
        headers = {"List-Unsubscribe": targets, "List-Unsubscribe-Post": ONE_CLICK}
        return _substitute(content, url), headers


def links_for(settings: Settings) -> UnsubscribeLinks:
    """The links of the settings' public URL, signed with their keyring."""
    return UnsubscribeLinks(
        UnsubscribeTokens(keyring_for(settings)), settings.public_url, settings.unsubscribe_mailto
    )


def _substitute(content: Content, url: str) -> Content:
    if not isinstance(content, EmailContent) or not any(
        UNSUBSCRIBE_URL_PLACEHOLDER in part
        for part in (content.subject, content.html or "", content.text or "")
    ):
        return content  # most templates have no visible link: nothing to copy

    def put(text: str, link: str) -> str:
        return text.replace(UNSUBSCRIBE_URL_PLACEHOLDER, link)

    return EmailContent(
        # A subject is one header line; a link holds no line break to inject.
        subject=put(content.subject, url),
        html=None if content.html is None else put(content.html, html.escape(url, quote=True)),
        text=None if content.text is None else put(content.text, url),
    )
