"""The inbox's built-in route: Herald's own store, where the message row is the delivery.

Every tenant has it on the inbox channel, in both modes, with no config: recipients read
their inbox through the API (app/inbox/), so sending makes no call.
"""

from __future__ import annotations

from app.providers.base import OutboundMessage, SendResult, sent


class InboxAdapter:
    provider = "inbox"
    channel = "inbox"

    async def send(self, message: OutboundMessage) -> SendResult:
        return sent(None)
