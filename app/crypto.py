"""Secrets at rest: AES-256-GCM under a ring of named keys, for rotation; keyed digests.

A sealed value is `nonce (12 random bytes) || ciphertext || tag`; the id of the key that
sealed it is stored beside it (a column of its own), so that after a rotation old rows still
open with the key they name while new rows are sealed with the first configured key.

Associated data binds a ciphertext to where it belongs (for provider credentials: the tenant
and the config row). It is authenticated, not stored: a ciphertext copied into another row or
another tenant fails to open there, because the associated data it is opened with differs.

A keyed digest (HMAC-SHA256 under a key derived from each ring key) stands in for a value
that must still be recognised but never read again, such as an erased person's address, or
that must not be checkable against a guess, such as a provider credential's fingerprint.
Digests are made with the current key and matched against every key's, so that a rotation
keeps old digests matching as long as the old key stays configured.

The audit log is chained with MACs under keys of its own (HERALD_AUDIT_KEYS, `MacKeyring`):
kept apart from the encryption keys so that each can be rotated, and held, on its own.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from collections.abc import Sequence
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from app.settings import Settings

NONCE_BYTES = 12  # 96 bits: the size GCM is specified for; random per seal
KEY_BYTES = 32
DEV_KEY_ID = "local"
DEV_KEY_FILE = "encryption_key"
AUDIT_DEV_KEY_FILE = "audit_key"
# Keeps digest keys apart from the sealing keys they are derived from.
DIGEST_KEY_CONTEXT = b"herald keyed digests v1"
# Keeps the audit chain's MAC keys apart from any other use of the configured bytes.
AUDIT_KEY_CONTEXT = b"herald audit chain v1"


class DecryptionError(ValueError):
    """A sealed value cannot be opened: unknown key id, wrong associated data, or tampering."""


class Keyring:
    """Named AES-256 keys; the first seals, any of them opens what it sealed."""

    def __init__(self, keys: Sequence[tuple[str, bytes]]) -> None:
        if not keys:
            raise ValueError("a keyring needs at least one key")
        for key_id, key in keys:
            if len(key) != KEY_BYTES:
                raise ValueError(f"key {key_id!r} must be {KEY_BYTES} bytes, not {len(key)}")
        self._keys = {key_id: AESGCM(key) for key_id, key in keys}
        self.current_key_id = keys[0][0]
        # The current key's first.
        self._digest_keys = [
            hmac.digest(key, DIGEST_KEY_CONTEXT, hashlib.sha256) for _, key in keys
        ]
        self._secrets = [(key_id, key) for key_id, key in keys]

    @property
    def key_ids(self) -> tuple[str, ...]:
        return tuple(self._keys)

    def encrypt(self, plaintext: bytes, *, associated_data: bytes) -> tuple[str, bytes]:
        """Seal with the current key; returns (key id, nonce || ciphertext || tag)."""
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._keys[self.current_key_id].encrypt(nonce, plaintext, associated_data)
        return self.current_key_id, nonce + sealed

    def decrypt(self, key_id: str, sealed: bytes, *, associated_data: bytes) -> bytes:
        """Open a value sealed under `key_id` with exactly this associated data."""
        aead = self._keys.get(key_id)
        if aead is None:
            raise DecryptionError(
                f"no configured encryption key has id {key_id!r} (HERALD_ENCRYPTION_KEYS)"
            )
        if len(sealed) < NONCE_BYTES + 16:
            raise DecryptionError("sealed value is too short")
        try:
            return aead.decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], associated_data)
        except InvalidTag:
            raise DecryptionError("sealed value does not authenticate") from None

    def derive(self, context: bytes) -> list[tuple[str, bytes]]:
        """(key id, HMAC-SHA256 key) for each ring key, the current one first: keys of their
        own for one use (`context` names it), never the sealing keys themselves."""
        return [
            (key_id, hmac.digest(key, context, hashlib.sha256)) for key_id, key in self._secrets
        ]

    def digest(self, value: bytes) -> str:
        """The keyed digest of `value` under the current key (hex)."""
        return hmac.digest(self._digest_keys[0], value, hashlib.sha256).hex()

    def digests(self, value: bytes) -> list[str]:
        """Its digest under every key, the current one first: what a stored digest may be."""
        return [hmac.digest(key, value, hashlib.sha256).hex() for key in self._digest_keys]


class MacKeyring:
    """Named HMAC-SHA256 keys: the first signs, any of them checks what it signed."""

    def __init__(self, keys: Sequence[tuple[str, bytes]], *, context: bytes) -> None:
        if not keys:
            raise ValueError("a keyring needs at least one key")
        for key_id, key in keys:
            if len(key) != KEY_BYTES:
                raise ValueError(f"key {key_id!r} must be {KEY_BYTES} bytes, not {len(key)}")
        self._keys = {key_id: hmac.digest(key, context, hashlib.sha256) for key_id, key in keys}
        self.current_key_id = keys[0][0]

    @property
    def key_ids(self) -> tuple[str, ...]:
        return tuple(self._keys)

    def sign(self, message: bytes) -> tuple[str, str]:
        """(current key id, hex MAC of `message` under it)."""
        mac = self.mac(self.current_key_id, message)
        assert mac is not None
        return self.current_key_id, mac

    def mac(self, key_id: str, message: bytes) -> str | None:
        """The hex MAC of `message` under `key_id`; None when no such key is configured."""
        key = self._keys.get(key_id)
        return None if key is None else hmac.digest(key, message, hashlib.sha256).hex()


_rings: dict[tuple[object, ...], Keyring] = {}
_default: Keyring | None = None


def keyring_for(settings: Settings) -> Keyring:
    """The keyring the settings describe; in development, one key generated once on disk.

    The last keyring built here is also the process default (`default_keyring`), so code
    without settings at hand (a service function called from a job) uses the same keys as
    the app or worker that started the process.
    """
    global _default
    cache_key = (settings.encryption_keys, settings.data_dir)
    ring = _rings.get(cache_key)
    if ring is None:
        ring = Keyring(settings.encryption_keys or [(DEV_KEY_ID, _dev_key(settings.data_dir))])
        _rings[cache_key] = ring
    _default = ring
    return ring


def default_keyring() -> Keyring:
    """The keyring of this process: the last one `keyring_for` built, else the environment's."""
    if _default is not None:
        return _default
    from app.settings import load_settings

    return keyring_for(load_settings())


_audit_rings: dict[tuple[object, ...], MacKeyring] = {}
_default_audit: MacKeyring | None = None


def audit_keys_for(settings: Settings) -> MacKeyring:
    """The audit keys the settings describe; in development, one key generated once on disk.

    A generated key's id is `local-` and 8 hex digits of the key's SHA-256, so that entries
    signed from another data folder's key are reported as signed by an unknown key, not as
    tampered with.
    """
    cache_key = (settings.audit_keys, settings.data_dir)
    ring = _audit_rings.get(cache_key)
    if ring is None:
        keys = settings.audit_keys
        if not keys:
            key = _dev_key(settings.data_dir, AUDIT_DEV_KEY_FILE)
            keys = ((f"local-{hashlib.sha256(key).hexdigest()[:8]}", key),)
        ring = _audit_rings[cache_key] = MacKeyring(keys, context=AUDIT_KEY_CONTEXT)
    return ring


def default_audit_keys() -> MacKeyring:
    """The audit keys of this process: always the environment's.

    Unlike `default_keyring`, building another ring does not change it: every entry that a
    process appends, from whichever service, is signed under the same keys.
    """
    global _default_audit
    if _default_audit is None:
        from app.settings import load_settings

        _default_audit = audit_keys_for(load_settings())
    return _default_audit


def _dev_key(data_dir: Path, name: str = DEV_KEY_FILE) -> bytes:
    # Production requires HERALD_ENCRYPTION_KEYS and HERALD_AUDIT_KEYS (settings refuse to
    # load without them); these files only spare developers and tests from configuring keys.
    path = data_dir / name
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        temporary = data_dir / f".{name}.{os.getpid()}"
        temporary.write_text(base64.urlsafe_b64encode(os.urandom(KEY_BYTES)).decode())
        temporary.chmod(0o600)
        try:
            # A hard link appears whole or not at all: racing processes all keep the first key.
            os.link(temporary, path)
        except FileExistsError:
            pass
        finally:
            temporary.unlink()
    return base64.urlsafe_b64decode(path.read_text().strip())
