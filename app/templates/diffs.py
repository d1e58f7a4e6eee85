"""What changed between two versions of a template, line by line (difflib).

A version is laid out as text, one section per source (`content.email.subject`, then its
lines), JSON values pretty-printed, so that a diff reads like a diff of files. The rows come
back as plain values; the page escapes them when it renders them.
"""

from __future__ import annotations

import difflib
import itertools
from dataclasses import dataclass
from typing import Any, Literal

import msgspec

from app.channels import CHANNELS
from app.templates.models import TemplateVersion

CONTEXT_LINES = 3
Kind = Literal["equal", "insert", "delete", "replace", "hunk"]


@dataclass(frozen=True)
class SideBySideRow:
    """One row of a side-by-side diff; a side with no line has no number and no text."""

    kind: Kind
    left_number: int | None = None
    left: str | None = None
    right_number: int | None = None
    right: str | None = None


@dataclass(frozen=True)
class UnifiedLine:
    kind: Literal["equal", "insert", "delete", "hunk", "file"]
    text: str


def version_lines(template: TemplateVersion) -> list[str]:
    """The version as text: its attributes, then each source under a heading of its path."""
    lines = [
        f"name: {template.name}",
        f"category: {template.category or '-'}",
        f"default_locale: {template.default_locale}",
    ]
    sections = [("content", template.content)] + [
        (f"locales.{tag}", template.locales[tag]) for tag in sorted(template.locales)
    ]
    for where, content in sections:
        for channel in CHANNELS:
            fields = content.get(channel)
            if fields is None:
                continue
            for name, value in fields.items():
                lines.append("")
                lines.append(f"[{where}.{channel}.{name}]")
                lines.extend(_text(value).split("\n"))
    return lines


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return msgspec.json.format(msgspec.json.encode(value), indent=2).decode()


def side_by_side(old: list[str], new: list[str]) -> list[SideBySideRow]:
    """The changed lines with CONTEXT_LINES around them, each hunk after a `hunk` row."""
    rows: list[SideBySideRow] = []
    matcher = difflib.SequenceMatcher(None, old, new, autojunk=False)
    for group in matcher.get_grouped_opcodes(CONTEXT_LINES):
        first = group[0]
        rows.append(SideBySideRow("hunk", first[1] + 1, None, first[3] + 1, None))
        for tag, i1, i2, j1, j2 in group:
            pairs = itertools.zip_longest(range(i1, i2), range(j1, j2))
            for i, j in pairs:
                rows.append(
                    SideBySideRow(
                        tag,  # type: ignore[arg-type]  # difflib's tags are the Kind values
                        None if i is None else i + 1,
                        None if i is None else old[i],
                        None if j is None else j + 1,
                        None if j is None else new[j],
                    )
                )
    return rows


def unified(old: list[str], new: list[str], old_label: str, new_label: str) -> list[UnifiedLine]:
    """`diff -u` of the two texts, each line with its kind."""
    lines: list[UnifiedLine] = []
    for line in difflib.unified_diff(old, new, old_label, new_label, n=CONTEXT_LINES, lineterm=""):
        if line.startswith(("---", "+++")) and len(lines) < 2:
            lines.append(UnifiedLine("file", line))
        elif line.startswith("@@"):
            lines.append(UnifiedLine("hunk", line))
        elif line.startswith("+"):
            lines.append(UnifiedLine("insert", line))
        elif line.startswith("-"):
            lines.append(UnifiedLine("delete", line))
        else:
            lines.append(UnifiedLine("equal", line))
    return lines
