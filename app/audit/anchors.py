"""Anchors: the audit chains' heads, exported to be kept where the database's users cannot
write (another system, object storage with retention, a ticket).

A chain proves that no entry before its newest was edited or removed, but not that the
newest ones were not deleted. An anchor records a head (tenant, seq, MAC, time); later,
`verify` with the anchors reports an anchored entry that is missing or whose MAC changed,
and the chain links it to every entry before it.

The file is JSON Lines, one anchor a line, appended to at each export, so that it also keeps
the older heads:

    {"tenant_id": "…", "seq": 42, "mac": "<64 hex>", "key_id": "k1",
     "created_at": "<the entry's time>", "anchored_at": "<the export's time>"}
"""

from __future__ import annotations

import json
import os
import re
import uuid
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

from app.audit.service import AnchoredEntry, Head

MAC_PATTERN = re.compile(r"[0-9a-f]{64}")


class AnchorFileError(ValueError):
    """An anchor file cannot be read, or a line of it is not an anchor."""


def line(head: Head, anchored_at: datetime) -> str:
    return json.dumps(
        {
            "tenant_id": str(head.tenant_id),
            "seq": head.seq,
            "mac": head.mac,
            "key_id": head.key_id,
            "created_at": head.created_at.isoformat(),
            "anchored_at": anchored_at.isoformat(),
        }
    )


def append(path: Path, lines: Iterable[str]) -> None:
    """Append anchor lines to `path` (created when missing) and flush them to disk."""
    with path.open("a", encoding="utf-8") as file:
        file.writelines(f"{text}\n" for text in lines)
        file.flush()
        os.fsync(file.fileno())


def read(path: Path) -> dict[uuid.UUID, dict[int, AnchoredEntry]]:
    """The anchors of a file, by tenant and seq; AnchorFileError naming the bad line."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise AnchorFileError(f"{path}: cannot be read ({error})") from None
    anchors: dict[uuid.UUID, dict[int, AnchoredEntry]] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            tenant_id, seq, entry = _parse(json.loads(raw))
        except (ValueError, TypeError, KeyError) as error:
            raise AnchorFileError(f"{path}:{number}: not an anchor ({error})") from None
        known = anchors.setdefault(tenant_id, {}).get(seq)
        if known is not None and known.mac != entry.mac:
            raise AnchorFileError(
                f"{path}:{number}: tenant {tenant_id} entry {seq} was anchored with another MAC"
            )
        if known is None or entry.anchored_at < known.anchored_at:
            anchors[tenant_id][seq] = entry  # the earliest export names the entry
    return anchors


def _parse(value: Any) -> tuple[uuid.UUID, int, AnchoredEntry]:
    if not isinstance(value, dict):
        raise ValueError("expected a JSON object")
    seq, mac = value["seq"], value["mac"]
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
        raise ValueError("seq must be a positive whole number")
    if not isinstance(mac, str) or not MAC_PATTERN.fullmatch(mac):
        raise ValueError("mac must be 64 lowercase hex digits")
    anchored_at = datetime.fromisoformat(value["anchored_at"])
    if anchored_at.tzinfo is None:
        raise ValueError("anchored_at must carry its time zone")
    return uuid.UUID(value["tenant_id"]), seq, AnchoredEntry(mac, anchored_at)
