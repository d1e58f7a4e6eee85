"""API key format checks that need no database."""

from __future__ import annotations

from app.auth.keys import KEY_PATTERN, generate_secret, hash_key


def test_generated_secrets_match_the_documented_format() -> None:
    for mode in ("live", "test"):
        secret = generate_secret(mode)
        assert secret.startswith(f"hk_{mode}_")
        assert KEY_PATTERN.match(secret)


def test_secrets_are_unique_and_hashes_are_sha256() -> None:
    secrets = {generate_secret("live") for _ in range(1000)}
    assert len(secrets) == 1000
    assert len(hash_key(next(iter(secrets)))) == 32
