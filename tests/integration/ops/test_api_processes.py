"""`herald api --workers N`: connections opened at once are spread over the N processes.

With one socket shared by all processes, the first process woken accepted every connection
waiting, and 64 connections opened together often all went to one of two processes. Here
each process has a socket of its own (app/api_processes.py): the test opens 40 connections
at once and reads from /proc which process holds each one's server side.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
from pathlib import Path

from app.settings import Settings
from bench.common import herald, service_env, wait_ready
from bench.memory import parents
from tests.support import free_port

CONNECTIONS = 40


def _server_inodes(port: int, client_ports: set[int]) -> dict[int, int]:
    """The socket inode of the server side of each client connection, by client port."""
    found: dict[int, int] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        lines = Path(table).read_text().splitlines()[1:]
        for line in lines:
            fields = line.split()
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            remote_port = int(fields[2].rsplit(":", 1)[1], 16)
            if local_port == port and remote_port in client_ports:
                found[remote_port] = int(fields[9])
    return found


def _socket_inodes(pid: int) -> set[int]:
    inodes: set[int] = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


def _open_and_ask(port: int) -> list[socket.socket]:
    conns = [socket.create_connection(("127.0.0.1", port)) for _ in range(CONNECTIONS)]
    request = f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()
    for conn in conns:
        conn.sendall(request)
    for conn in conns:
        conn.settimeout(30)
        assert conn.recv(64).startswith(b"HTTP/1.1 200"), "every connection is served"
    return conns


async def test_connections_opened_at_once_are_spread_over_the_processes(
    settings: Settings,
) -> None:
    port = free_port()
    command = herald("api", "--port", str(port), "--workers", "2")
    process = subprocess.Popen(command, env=service_env(settings))
    conns: list[socket.socket] = []
    try:
        await asyncio.to_thread(wait_ready, f"http://127.0.0.1:{port}")
        conns = await asyncio.to_thread(_open_and_ask, port)
        client_ports = {conn.getsockname()[1] for conn in conns}
        server_side = _server_inodes(port, client_ports)
        assert len(server_side) == CONNECTIONS
        children = [pid for pid, parent in parents().items() if parent == process.pid]
        held = {pid: len(_socket_inodes(pid) & set(server_side.values())) for pid in children}
        serving = {pid: count for pid, count in held.items() if count}
        assert sum(serving.values()) == CONNECTIONS, held
        # Hashed by address, 40 connections split 20/20 on average; fewer than 8 on one
        # side has a chance of about 1 in 100,000.
        assert len(serving) == 2 and min(serving.values()) >= 8, held
    finally:
        for conn in conns:
            conn.close()
        process.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(process.wait, 60)
    assert code == 0
    assert not [pid for pid, parent in parents().items() if parent == process.pid]
