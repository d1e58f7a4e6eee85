"""What the API and the workers send to a render process, and what it answers.

Frames are a 4-byte big-endian length and a JSON body, over the child's stdin and stdout.
Nothing is pickled either way: a render process runs tenant code, and a child that a
sandbox escape had taken over could run code in its parent through a crafted pickle; a
typed JSON decode gives it nothing but data to lie with. JSON rather than msgpack: `data`
came from JSON and may hold integers of any size, which msgpack cannot carry.

One batch is one template, one `data`, and many jobs (a channel, a locale, a recipient):
the child compiles what the batch needs (`Compiled`), then answers each job in order as it
finishes (`Rendered` or `Refused`), so the parent knows which job a stall belongs to. A batch
may carry a budget of render milliseconds; once its jobs have cost that much the child stops
and answers `OutOfBudget` instead of the rest.
"""

from __future__ import annotations

import struct
from typing import Any

import msgspec

from app.templates.content import Content
from app.templates.models import TemplateVersion

HEADER = struct.Struct(">I")
MAX_FRAME = 256 * 1024 * 1024  # a frame longer than this is a broken peer, not a message


class RenderJob(msgspec.Struct, array_like=True, frozen=True):
    """One channel rendered for a locale (with fallbacks) and, if personalised, a recipient."""

    channel: str
    locale: str | None = None
    fallback: tuple[str | None, ...] = ()
    recipient: dict[str, Any] | None = None


class RenderBatch(msgspec.Struct, frozen=True):
    template: TemplateVersion
    data: dict[str, Any]
    jobs: list[RenderJob]
    # Milliseconds of render time the jobs may cost in all; None: no limit but the deadline.
    budget_ms: float | None = None


class Ready(msgspec.Struct, tag="ready"):
    """Sent once, when the child has imported everything and set its limits."""

    pid: int


class Compiled(msgspec.Struct, tag="compiled"):
    ms: float  # time spent compiling what the batch needs


class Rendered(msgspec.Struct, tag="rendered"):
    content: Content
    ms: float  # time this job took


class Refused(msgspec.Struct, tag="refused"):
    field: str
    message: str
    ms: float


class OutOfBudget(msgspec.Struct, tag="out_of_budget"):
    """The batch's budget is spent: the jobs not answered yet were not rendered."""


Reply = Ready | Compiled | Rendered | Refused | OutOfBudget

encode = msgspec.json.Encoder().encode
decode_batch = msgspec.json.Decoder(RenderBatch).decode
decode_reply = msgspec.json.Decoder(Reply).decode


def frame(body: bytes) -> bytes:
    return HEADER.pack(len(body)) + body
