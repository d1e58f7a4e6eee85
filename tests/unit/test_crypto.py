"""AES-GCM sealing: round trip, fresh nonces, tampering, associated data, key rotation; the
audit log's MAC keys."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from pathlib import Path

import pytest

from app.crypto import (
    AUDIT_DEV_KEY_FILE,
    AUDIT_KEY_CONTEXT,
    DEV_KEY_FILE,
    DEV_KEY_ID,
    NONCE_BYTES,
    DecryptionError,
    Keyring,
    MacKeyring,
    audit_keys_for,
    keyring_for,
)
from app.settings import load_settings

AD = b"herald:provider_configs:tenant-a:config-1"
OLD, NEW = os.urandom(32), os.urandom(32)


def test_round_trip_and_key_id() -> None:
    ring = Keyring([("k1", OLD)])
    key_id, sealed = ring.encrypt(b'{"api_key":"SG.secret"}', associated_data=AD)
    assert key_id == "k1"
    assert b"SG.secret" not in sealed
    assert ring.decrypt(key_id, sealed, associated_data=AD) == b'{"api_key":"SG.secret"}'


def test_each_seal_uses_a_fresh_nonce() -> None:
    ring = Keyring([("k1", OLD)])
    first = ring.encrypt(b"same", associated_data=AD)[1]
    second = ring.encrypt(b"same", associated_data=AD)[1]
    assert first[:NONCE_BYTES] != second[:NONCE_BYTES]
    assert first != second


@pytest.mark.parametrize("position", [0, NONCE_BYTES, -1])  # nonce, ciphertext, tag
def test_any_flipped_bit_is_detected(position: int) -> None:
    ring = Keyring([("k1", OLD)])
    key_id, sealed = ring.encrypt(b"payload", associated_data=AD)
    tampered = bytearray(sealed)
    tampered[position] ^= 0x01
    with pytest.raises(DecryptionError, match="does not authenticate"):
        ring.decrypt(key_id, bytes(tampered), associated_data=AD)


def test_truncated_values_are_refused() -> None:
    ring = Keyring([("k1", OLD)])
    key_id, sealed = ring.encrypt(b"payload", associated_data=AD)
    with pytest.raises(DecryptionError):
        ring.decrypt(key_id, sealed[:20], associated_data=AD)


def test_a_ciphertext_moved_to_another_row_does_not_open() -> None:
    ring = Keyring([("k1", OLD)])
    key_id, sealed = ring.encrypt(b"payload", associated_data=AD)
    for elsewhere in (
        b"herald:provider_configs:tenant-a:config-2",
        b"herald:provider_configs:tenant-b:config-1",
    ):
        with pytest.raises(DecryptionError):
            ring.decrypt(key_id, sealed, associated_data=elsewhere)


def test_rotation_old_rows_open_new_rows_use_the_first_key() -> None:
    before = Keyring([("k1", OLD)])
    old_id, old_sealed = before.encrypt(b"old row", associated_data=AD)

    rotated = Keyring([("k2", NEW), ("k1", OLD)])
    assert rotated.decrypt(old_id, old_sealed, associated_data=AD) == b"old row"
    new_id, new_sealed = rotated.encrypt(b"new row", associated_data=AD)
    assert new_id == "k2"
    with pytest.raises(DecryptionError, match="no configured encryption key"):
        before.decrypt(new_id, new_sealed, associated_data=AD)

    retired = Keyring([("k2", NEW)])
    with pytest.raises(DecryptionError, match="'k1'"):
        retired.decrypt(old_id, old_sealed, associated_data=AD)


def test_a_key_under_its_wrong_id_does_not_open() -> None:
    ring = Keyring([("k1", OLD), ("k2", NEW)])
    _, sealed = ring.encrypt(b"payload", associated_data=AD)
    with pytest.raises(DecryptionError):
        ring.decrypt("k2", sealed, associated_data=AD)


def test_keys_must_be_32_bytes() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        Keyring([("short", b"x" * 16)])
    with pytest.raises(ValueError):
        Keyring([])


def test_configured_keys_come_from_the_environment(tmp_path: Path) -> None:
    settings = load_settings(
        {
            "HERALD_DATA_DIR": str(tmp_path),
            "HERALD_ENCRYPTION_KEYS": "new:" + "A" * 43 + ",old:" + "B" * 43,
        }
    )
    ring = keyring_for(settings)
    assert ring.key_ids == ("new", "old") and ring.current_key_id == "new"
    assert not (tmp_path / DEV_KEY_FILE).exists()


def test_development_generates_one_key_once(tmp_path: Path) -> None:
    settings = load_settings({"HERALD_DATA_DIR": str(tmp_path)})
    ring = keyring_for(settings)
    key_file = tmp_path / DEV_KEY_FILE
    assert key_file.exists() and oct(key_file.stat().st_mode & 0o777) == "0o600"
    key_id, sealed = ring.encrypt(b"kept", associated_data=AD)

    # Another process reads the same file, so it opens what this one sealed.
    from_file = Keyring([(DEV_KEY_ID, base64.urlsafe_b64decode(key_file.read_text()))])
    assert from_file.decrypt(key_id, sealed, associated_data=AD) == b"kept"
    assert keyring_for(settings) is ring


def test_keyed_digests_are_stable_keyed_and_survive_rotation() -> None:
    ring = Keyring([("k1", OLD)])
    digest = ring.digest(b"ada@example.com")
    assert digest == Keyring([("k1", OLD)]).digest(b"ada@example.com")
    # Hex of a keyed hash, not the address: the keys are random, so "ada" itself may occur
    # in the hex (about one run in 70), which is why no substring is asserted absent.
    assert len(digest) == 64 and set(digest) <= set("0123456789abcdef")
    assert digest != Keyring([("k1", NEW)]).digest(b"ada@example.com")
    assert digest != ring.digest(b"bob@example.com")
    # After a rotation new digests use the new key; the old one still matches.
    rotated = Keyring([("k2", NEW), ("k1", OLD)])
    assert rotated.digests(b"ada@example.com") == [rotated.digest(b"ada@example.com"), digest]


def test_audit_keys_are_configured_or_generated_once(tmp_path: Path) -> None:
    configured = audit_keys_for(
        load_settings(
            {
                "HERALD_DATA_DIR": str(tmp_path),
                "HERALD_AUDIT_KEYS": "a2:" + "A" * 43 + ",a1:" + "B" * 43,
            }
        )
    )
    assert configured.key_ids == ("a2", "a1") and configured.current_key_id == "a2"
    assert not (tmp_path / AUDIT_DEV_KEY_FILE).exists()

    generated = audit_keys_for(load_settings({"HERALD_DATA_DIR": str(tmp_path)}))
    key_file = tmp_path / AUDIT_DEV_KEY_FILE
    assert key_file.exists() and oct(key_file.stat().st_mode & 0o777) == "0o600"
    key = base64.urlsafe_b64decode(key_file.read_text())
    # Its id names the key, so entries from another data folder's key read as "unknown key".
    assert generated.key_ids == (f"local-{hashlib.sha256(key).hexdigest()[:8]}",)
    # Every process reading the folder signs alike.
    again = MacKeyring([(generated.current_key_id, key)], context=AUDIT_KEY_CONTEXT)
    assert again.sign(b"entry") == generated.sign(b"entry")


def test_mac_keys_sign_with_the_first_and_check_with_any() -> None:
    rotated = MacKeyring([("k2", NEW), ("k1", OLD)], context=AUDIT_KEY_CONTEXT)
    key_id, mac = MacKeyring([("k1", OLD)], context=AUDIT_KEY_CONTEXT).sign(b"entry")
    assert key_id == "k1" and rotated.mac("k1", b"entry") == mac
    assert rotated.sign(b"entry")[0] == "k2" and rotated.sign(b"entry")[1] != mac
    assert rotated.mac("k0", b"entry") is None
    # The configured bytes are not the MAC key: a MAC under the raw key does not match.
    assert mac != hmac.new(OLD, b"entry", hashlib.sha256).hexdigest()
    with pytest.raises(ValueError, match="32 bytes"):
        MacKeyring([("short", b"x")], context=AUDIT_KEY_CONTEXT)
