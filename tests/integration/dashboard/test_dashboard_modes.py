"""The live/test data switch: which mode the pages show, kept in the session."""

from __future__ import annotations

import re

from litestar import Litestar

from tests.dashboard import browser, csrf_token, post_form, sign_up, unique_email

BADGE = re.compile(r'id="data-mode">([^<]+)<')


def shown(text: str) -> str:
    found = BADGE.search(text)
    assert found, "the page shows which data it shows"
    return found.group(1)


async def test_the_switch_moves_between_test_and_live_data(app: Litestar) -> None:
    async with browser(app) as client:
        assert (await sign_up(client, unique_email())).status_code == 303
        # Until the owner verifies their e-mail the tenant has only test data: shown first.
        assert shown((await client.get("/keys")).text) == "Test data"

        switched = await client.post(
            "/mode",
            data={"mode": "live", "_csrf_token": await csrf_token(client, "/keys")},
            headers={"referer": "http://herald.test/keys?x=1"},
        )
        assert switched.status_code == 303
        assert switched.headers["location"] == "/keys?x=1"  # back where the switch was pressed
        assert shown((await client.get("/keys")).text) == "Live data"

        # From a page of one record, back to its section: its id is not in the other mode.
        detail = await client.post(
            "/mode",
            data={"mode": "live", "_csrf_token": await csrf_token(client, "/keys")},
            headers={"referer": "http://herald.test/templates/welcome?version=2"},
        )
        assert detail.headers["location"] == "/templates"
        await post_form(client, "/mode", {"mode": "test"})

        # Another site's page is not where the switch sends anyone.
        away = await client.post(
            "/mode",
            data={"mode": "test", "_csrf_token": await csrf_token(client, "/keys")},
            headers={"referer": "https://evil.example/keys"},
        )
        assert away.headers["location"] == "/overview"
        assert shown((await client.get("/keys")).text) == "Test data"

        # A mode that is neither changes nothing.
        await post_form(client, "/mode", {"mode": "staging"})
        assert shown((await client.get("/keys")).text) == "Test data"
