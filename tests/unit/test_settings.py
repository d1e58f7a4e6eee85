"""Settings: defaults, validation, and errors that name the variable at fault."""

from __future__ import annotations

import pytest

from app.settings import VARIABLES, SettingsError, load_settings

GOOD_KEY = "q" * 43  # url-safe base64 of 32 bytes


def test_defaults_need_nothing() -> None:
    settings = load_settings({})
    assert settings.env == "development"
    assert settings.database_url is None and settings.redis_url is None
    assert settings.port == 8000
    assert settings.public_url == "http://127.0.0.1:8000"
    assert settings.worker_queues == ("high", "normal", "low")
    assert settings.secure_cookies is False
    assert settings.trusted_proxy_hops == 0, "the direct peer is the client"
    assert settings.smtp_url is None and settings.password_hash_concurrency == 1


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("HERALD_PORT", "eighty", "whole number"),
        ("HERALD_PORT", "70000", "from 1 to 65535"),
        ("HERALD_ENV", "staging", "one of development, test, production"),
        ("DATABASE_URL", "mysql://x", "postgresql"),
        ("REDIS_URL", "http://x", "redis"),
        ("HERALD_SECRET_KEY", "short", "base64 of 32"),
        ("HERALD_SECRET_KEY", "c2hvcnQ", "got 5"),
        ("HERALD_API_KEY_CACHE_SECONDS", "5", "from 0 to 1"),
        ("HERALD_WORKER_QUEUES", "high,urgent", "comma-separated list"),
        ("HERALD_SECURE_COOKIES", "maybe", "true or false"),
        ("HERALD_LOG_FORMAT", "xml", "console, json"),
        ("HERALD_ENCRYPTION_KEYS", "nokid", "id:key pairs"),
        ("HERALD_AUDIT_KEYS", "nokid", "id:key pairs"),
        ("HERALD_AUDIT_KEYS", "k1:short", "base64 of 32"),
        ("HERALD_AUDIT_KEYS", f"a b:{GOOD_KEY}", "letters, digits"),
        ("HERALD_AUDIT_KEYS", f"{'k' * 65}:{GOOD_KEY}", "1 to 64"),
        ("HERALD_AUDIT_KEYS", f"k1:{GOOD_KEY},k1:{GOOD_KEY}", "once"),
        ("HERALD_PROVIDER_BASE_URLS", "sendgrid=ftp://x", "provider=URL"),
        ("HERALD_PASSWORD_HASH_CONCURRENCY", "0", "from 1 to 64"),
        ("HERALD_TRUSTED_PROXY_HOPS", "9", "from 0 to 5"),
        ("HERALD_SMTP_URL", "http://mail:25", "smtp://"),
        ("HERALD_SMTP_URL", "smtp://", "smtp://"),
        ("HERALD_SMTP_URL", "smtp://mail:99999", "port number"),
        ("HERALD_MAIL_FROM", "herald", "no-reply@example.com"),
        ("HERALD_MAIL_FROM", "a@b.example\r\nBcc: x@y.example", "no-reply@example.com"),
        ("HERALD_UNSUBSCRIBE_MAILTO", "Stop <stop@acme.example>", "bare address"),
        ("HERALD_UNSUBSCRIBE_MAILTO", "stop@acme.example?cc=x@y.example", "bare address"),
        ("HERALD_UNSUBSCRIBE_MAILTO", "stop@acme.example>, <https://x", "bare address"),
        ("HERALD_UNSUBSCRIBE_MAILTO", "stop@localhost", "bare address"),
    ],
)
def test_a_bad_value_names_its_variable(variable: str, value: str, expected: str) -> None:
    with pytest.raises(SettingsError) as raised:
        load_settings({variable: value})
    assert raised.value.variable == variable
    assert str(raised.value).startswith(f"{variable}: ")
    assert expected in str(raised.value)


@pytest.mark.parametrize(
    "missing",
    [
        "DATABASE_URL",
        "REDIS_URL",
        "HERALD_SECRET_KEY",
        "HERALD_ENCRYPTION_KEYS",
        "HERALD_AUDIT_KEYS",
    ],
)
def test_production_requires_real_services_and_a_secret(missing: str) -> None:
    environ = {
        "HERALD_ENV": "production",
        "DATABASE_URL": "postgresql://db/herald",
        "REDIS_URL": "redis://cache:6379/0",
        "HERALD_SECRET_KEY": GOOD_KEY,
        "HERALD_ENCRYPTION_KEYS": f"k1:{GOOD_KEY}",
        "HERALD_AUDIT_KEYS": f"a1:{GOOD_KEY}",
    }
    del environ[missing]
    with pytest.raises(SettingsError) as raised:
        load_settings(environ)
    assert raised.value.variable == missing


def test_production_defaults_to_secure_cookies() -> None:
    settings = load_settings(
        {
            "HERALD_ENV": "production",
            "DATABASE_URL": "postgresql://db/herald",
            "REDIS_URL": "redis://cache:6379/0",
            "HERALD_SECRET_KEY": GOOD_KEY,
            "HERALD_ENCRYPTION_KEYS": f"k2:{GOOD_KEY},k1:{GOOD_KEY}",
            "HERALD_AUDIT_KEYS": f"audit-2026.1:{GOOD_KEY},audit_2025:{GOOD_KEY}",
            "HERALD_AUDIT_ANCHOR_FILE": "/var/lib/herald/anchors.jsonl",
        }
    )
    assert settings.secure_cookies is True
    assert [kid for kid, _ in settings.encryption_keys or ()] == ["k2", "k1"]
    assert [kid for kid, _ in settings.audit_keys or ()] == ["audit-2026.1", "audit_2025"]
    assert str(settings.audit_anchor_file) == "/var/lib/herald/anchors.jsonl"
    assert len(settings.secret_key or b"") == 32


def test_the_unsubscribe_mailbox_is_optional() -> None:
    assert load_settings({}).unsubscribe_mailto is None
    chosen = load_settings({"HERALD_UNSUBSCRIBE_MAILTO": "stop+list@mail.acme.example"})
    assert chosen.unsubscribe_mailto == "stop+list@mail.acme.example"


def test_every_variable_is_documented_in_the_readme() -> None:
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    missing = [var.name for var in VARIABLES if f"`{var.name}`" not in readme]
    assert missing == []
