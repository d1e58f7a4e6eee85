"""Driving the dashboard over HTTP as a browser does: forms with their CSRF tokens, htmx
requests with the HX-Request and x-csrftoken headers, clients from networks of their own."""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import httpx
from litestar import Litestar

from tests.support import client_address

PASSWORD = "correct horse battery"
SECRET = re.compile(r"hk_(?:live|test)_[0-9A-Za-z]{32}")
ROW_ID = re.compile(r'id="key-([0-9a-f-]{36})"')


def unique_email(who: str = "ann") -> str:
    return f"{who}-{uuid.uuid4().hex[:10]}@acme.example"


TOKEN = re.compile(r'name="_csrf_token" value="([^"]+)"')


async def csrf_token(client: httpx.AsyncClient, path: str = "/signin") -> str:
    """A CSRF token of the client's current session, from a page as a browser gets it (a
    signed-in client is sent from /signin to its keys page)."""
    page = await client.get(path)
    if page.status_code == 303:
        page = await client.get(page.headers["location"])
    page.raise_for_status()
    found = TOKEN.search(page.text)
    assert found, "the page carries a CSRF token"
    return found.group(1)


def htmx_headers(token: str) -> dict[str, str]:
    return {"HX-Request": "true", "x-csrftoken": token}


async def post_form(client: httpx.AsyncClient, path: str, fields: dict[str, str]) -> httpx.Response:
    """A form post as a browser sends it, CSRF token included."""
    return await client.post(path, data={**fields, "_csrf_token": await csrf_token(client)})


async def sign_up(
    client: httpx.AsyncClient, email: str, *, company: str = "Acme Ltd", password: str = PASSWORD
) -> httpx.Response:
    fields = {"company": company, "name": "Ann Example", "email": email, "password": password}
    return await post_form(client, "/signup", fields)


async def sign_in(client: httpx.AsyncClient, email: str, password: str) -> httpx.Response:
    return await post_form(client, "/signin", {"email": email, "password": password})


@dataclass(frozen=True)
class CreatedKey:
    response: httpx.Response
    secret: str
    key_id: uuid.UUID


async def create_key(
    client: httpx.AsyncClient,
    name: str = "Backend",
    scopes: tuple[str, ...] = ("send", "read"),
    mode: str = "test",  # live keys wait for the owner's e-mail verification
) -> CreatedKey:
    data = {"name": name, "mode": mode, "scopes": list(scopes)}
    response = await client.post("/keys", data=data, headers=htmx_headers(await csrf_token(client)))
    assert response.status_code == 201, response.text
    secrets = SECRET.findall(response.text)
    assert len(set(secrets)) == 1, "the created key's secret appears in the answer"
    row = ROW_ID.search(response.text)
    assert row, "the answer carries the new key's row"
    return CreatedKey(response, secrets[0], uuid.UUID(row.group(1)))


@asynccontextmanager
async def browser(app: Litestar, address: str | None = None) -> AsyncIterator[httpx.AsyncClient]:
    """A client with a cookie jar of its own, from `address` (default: a fresh one)."""
    transport = httpx.ASGITransport(app=app, client=(address or client_address(), 50000))
    async with httpx.AsyncClient(transport=transport, base_url="http://herald.test") as client:
        yield client


def alert(page: httpx.Response) -> str:
    """The text of a page's form-level error."""
    found = re.search(r'role="alert">([^<]*)<', page.text)
    return found.group(1).strip() if found else ""
