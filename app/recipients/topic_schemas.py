"""Request and response bodies of /v1/topics.

Limits are declared here so that the OpenAPI document states them, and checked again by the
service (app/recipients/topics.py), which Python callers reach without msgspec's decoding.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, ClassVar, Literal

import msgspec
from msgspec import UNSET, UnsetType

from app.recipients.models import Topic
from app.recipients.schemas import ExternalId
from app.recipients.topics import MAX_DESCRIPTION, MAX_NAME, Member
from app.recipients.validation import MAX_TOPIC_CHANGE


class TopicUpdate(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """The PUT body: the topic's name (its key when left out) and description; a PUT
    replaces both and leaves the members as they are."""

    openapi_examples: ClassVar[list[dict[str, Any]]] = [
        {"name": "Weekly digest", "description": "Readers of the Monday summary."},
        {},
    ]

    name: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_NAME)] | UnsetType = UNSET
    description: Annotated[str, msgspec.Meta(max_length=MAX_DESCRIPTION)] = ""


class TopicOut(msgspec.Struct):
    key: str
    object: Literal["topic"]
    name: str
    description: str
    member_count: int
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, topic: Topic) -> TopicOut:
        return cls(
            key=topic.key,
            object="topic",
            name=topic.name,
            description=topic.description,
            member_count=topic.member_count,
            created_at=topic.created_at,
            updated_at=topic.updated_at,
        )


class TopicList(msgspec.Struct):
    object: Literal["list"]
    data: list[TopicOut]
    has_more: bool
    next_cursor: Annotated[str | None, msgspec.Meta(description="The last key of this page.")]


class TopicMembersChange(msgspec.Struct, forbid_unknown_fields=True):
    """External ids of existing recipients; an id given twice counts once."""

    openapi_examples: ClassVar[list[dict[str, Any]]] = [{"recipients": ["user-1", "user-2"]}]

    recipients: Annotated[list[ExternalId], msgspec.Meta(min_length=1, max_length=MAX_TOPIC_CHANGE)]


NotFound = Annotated[
    list[str],
    msgspec.Meta(description="Ids of no recipient of this tenant and mode (or erased ones)."),
]


class TopicMembersAdded(msgspec.Struct):
    object: Literal["topic_members_change"]
    topic: str
    added: int
    unchanged: Annotated[int, msgspec.Meta(description="Recipients that already were members.")]
    not_found: NotFound
    member_count: int


class TopicMembersRemoved(msgspec.Struct):
    object: Literal["topic_members_change"]
    topic: str
    removed: int
    unchanged: Annotated[int, msgspec.Meta(description="Recipients that were not members.")]
    not_found: NotFound
    member_count: int


class TopicMemberOut(msgspec.Struct):
    object: Literal["topic_member"]
    recipient: Annotated[str, msgspec.Meta(description="The recipient's external id.")]
    recipient_id: uuid.UUID
    added_at: datetime

    @classmethod
    def of(cls, member: Member) -> TopicMemberOut:
        return cls(
            object="topic_member",
            recipient=member.external_id,
            recipient_id=member.recipient_id,
            added_at=member.added_at,
        )


class TopicMemberList(msgspec.Struct):
    object: Literal["list"]
    data: list[TopicMemberOut]
    has_more: bool
    next_cursor: str | None
