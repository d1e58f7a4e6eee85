"""SMS segment counting at the encoding and length boundaries carriers bill by."""

from __future__ import annotations

import pytest

from app.templates.sms import SmsSegments, count_segments


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", SmsSegments(0, "GSM-7", 0)),
        ("Hello", SmsSegments(5, "GSM-7", 1)),
        ("a" * 160, SmsSegments(160, "GSM-7", 1)),
        ("a" * 161, SmsSegments(161, "GSM-7", 2)),
        ("a" * 306, SmsSegments(306, "GSM-7", 2)),  # 2 x 153
        ("a" * 307, SmsSegments(307, "GSM-7", 3)),
        ("@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ¡ÄÖÑÜ§¿äöñüà", SmsSegments(43, "GSM-7", 1)),
    ],
)
def test_gsm7_single_and_multipart(text: str, expected: SmsSegments) -> None:
    assert count_segments(text) == expected


def test_extension_characters_count_twice() -> None:
    assert count_segments("€") == SmsSegments(2, "GSM-7", 1)
    assert count_segments("a" * 159 + "€") == SmsSegments(161, "GSM-7", 2)
    assert count_segments("€" * 80) == SmsSegments(160, "GSM-7", 1)
    assert count_segments("€" * 81) == SmsSegments(162, "GSM-7", 2)
    assert count_segments("{}[]~^|\\\f").length == 18


def test_an_escape_pair_is_never_split_across_parts() -> None:
    # 306 septets would fill two 153-septet parts exactly, but the € after 152 septets does
    # not fit in the first part, so it opens the second and the last septet spills over.
    assert count_segments("a" * 152 + "€" + "a" * 152) == SmsSegments(306, "GSM-7", 3)
    assert count_segments("a" * 151 + "€" + "a" * 153) == SmsSegments(306, "GSM-7", 2)


def test_one_emoji_switches_the_whole_text_to_ucs2() -> None:
    assert count_segments("a" * 69 + "😀") == SmsSegments(71, "UCS-2", 2)
    assert count_segments("a" * 68 + "😀") == SmsSegments(70, "UCS-2", 1)
    assert count_segments("😀").encoding == "UCS-2"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("ы" * 70, SmsSegments(70, "UCS-2", 1)),
        ("ы" * 71, SmsSegments(71, "UCS-2", 2)),
        ("ы" * 134, SmsSegments(134, "UCS-2", 2)),  # 2 x 67
        ("ы" * 135, SmsSegments(135, "UCS-2", 3)),
        ("ç", SmsSegments(1, "UCS-2", 1)),  # lower-case ç is not in the GSM-7 table
    ],
)
def test_ucs2_boundaries(text: str, expected: SmsSegments) -> None:
    assert count_segments(text) == expected


def test_a_surrogate_pair_is_never_split_across_parts() -> None:
    text = "ы" * 66 + "😀" + "ы" * 66  # the emoji would straddle units 67 and 68
    assert count_segments(text) == SmsSegments(134, "UCS-2", 3)
