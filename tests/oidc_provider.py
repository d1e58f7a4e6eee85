"""OpenID providers for the single sign-on tests, on 127.0.0.1.

`canaille()`: a real provider, Canaille (the `pytest-iam` package), with its own login,
password and consent pages, PKCE required, nonces, and ID tokens signed with the key its
JWKS publishes. One per test process, started on first use (Canaille keeps global state).

`TokenForge`: a tiny provider whose ID tokens the test builds itself (joserfc), to send
Herald what no honest provider would: another key's signature, another audience, an expired
token, another nonce. It serves discovery, its JWKS and a token endpoint that records the
request (so a test can check the PKCE verifier against the challenge).
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import os
import re
import threading
import time
import uuid
import wsgiref.simple_server
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
from joserfc import jwt
from joserfc.jwk import JWKRegistry, KeySet, RSAKey

from tests.support import free_port

PASSWORD = "correct horse battery"


class _QuietHandler(wsgiref.simple_server.WSGIRequestHandler):
    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass


@dataclass
class Canaille:
    """A running Canaille: its issuer URL, and ways to add people and clients."""

    issuer: str
    app: Any
    backend: Any
    models: Any

    def add_user(self, email: str, *, name: str = "Ann Example", password: str = PASSWORD) -> str:
        """A person who can sign in at the provider with `email` and `password`."""
        user_name = f"u{uuid.uuid4().hex[:12]}"
        with self.app.app_context():
            user = self.models.User(
                user_name=user_name, emails=[email], password=password, formatted_name=name
            )
            self.backend.save(user)
        return user_name

    def add_client(self, client_id: str, secret: str, redirect_uris: list[str]) -> None:
        """Herald registered at the provider, as an owner would do it."""
        with self.app.app_context():
            client = self.models.Client(
                client_id=client_id,
                client_secret=secret,
                client_name="Herald",
                redirect_uris=redirect_uris,
                grant_types=["authorization_code"],
                response_types=["code"],
                token_endpoint_auth_method="client_secret_basic",
                scope=["openid", "profile", "email"],
                client_id_issued_at=datetime.datetime.now(datetime.UTC),
            )
            self.backend.save(client)
            client.audience = [client]  # the ID token's aud: this client
            self.backend.save(client)


_canaille: Canaille | None = None
_lock = threading.Lock()


def canaille() -> Canaille:
    """The process's Canaille on 127.0.0.1, started on first use; it serves until exit."""
    global _canaille
    with _lock:
        if _canaille is None:
            _canaille = _start_canaille()
        return _canaille


def _start_canaille() -> Canaille:
    # Canaille refuses plain http unless told this is a test.
    os.environ["AUTHLIB_INSECURE_TRANSPORT"] = "1"
    from canaille import create_app
    from canaille.app import models
    from canaille.backends import Backend

    port = free_port()
    key = JWKRegistry.generate_key("RSA", 2048)
    key.ensure_kid()
    config = {
        "TESTING": True,
        "ENV_FILE": None,
        "SECRET_KEY": uuid.uuid4().hex,
        "WTF_CSRF_ENABLED": False,
        "PREFERRED_URL_SCHEME": "http",
        "SERVER_NAME": f"127.0.0.1:{port}",
        "CANAILLE": {
            "DATABASE": "memory",
            "JAVASCRIPT": False,
            "ACL": {"DEFAULT": {"PERMISSIONS": ["use_oidc"]}},
            "LOGGING": {
                "version": 1,
                "disable_existing_loggers": False,
                "handlers": {"null": {"class": "logging.NullHandler"}},
                "loggers": {"canaille": {"level": "ERROR", "handlers": ["null"]}},
            },
        },
        "CANAILLE_OIDC": {"ACTIVE_JWKS": [key.as_dict(private=True)]},
    }
    app = create_app(config=config, env_file=None, env_prefix="HERALD_TEST_CANAILLE_")
    # Canaille has no notion of a verified address; its people's addresses are, here.
    app.config["CANAILLE_OIDC"]["USERINFO_MAPPING"]["EMAIL_VERIFIED"] = "true"
    server = wsgiref.simple_server.make_server("127.0.0.1", port, app, handler_class=_QuietHandler)
    threading.Thread(target=server.serve_forever, name="canaille", daemon=True).start()
    return Canaille(f"http://127.0.0.1:{port}", app, Backend.instance, models)


_HIDDEN = re.compile(r'<input type="hidden" name="([^"]+)" value="([^"]*)"')
_ACTION = re.compile(r'<form[^>]*\saction="([^"]*)"')


async def sign_in_at_provider(
    authorize_url: str, *, login: str, password: str = PASSWORD, consent: str = "accept"
) -> str:
    """A person's browser at the provider: from Herald's redirect, through the login,
    password and consent pages, to the redirect back to Herald; returns that URL."""
    async with httpx.AsyncClient(follow_redirects=False, timeout=10) as browser:
        response = await browser.get(authorize_url)
        callback_host = parse_qs(urlsplit(authorize_url).query)["redirect_uri"][0]
        for _ in range(10):
            if response.is_redirect:
                location = response.headers["location"]
                if location.startswith(callback_host):
                    return location
                response = await browser.get(response.url.join(location))
                continue
            assert response.status_code == 200, response.text[:500]
            html = response.text
            fields = dict(_HIDDEN.findall(html))
            if 'name="login"' in html:
                fields["login"] = login
            if 'name="password"' in html:
                fields["password"] = password
            if 'name="answer"' in html:
                fields["answer"] = consent
            found = _ACTION.search(html)
            action = found.group(1).replace("&amp;", "&") if found and found.group(1) else ""
            response = await browser.post(response.url.join(action), data=fields)
        raise AssertionError("the provider never sent the browser back")


# ---- a provider whose tokens the test builds -----------------------------------------------


def s256(verifier: str) -> str:
    return (
        base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    )


@dataclass
class TokenForge:
    """A minimal provider on 127.0.0.1 that answers the token request with `next_id_token`."""

    issuer: str
    key: RSAKey
    next_id_token: str = ""
    token_requests: list[dict[str, list[str]]] = field(default_factory=list)
    discovery_requests: int = 0

    def id_token(
        self,
        *,
        nonce: str,
        audience: str | list[str],
        email: str,
        email_verified: bool = True,
        issuer: str | None = None,
        expires_in: int = 300,
        key: RSAKey | None = None,
        extra: dict[str, Any] | None = None,
    ) -> str:
        now = int(time.time())
        claims = {
            "iss": issuer or self.issuer,
            "sub": email,
            "aud": audience,
            "iat": now - 10,
            "exp": now + expires_in,
            "nonce": nonce,
            "email": email,
            "email_verified": email_verified,
            "name": "Forged Person",
            **(extra or {}),
        }
        signer = key or self.key
        return jwt.encode({"alg": "RS256", "kid": signer.kid}, claims, signer)


def new_key() -> RSAKey:
    key = RSAKey.generate_key(2048)
    key.ensure_kid()
    return key


@contextmanager
def token_forge() -> Iterator[TokenForge]:
    port = free_port()
    forge = TokenForge(issuer=f"http://127.0.0.1:{port}", key=new_key())

    def answer(handler: BaseHTTPRequestHandler, status: int, body: object) -> None:
        data = json.dumps(body).encode()
        handler.send_response(status)
        handler.send_header("content-type", "application/json")
        handler.send_header("content-length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    routes: dict[str, Callable[[BaseHTTPRequestHandler], None]] = {}

    def discovery(handler: BaseHTTPRequestHandler) -> None:
        forge.discovery_requests += 1
        answer(
            handler,
            200,
            {
                "issuer": forge.issuer,
                "authorization_endpoint": f"{forge.issuer}/authorize",
                "token_endpoint": f"{forge.issuer}/token",
                "jwks_uri": f"{forge.issuer}/jwks",
                "response_types_supported": ["code"],
                "id_token_signing_alg_values_supported": ["RS256"],
                "code_challenge_methods_supported": ["S256"],
            },
        )

    routes["/.well-known/openid-configuration"] = discovery
    routes["/jwks"] = lambda handler: answer(
        handler, 200, KeySet([forge.key]).as_dict(private=False)
    )

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            route = routes.get(urlsplit(self.path).path)
            if route is None:
                answer(self, 404, {"error": "not_found"})
            else:
                route(self)

        def do_POST(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            form = parse_qs(self.rfile.read(length).decode())
            form["authorization"] = [self.headers.get("authorization", "")]
            forge.token_requests.append(form)
            answer(
                self,
                200,
                {"access_token": "at", "token_type": "Bearer", "id_token": forge.next_id_token},
            )

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    thread = threading.Thread(target=server.serve_forever, name="token-forge", daemon=True)
    thread.start()
    try:
        yield forge
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
