"""Unsubscribe tokens: the capability in a `List-Unsubscribe` link (RFC 8058).

A token names a tenant, a mode, a recipient and a category, and nothing else: no address,
nothing readable without Herald. It is URL-safe base64 (no padding) of

    key tag (4) || mode (1: 'l' or 't') || tenant id (16) || recipient id (16)
        || category key (1-64 ASCII) || MAC (16)

where MAC is HMAC-SHA256, cut to 128 bits, over everything before it, under a key derived
from one key of the encryption keyring (HERALD_ENCRYPTION_KEYS) for this use alone. The key
tag says which: the first 4 bytes of an HMAC of a fixed label under that derived key. It
identifies the key without publishing the operator's names for keys, and lets a rotation
keep old links working for as long as the old key stays configured. A token with a tag no
configured key has is refused, as is one whose MAC differs (compared in constant time).

Tokens do not expire: a link in a mail read a year later must still unsubscribe.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import re
import uuid
from dataclasses import dataclass

from app.categories.keys import is_category_key
from app.crypto import Keyring

# Keeps these MAC keys apart from every other key derived from the keyring.
TOKEN_KEY_CONTEXT = b"herald unsubscribe tokens v1"
_TAG_LABEL = b"key tag"
TAG_BYTES = 4
MAC_BYTES = 16  # 128 bits: forging one takes 2^128 tries, each an HTTP request
_MODES = {"live": b"l", "test": b"t"}
_MODE_OF = {code: mode for mode, code in _MODES.items()}
_FIXED = TAG_BYTES + 1 + 16 + 16
# Its longest form (a 64-character category: 117 bytes) is 156 characters; anything longer,
# or not of the alphabet, is refused before any decoding.
MAX_TOKEN_LENGTH = -(-4 * (_FIXED + 64 + MAC_BYTES) // 3)
_FORM = re.compile(rf"[A-Za-z0-9_-]{{1,{MAX_TOKEN_LENGTH}}}")


@dataclass(frozen=True)
class TokenClaims:
    """What a verified token names: whose switch, for which category."""

    tenant_id: uuid.UUID
    mode: str
    recipient_id: uuid.UUID
    category: str


class UnsubscribeTokens:
    """Makes tokens with the keyring's current key; verifies those of any configured key."""

    def __init__(self, keyring: Keyring) -> None:
        keys = keyring.derive(TOKEN_KEY_CONTEXT)
        self._current = keys[0][1]
        self._current_tag = _tag(self._current)
        # Keyed once: every e-mail sent makes a token, and re-keying HMAC each time doubles
        # its cost.
        self._current_mac = hmac.new(self._current, digestmod=hashlib.sha256)
        self._by_tag = {_tag(key): key for _, key in keys}

    def make(self, claims: TokenClaims) -> str:
        if not _known_key(claims.category):
            raise ValueError(f"not a category key: {claims.category!r}")
        signed = (
            self._current_tag
            + _MODES[claims.mode]
            + claims.tenant_id.bytes
            + claims.recipient_id.bytes
            + claims.category.encode("ascii")
        )
        mac = self._current_mac.copy()
        mac.update(signed)
        raw = signed + mac.digest()[:MAC_BYTES]
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")

    def verify(self, token: str) -> TokenClaims | None:
        """The claims of a genuine token; None for anything else, whatever it is."""
        if not _FORM.fullmatch(token):
            return None
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        except (binascii.Error, ValueError):
            return None
        if base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii") != token:
            return None  # other spare bits in the last character: one spelling per token
        if len(raw) <= _FIXED + MAC_BYTES:
            return None
        signed, mac = raw[:-MAC_BYTES], raw[-MAC_BYTES:]
        key = self._by_tag.get(signed[:TAG_BYTES])
        if key is None or not hmac.compare_digest(mac, _mac(key, signed)):
            return None
        mode = _MODE_OF.get(signed[TAG_BYTES : TAG_BYTES + 1])
        category = signed[_FIXED:].decode("ascii", errors="replace")
        if mode is None or not is_category_key(category):
            return None  # signed by us, so never in practice; checked all the same
        return TokenClaims(
            tenant_id=uuid.UUID(bytes=signed[TAG_BYTES + 1 : TAG_BYTES + 17]),
            mode=mode,
            recipient_id=uuid.UUID(bytes=signed[TAG_BYTES + 17 : _FIXED]),
            category=category,
        )


@functools.lru_cache(maxsize=1024)
def _known_key(category: str) -> bool:
    # A tenant has a few categories, and every e-mail sent checks one.
    return is_category_key(category)


def _tag(key: bytes) -> bytes:
    return hmac.digest(key, _TAG_LABEL, hashlib.sha256)[:TAG_BYTES]


def _mac(key: bytes, signed: bytes) -> bytes:
    return hmac.digest(key, signed, hashlib.sha256)[:MAC_BYTES]
