"""Pinned TLS connections are pooled per hostname, never shared between two names on one IP.

The SSRF guard sends each request to the checked IP literal and verifies the certificate
against the hostname (SNI). Two tenants' hostnames that resolve to one address must not
share a connection: the certificate was checked for the first name only. Here two names
are pinned to one local TLS server whose certificates come from a CA made for the test.
"""

from __future__ import annotations

import datetime
import ssl
import tempfile
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from app.providers.http import MAX_PINNED_POOLS, new_client
from app.providers.ssrf import PinnedURL, send_pinned

FIRST = "first.herald.test"
SECOND = "second.herald.test"


class Authority:
    """A throwaway CA; the certificates it issues are written under `folder`."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Herald test CA")])
        self.certificate = (
            self._builder(name, name, self.key.public_key())
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )

    def _builder(
        self, subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey
    ) -> x509.CertificateBuilder:
        now = datetime.datetime.now(datetime.UTC)
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=1))
        )

    def client_context(self) -> ssl.SSLContext:
        """What the HTTP client trusts: this CA only."""
        pem = self.certificate.public_bytes(serialization.Encoding.PEM).decode()
        return ssl.create_default_context(cadata=pem)

    def server_context(self, hostname: str) -> ssl.SSLContext:
        """A server context presenting a certificate valid for `hostname` only."""
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
        leaf = (
            self._builder(subject, self.certificate.subject, key.public_key())
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(hostname)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        chain, key_file = self.folder / f"{hostname}.pem", self.folder / f"{hostname}.key"
        chain.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
        key_file.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(chain, key_file)
        return context


class TLSReceiver:
    """A local HTTPS server on 127.0.0.1 noting each handshake's SNI and each request's
    (Host, client port); it presents the certificate of the name asked for when it has one,
    else the first one's."""

    def __init__(self, authority: Authority, names: list[str]) -> None:
        self.handshakes: list[str | None] = []
        self.requests: list[tuple[str | None, int]] = []
        contexts = {name: authority.server_context(name) for name in names}
        default = contexts[names[0]]
        receiver = self

        def choose(sock: ssl.SSLObject, name: str | None, _: ssl.SSLContext) -> None:
            receiver.handshakes.append(name)
            if name in contexts:
                sock.context = contexts[name]

        default.sni_callback = choose  # type: ignore[assignment]

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, so a connection can be reused

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers["content-length"]))
                receiver.requests.append((self.headers.get("host"), self.client_address[1]))
                self.send_response(204)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def get_request(self) -> tuple[ssl.SSLSocket, object]:
                sock, address = self.socket.accept()
                # The handshake happens in the request's thread (see finish_request).
                return default.wrap_socket(
                    sock, server_side=True, do_handshake_on_connect=False
                ), address

            def finish_request(self, request, client_address):  # type: ignore[no-untyped-def]
                try:
                    request.do_handshake()
                except (ssl.SSLError, OSError):
                    return  # the client refused our certificate: nothing to serve
                super().finish_request(request, client_address)

        self.server = Server(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    def pinned(self, hostname: str) -> PinnedURL:
        # Both names "resolve" to the receiver's address, as two tenants' hostnames
        # pointing at one IP would: the guard hands send_pinned exactly this.
        url = httpx.URL(f"https://{hostname}:{self.port}/hook")
        return PinnedURL(url=url, hostname=hostname, addresses=("127.0.0.1",))

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def authority() -> Iterator[Authority]:
    with tempfile.TemporaryDirectory() as folder:
        yield Authority(Path(folder))


async def _post(client: httpx.AsyncClient, target: PinnedURL) -> httpx.Response:
    return await send_pinned(client, "POST", target, headers={}, content=b"{}", request_timeout=5)


async def test_a_connection_checked_for_one_name_is_not_reused_for_another(
    authority: Authority,
) -> None:
    # The server holds a certificate for the first name only: a request for the second
    # name must fail its own certificate check instead of riding the first's connection.
    receiver = TLSReceiver(authority, [FIRST])
    try:
        async with new_client(verify=authority.client_context()) as client:
            assert (await _post(client, receiver.pinned(FIRST))).status_code == 204
            with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
                await _post(client, receiver.pinned(SECOND))
            # The first name's connection is still there for it.
            assert (await _post(client, receiver.pinned(FIRST))).status_code == 204
    finally:
        receiver.stop()
    assert receiver.handshakes == [FIRST, SECOND]
    assert [host for host, _ in receiver.requests] == [f"{FIRST}:{receiver.port}"] * 2
    assert len({port for _, port in receiver.requests}) == 1


async def test_each_name_gets_its_own_connection_and_handshake(authority: Authority) -> None:
    receiver = TLSReceiver(authority, [FIRST, SECOND])
    try:
        async with new_client(verify=authority.client_context()) as client:
            for name in (FIRST, SECOND, FIRST, SECOND):
                assert (await _post(client, receiver.pinned(name))).status_code == 204
    finally:
        receiver.stop()
    assert receiver.handshakes == [FIRST, SECOND]  # one handshake per name, each with its SNI
    ports: dict[str, set[int]] = {}
    for host, port in receiver.requests:
        ports.setdefault(str(host).split(":")[0], set()).add(port)
    assert len(ports[FIRST]) == len(ports[SECOND]) == 1  # each name reuses its own connection
    assert ports[FIRST] != ports[SECOND]


async def test_the_pools_kept_are_bounded(authority: Authority) -> None:
    # Tenants choose the hostnames: past MAX_PINNED_POOLS names, the least recently used
    # name's pool is closed, and that name gets a fresh connection when it comes back.
    names = [f"n{n}.herald.test" for n in range(MAX_PINNED_POOLS + 1)]
    receiver = TLSReceiver(authority, names)
    try:
        async with new_client(verify=authority.client_context()) as client:
            for name in [names[0], *names[1:], names[-1], names[0]]:
                assert (await _post(client, receiver.pinned(name))).status_code == 204
    finally:
        receiver.stop()
    assert receiver.handshakes == [*names, names[0]]
