"""Helpers shared by the tests: settings for the test services, tenants with keys."""

from __future__ import annotations

import asyncio
import atexit
import base64
import ipaddress
import os
import secrets
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
from litestar import Litestar
from sqlalchemy.ext.asyncio import AsyncSession

from app.auth import keys
from app.settings import Settings, load_settings
from app.templates.pool import RenderPool
from app.templates.renderer import Renderer
from app.tenants import plans
from app.tenants.service import create_tenant


def client_address() -> str:
    """A random address in 10.0.0.0/8, for a test client of its own network."""
    return str(ipaddress.IPv4Address(0x0A000000 + secrets.randbelow(1 << 24)))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def settings_for(database_url: str, redis_url: str, **overrides: str) -> Settings:
    environ = {
        **os.environ,
        "HERALD_ENV": "test",
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "HERALD_DATA_DIR": os.environ.get("HERALD_TEST_DATA_DIR", ".herald/test"),
        **overrides,
    }
    return load_settings(environ)


@dataclass(frozen=True)
class TenantKey:
    tenant_id: uuid.UUID
    key_id: uuid.UUID
    secret: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.secret}"}

    @property
    def mode(self) -> str:
        """The key's mode, which is the mode of every object it creates."""
        return "test" if self.secret.startswith("hk_test_") else "live"


async def make_tenant(
    session: AsyncSession,
    name: str = "Acme",
    *,
    mode: str = "live",
    scopes: list[str] | None = None,
) -> TenantKey:
    tenant = await create_tenant(session, name=name, actor="test")
    issued = await keys.issue_key(
        session,
        tenant_id=tenant.id,
        name="test key",
        mode=mode,
        scopes=scopes or ["send", "read", "manage"],
        actor="test",
    )
    await session.commit()
    return TenantKey(tenant.id, issued.key.id, issued.secret)


async def key_of(session: AsyncSession, tenant: TenantKey, mode: str) -> TenantKey:
    """Another key with every scope for `tenant`, of `mode`."""
    issued = await keys.issue_key(
        session,
        tenant_id=tenant.tenant_id,
        name=f"{mode} admin",
        mode=mode,
        scopes=["send", "read", "manage"],
        actor="test",
    )
    await session.commit()
    return TenantKey(tenant.tenant_id, issued.key.id, issued.secret)


async def live_key(session: AsyncSession, tenant: TenantKey) -> TenantKey:
    """What changes live settings (kill switches, retry policy, default locale, provider
    configs), which no test key may."""
    return await key_of(session, tenant, "live")


@asynccontextmanager
async def ready_client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """An app of its own (say, on a Redis the test kills), served in-process; the client is
    handed over once /readyz has answered 200, or after 5 s."""
    from app.main import create_app  # the app imports every domain: only when needed

    app = create_app(settings)
    async with (
        app.lifespan(),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client,
    ):
        for _ in range(50):  # the server may still be starting
            if (await client.get("/readyz")).status_code == 200:
                break
            await asyncio.sleep(0.1)
        yield client


@asynccontextmanager
async def serving(app: Litestar) -> AsyncIterator[Litestar]:
    """The app's lifespan run in a task of its own, as a server runs it, around the block:
    its pools then live on the test loop, not inside one test's context."""
    started, stopping = asyncio.Event(), asyncio.Event()

    async def serve() -> None:
        async with app.lifespan():
            started.set()
            await stopping.wait()

    task = asyncio.create_task(serve())
    await started.wait()
    try:
        yield app
    finally:
        stopping.set()
        await task


_renderer: Renderer | None = None


def unmetered_renderer() -> Renderer:
    """Render processes of the test run's own, without render budgets: for tests that call
    dispatch() directly. Started on first use; they exit with the run (end of their input)."""
    global _renderer
    if _renderer is None:
        pool = RenderPool(processes=1, memory_mb=512)
        pool.start()
        atexit.register(pool.close)
        _renderer = Renderer(pool, None)
    return _renderer


ROOT = Path(__file__).resolve().parent.parent
STARTUP_SECONDS = 30


@dataclass(frozen=True)
class ApiServer:
    url: str
    log: Path  # the process's output


@contextmanager
def herald_api(database_url: str, redis_url: str, folder: Path, **env: str) -> Iterator[ApiServer]:
    """A real `herald api` process on a free port, with extra environment `env`; stopped
    (SIGTERM, then SIGKILL) on the way out."""
    port = free_port()
    environ = {
        **os.environ,
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "HERALD_ENV": "test",
        "HERALD_DATA_DIR": str(folder / "data"),
        "HERALD_SECRET_KEY": base64.urlsafe_b64encode(os.urandom(32)).decode(),
        "HERALD_PORT": str(port),  # the links Herald mails point here
        **env,
    }
    log = folder / "server.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "api", "--host", "127.0.0.1", "--port", str(port)],
            env=environ,
            cwd=ROOT,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_ready(url, process, log)
        yield ApiServer(url, log)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextmanager
def herald_api_and_worker(
    database_url: str, redis_url: str, folder: Path, **env: str
) -> Iterator[ApiServer]:
    """`herald api` and one `herald worker` process sharing a secret key and `env`: what
    the API accepts is really sent. Both stopped on the way out."""
    secret = base64.urlsafe_b64encode(os.urandom(32)).decode()
    with herald_api(database_url, redis_url, folder, HERALD_SECRET_KEY=secret, **env) as api:
        environ = {
            **os.environ,
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url,
            "HERALD_ENV": "test",
            "HERALD_DATA_DIR": str(folder / "worker"),
            "HERALD_SECRET_KEY": secret,
            **env,
        }
        with (folder / "worker.log").open("wb") as output:
            worker = subprocess.Popen(
                [sys.executable, "-m", "app.cli", "worker"],
                env=environ,
                cwd=ROOT,
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        try:
            yield api
        finally:
            worker.terminate()
            try:
                worker.wait(timeout=20)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()


def _wait_until_ready(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"herald api exited with {process.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass  # not listening yet
        time.sleep(0.2)
    raise RuntimeError(f"herald api was not ready within {STARTUP_SECONDS} s:\n{log.read_text()}")


PROBLEM = "application/problem+json"


def assert_problem(response: httpx.Response, status: int, slug: str) -> dict[str, object]:
    """The response is the problem+json `slug` with `status`, and says what went wrong."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body: dict[str, object] = response.json()
    assert body["type"] == f"https://herald.dev/problems/{slug}"
    assert body["status"] == status
    assert body["detail"]
    return body


@contextmanager
def plans_with(folder: Path, extra: str) -> Iterator[Path]:
    """The shipped plans plus `extra` (TOML), configured for the block and named in the
    environment too, so that settings read in a test (settings_for) configure the same plans;
    what was configured before comes back after."""
    path = folder / "plans.toml"
    path.write_text(plans.DEFAULT_FILE.read_text() + extra)
    before = os.environ.get("HERALD_PLANS_FILE")
    os.environ["HERALD_PLANS_FILE"] = str(path)
    plans.configure(path)
    try:
        yield path
    finally:
        if before is None:
            del os.environ["HERALD_PLANS_FILE"]
        else:
            os.environ["HERALD_PLANS_FILE"] = before
        plans.configure(Path(before) if before is not None else None)
