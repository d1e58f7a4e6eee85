"""/v1/topics: a tenant's topics and their members.

Scopes as for recipients: reading needs `read`; every write (PUT, POST, DELETE) needs
`send`. Every topic read or written, and every recipient named as a member, is of the
calling key's mode (app/modes.py); another tenant's or mode's topic is not found.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from litestar import Controller, Request, Response, delete, get, post, put
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import FromPath, FromQuery, JSONBody, QueryParameter

from app.auth.keys import Principal
from app.auth.middleware import requires_scope
from app.dependencies import DbSession
from app.pagination import MAX_LIMIT
from app.problems import Problem
from app.recipients import topics
from app.recipients.api import invalid
from app.recipients.models import Topic
from app.recipients.topic_schemas import (
    TopicList,
    TopicMemberList,
    TopicMemberOut,
    TopicMembersAdded,
    TopicMembersChange,
    TopicMembersRemoved,
    TopicOut,
    TopicUpdate,
)
from app.recipients.validation import MAX_TOPIC_KEY, RecipientInvalid

ApiRequest = Request[Principal, None, Any]
READ = [requires_scope("read")]
SEND = [requires_scope("send")]
Limit = Annotated[int, QueryParameter(ge=1, le=MAX_LIMIT)]
KeyCursor = Annotated[
    str | None,
    QueryParameter(max_length=MAX_TOPIC_KEY, description="`next_cursor` of the previous page."),
]


def _no_topic(key: str, mode: str) -> Problem:
    return Problem(404, "not_found", f"No topic {key!r} in {mode} mode.")


async def _topic(db_session: DbSession, caller: Principal, key: str) -> Topic:
    topic = await topics.get_topic(
        db_session, tenant_id=caller.tenant_id, mode=caller.mode, key=key
    )
    if topic is None:
        raise _no_topic(key, caller.mode)
    return topic


async def _changed(
    change: Callable[..., Awaitable[topics.MembersChange | None]],
    request: ApiRequest,
    db_session: DbSession,
    key: str,
    data: TopicMembersChange,
) -> topics.MembersChange:
    """Members added or removed (`change`), committed; 422 naming a bad id, 404 without
    the topic."""
    try:
        done = await change(
            db_session,
            tenant_id=request.user.tenant_id,
            mode=request.user.mode,
            key=key,
            external_ids=data.recipients,
            actor=request.user.actor,
        )
    except RecipientInvalid as error:
        raise invalid(error) from None
    if done is None:
        raise _no_topic(key, request.user.mode)
    await db_session.commit()
    return done


class TopicController(Controller):
    path = "/topics"
    tags = ["Topics"]

    @put(
        "/{key:str}",
        guards=SEND,
        status_code=200,
        responses={201: ResponseSpec(data_container=TopicOut, description="Created")},
        summary="Create or replace a topic (201 when the key is new); members stay",
    )
    async def put_topic(
        self,
        request: ApiRequest,
        db_session: DbSession,
        key: FromPath[str],
        data: JSONBody[TopicUpdate],
    ) -> Response[TopicOut]:
        try:
            topic, created = await topics.put_topic(
                db_session,
                tenant_id=request.user.tenant_id,
                mode=request.user.mode,
                key=key,
                name=data.name if isinstance(data.name, str) else None,  # left out: the key
                description=data.description,
                actor=request.user.actor,
            )
        except RecipientInvalid as error:
            raise invalid(error) from None
        await db_session.commit()
        return Response(TopicOut.of(topic), status_code=201 if created else 200)

    @get("/{key:str}", guards=READ, summary="Read a topic")
    async def get_topic(
        self, request: ApiRequest, db_session: DbSession, key: FromPath[str]
    ) -> TopicOut:
        return TopicOut.of(await _topic(db_session, request.user, key))

    @get("/", guards=READ, summary="List topics by key")
    async def list_topics(
        self,
        request: ApiRequest,
        db_session: DbSession,
        limit: Limit = 20,
        cursor: KeyCursor = None,
    ) -> TopicList:
        page = await topics.list_topics(
            db_session,
            tenant_id=request.user.tenant_id,
            mode=request.user.mode,
            limit=limit,
            cursor=cursor,
        )
        return TopicList(
            object="list",
            data=[TopicOut.of(t) for t in page.items],
            has_more=page.has_more,
            next_cursor=page.next_cursor,
        )

    @delete(
        "/{key:str}",
        guards=SEND,
        status_code=200,
        summary="Delete a topic and its memberships (the recipients stay)",
    )
    async def delete_topic(
        self, request: ApiRequest, db_session: DbSession, key: FromPath[str]
    ) -> TopicOut:
        deleted = await topics.delete_topic(
            db_session,
            tenant_id=request.user.tenant_id,
            mode=request.user.mode,
            key=key,
            actor=request.user.actor,
        )
        if deleted is None:
            raise _no_topic(key, request.user.mode)
        await db_session.commit()
        return TopicOut.of(deleted)

    @post(
        "/{key:str}/members",
        guards=SEND,
        status_code=200,
        summary="Add up to 10,000 existing recipients to a topic (idempotent)",
    )
    async def add_members(
        self,
        request: ApiRequest,
        db_session: DbSession,
        key: FromPath[str],
        data: JSONBody[TopicMembersChange],
    ) -> TopicMembersAdded:
        change = await _changed(topics.add_members, request, db_session, key, data)
        return TopicMembersAdded(
            object="topic_members_change",
            topic=key,
            added=change.changed,
            unchanged=change.unchanged,
            not_found=change.not_found,
            member_count=change.member_count,
        )

    @post(
        "/{key:str}/members/remove",
        guards=SEND,
        status_code=200,
        summary="Remove up to 10,000 recipients from a topic (idempotent)",
    )
    async def remove_members(
        self,
        request: ApiRequest,
        db_session: DbSession,
        key: FromPath[str],
        data: JSONBody[TopicMembersChange],
    ) -> TopicMembersRemoved:
        change = await _changed(topics.remove_members, request, db_session, key, data)
        return TopicMembersRemoved(
            object="topic_members_change",
            topic=key,
            removed=change.changed,
            unchanged=change.unchanged,
            not_found=change.not_found,
            member_count=change.member_count,
        )

    @get("/{key:str}/members", guards=READ, summary="List a topic's members, oldest first")
    async def list_members(
        self,
        request: ApiRequest,
        db_session: DbSession,
        key: FromPath[str],
        limit: Limit = 20,
        cursor: FromQuery[uuid.UUID | None] = None,
    ) -> TopicMemberList:
        topic = await _topic(db_session, request.user, key)
        page = await topics.list_members(
            db_session,
            tenant_id=topic.tenant_id,
            mode=topic.mode,
            key=topic.key,
            limit=limit,
            cursor=cursor,
        )
        return TopicMemberList(
            object="list",
            data=[TopicMemberOut.of(m) for m in page.items],
            has_more=page.has_more,
            next_cursor=page.next_cursor,
        )
