"""All of Herald's configuration, read from the environment in one place.

Every variable is validated when the settings are loaded; a wrong value stops the process
with a message that names the variable and says what it accepts.
"""

from __future__ import annotations

import base64
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from email.utils import parseaddr
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from app.tenants import plans

ENVIRONMENTS = ("development", "test", "production")
LOG_FORMATS = ("console", "json")
QUEUES = ("high", "normal", "low")


class SettingsError(ValueError):
    """A configuration value is missing or malformed."""

    def __init__(self, variable: str, problem: str) -> None:
        super().__init__(f"{variable}: {problem}")
        self.variable = variable


def _text(value: str) -> str:
    return value


def _int_in(low: int, high: int) -> Callable[[str], int]:
    def parse(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            raise ValueError(f"expected a whole number, got {value!r}") from None
        if not low <= number <= high:
            raise ValueError(f"expected a number from {low} to {high}, got {number}")
        return number

    return parse


def _float_in(low: float, high: float) -> Callable[[str], float]:
    def parse(value: str) -> float:
        try:
            number = float(value)
        except ValueError:
            raise ValueError(f"expected a number, got {value!r}") from None
        if not low <= number <= high:
            raise ValueError(f"expected a number from {low} to {high}, got {number}")
        return number

    return parse


def _one_of(choices: tuple[str, ...]) -> Callable[[str], str]:
    def parse(value: str) -> str:
        if value not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}, got {value!r}")
        return value

    return parse


def _bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true or false, got {value!r}")


def _url(schemes: tuple[str, ...]) -> Callable[[str], str]:
    def parse(value: str) -> str:
        scheme = value.split("://", 1)[0] if "://" in value else ""
        if scheme not in schemes:
            raise ValueError(f"expected a URL starting with {' or '.join(schemes)}://")
        return value

    return parse


def _secret_key(value: str) -> bytes:
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except ValueError:
        raise ValueError("expected url-safe base64 of 32 random bytes") from None
    if len(raw) != 32:
        raise ValueError(f"expected 32 bytes once decoded, got {len(raw)}")
    return raw


def _smtp_url(value: str) -> str:
    parsed = urlsplit(value)
    if parsed.scheme not in ("smtp", "smtps") or not parsed.hostname:
        raise ValueError("expected smtp://[user:password@]host[:port] or smtps://…")
    try:
        parsed.port  # noqa: B018 (a malformed port raises here)
    except ValueError:
        raise ValueError("expected a port number from 1 to 65535") from None
    return value


def _mail_from(value: str) -> str:
    _, address = parseaddr(value)
    if "@" not in address or any(c in value for c in "\r\n"):
        raise ValueError("expected an address such as 'Herald <no-reply@example.com>'")
    return value


_ATOM = r"[^@\s\x00-\x1f\x7f<>(),;:?&=%\"]+"
_MAILBOX = re.compile(rf"{_ATOM}@{_ATOM}\.{_ATOM}")


def _mailbox(value: str) -> str:
    # Goes into a mailto: URI inside a header: a bare address, nothing that would need
    # quoting or could end the URI or the header.
    if not _MAILBOX.fullmatch(value):
        raise ValueError("expected a bare address such as unsubscribe@example.com")
    return value


def _encryption_keys(value: str) -> tuple[tuple[str, bytes], ...]:
    keys = []
    for part in value.split(","):
        kid, sep, encoded = part.strip().partition(":")
        if not sep or not kid:
            raise ValueError("expected comma-separated id:key pairs, e.g. k1:<base64 of 32 bytes>")
        keys.append((kid, _secret_key(encoded)))
    return tuple(keys)


def _audit_keys(value: str) -> tuple[tuple[str, bytes], ...]:
    keys = _encryption_keys(value)
    ids = [kid for kid, _ in keys]
    for kid in ids:
        # Each audit row records its key id (64 characters at most), and the id is part of
        # what the MAC covers, separated by ":".
        if not re.fullmatch(r"[A-Za-z0-9._-]{1,64}", kid):
            raise ValueError(f"key id {kid!r}: 1 to 64 letters, digits, '.', '_' or '-'")
    if len(set(ids)) != len(ids):
        raise ValueError("each key id may appear once")
    return keys


# Receipt schemes that sign a timestamp, and how far from now it may be (seconds). SendGrid
# and Mailgun retry a failed POST for up to a day and 8 hours, SNS for an hour.
RECEIPT_TOLERANCES = {"sendgrid": 90_000, "mailgun": 28_800, "ses": 3_600, "webhook": 300}


def _tolerances(value: str) -> dict[str, int]:
    tolerances = dict(RECEIPT_TOLERANCES)
    for part in value.split(","):
        name, sep, seconds = part.strip().partition("=")
        if not sep or name not in RECEIPT_TOLERANCES or not seconds.isdigit():
            raise ValueError(
                f"expected comma-separated provider=seconds pairs, providers "
                f"{', '.join(RECEIPT_TOLERANCES)}"
            )
        if not 1 <= int(seconds) <= 7 * 86_400:
            raise ValueError(f"{name}: 1 to 604800 seconds")
        tolerances[name] = int(seconds)
    return tolerances


def _base_urls(value: str) -> dict[str, str]:
    urls = {}
    for part in value.split(","):
        name, sep, url = part.strip().partition("=")
        if not sep or not url.startswith(("http://", "https://")):
            raise ValueError("expected comma-separated provider=URL pairs, e.g. sendgrid=http://…")
        urls[name] = url.rstrip("/")
    return urls


def _stripe_key(value: str) -> str:
    if not value.startswith(("sk_live_", "sk_test_", "rk_live_", "rk_test_")):
        raise ValueError("expected a Stripe secret or restricted key (sk_… or rk_…)")
    return value


def _webhook_secret(value: str) -> str:
    if not value.startswith("whsec_"):
        raise ValueError("expected the endpoint's signing secret, whsec_…")
    return value


def _queues(value: str) -> tuple[str, ...]:
    names = tuple(part.strip() for part in value.split(",") if part.strip())
    unknown = [name for name in names if name not in QUEUES]
    if unknown or not names:
        raise ValueError(f"expected a comma-separated list of {', '.join(QUEUES)}")
    return names


@dataclass(frozen=True)
class Var:
    """One environment variable: its name, default, parser and meaning (for the README)."""

    name: str
    default: str | None
    parse: Callable[[str], Any]
    doc: str


VARIABLES: tuple[Var, ...] = (
    Var("HERALD_ENV", "development", _one_of(ENVIRONMENTS), "development, test or production"),
    Var(
        "DATABASE_URL",
        None,
        _url(("postgresql", "postgresql+asyncpg", "postgres")),
        "PostgreSQL URL; unset: an embedded PostgreSQL under HERALD_DATA_DIR",
    ),
    Var(
        "REDIS_URL",
        None,
        _url(("redis", "rediss", "unix")),
        "Redis URL; unset: an embedded Redis under HERALD_DATA_DIR",
    ),
    Var("HERALD_DATA_DIR", ".herald", _text, "folder for embedded services' data and dev state"),
    Var("HERALD_HOST", "127.0.0.1", _text, "address the API and dashboard listen on"),
    Var("HERALD_PORT", "8000", _int_in(1, 65535), "port the API and dashboard listen on"),
    Var(
        "HERALD_PUBLIC_URL",
        None,
        _url(("http", "https")),
        "URL at which users reach Herald; default http://HERALD_HOST:HERALD_PORT",
    ),
    Var(
        "HERALD_SECRET_KEY",
        None,
        _secret_key,
        "url-safe base64 of 32 bytes signing dashboard sessions; required in production "
        "(development: generated once into HERALD_DATA_DIR)",
    ),
    Var("HERALD_LOG_LEVEL", "info", _one_of(("debug", "info", "warning", "error")), "log level"),
    Var("HERALD_LOG_FORMAT", "console", _one_of(LOG_FORMATS), "console or json log lines"),
    Var(
        "HERALD_MAX_BODY_BYTES",
        "1048576",
        _int_in(1024, 64 * 1024 * 1024),
        "largest request body accepted (413 above)",
    ),
    Var(
        "HERALD_API_KEY_CACHE_SECONDS",
        "1",
        _float_in(0, 1),
        "how long a process trusts a looked-up API key (revocation takes effect within it)",
    ),
    Var(
        "HERALD_SIGNIN_MAX_FAILURES",
        "5",
        _int_in(1, 100),
        "failed dashboard sign-ins for one e-mail from one network before each further "
        "attempt from there must wait (a delay that doubles with every failure)",
    ),
    Var(
        "HERALD_SIGNIN_LOCKOUT_SECONDS",
        "900",
        _int_in(1, 86400),
        "the longest such delay between sign-in attempts for one e-mail from one network",
    ),
    Var(
        "HERALD_PASSWORD_HASH_CONCURRENCY",
        "1",
        _int_in(1, 64),
        "password hashes (argon2, 64 MiB and ~4 threads each) computed at once per API "
        "process; further sign-ins wait their turn off the event loop",
    ),
    Var(
        "HERALD_TRUSTED_PROXY_HOPS",
        "0",
        _int_in(0, 5),
        "reverse proxies in front of Herald that append to X-Forwarded-For; 0: a client is "
        "its direct peer; 1 on fly.io or behind one load balancer",
    ),
    Var(
        "HERALD_SMTP_URL",
        None,
        _smtp_url,
        "SMTP server for Herald's own mail (e-mail verification), e.g. "
        "smtp://user:password@mail:587 (STARTTLS when offered) or smtps://…:465; unset: the "
        "links are written to the log",
    ),
    Var(
        "HERALD_MAIL_FROM",
        "Herald <no-reply@localhost>",
        _mail_from,
        "From address of Herald's own mail",
    ),
    Var(
        "HERALD_UNSUBSCRIBE_MAILTO",
        None,
        _mailbox,
        "address added as a mailto: to the List-Unsubscribe header of non-critical e-mail "
        "(subject unsubscribe-<token>); Herald does not read that mailbox: the operator "
        "handles what arrives there; unset: the HTTPS link only",
    ),
    Var(
        "HERALD_WORKER_QUEUES",
        "high,normal,low",
        _queues,
        "queues a `herald worker` serves when --queues is not given",
    ),
    Var(
        "HERALD_ENCRYPTION_KEYS",
        None,
        _encryption_keys,
        "id:key pairs (key: url-safe base64 of 32 bytes) encrypting provider credentials; the "
        "first encrypts, all decrypt; required in production (development: generated once)",
    ),
    Var(
        "HERALD_AUDIT_KEYS",
        None,
        _audit_keys,
        "id:key pairs (key: url-safe base64 of 32 bytes) chaining the audit log with "
        "HMAC-SHA256; the first signs, all verify; required in production (development: "
        "generated once)",
    ),
    Var(
        "HERALD_AUDIT_ANCHOR_FILE",
        None,
        _text,
        "file `herald audit anchor` appends chain heads to and `herald audit verify` checks; "
        "unset: only the --output / --anchors options",
    ),
    Var(
        "HERALD_ALLOW_PRIVATE_URLS",
        "false",
        _bool,
        "let webhook URLs and single sign-on providers resolve to private, loopback or "
        "link-local addresses, and providers on loopback use plain http (tests, on-premise)",
    ),
    Var(
        "HERALD_PROVIDER_BASE_URLS",
        None,
        _base_urls,
        "operator override of provider API endpoints, e.g. sendgrid=http://127.0.0.1:9000",
    ),
    Var(
        "HERALD_RECEIPT_TOLERANCES",
        None,
        _tolerances,
        "how far a signed receipt's timestamp may be from now, in seconds, per provider: "
        "defaults sendgrid=90000,mailgun=28800,ses=3600,webhook=300",
    ),
    Var(
        "HERALD_OTLP_ENDPOINT",
        None,
        _url(("http", "https")),
        "OpenTelemetry collector (OTLP/HTTP) receiving traces, e.g. http://otel:4318; unset: "
        "no tracing",
    ),
    Var(
        "HERALD_TRACE_SAMPLE_RATIO",
        "1",
        _float_in(0, 1),
        "share of API requests traced (with their dispatch and deliveries) when tracing is on",
    ),
    Var(
        "HERALD_BULK_WORKER_NICENESS",
        "10",
        _int_in(0, 19),
        "niceness a `herald worker` of no high queue runs at (0: as any process): on a machine "
        "it shares with the API and the high lane, campaigns get the CPU those leave",
    ),
    Var(
        "HERALD_WORKER_METRICS_PORT",
        None,
        _int_in(1, 65535),
        "port on which `herald worker` serves Prometheus /metrics (on HERALD_HOST); unset: none",
    ),
    Var(
        "HERALD_RENDER_PROCESSES",
        "2",
        _int_in(1, 64),
        "render processes per API process and per `herald worker` (tenant templates render "
        "there, killed at their deadline)",
    ),
    Var(
        "HERALD_RENDER_MEMORY_MB",
        "512",
        _int_in(128, 65536),
        "address space each render process may use (RLIMIT_AS), in MiB",
    ),
    Var(
        "HERALD_PLANS_FILE",
        None,
        _text,
        "the operator's plans (TOML: rates, monthly quotas, overage per plan); unset: the "
        "shipped app/tenants/plans.toml",
    ),
    Var(
        "HERALD_METERING",
        "on",
        _bool,
        "count live messages per tenant and month in Redis (usage and quotas); off: no "
        "counting and no quota enforcement",
    ),
    Var(
        "HERALD_STRIPE_SECRET_KEY",
        None,
        _stripe_key,
        "Stripe secret key (sk_live_…/sk_test_…); with HERALD_STRIPE_WEBHOOK_SECRET it turns "
        "billing on; unset: billing is off",
    ),
    Var(
        "HERALD_STRIPE_WEBHOOK_SECRET",
        None,
        _webhook_secret,
        "signing secret (whsec_…) of the Stripe webhook endpoint <public URL>/webhooks/stripe",
    ),
    Var(
        "HERALD_STRIPE_API_BASE",
        None,
        _url(("http", "https")),
        "where the Stripe SDK sends API requests; unset: Stripe's own (tests point it elsewhere)",
    ),
    Var(
        "HERALD_STRIPE_METER_EVENT",
        "herald_overage",
        _text,
        "event name of the Stripe billing meter that overage is reported to",
    ),
    Var(
        "HERALD_BILLING_DEFAULT_PLAN",
        "free",
        _text,
        "plan of a tenant without a paid subscription (or whose grace period ran out)",
    ),
    Var(
        "HERALD_BILLING_GRACE_DAYS",
        "7",
        _int_in(0, 90),
        "days a tenant keeps its paid plan after a failed payment before going down to the "
        "default plan",
    ),
    Var(
        "HERALD_SECURE_COOKIES",
        None,
        _bool,
        "mark dashboard cookies Secure; default true in production, false otherwise",
    ),
)


@dataclass(frozen=True)
class Settings:
    env: str
    database_url: str | None
    redis_url: str | None
    data_dir: Path
    host: str
    port: int
    public_url: str
    secret_key: bytes | None
    log_level: str
    log_format: str
    max_body_bytes: int
    api_key_cache_seconds: float
    signin_max_failures: int
    signin_lockout_seconds: int
    worker_queues: tuple[str, ...]
    secure_cookies: bool
    encryption_keys: tuple[tuple[str, bytes], ...] | None
    allow_private_urls: bool
    provider_base_urls: dict[str, str]
    receipt_tolerances: dict[str, int] = field(default_factory=lambda: dict(RECEIPT_TOLERANCES))
    otlp_endpoint: str | None = None
    trace_sample_ratio: float = 1.0
    worker_metrics_port: int | None = None
    bulk_worker_niceness: int = 10
    audit_keys: tuple[tuple[str, bytes], ...] | None = None
    audit_anchor_file: Path | None = None
    render_processes: int = 2
    render_memory_mb: int = 512
    password_hash_concurrency: int = 1
    trusted_proxy_hops: int = 0
    smtp_url: str | None = None
    mail_from: str = "Herald <no-reply@localhost>"
    unsubscribe_mailto: str | None = None
    plans_file: Path | None = None
    metering: bool = True
    stripe_secret_key: str | None = None
    stripe_webhook_secret: str | None = None
    stripe_api_base: str | None = None
    stripe_meter_event: str = "herald_overage"
    billing_default_plan: str = "free"
    billing_grace_days: int = 7


# Variables Herald read once. Left set, each stops the process rather than be ignored: a
# deployment still naming its prices there would sell nothing, and every subscription event
# would move paying tenants to the default plan.
RETIRED = {
    "HERALD_STRIPE_PRICES": "name each plan's Stripe price as stripe_price_id in the plans "
    "file (HERALD_PLANS_FILE; docs/operations/plans.md)",
}


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Read and validate every variable; raise SettingsError naming the first bad one."""
    source = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for var in VARIABLES:
        raw = source.get(var.name)
        if raw is None or raw == "":
            values[var.name] = None if var.default is None else var.parse(var.default)
            continue
        try:
            values[var.name] = var.parse(raw)
        except ValueError as error:
            raise SettingsError(var.name, str(error)) from None

    env = values["HERALD_ENV"]
    if env == "production":
        for required in (
            "DATABASE_URL",
            "REDIS_URL",
            "HERALD_SECRET_KEY",
            "HERALD_ENCRYPTION_KEYS",
            "HERALD_AUDIT_KEYS",
        ):
            if values[required] is None:
                raise SettingsError(required, "must be set when HERALD_ENV=production")
    for name, instead in RETIRED.items():
        if source.get(name):
            raise SettingsError(name, f"is no longer read: {instead}")
    # Half a Stripe configuration would take payments it never hears about, or the reverse.
    stripe_pair = ("HERALD_STRIPE_SECRET_KEY", "HERALD_STRIPE_WEBHOOK_SECRET")
    for one, other in (stripe_pair, stripe_pair[::-1]):
        if values[one] is not None and values[other] is None:
            raise SettingsError(other, f"must be set when {one} is (billing needs both)")
    secure = values["HERALD_SECURE_COOKIES"]
    plans_file = Path(values["HERALD_PLANS_FILE"]) if values["HERALD_PLANS_FILE"] else None
    try:
        # Validated here, at start-up: a bad plans file stops the process with its reason.
        plans.configure(plans_file, values["HERALD_BILLING_DEFAULT_PLAN"])
    except plans.PlansFileError as error:
        name = "HERALD_PLANS_FILE" if plans_file else "HERALD_BILLING_DEFAULT_PLAN"
        raise SettingsError(name, str(error)) from None
    host, port = values["HERALD_HOST"], values["HERALD_PORT"]
    return Settings(
        env=env,
        database_url=values["DATABASE_URL"],
        redis_url=values["REDIS_URL"],
        data_dir=Path(values["HERALD_DATA_DIR"]).resolve(),
        host=host,
        port=port,
        public_url=(values["HERALD_PUBLIC_URL"] or f"http://{host}:{port}").rstrip("/"),
        secret_key=values["HERALD_SECRET_KEY"],
        log_level=values["HERALD_LOG_LEVEL"],
        log_format=values["HERALD_LOG_FORMAT"],
        max_body_bytes=values["HERALD_MAX_BODY_BYTES"],
        api_key_cache_seconds=values["HERALD_API_KEY_CACHE_SECONDS"],
        signin_max_failures=values["HERALD_SIGNIN_MAX_FAILURES"],
        signin_lockout_seconds=values["HERALD_SIGNIN_LOCKOUT_SECONDS"],
        worker_queues=values["HERALD_WORKER_QUEUES"],
        secure_cookies=(env == "production") if secure is None else secure,
        encryption_keys=values["HERALD_ENCRYPTION_KEYS"],
        allow_private_urls=values["HERALD_ALLOW_PRIVATE_URLS"],
        provider_base_urls=values["HERALD_PROVIDER_BASE_URLS"] or {},
        receipt_tolerances=values["HERALD_RECEIPT_TOLERANCES"] or dict(RECEIPT_TOLERANCES),
        otlp_endpoint=values["HERALD_OTLP_ENDPOINT"],
        trace_sample_ratio=values["HERALD_TRACE_SAMPLE_RATIO"],
        worker_metrics_port=values["HERALD_WORKER_METRICS_PORT"],
        bulk_worker_niceness=values["HERALD_BULK_WORKER_NICENESS"],
        audit_keys=values["HERALD_AUDIT_KEYS"],
        audit_anchor_file=(
            Path(values["HERALD_AUDIT_ANCHOR_FILE"]) if values["HERALD_AUDIT_ANCHOR_FILE"] else None
        ),
        render_processes=values["HERALD_RENDER_PROCESSES"],
        render_memory_mb=values["HERALD_RENDER_MEMORY_MB"],
        password_hash_concurrency=values["HERALD_PASSWORD_HASH_CONCURRENCY"],
        trusted_proxy_hops=values["HERALD_TRUSTED_PROXY_HOPS"],
        smtp_url=values["HERALD_SMTP_URL"],
        mail_from=values["HERALD_MAIL_FROM"],
        unsubscribe_mailto=values["HERALD_UNSUBSCRIBE_MAILTO"],
        plans_file=plans_file,
        metering=values["HERALD_METERING"],
        stripe_secret_key=values["HERALD_STRIPE_SECRET_KEY"],
        stripe_webhook_secret=values["HERALD_STRIPE_WEBHOOK_SECRET"],
        stripe_api_base=(values["HERALD_STRIPE_API_BASE"] or "").rstrip("/") or None,
        stripe_meter_event=values["HERALD_STRIPE_METER_EVENT"],
        billing_default_plan=values["HERALD_BILLING_DEFAULT_PLAN"],
        billing_grace_days=values["HERALD_BILLING_GRACE_DAYS"],
    )
