"""Checking and normalising recipient fields and channel addresses (pure functions, no I/O).

Each `normalise_*` returns the stored form or raises RecipientInvalid naming the field, so
the API and the notification dispatcher refuse exactly the same input.
"""

from __future__ import annotations

import functools
import re
import zoneinfo
from typing import Any
from urllib.parse import urlsplit

import msgspec
import phonenumbers
from email_validator import EmailNotValidError, validate_email

from app.categories.keys import KEY_RULE as CATEGORY_KEY_RULE
from app.categories.keys import is_category_key

MAX_EXTERNAL_ID = 200
MAX_BATCH = 1000  # recipients a batch upserts at once
MAX_PUSH_TOKENS = 20
MAX_PUSH_TOKEN_LENGTH = 1024
MAX_URL_LENGTH = 2048
MAX_DATA_BYTES = 16 * 1024
PUSH_PROVIDERS = ("fcm", "apns")
ERASED_PREFIX = "erased:"
RESERVED_ID = "batch"
MAX_TOPIC_KEY = 100
# External ids one call adds to or removes from a topic: resolved in one query, written in
# one statement (app/recipients/topics.py).
MAX_TOPIC_CHANGE = 10_000

_FORBIDDEN_IN_ID = re.compile(r"[/\s\x00-\x1f\x7f]")
_LOCALE = re.compile(r"^([A-Za-z]{2,3})(?:[-_]([A-Za-z]{4}))?(?:[-_]([A-Za-z]{2}|[0-9]{3}))?$")
_TOKEN = re.compile(r"^\S+$")
_TOPIC_KEY = re.compile(rf"^[a-z0-9][a-z0-9_.-]{{0,{MAX_TOPIC_KEY - 1}}}$")
TOPIC_KEY_RULE = f"1 to {MAX_TOPIC_KEY} of a-z, 0-9, '_', '.', '-', starting with a letter or digit"


# JSON Schema of what the functions below accept, for the OpenAPI document. Each is as strict
# as its function or stricter, so that a value valid by the document is accepted; what JSON
# Schema cannot say (a phone number's numbering plan, an existing time zone, a size in
# bytes) is said in the description. \x1c-\x1f and \x85 are whitespace to Python's \s.
_NOT_IN_ID = r"/\s\x00-\x1f\x7f-\x9f"
EXTERNAL_ID_SCHEMA: dict[str, Any] = {
    "pattern": rf"^(?!erased:)(?!batch$)(?!\.\.?$)[^{_NOT_IN_ID}]{{1,{MAX_EXTERNAL_ID}}}$",
    "description": "Your id for the recipient: no '/', whitespace or control characters; "
    "`batch` and the prefix `erased:` are reserved.",
}
_SPECIAL_USE = "arpa|invalid|local|localhost|onion|test"  # refused by email_validator
EMAIL_SCHEMA: dict[str, Any] = {
    "format": "email",
    "maxLength": 254,
    "pattern": (
        rf"^(?![^@]{{65}})(?!.*\.(?:{_SPECIAL_USE})$)(?!.*\.[0-9]+$)"
        r"[A-Za-z0-9_%+-]+(?:\.[A-Za-z0-9_%+-]+)*"
        r"@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}$"
    ),
    "examples": ["ada@example.com"],
}
PHONE_SCHEMA: dict[str, Any] = {
    "pattern": r"^\+[1-9][0-9]{6,14}$",
    "description": "E.164 with its country code; the number must exist in its country's "
    "numbering plan.",
    "examples": ["+14155550123"],
}
URL_SCHEMA: dict[str, Any] = {
    "format": "uri",
    "maxLength": MAX_URL_LENGTH,
    "pattern": r"^https?://[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?(?::[0-9]{1,4})?(?:/[!-~]*)?$",
    "examples": ["https://hooks.example.com/herald"],
}
LOCALE_SCHEMA: dict[str, Any] = {
    "pattern": _LOCALE.pattern,
    "description": "A BCP 47 language tag: language, optional script, optional region.",
    "examples": ["fr-CA"],
}
TIMEZONE_SCHEMA: dict[str, Any] = {
    "pattern": r"^[A-Za-z][A-Za-z0-9_+-]*(?:/[A-Za-z0-9][A-Za-z0-9_+-]*){0,2}$",
    "description": "A zone name of the IANA tz database, exactly as listed.",
    "examples": ["Europe/Paris"],
}
PUSH_TOKEN_SCHEMA: dict[str, Any] = {"pattern": r"^[^\s\x1c-\x1f\x85]+$"}
TOPIC_KEY_SCHEMA: dict[str, Any] = {"pattern": _TOPIC_KEY.pattern, "examples": ["weekly-digest"]}
DATA_DESCRIPTION = f"A JSON object of at most {MAX_DATA_BYTES} bytes once serialised."


class RecipientInvalid(ValueError):
    """A recipient field is refused; `field` names it, `index` is its item in a batch."""

    def __init__(self, field: str, message: str, index: int | None = None) -> None:
        super().__init__(message)
        self.field = field
        self.message = message
        self.index = index
        # Every refused item of a batch (this one first), for one complete 422.
        self.errors: list[RecipientInvalid] = [self]

    def path(self, prefix: str = "recipients") -> str:
        """The field as the API names it: `phone`, or `recipients[3].phone` in a batch."""
        return self.field if self.index is None else f"{prefix}[{self.index}].{self.field}"


def normalise_external_id(value: str) -> str:
    if not 1 <= len(value) <= MAX_EXTERNAL_ID:
        raise RecipientInvalid("external_id", f"1 to {MAX_EXTERNAL_ID} characters are required")
    if _FORBIDDEN_IN_ID.search(value) or value in (".", ".."):
        raise RecipientInvalid(
            "external_id", "must not contain '/', whitespace or control characters"
        )
    if value.startswith(ERASED_PREFIX):
        # Erased recipients are renamed `erased:<uuid>`; a tenant id must never collide.
        raise RecipientInvalid("external_id", f"the prefix '{ERASED_PREFIX}' is reserved")
    if value == RESERVED_ID:
        # /v1/recipients/batch is the batch endpoint: such a recipient could not be reached.
        raise RecipientInvalid("external_id", f"'{RESERVED_ID}' is reserved")
    return value


def normalise_email(value: str) -> str:
    try:
        return validate_email(value, check_deliverability=False).normalized
    except EmailNotValidError as error:
        raise RecipientInvalid("email", str(error)) from None


def normalise_phone(value: str) -> str:
    """E.164 (`+14155550123`); the number must carry its country code."""
    try:
        number = phonenumbers.parse(value, None)
    except phonenumbers.NumberParseException:
        number = None
    if number is None or not phonenumbers.is_valid_number(number):
        raise RecipientInvalid(
            "phone", "not a valid phone number in international form, e.g. +14155550123"
        )
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def normalise_url(value: str, field: str = "webhook_url") -> str:
    message = f"an absolute http(s) URL of at most {MAX_URL_LENGTH} ASCII characters is required"
    if len(value) > MAX_URL_LENGTH or not value.isascii() or not _TOKEN.match(value):
        raise RecipientInvalid(field, message)
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 — raises ValueError on a malformed port
    except ValueError:
        raise RecipientInvalid(field, message) from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise RecipientInvalid(field, message)
    return value


def normalise_locale(value: str) -> str:
    """`en`, `fr-CA`, `zh-Hant-TW`, `es-419`: language, optional script, optional region."""
    match = _LOCALE.match(value)
    if match is None:
        raise RecipientInvalid("locale", "a BCP 47 language tag such as 'en' or 'fr-CA'")
    language, script, region = match.groups()
    parts = [
        language.lower(),
        script.title() if script else None,
        region.upper() if region else None,
    ]
    return "-".join(part for part in parts if part)


@functools.cache
def _zone_names() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())


def normalise_timezone(value: str) -> str:
    """A zone name of the tz database, exactly as listed (`Europe/Paris`, `UTC`).

    Only listed names are loaded: ZoneInfo reads `value` as a path under the tz folders,
    where a folder name (`Europe`), a file that is not a zone or an odd path fails with
    errors other than ZoneInfoNotFoundError.
    """
    if value not in _zone_names():
        raise RecipientInvalid("timezone", "an IANA time zone such as 'Europe/Paris' is required")
    return value


def normalise_push_tokens(tokens: list[Any]) -> list[dict[str, str]]:
    """[{"provider": "fcm"|"apns", "token": ...}], at most 20, duplicates dropped."""
    if len(tokens) > MAX_PUSH_TOKENS:
        raise RecipientInvalid("push_tokens", f"at most {MAX_PUSH_TOKENS} push tokens")
    stored: list[dict[str, str]] = []
    for n, token in enumerate(tokens):
        provider, value = getattr(token, "provider", None), getattr(token, "token", None)
        if provider not in PUSH_PROVIDERS:
            raise RecipientInvalid(f"push_tokens[{n}].provider", "must be 'fcm' or 'apns'")
        if (
            not isinstance(value, str)
            or not _TOKEN.match(value)
            or len(value) > MAX_PUSH_TOKEN_LENGTH
        ):
            raise RecipientInvalid(
                f"push_tokens[{n}].token",
                f"1 to {MAX_PUSH_TOKEN_LENGTH} characters without whitespace are required",
            )
        entry = {"provider": str(provider), "token": value}
        if entry not in stored:
            stored.append(entry)
    return stored


def normalise_data(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise RecipientInvalid("data", "a JSON object is required")
    try:
        size = len(msgspec.json.encode(value))
    except (TypeError, msgspec.EncodeError):
        raise RecipientInvalid("data", "must contain JSON values only") from None
    if size > MAX_DATA_BYTES:
        raise RecipientInvalid(
            "data", f"at most {MAX_DATA_BYTES} bytes once serialised as JSON (got {size})"
        )
    return value


def check_topic_key(key: str, field: str = "key") -> str:
    """A topic's key, as the path or a preference names it: `weekly-digest`, `team.eng`."""
    if _TOPIC_KEY.fullmatch(key) is None:  # `$` alone would let a final newline by
        raise RecipientInvalid(field, TOPIC_KEY_RULE)
    return key


def check_category_key(key: str, field: str = "key") -> str:
    """A category key as preferences name it (the form is app/categories/service.py's)."""
    if not is_category_key(key):
        raise RecipientInvalid(field, CATEGORY_KEY_RULE)
    return key


def suppression_key(channel: str, address: str) -> str:
    """The form in which an address is suppressed and looked up, tolerant of any input.

    E-mail addresses compare case-insensitively (providers report bounces in any case);
    phone numbers compare in E.164 when they parse. Anything else is kept as given.
    """
    address = address.strip()
    if channel == "email":
        return address.lower()
    if channel == "sms":
        try:
            return normalise_phone(address)
        except RecipientInvalid:
            return address
    return address


def check_suppression_address(channel: str, address: str) -> str:
    """Strict validation for an address a tenant suppresses by hand; returns its key."""
    field = "address"
    try:
        if channel == "email":
            address = normalise_email(address)
        elif channel == "sms":
            address = normalise_phone(address)
        elif channel == "webhook":
            address = normalise_url(address)
        elif channel == "push":
            provider, _, token = address.partition(":")
            normalise_push_tokens([_Token(provider, token)])
        else:
            address = normalise_external_id(address)
    except RecipientInvalid as invalid:
        message = invalid.message
        if channel == "push":
            message = "a push address is 'fcm:<token>' or 'apns:<token>'"
        raise RecipientInvalid(field, message) from None
    return suppression_key(channel, address)


class _Token(msgspec.Struct):
    provider: str
    token: str
