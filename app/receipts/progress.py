"""How receipts move a message: forward only.

A message goes queued → sending → sent → delivered → opened → clicked; bounced,
undelivered, failed and complained are outcomes no later event undoes (a complaint may
still follow a bounce or a delivery: it is the stronger fact about the address). Each
status has a rank; an event moves a message only to a status of higher rank, so that
duplicated, late or out-of-order events never move it back, and the order events arrive in
does not change where a message ends: the highest-ranked of them.

Skipped and cancelled messages were never sent: nothing moves them. Kinds that are not
statuses (deferred, unsubscribed, resubscribed) go on the timeline only.
"""

from __future__ import annotations

RANK = {
    "queued": 0,
    "sending": 0,
    "retrying": 0,
    "sent": 1,
    "delivered": 2,
    "opened": 3,
    "clicked": 4,
    "undelivered": 5,
    "bounced": 5,
    "failed": 5,
    "complained": 6,
    "skipped": 99,
    "cancelled": 99,
}
# Event kinds that are message statuses.
STATUS_KINDS = frozenset(
    ("sent", "delivered", "opened", "clicked", "undelivered", "bounced", "failed", "complained")
)


def advance(current: str, kind: str) -> str:
    """The status after an event of `kind` reaches a message of status `current`."""
    if kind in STATUS_KINDS and RANK[kind] > RANK[current]:
        return kind
    return current


# The same rule in SQL, for the bulk update (app/receipts/service.py).
RANK_SQL = (
    "CASE {column} "
    + " ".join(f"WHEN '{status}' THEN {rank}" for status, rank in RANK.items())
    + " ELSE 99 END"
)
