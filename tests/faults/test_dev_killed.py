"""`herald dev` killed with SIGKILL leaves nothing running, and the next start works.

`make run` runs `herald dev` on embedded servers (no DATABASE_URL / REDIS_URL): its children
are the API, a worker (each with render processes), PostgreSQL and Redis. A SIGKILL runs no
cleanup of its own, so each child must end with it; the second start must find a clean
folder. A server whose owner died without the kernel ending it (where prctl does not exist,
or one left by an older Herald) is stopped by the next start: the second test leaves one.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from app.runtime import EmbeddedServices
from tests.support import free_port

ROOT = Path(__file__).resolve().parents[2]
START_WITHIN = 300  # a first start runs initdb and every migration on a shared machine


def _env(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env.pop("XDG_RUNTIME_DIR", None)
    return {**env, "HERALD_DATA_DIR": str(data_dir), "HERALD_PORT": str(free_port())}


class Dev:
    """One `herald dev`, its output kept in a file."""

    def __init__(self, data_dir: Path, output: Path) -> None:
        self.output = output
        with output.open("wb") as sink:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "app.cli", "dev"],
                cwd=ROOT,
                env=_env(data_dir),
                stdout=sink,
                stderr=subprocess.STDOUT,
            )

    def wait_running(self) -> str:
        deadline = time.monotonic() + START_WITHIN
        while "Demo key" not in (text := self.output.read_text(errors="replace")):
            assert self.process.poll() is None, f"herald dev exited:\n{text}"
            assert time.monotonic() < deadline, f"herald dev did not start:\n{text}"
            time.sleep(0.2)
        return text

    def descendants(self) -> list[psutil.Process]:
        return list(psutil.Process(self.process.pid).children(recursive=True))


@pytest.fixture
def started() -> Iterator[list[psutil.Process]]:
    """Processes a test saw started; whatever a failed test left running is killed here."""
    processes: list[psutil.Process] = []
    yield processes
    for process in processes:
        with contextlib.suppress(psutil.Error):
            process.kill()


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


def _names(processes: list[psutil.Process]) -> str:
    return " | ".join(" ".join(p.cmdline())[:120] for p in processes if p.is_running())


def test_herald_dev_killed_leaves_nothing_running_and_starts_again(
    data_dir: Path, tmp_path: Path, started: list[psutil.Process]
) -> None:
    first = Dev(data_dir, tmp_path / "first.log")
    assert "RuntimeDirWarning" not in first.wait_running()
    children = first.descendants()
    started.extend(children)
    commands = _names(children)
    for expected in ("postgres -D", "redis-server", "app.cli api", "app.cli worker"):
        assert expected in commands, f"no {expected!r} among {commands}"

    first.process.send_signal(signal.SIGKILL)
    first.process.wait()
    _, alive = psutil.wait_procs(children, timeout=60)
    assert not alive, f"still running after herald dev was killed: {_names(alive)}"

    second = Dev(data_dir, tmp_path / "second.log")
    try:
        banner = second.wait_running()
        assert "Herald is running." in banner
    finally:
        children = second.descendants()
        started.extend(children)
        second.process.send_signal(signal.SIGTERM)
        assert second.process.wait(timeout=120) == 0
    _, alive = psutil.wait_procs(children, timeout=60)
    assert not alive, f"still running after herald dev stopped: {_names(alive)}"


def test_a_server_left_without_its_owner_is_stopped_and_replaced(
    data_dir: Path, started: list[psutil.Process]
) -> None:
    services = EmbeddedServices(data_dir, None, None)
    services.start()
    assert services.postgres is not None and services.redis is not None
    postgres, redis = services.postgres.process, services.redis.process
    assert postgres is not None and redis is not None
    # What a dead owner leaves where the kernel does not end its children: the servers
    # running, their owner locks free.
    services.postgres.owner.release()
    services.redis.owner.release()
    left = [psutil.Process(postgres.pid), psutil.Process(redis.pid)]
    started.extend(left)

    again = EmbeddedServices(data_dir, None, None)
    try:
        again.start()
        _, alive = psutil.wait_procs(left, timeout=0)
        assert not alive, f"left running: {_names(alive)}"
        assert again.postgres is not None and again.postgres.started_here
        assert again.redis is not None and again.redis.started_here
        psql = Path(str(psutil.Process(again.postgres.process.pid).exe())).parent / "psql"
        socket_dir = again.database_url.rsplit("host=", 1)[1] if again.database_url else ""
        answer = subprocess.run(
            [str(psql), "-h", socket_dir, "-U", "postgres", "-d", "herald", "-tAc", "SELECT 1"],
            capture_output=True,
            text=True,
            check=True,
        )
        assert answer.stdout.strip() == "1"
    finally:
        again.stop()
        postgres.wait()
        redis.wait()
