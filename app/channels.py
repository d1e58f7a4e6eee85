"""The delivery channels Herald knows, shared by every domain that names one."""

from __future__ import annotations

from typing import Literal

Channel = Literal["email", "sms", "push", "webhook", "inbox"]
CHANNELS: tuple[Channel, ...] = ("email", "sms", "push", "webhook", "inbox")
