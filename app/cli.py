"""The `herald` command: dev, api, worker, migrate, tenant, audit, keys and openapi."""

from __future__ import annotations

import asyncio
import atexit
import dataclasses
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click
import httpx

from app.settings import QUEUES, Settings, SettingsError, load_settings
from app.tenants.plans import plan_names

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

T = TypeVar("T")
ROOT = Path(__file__).resolve().parent.parent
METRICS_DIR = "PROMETHEUS_MULTIPROC_DIR"


def _settings() -> Settings:
    try:
        return load_settings()
    except SettingsError as error:
        raise click.UsageError(f"configuration error: {error}") from None


def _with_services(settings: Settings) -> Settings:
    """Settings whose URLs are set: embedded services are started (and stopped at exit)."""
    from app.runtime import EmbeddedServices, EmbeddedServicesMissing

    if settings.database_url and settings.redis_url:
        return settings
    embedded = EmbeddedServices(settings.data_dir, settings.database_url, settings.redis_url)
    try:
        urls = embedded.start()
    except EmbeddedServicesMissing as error:
        raise click.UsageError(str(error)) from None
    atexit.register(embedded.stop)
    return dataclasses.replace(settings, database_url=urls.database_url, redis_url=urls.redis_url)


def _migrated() -> Settings:
    from app.migrate import upgrade

    settings = _with_services(_settings())
    upgrade(_database_url(settings))
    _after_upgrade(settings)
    return settings


def _after_upgrade(settings: Settings) -> None:
    """The data steps that need keys, which migrations do not have; each is idempotent.

    Chains still ending in a legacy (unkeyed) audit entry get a keyed entry sealing them,
    and credential fingerprints not yet keyed are replaced (no re-encryption: that is
    `herald keys rotate-encryption`, run when every process has the new key).
    """
    from app.audit.service import seal_legacy_chains
    from app.crypto import audit_keys_for, keyring_for
    from app.providers.rotation import rotate

    audit_keys, ring = audit_keys_for(settings), keyring_for(settings)
    sealed = _in_session(settings, lambda session: seal_legacy_chains(session, keys=audit_keys))
    report = _in_session(settings, lambda session: rotate(session, ring, reseal=False))
    if sealed:
        click.echo(f"sealed {sealed} audit chains of legacy entries with a keyed entry")
    if report.fingerprinted:
        click.echo(f"replaced {report.fingerprinted} provider credential fingerprints")
    if report.unreadable:
        click.echo(
            f"{len(report.unreadable)} provider configs cannot be opened with "
            "HERALD_ENCRYPTION_KEYS; their fingerprints are left as they are",
            err=True,
        )


def _in_session(settings: Settings, task: Callable[[AsyncSession], Awaitable[T]]) -> T:
    """Run `task` with a database session of its own, and close everything after."""
    from app.db import create_engine, session_factory
    from app.models import load_all

    load_all()  # foreign keys resolve against every table

    async def run() -> T:
        engine = create_engine(_database_url(settings), pool=False)
        try:
            async with session_factory(engine)() as session:
                return await task(session)
        finally:
            await engine.dispose()

    return asyncio.run(run())


def _share_metrics(settings: Settings) -> None:
    """Let this process's children keep their Prometheus metrics in one folder (the client
    library's multiprocess mode), unless the operator chose one already."""
    if os.environ.get(METRICS_DIR):
        return
    folder = settings.data_dir / "metrics" / str(os.getpid())
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    os.environ[METRICS_DIR] = str(folder)


def _database_url(settings: Settings) -> str:
    assert settings.database_url is not None
    return settings.database_url


@click.group()
def main() -> None:
    """Herald: a multi-tenant notification API."""


@main.command()
def migrate() -> None:
    """Upgrade the database schema to the newest migration."""
    _migrated()
    click.echo("database schema is up to date")


@main.command()
@click.option("--host", default=None, help="Listen address (default HERALD_HOST).")
@click.option("--port", type=int, default=None, help="Listen port (default HERALD_PORT).")
@click.option("--workers", type=click.IntRange(1, 64), default=1, help="Server processes.")
def api(host: str | None, port: int | None, workers: int) -> None:
    """Serve the REST API and the dashboard."""
    import uvicorn

    from app.main import create_app

    settings = _with_services(_settings())
    options: dict[str, Any] = {
        "host": host or settings.host,
        "port": port or settings.port,
        # The dashboard works out client addresses itself (HERALD_TRUSTED_PROXY_HOPS);
        # uvicorn's own rewriting would trust X-Forwarded-For from any local peer.
        "proxy_headers": False,
        "log_level": "warning",
        "access_log": False,
    }
    if workers == 1:
        uvicorn.run(create_app(settings), **options)
        return
    # Worker processes build their own app from the environment: hand them the services,
    # and a folder where their metrics add up, so /metrics counts every process.
    os.environ.update(DATABASE_URL=_database_url(settings), REDIS_URL=settings.redis_url or "")
    _share_metrics(settings)
    # Each process listens on a socket of its own (app/api_processes.py), not uvicorn's
    # shared one: the kernel spreads connections evenly among them.
    from app.api_processes import serve

    host, port = options.pop("host"), options.pop("port")
    sys.exit(serve(host, port, workers, options))


@main.command()
@click.option(
    "--queues", default=None, help="Comma-separated queues (default HERALD_WORKER_QUEUES)."
)
def worker(queues: str | None) -> None:
    """Run workers for the given priority queues."""
    from app.observability.logging import configure_logging
    from jobs.worker import run_workers

    settings = _with_services(_settings())
    names = tuple(q.strip() for q in queues.split(",")) if queues else settings.worker_queues
    unknown = [q for q in names if q not in QUEUES]
    if unknown:
        raise click.BadParameter(f"unknown queue {', '.join(unknown)}; use {', '.join(QUEUES)}")
    configure_logging(settings.log_level, settings.log_format)
    assert settings.redis_url is not None
    asyncio.run(run_workers(settings, _database_url(settings), settings.redis_url, names))


@main.group()
def tenant() -> None:
    """Manage tenants."""


@tenant.command("create")
@click.argument("name")
@click.option("--mode", type=click.Choice(["live", "test"]), default="live", show_default=True)
def tenant_create(name: str, mode: str) -> None:
    """Create a tenant and print its first API key (shown once)."""
    from app.seed import create_tenant_with_key

    settings = _with_services(_settings())
    tenant_id, secret = asyncio.run(create_tenant_with_key(_database_url(settings), name, mode))
    click.echo(f"tenant  {tenant_id}\napi key {secret}   (shown once; store it now)")


@main.group()
def usage() -> None:
    """Usage counts (messages per tenant, month and channel)."""


def _period(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    if value is not None and not re.fullmatch(r"\d{4}-(0[1-9]|1[0-2])", value):
        raise click.BadParameter("a month, YYYY-MM")
    return value


@usage.command("rebuild")
@click.option("--tenant", "tenant_id", type=click.UUID, default=None, help="Only this tenant.")
@click.option("--period", default=None, callback=_period, help="Only this month (YYYY-MM).")
def usage_rebuild(tenant_id: uuid.UUID | None, period: str | None) -> None:
    """Recount usage from the messages table (after a lost Redis, say)."""
    from redis.asyncio import Redis

    from app import billing
    from app.db import create_engine, session_factory
    from app.models import load_all
    from app.usage import service
    from app.usage.meter import Meter

    settings = _with_services(_settings())
    load_all()

    async def run() -> int:
        engine = create_engine(_database_url(settings), pool=False)
        assert settings.redis_url is not None
        redis = Redis.from_url(settings.redis_url)
        try:
            return await service.rebuild(
                session_factory(engine),
                Meter(redis),
                tenant_id=tenant_id,
                period=period,
                bill_overage=billing.enabled(settings),
            )
        finally:
            await redis.aclose()
            await engine.dispose()

    rows = asyncio.run(run())
    click.echo(f"rebuilt {rows} usage counts from messages")


@main.group()
def audit() -> None:
    """Verify the audit log and export its anchors."""


@audit.command("verify")
@click.option("--tenant", "tenant_id", type=click.UUID, default=None, help="Only this chain.")
@click.option(
    "--anchors",
    "anchor_file",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Anchors to check against (default HERALD_AUDIT_ANCHOR_FILE).",
)
def audit_verify(tenant_id: uuid.UUID | None, anchor_file: Path | None) -> None:
    """Check the audit chains, and that no anchored entry is missing or changed.

    Exit 0: intact; 1: a chain is broken (each named at its first broken entry);
    2: the anchors or the configuration cannot be read.
    """
    from app.audit import anchors
    from app.audit.service import check
    from app.crypto import audit_keys_for

    settings = _settings()
    path = anchor_file or settings.audit_anchor_file
    anchored = None
    if path is not None:
        try:
            anchored = anchors.read(path)
        except anchors.AnchorFileError as error:
            click.echo(f"error: {error}", err=True)
            sys.exit(2)
    settings = _with_services(settings)
    keys = audit_keys_for(settings)
    result = _in_session(
        settings,
        lambda session: check(session, tenant_id=tenant_id, keys=keys, anchors=anchored),
    )
    for item in result.breaks:
        click.echo(f"BROKEN tenant {item.tenant_id} at entry {item.seq}: {item.reason}", err=True)
    if result.breaks:
        sys.exit(1)
    checked = (
        f"{result.anchored_entries} anchored entries present"
        if path is not None
        else "no anchors given (--anchors or HERALD_AUDIT_ANCHOR_FILE)"
    )
    click.echo(
        f"audit log intact: {result.chains} chains, {result.entries} entries "
        f"({result.legacy_entries} legacy); {checked}"
    )


@audit.command("anchor")
@click.option("--tenant", "tenant_id", type=click.UUID, default=None, help="Only this chain.")
@click.option(
    "--output",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Append the anchors to this file (default HERALD_AUDIT_ANCHOR_FILE).",
)
def audit_anchor(tenant_id: uuid.UUID | None, output: Path | None) -> None:
    """Print each chain's head (tenant, seq, MAC, time) as JSON lines, and append them to a
    file to keep where the database's users cannot write."""
    from app.audit import anchors
    from app.audit.service import heads
    from app.db import utcnow

    settings = _with_services(_settings())
    found = _in_session(settings, lambda session: heads(session, tenant_id=tenant_id))
    now = utcnow()
    lines = [anchors.line(head, now) for head in found]
    for text in lines:
        click.echo(text)
    path = output or settings.audit_anchor_file
    if path is not None:
        try:
            anchors.append(path, lines)
        except OSError as error:
            click.echo(f"error: cannot append to {path}: {error}", err=True)
            sys.exit(2)
        click.echo(f"appended {len(lines)} anchors to {path}", err=True)


@main.group()
def keys() -> None:
    """Manage the keys that protect secrets at rest."""


@keys.command("rotate-encryption")
@click.option("--batch-size", type=click.IntRange(1, 10_000), default=200, show_default=True)
def keys_rotate_encryption(batch_size: int) -> None:
    """Re-encrypt every provider credential under the first HERALD_ENCRYPTION_KEYS key.

    Run it once every API and worker process has the new key configured; it is safe to
    re-run and to run while they serve. Exit 1 when some credentials open with no key.
    """
    from app.crypto import keyring_for
    from app.providers.rotation import rotate

    settings = _with_services(_settings())
    ring = keyring_for(settings)
    report = _in_session(settings, lambda session: rotate(session, ring, batch_size=batch_size))
    click.echo(
        f"provider configs: {report.checked} checked, {report.resealed} re-encrypted under "
        f"key {ring.current_key_id!r}, {report.fingerprinted} fingerprints replaced, "
        f"{report.current} already current"
    )
    if report.unreadable:
        for config_id in report.unreadable:
            click.echo(f"UNREADABLE provider config {config_id}", err=True)
        click.echo(
            f"{len(report.unreadable)} configs open with no configured key: keep the keys "
            "they were sealed with, or have their tenants send the credentials again",
            err=True,
        )
        sys.exit(1)
    retired = [key_id for key_id in ring.key_ids if key_id != ring.current_key_id]
    if retired:
        click.echo(
            f"no provider credential needs {', '.join(map(repr, retired))} any more "
            "(erased suppressions may: see README, Key rotation)"
        )


@main.command()
@click.option(
    "--output", type=click.Path(path_type=Path), default=ROOT / "docs/openapi/openapi.json"
)
def openapi(output: Path) -> None:
    """Write the OpenAPI document of the REST API."""
    from app.openapi import openapi_document

    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(openapi_document())
    click.echo(f"wrote {output}")


@main.group()
def bench() -> None:
    """Benchmarks that print figures (not tests), each with its ratio to a ceiling.

    Every bench runs in a database of its own (created on the configured server, dropped
    afterwards) and first measures the machine's ceilings, so that its figures can be
    compared across machines as ratios.
    """


JSON_OPTION = click.option("--json", "as_json", is_flag=True, help="Print JSON, not a table.")
API_PROCESSES_OPTION = click.option(
    "--api-processes", default=2, show_default=True, help="API server processes (ingest)."
)


def _bench(
    stages: int, as_json: bool, api_processes: int, *benches: Callable[[Settings, Any], Any]
) -> None:
    """Ceilings, then each bench (a function of settings and progress returning a Section,
    or a list of them; a section named `ceilings` adds to the ceilings)."""
    from bench import ceilings
    from bench.common import dedicated_database
    from bench.report import Progress, Report, print_json

    settings = _with_services(_settings())
    # Stopped from outside, the run still drops its database and stops its processes.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    progress = Progress(stages + 5)
    report = Report()
    try:
        with dedicated_database(settings) as isolated:
            report.ceilings = ceilings.measure(isolated, progress, api_processes=api_processes)
            for run in benches:
                found = run(isolated, progress)
                for part in found if isinstance(found, list) else [found]:
                    report.add(part)
    finally:
        progress.close()
    if as_json:
        print_json(report)
    else:
        report.print_table()


@bench.command("ceilings")
@API_PROCESSES_OPTION
@JSON_OPTION
def bench_ceilings(api_processes: int, as_json: bool) -> None:
    """The machine's ceilings alone: PostgreSQL, Redis, /healthz."""
    _bench(0, as_json, api_processes)


def _ingest(
    seconds: int, connections: int, api_processes: int, profile: Path | None = None
) -> Callable[[Settings, Any], Any]:
    from bench import ingest

    def run(settings: Settings, progress: Any) -> Any:
        return ingest.run(
            settings,
            progress,
            seconds=seconds,
            connections=connections,
            api_processes=api_processes,
            profile=profile,
        )

    return run


def _e2e(
    recipients: int, workers: int, timeout: float, profile: Path | None = None
) -> Callable[[Settings, Any], Any]:
    from bench import e2e

    def run(settings: Settings, progress: Any) -> Any:
        return e2e.run(
            settings,
            progress,
            recipients=recipients,
            workers=workers,
            timeout=timeout,
            profile=profile,
        )

    return run


def _ratelimit(
    rate: float, burst: int, seconds: int, workers: int
) -> Callable[[Settings, Any], Any]:
    from bench import ratelimit

    def run(settings: Settings, progress: Any) -> Any:
        return ratelimit.run(
            settings, progress, rate=rate, burst=burst, seconds=seconds, workers=workers
        )

    return run


@bench.command("ingest")
@click.option("--seconds", default=15, show_default=True)
@click.option("--connections", default=64, show_default=True)
@click.option(
    "--profile",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Serve with one API process under cProfile, writing DIR/api.prof "
    "(with --metered: DIR/on/api.prof and DIR/off/api.prof).",
)
@click.option(
    "--metered",
    is_flag=True,
    help="A live key on a plan blocking at a quota, run with usage metering on and off, "
    "alternately, and metering's cost (at most 5 %).",
)
@click.option(
    "--rounds", default=2, show_default=True, help="With --metered: runs of each, alternating."
)
@API_PROCESSES_OPTION
@JSON_OPTION
def bench_ingest(
    seconds: int,
    connections: int,
    profile: Path | None,
    metered: bool,
    rounds: int,
    api_processes: int,
    as_json: bool,
) -> None:
    """Single POST /v1/notifications: accepted and committed per second (uses wrk)."""
    if not metered:
        _bench(2, as_json, api_processes, _ingest(seconds, connections, api_processes, profile))
        return
    from bench import ingest

    def run(settings: Settings, progress: Any) -> Any:
        return ingest.metered(
            settings,
            progress,
            seconds=seconds,
            connections=connections,
            api_processes=api_processes,
            rounds=rounds,
            profile=profile,
        )

    _bench(4 * rounds, as_json, api_processes, run)


@bench.command("e2e")
@click.option("--recipients", default=20_000, show_default=True)
@click.option("--workers", default=2, show_default=True)
@click.option("--timeout", default=300.0, show_default=True)
@click.option(
    "--profile",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Run the workers under cProfile, writing DIR/worker-N.prof.",
)
@API_PROCESSES_OPTION
@JSON_OPTION
def bench_e2e(
    recipients: int,
    workers: int,
    timeout: float,
    profile: Path | None,
    api_processes: int,
    as_json: bool,
) -> None:
    """N recipients through dispatch and delivery on the sandbox: messages/s, latency."""
    _bench(3, as_json, api_processes, _e2e(recipients, workers, timeout, profile))


@bench.command("ratelimit")
@click.option("--rate", default=200.0, show_default=True, help="The provider's messages/s.")
@click.option("--burst", default=20, show_default=True)
@click.option("--seconds", default=60, show_default=True, help="Backlog, in seconds at rate.")
@click.option("--workers", default=4, show_default=True)
@API_PROCESSES_OPTION
@JSON_OPTION
def bench_ratelimit(
    rate: float, burst: int, seconds: int, workers: int, api_processes: int, as_json: bool
) -> None:
    """Worker processes sharing one provider's bucket: achieved rate against the contract."""
    _bench(3, as_json, api_processes, _ratelimit(rate, burst, seconds, workers))


def _fanout(options: Any) -> Callable[[Settings, Any], Any]:
    from bench import fanout

    def run(settings: Settings, progress: Any) -> Any:
        return fanout.run(settings, progress, options)

    return run


@bench.command("fanout")
@click.option("--recipients", default=1_000_000, show_default=True, help="Tenant A's recipients.")
@click.option(
    "--a-plan",
    "a_plans",
    multiple=True,
    type=click.Choice(plan_names()),
    default=("enterprise", "growth"),
    show_default=True,
    help="A's plan, which sets its send rate; one run per plan (repeatable). enterprise "
    "(20,000/s): the workers are the limit; growth (1,000/s): A's send bucket is.",
)
@click.option(
    "--workers",
    default=2,
    show_default=True,
    help="Worker processes of the normal and low queues (of all three with --high-workers 0).",
)
@click.option(
    "--high-workers",
    default=1,
    show_default=True,
    help="Worker processes of the high queue alone (fly.toml's priority lane).",
)
@click.option(
    "--drain-seconds", default=60.0, show_default=True, help="Drain watched once materialised."
)
@click.option(
    "--stream-rate", default=5.0, show_default=True, help="Notifications/s of each stream."
)
@click.option(
    "--audience",
    type=click.Choice(["all", "list"]),
    default="all",
    show_default=True,
    help='The broadcast as {"all": true}, or as notifications of 1,000 recipients by id.',
)
@click.option(
    "--timeout", default=600.0, show_default=True, help="Seconds to wait for materialisation."
)
@API_PROCESSES_OPTION
@JSON_OPTION
def bench_fanout(
    recipients: int,
    a_plans: tuple[str, ...],
    workers: int,
    high_workers: int,
    drain_seconds: float,
    stream_rate: float,
    audience: str,
    timeout: float,
    api_processes: int,
    as_json: bool,
) -> None:
    """A broadcast to A's N recipients while A, B and C send single notifications:
    materialise time, delivered/s, peak RSS, the streams' accept→sent, against targets."""
    from bench import fanout

    options = fanout.Options(
        recipients=recipients,
        plans=tuple(dict.fromkeys(a_plans)),
        workers=workers,
        high_workers=high_workers,
        drain_seconds=drain_seconds,
        stream_rate=stream_rate,
        audience="all" if audience == "all" else "list",
        timeout=timeout,
    )
    _bench(fanout.stages(options), as_json, api_processes, _fanout(options))


@bench.command("receipts")
@click.option(
    "--messages",
    default=200_000,
    show_default=True,
    type=click.IntRange(1, 10_000_000),
    help="Sent messages seeded (COPY) for the events to name.",
)
@click.option(
    "--batch",
    default=1_000,
    show_default=True,
    type=click.IntRange(1, 10_000),
    help="Events per SendGrid request.",
)
@click.option(
    "--rate",
    default=1.0,
    show_default=True,
    type=click.FloatRange(0.01, 1_000.0),
    help="Batches per second offered, on a fixed schedule.",
)
@click.option("--seconds", default=30, show_default=True, type=click.IntRange(1, 3_600))
@click.option(
    "--flood",
    is_flag=True,
    help="Post batches back to back from --connections connections (the most one process "
    "takes), not at --rate.",
)
@click.option(
    "--connections",
    default=4,
    show_default=True,
    type=click.IntRange(1, 64),
    help="Batches in flight at once with --flood.",
)
@JSON_OPTION
def bench_receipts(
    messages: int,
    batch: int,
    rate: float,
    seconds: int,
    flood: bool,
    connections: int,
    as_json: bool,
) -> None:
    """SendGrid event batches, signed, posted to one API process: events/s taken, batch
    latency, the share of the offered load kept up with; nothing lost nor taken twice."""
    from bench import receipts

    options = receipts.Options(
        messages=messages,
        batch=batch,
        rate=rate,
        seconds=seconds,
        flood=flood,
        connections=connections,
    )

    def run(settings: Settings, progress: Any) -> Any:
        return receipts.run(settings, progress, options)

    # One API process, and the healthz ceiling measured through one alike.
    _bench(4, as_json, receipts.API_PROCESSES, run)


@bench.command("dashboard")
@click.option(
    "--messages",
    default=1_000_000,
    show_default=True,
    type=click.IntRange(1_000, 10_000_000),
    help="Messages of the tenant, seeded by COPY.",
)
@click.option(
    "--recipients",
    default=100_000,
    show_default=True,
    type=click.IntRange(100, 10_000_000),
    help="Recipients of the tenant, seeded by COPY.",
)
@click.option(
    "--requests",
    default=20,
    show_default=True,
    type=click.IntRange(5, 1_000),
    help="Measured requests per page.",
)
@click.option(
    "--warm",
    default=3,
    show_default=True,
    type=click.IntRange(0, 100),
    help="Unmeasured requests per page first.",
)
@JSON_OPTION
def bench_dashboard(
    messages: int, recipients: int, requests: int, warm: int, as_json: bool
) -> None:
    """Every dashboard page fetched in turn with a large tenant: p50/p95 per page, the
    target a p95 under 150 ms, beside /healthz fetched alike."""
    from bench import dashboard

    options = dashboard.Options(
        messages=messages, recipients=recipients, requests=requests, warm=warm
    )

    def run(settings: Settings, progress: Any) -> Any:
        return dashboard.run(settings, progress, options)

    _bench(3, as_json, dashboard.API_PROCESSES, run)


@bench.command("all")
@click.option("--recipients", default=20_000, show_default=True, help="e2e recipients.")
@click.option("--workers", default=2, show_default=True, help="e2e worker processes.")
@click.option("--ingest-seconds", default=15, show_default=True)
@click.option("--ratelimit-seconds", default=60, show_default=True)
@API_PROCESSES_OPTION
@JSON_OPTION
def bench_all(
    recipients: int,
    workers: int,
    ingest_seconds: int,
    ratelimit_seconds: int,
    api_processes: int,
    as_json: bool,
) -> None:
    """Ceilings once, then ingest, e2e and ratelimit (defaults), in one report."""
    _bench(
        8,
        as_json,
        api_processes,
        _ingest(ingest_seconds, 64, api_processes),
        _e2e(recipients, workers, 300.0),
        _ratelimit(200.0, 20, ratelimit_seconds, 4),
    )


@bench.command("attacks")
@click.option("--only", multiple=True, help="An attack by name (repeatable); default all.")
@click.option("--send-wait", default=20.0, show_default=True, help="Seconds to watch a send.")
def bench_attacks(only: tuple[str, ...], send_wait: float) -> None:
    """Hostile templates previewed and sent: their time, /healthz latency, memory, outcome."""
    from bench import attacks
    from bench.common import dedicated_database

    with dedicated_database(_with_services(_settings())) as isolated:
        attacks.run(isolated, only=only, send_wait=send_wait)


@main.command()
def dev() -> None:
    """What `make run` runs: migrate, seed a demo tenant, start the API and workers.

    Whatever it starts ends with it, even when it is killed (see app/children.py), and
    under make it ends with make: a killed `make run` leaves nothing running. Started from
    a shell (`nohup herald dev &`), it outlives that shell.
    """
    from app.children import end_with_parent, ending_with_parent
    from app.seed import seed_demo

    if "MAKELEVEL" in os.environ:  # make sets it for the commands it runs
        end_with_parent(signal.SIGTERM)
    settings = _migrated()
    database_url = _database_url(settings)
    demo = asyncio.run(seed_demo(database_url, settings.data_dir))
    _share_metrics(settings)  # the API's /metrics shows the worker's deliveries too
    env = {**os.environ, "DATABASE_URL": database_url, "REDIS_URL": settings.redis_url or ""}
    herald = [sys.executable, "-m", "app.cli"]
    # SIGTERM: both shut down cleanly (in-flight sends finish, render processes stop).
    children = [
        subprocess.Popen(  # noqa: S603
            [*herald, command], env=env, preexec_fn=ending_with_parent(signal.SIGTERM)
        )
        for command in ("api", "worker")
    ]
    try:
        _wait_ready(settings, children)
        _print_banner(settings, demo)
        _supervise(children)
    finally:
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for child in children:
            try:
                child.wait(timeout=30)
            except subprocess.TimeoutExpired:
                child.kill()


def _wait_ready(
    settings: Settings, children: list[subprocess.Popen[Any]], timeout: float = 60
) -> None:
    deadline = time.monotonic() + timeout
    url = f"http://{settings.host}:{settings.port}/readyz"
    while time.monotonic() < deadline:
        if any(child.poll() is not None for child in children):
            raise click.ClickException(
                "a Herald process exited during start-up; see its output above"
            )
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise click.ClickException(f"{url} did not answer 200 within {timeout:.0f} s")


def _print_banner(settings: Settings, demo: dict[str, str]) -> None:
    base = settings.public_url
    click.echo(
        "\n".join(
            [
                "",
                "Herald is running.",
                f"  API         {base}/v1   (docs: {base}/docs)",
                f"  Dashboard   {base}/",
                f"  Sign in as  {demo['email']} / {demo['password']}",
                f"  Demo key    {demo['api_key']}",
                "",
                f"  curl -H 'Authorization: Bearer {demo['api_key']}' {base}/v1/tenant",
                "",
                "Press Ctrl+C to stop.",
            ]
        ),
    )


def _supervise(children: list[subprocess.Popen[Any]]) -> None:
    """Wait until a signal arrives or a child exits."""
    stopping = False

    def on_signal(signum: int, _: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    while not stopping:
        if any(child.poll() is not None for child in children):
            click.echo("a Herald process exited; stopping the others", err=True)
            return
        time.sleep(0.5)


if __name__ == "__main__":
    main()
