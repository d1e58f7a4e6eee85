"""Amazon SES v2 (e-mail) against its protocol, faked at the wire by a local HTTP server
reached through HERALD_PROVIDER_BASE_URLS: the exact request it receives, a SigV4 signature
the server recomputes with botocore from what arrived, the error types, timeouts, and
content of another channel refused without a call.
"""

from __future__ import annotations

import hmac
import json
import re
import time
from calendar import timegm
from email.header import decode_header, make_header
from typing import Any

import httpx
import pytest
import respx
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from app.providers.base import SendResult
from app.settings import load_settings
from tests.fakes import FakeProvider
from tests.integration.providers.adapters.helpers import (
    EMAIL,
    SENDER,
    SMS,
    UNSUBSCRIBE,
    adapter_for,
    assert_failure,
    outbound,
)

KEYS = {"access_key_id": "AKIAIOSFODNN7EXAMPLE", "secret_access_key": "wJalrXUtnFEMI/K7MDENG"}
SES = {
    **SENDER,
    "reply_to": "support@acme.test",
    "region": "eu-west-1",
    "configuration_set": "herald-events",
}
PATH = "/v2/email/outbound-emails"
AUTHORIZATION = re.compile(
    r"AWS4-HMAC-SHA256 Credential=(?P<key>[A-Z0-9]+)/(?P<date>\d{8})/(?P<region>[a-z0-9-]+)"
    r"/(?P<service>[a-z]+)/aws4_request, SignedHeaders=(?P<signed>[a-z0-9;-]+),"
    r" Signature=(?P<signature>[0-9a-f]{64})"
)


def ses_adapter(fake: FakeProvider, http: httpx.AsyncClient, options: dict[str, Any] = SES) -> Any:
    settings = load_settings({"HERALD_ENV": "test", "HERALD_PROVIDER_BASE_URLS": f"ses={fake.url}"})
    return adapter_for("ses", "email", KEYS, options, http, settings)


def verify_sigv4(headers: dict[str, str], body: bytes, secret: str) -> re.Match[str]:
    """What SES does on receipt: recompute the signature from the request as it arrived (the
    signed headers' values, the body) and the secret it holds for the access key."""
    found = AUTHORIZATION.fullmatch(headers["authorization"])
    assert found, headers["authorization"]
    signed = found["signed"].split(";")
    request = AWSRequest(
        method="POST",
        url=f"http://{headers['host']}{PATH}",
        data=body,
        headers={name: headers[name] for name in signed},
    )
    request.context["timestamp"] = headers["x-amz-date"]
    signer = SigV4Auth(Credentials(found["key"], secret), found["service"], found["region"])
    expected = signer.signature(
        signer.string_to_sign(request, signer.canonical_request(request)), request
    )
    assert hmac.compare_digest(expected, found["signature"]), "the signature does not verify"
    return found


async def test_ses_sends_the_exact_signed_request(
    http: httpx.AsyncClient, fake_provider: FakeProvider
) -> None:
    fake_provider.answer(200, {"MessageId": "0102019-ses-id"})
    adapter = ses_adapter(fake_provider, http)
    forged = {**UNSUBSCRIBE, "X-Herald-Message-Id": "forged", "Subject": "other"}
    message = outbound("email", "ada@example.com", EMAIL, forged)

    result = await adapter.send(message)

    assert result == SendResult(ok=True, provider_message_id="0102019-ses-id", status_code=200)
    method, path, headers, body = fake_provider.requests[-1]
    assert (method, path) == ("POST", PATH)
    herald_id = str(message.message_id)
    assert json.loads(body) == {
        "FromEmailAddress": "Acme <hello@acme.test>",
        "Destination": {"ToAddresses": ["ada@example.com"]},
        "Content": {
            "Simple": {
                "Subject": {"Data": "Your code", "Charset": "UTF-8"},
                "Body": {
                    "Text": {"Data": "Code: 1234", "Charset": "UTF-8"},
                    "Html": {"Data": "<p>Code: <b>1234</b></p>", "Charset": "UTF-8"},
                },
                "Headers": [
                    *({"Name": name, "Value": value} for name, value in UNSUBSCRIBE.items()),
                    {"Name": "X-Herald-Message-Id", "Value": herald_id},
                ],
            }
        },
        "EmailTags": [{"Name": "herald_message_id", "Value": herald_id}],
        "ReplyToAddresses": ["support@acme.test"],
        "ConfigurationSetName": "herald-events",
    }
    assert headers["content-type"] == "application/json"

    scope = verify_sigv4(headers, body, KEYS["secret_access_key"])
    assert (scope["key"], scope["region"], scope["service"]) == (
        "AKIAIOSFODNN7EXAMPLE",
        "eu-west-1",
        "ses",
    )
    assert set(scope["signed"].split(";")) >= {"content-type", "host", "x-amz-date"}
    signed_at = timegm(time.strptime(headers["x-amz-date"], "%Y%m%dT%H%M%SZ"))
    assert abs(signed_at - time.time()) < 300 and scope["date"] == headers["x-amz-date"][:8]
    # The signature covers the body: one byte changed, or another secret, and it fails.
    with pytest.raises(AssertionError, match="does not verify"):
        verify_sigv4(headers, body.replace(b"ada@", b"eve@"), KEYS["secret_access_key"])
    with pytest.raises(AssertionError, match="does not verify"):
        verify_sigv4(headers, body, "another-secret")

    # Another message, another body, another signature.
    await adapter.send(outbound("email", "ada@example.com", EMAIL))
    again = fake_provider.requests[-1][2]
    verify_sigv4(again, fake_provider.requests[-1][3], KEYS["secret_access_key"])
    assert again["authorization"] != headers["authorization"]


async def test_ses_leaves_out_what_is_not_configured(
    http: httpx.AsyncClient, fake_provider: FakeProvider
) -> None:
    """No reply-to, no configuration set, a text-only body, a non-ASCII sender name."""
    fake_provider.answer(200, {"MessageId": "m-2"})
    options = {"from_email": "hello@acme.test", "from_name": "Café Ünïcode", "region": "us-east-1"}
    adapter = ses_adapter(fake_provider, http, options)
    text_only = type(EMAIL)(subject="Hi", text="Plain", html=None)

    assert (await adapter.send(outbound("email", "ada@example.com", text_only))).ok

    _, _, headers, body = fake_provider.requests[-1]
    sent = json.loads(body)
    assert "ReplyToAddresses" not in sent and "ConfigurationSetName" not in sent
    assert sent["Content"]["Simple"]["Body"] == {"Text": {"Data": "Plain", "Charset": "UTF-8"}}
    # SES takes a non-ASCII display name only as an RFC 2047 encoded word.
    assert sent["FromEmailAddress"] == "=?utf-8?b?Q2Fmw6kgw5xuw69jb2Rl?= <hello@acme.test>"
    assert str(make_header(decode_header(sent["FromEmailAddress"]))).startswith("Café Ünïcode")
    assert verify_sigv4(headers, body, KEYS["secret_access_key"])["region"] == "us-east-1"


async def test_ses_calls_the_configs_region_by_default(
    http: httpx.AsyncClient, provider_api: respx.MockRouter
) -> None:
    route = provider_api.post(f"https://email.ap-southeast-2.amazonaws.com{PATH}").respond(
        200, json={"MessageId": "m-3"}
    )
    adapter = adapter_for("ses", "email", KEYS, {**SES, "region": "ap-southeast-2"}, http)
    assert (await adapter.send(outbound("email", "ada@example.com", EMAIL))).ok
    authorization = route.calls.last.request.headers["authorization"]
    assert "/ap-southeast-2/ses/aws4_request" in authorization


@pytest.mark.parametrize("where", ["header", "body"])
@pytest.mark.parametrize(
    ("status", "error_type", "error_class"),
    [
        (400, "MessageRejected", "permanent"),
        (400, "BadRequestException", "permanent"),
        (400, "MailFromDomainNotVerifiedException", "config"),
        (400, "AccountSuspendedException", "config"),
        (400, "SendingPausedException", "config"),
        (404, "NotFoundException", "config"),
        (403, "AccessDeniedException", "config"),
        (403, "InvalidSignatureException", "config"),
        (429, "TooManyRequestsException", "rate_limited"),
        (400, "LimitExceededException", "rate_limited"),
        (500, "InternalFailure", "transient"),
        (503, "ServiceUnavailable", "transient"),
        (400, "SomethingNew", "permanent"),
    ],
)
async def test_ses_error_types(
    http: httpx.AsyncClient,
    fake_provider: FakeProvider,
    status: int,
    error_type: str,
    error_class: str,
    where: str,
) -> None:
    """SES names the error in `x-amzn-errortype` (`Type:namespace`) and in the body's
    `__type` (`namespace#Type`); either is enough."""
    headers = {"Retry-After": "9"}
    body: dict[str, Any] = {"message": "Email address is not verified."}
    if where == "header":
        headers["x-amzn-errortype"] = f"{error_type}:http://internal.amazon.com/coral/ses/"
    else:
        body["__type"] = f"com.amazonaws.sesv2#{error_type}"
    fake_provider.answer(status, body, headers)
    adapter = ses_adapter(fake_provider, http)

    result = await adapter.send(outbound("email", "ada@example.com", EMAIL))

    assert_failure(result, error_class, status, retry_after=9)
    assert error_type in (result.error or "") and "not verified" in (result.error or "")


async def test_ses_answers_without_a_json_body(
    http: httpx.AsyncClient, fake_provider: FakeProvider
) -> None:
    fake_provider.answer(502, b"<html>Bad gateway</html>", {"content-type": "text/html"})
    result = await ses_adapter(fake_provider, http).send(outbound("email", "a@b.test", EMAIL))
    assert_failure(result, "transient", 502)
    assert result.error == "SES 502"


async def test_timeouts_and_refused_connections_are_transient(
    http: httpx.AsyncClient, fake_provider: FakeProvider
) -> None:
    fake_provider.answer(200, {"MessageId": "late"})
    fake_provider.delay = 1.0
    http.timeout = httpx.Timeout(0.2)
    adapter = ses_adapter(fake_provider, http)
    result = await adapter.send(outbound("email", "ada@example.com", EMAIL))
    assert_failure(result, "transient", None)
    assert "in time" in (result.error or "")

    fake_provider.stop()  # nothing listens there any more
    assert_failure(await adapter.send(outbound("email", "a@b.test", EMAIL)), "transient", None)


async def test_content_of_another_channel_is_refused_without_a_call(
    http: httpx.AsyncClient, fake_provider: FakeProvider
) -> None:
    result = await ses_adapter(fake_provider, http).send(outbound("email", "a@b.test", SMS))
    assert_failure(result, "permanent", None)
    assert not fake_provider.requests
