"""The outbound-URL guard: which destinations are refused, and that the checked IP is pinned."""

from __future__ import annotations

import ipaddress
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from structlog.testing import capture_logs

from app.providers.ssrf import (
    DRAIN_BYTES,
    PinnedURL,
    UnresolvableHost,
    UnsafeURL,
    is_public,
    pin_url,
    resolve,
    send_pinned,
)


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",  # loopback
        "127.8.9.10",
        "10.1.2.3",  # private
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",  # link-local: cloud metadata
        "100.64.0.1",  # shared address space (carrier-grade NAT)
        "0.0.0.0",  # noqa: S104 (unspecified)
        "224.0.0.1",  # multicast
        "240.0.0.1",  # reserved
        "255.255.255.255",
        "192.0.2.10",  # documentation
        "::1",
        "::",
        "fe80::1",
        "fc00::1",  # unique local
        "ff02::1",  # multicast
        "::ffff:127.0.0.1",  # IPv4-mapped loopback
        "::ffff:10.0.0.1",
        "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
        "2002:7f00:1::",  # 6to4 of 127.0.0.1
    ],
)
def test_non_public_addresses_are_refused(address: str) -> None:
    assert not is_public(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", ["93.184.216.34", "8.8.8.8", "2606:4700:4700::1111"])
def test_public_addresses_pass(address: str) -> None:
    assert is_public(ipaddress.ip_address(address))


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/hook",
        "http://127.0.0.1:6379/",
        "https://[::1]/hook",
        "http://10.0.0.8/",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::ffff:127.0.0.1]/",
        "http://0.0.0.0:8000/",
        "http://localhost/hook",
        "http://localhost:8000/",
    ],
)
async def test_private_urls_are_refused(url: str) -> None:
    with pytest.raises(UnsafeURL, match="the address is not allowed"):
        await pin_url(url, allow_private=False)


async def test_the_refusal_names_no_resolved_address_but_the_log_does() -> None:
    # Tenants read the refusal (a message's last_error): an address there would let them
    # map internal DNS names one webhook at a time.
    with capture_logs() as logs, pytest.raises(UnsafeURL) as refused:
        await pin_url("http://localhost:8080/hook", allow_private=False)
    assert str(refused.value) == (
        "localhost: the address is not allowed; Herald only calls public addresses"
    )
    [line] = [line for line in logs if line["event"] == "outbound address refused"]
    assert line["host"] == "localhost"
    assert line["address"] in ("127.0.0.1", "::1")


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("ftp://example.com/file", "only http and https"),
        ("file:///etc/passwd", "only http and https"),
        ("gopher://127.0.0.1:6379/_INFO", "only http and https"),
        ("http:///nohost", "no host"),
        ("not a url", "only http and https"),
    ],
)
async def test_other_schemes_and_hostless_urls_are_refused(url: str, reason: str) -> None:
    with pytest.raises(UnsafeURL, match=reason):
        await pin_url(url, allow_private=True)


async def test_public_literals_resolve_to_themselves() -> None:
    pinned = await pin_url("https://93.184.216.34:8443/x?y=1", allow_private=False)
    assert pinned.addresses == ("93.184.216.34",)
    assert pinned.host_header == "93.184.216.34:8443"


async def test_the_operator_can_allow_private_urls() -> None:
    pinned = await pin_url("http://localhost:8080/hook", allow_private=True)
    assert pinned.hostname == "localhost"
    assert set(pinned.addresses) <= {"127.0.0.1", "::1"}
    assert pinned.host_header == "localhost:8080"


async def test_unknown_hosts_are_unresolvable_not_unsafe() -> None:
    with pytest.raises(UnresolvableHost):
        await resolve("no-such-host.invalid", 443, allow_private=False)


def test_pinning_keeps_the_name_for_host_and_sni() -> None:
    pinned = PinnedURL(
        url=httpx.URL("https://hooks.example.com/in?x=1"),
        hostname="hooks.example.com",
        addresses=("93.184.216.34", "2606:2800:220:1::1"),
    )
    assert str(pinned.url_for("93.184.216.34")) == "https://93.184.216.34/in?x=1"
    assert str(pinned.url_for("2606:2800:220:1::1")) == "https://[2606:2800:220:1::1]/in?x=1"
    assert pinned.host_header == "hooks.example.com"


class _Recorder(BaseHTTPRequestHandler):
    """Notes each request (path, Host) and the client port it came from: one per connection.

    `/big` answers with a body larger than Herald drains; `/slow` sends its headers and holds
    the body back until `release` is set.
    """

    protocol_version = "HTTP/1.1"  # keep-alive, as real endpoints do
    seen: list[tuple[str, str | None]] = []
    ports: list[int] = []
    release = threading.Event()

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["content-length"]))
        _Recorder.seen.append((self.path, self.headers.get("host")))
        _Recorder.ports.append(self.client_address[1])
        if self.path == "/big":
            self._answer(b"x" * (DRAIN_BYTES * 4))
        elif self.path == "/slow":
            self.send_response(200)
            self.send_header("content-length", "2")
            self.end_headers()
            self.wfile.flush()
            _Recorder.release.wait(timeout=10)
            self.wfile.write(b"ok")
        else:
            self._answer(b"")

    def _answer(self, body: bytes) -> None:
        self.send_response(200 if body else 204)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


async def test_the_request_goes_to_the_checked_address_with_the_original_host(
    receiver: int,
) -> None:
    # "rebound.example" does not resolve at all: only the pinned address is ever dialled,
    # so a second DNS answer (a rebinding) could not change where the request goes.
    pinned = PinnedURL(
        url=httpx.URL(f"http://rebound.example:{receiver}/hook?a=1"),
        hostname="rebound.example",
        addresses=("127.0.0.1",),
    )
    async with httpx.AsyncClient() as client:
        response = await send_pinned(
            client, "POST", pinned, headers={}, content=b"{}", request_timeout=5
        )
    assert response.status_code == 204
    assert _Recorder.seen[-1] == ("/hook?a=1", f"rebound.example:{receiver}")


async def test_a_dead_address_falls_through_to_the_next(receiver: int) -> None:
    # Nothing listens on 127.0.0.2 (the receiver is bound to 127.0.0.1): refused, then next.
    pinned = PinnedURL(
        url=httpx.URL(f"http://dual.example:{receiver}/next"),
        hostname="dual.example",
        addresses=("127.0.0.2", "127.0.0.1"),
    )
    async with httpx.AsyncClient() as client:
        response = await send_pinned(
            client, "POST", pinned, headers={}, content=b"{}", request_timeout=5
        )
    assert response.status_code == 204
    assert _Recorder.seen[-1][0] == "/next"


async def test_all_addresses_dead_raises_the_connect_error(receiver: int) -> None:
    pinned = PinnedURL(
        httpx.URL(f"http://gone.example:{receiver}/"), "gone.example", ("127.0.0.2",)
    )
    async with httpx.AsyncClient() as client:
        with pytest.raises(httpx.ConnectError):
            await send_pinned(client, "POST", pinned, headers={}, content=b"", request_timeout=5)


async def _post(client: httpx.AsyncClient, port: int, path: str) -> httpx.Response:
    pinned = PinnedURL(
        httpx.URL(f"http://hooks.example:{port}{path}"), "hooks.example", ("127.0.0.1",)
    )
    return await send_pinned(client, "POST", pinned, headers={}, content=b"{}", request_timeout=15)


async def test_short_answers_leave_the_connection_for_the_next_message(receiver: int) -> None:
    async with httpx.AsyncClient() as client:
        for _ in range(3):
            assert (await _post(client, receiver, "/hook")).status_code == 204
    assert len(set(_Recorder.ports[-3:])) == 1  # one connection, three requests


async def test_a_long_body_is_not_read_and_costs_only_its_connection(receiver: int) -> None:
    async with httpx.AsyncClient() as client:
        assert (await _post(client, receiver, "/big")).status_code == 200
        assert (await _post(client, receiver, "/hook")).status_code == 204
    assert _Recorder.ports[-1] != _Recorder.ports[-2]


async def test_a_slow_body_is_not_waited_for(receiver: int) -> None:
    # The body comes only after the test releases it: a drain without a time limit would
    # wait for it (10 s) and then reuse the connection.
    _Recorder.release.clear()
    try:
        async with httpx.AsyncClient() as client:
            assert (await _post(client, receiver, "/slow")).status_code == 200
            _Recorder.release.set()
            assert (await _post(client, receiver, "/hook")).status_code == 204
    finally:
        _Recorder.release.set()
    assert _Recorder.ports[-1] != _Recorder.ports[-2]
