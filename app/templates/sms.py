"""SMS length, encoding and segment count, as carriers bill them (3GPP TS 23.038).

A text made only of GSM-7 characters is sent in GSM-7: 160 septets in one message, or 153 per
part once it is split (the rest of each part is the concatenation header). Characters of the
extension table (€ [ ] { } ^ ~ | \\ and form feed) take two septets. Any other character
switches the whole text to UCS-2: 70 UTF-16 code units in one message, 67 per part, where a
character outside the Basic Multilingual Plane (most emoji) takes two units. A character is
never split across two parts, so a part can end a unit short of its size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Encoding = Literal["GSM-7", "UCS-2"]

GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
GSM7_EXTENSION = frozenset("\f^{}\\[~]|€")

# (units in a single message, units per part of a split message)
_SIZES: dict[Encoding, tuple[int, int]] = {"GSM-7": (160, 153), "UCS-2": (70, 67)}


@dataclass(frozen=True)
class SmsSegments:
    length: int  # GSM-7 septets, or UCS-2 (UTF-16) code units
    encoding: Encoding
    segments: int  # 0 for an empty text: there is nothing to send


def count_segments(text: str) -> SmsSegments:
    if all(ch in GSM7_BASIC or ch in GSM7_EXTENSION for ch in text):
        encoding: Encoding = "GSM-7"
        units = [2 if ch in GSM7_EXTENSION else 1 for ch in text]
    else:
        encoding = "UCS-2"
        units = [2 if ord(ch) > 0xFFFF else 1 for ch in text]
    return SmsSegments(sum(units), encoding, _segments(units, *_SIZES[encoding]))


def _segments(units: list[int], single: int, part: int) -> int:
    total = sum(units)
    if total <= single:
        return 1 if total else 0
    parts, used = 1, 0
    for size in units:
        if used + size > part:  # this character does not fit: it starts the next part
            parts, used = parts + 1, 0
        used += size
    return parts
