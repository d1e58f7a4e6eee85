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

A `CheckSources` asks whether a template about to be saved compiles: the child compiles
every source and answers `Checked` with what failed, field by field. A tenant's 64 KiB can
take a second of compiling; that second is spent here, under the same limits, not on the
event loop of the API that saves it.
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


class RenderBatch(msgspec.Struct, frozen=True, tag="render"):
    template: TemplateVersion
    data: dict[str, Any]
    jobs: list[RenderJob]
    # Milliseconds of render time the jobs may cost in all; None: no limit but the deadline.
    budget_ms: float | None = None


class CheckSources(msgspec.Struct, frozen=True, tag="check"):
    """The sources of a template about to be saved, by where they are: `content`, or
    `locales.<tag>`; each maps channels to their fields (app/templates/sources.py)."""

    sources: dict[str, dict[str, Any]]


Request = RenderBatch | CheckSources


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
    line: int | None = None  # the line of the field's source, when the template raised it


class OutOfBudget(msgspec.Struct, tag="out_of_budget"):
    """The batch's budget is spent: the jobs not answered yet were not rendered."""


class Checked(msgspec.Struct, tag="checked"):
    """The answer to CheckSources: (field, message) of each source that does not compile,
    the field named from the template's top (`content.email.subject`)."""

    errors: list[tuple[str, str]]
    ms: float


Reply = Ready | Compiled | Rendered | Refused | OutOfBudget | Checked

encode = msgspec.json.Encoder().encode
decode_request = msgspec.json.Decoder(Request).decode
decode_reply = msgspec.json.Decoder(Reply).decode


def frame(body: bytes) -> bytes:
    return HEADER.pack(len(body)) + body
