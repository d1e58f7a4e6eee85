"""Several API server processes on one port, each with a listening socket of its own.

uvicorn's own workers share the one socket their supervisor bound, and a worker woken by a
new connection accepts every connection waiting: 64 connections opened at once (a proxy's
pool, or wrk) all went to one of two processes in half of the runs measured, and that one
served them alone on one core while the other idled. Here each process binds its own socket
to the port with SO_REUSEPORT, and the kernel spreads new connections among the sockets by
their addresses.

The processes end with this one (app/children.py); when one of them ends, the others are
stopped too, so that the platform's restart brings back the whole set.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import signal
import socket
from types import FrameType
from typing import Any

import uvicorn

from app.children import end_with_parent

STOP_GRACE = 30.0  # seconds a process has to finish its requests once asked to stop


def listening_socket(host: str, port: int) -> socket.socket:
    """A socket bound to (host, port) that other processes may bind too (SO_REUSEPORT)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


def _serve(host: str, port: int, options: dict[str, Any]) -> None:
    end_with_parent(signal.SIGTERM)
    sock = listening_socket(host, port)
    config = uvicorn.Config("app.main:create_app", factory=True, **options)
    # Listening before the application is imported and started: a process still starting
    # takes its share of new connections into its backlog rather than leaving all of them
    # to the first process ready.
    sock.listen(config.backlog)
    uvicorn.Server(config).run(sockets=[sock])


def serve(host: str, port: int, processes: int, options: dict[str, Any]) -> int:
    """Run `processes` API processes on (host, port) until stopped; the exit status."""
    context = multiprocessing.get_context("spawn")
    children = [
        context.Process(target=_serve, args=(host, port, options), name=f"herald-api-{n}")
        for n in range(processes)
    ]
    stopping = False

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for child in children:
            if child.pid is not None and child.is_alive():
                os.kill(child.pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for child in children:
        child.start()
    multiprocessing.connection.wait([child.sentinel for child in children])
    asked_to_stop = stopping
    ended = next((c for c in children if not c.is_alive()), None)
    stop(signal.SIGTERM, None)
    for child in children:
        child.join(STOP_GRACE)
        if child.is_alive():
            child.kill()
            child.join()
    if ended is not None and not asked_to_stop:
        return ended.exitcode or 1
    return 0
