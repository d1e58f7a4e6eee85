"""`herald bench attacks`: what hostile templates cost a running Herald.

Starts one `herald api` process and one `herald worker`, and for each attack template saves
it with a `manage` key, previews it (`POST /v1/templates/{key}/preview`) while a thread
polls `GET /healthz` every 20 ms, and prints how long the preview took, what it answered,
the slowest /healthz answer during it and the API process's peak memory. Then it sends two
of them (the `==` bomb and NUL output) to a recipient while another tenant sends a
notification every 0.5 s, and prints what became of the hostile send and the slowest
accept→sent of the other tenant meanwhile. Figures, not tests: see tests/faults for those.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from app.seed import create_tenant_with_key
from app.settings import Settings
from bench.common import free_port, herald, running, service_env, wait_ready


def doubling(step: str, times: int, start: str) -> str:
    return start + step * times


def _eq(times: int) -> str:
    pair = "{% set a=[a,a] %}{% set b=[b,b] %}"
    return doubling(pair, times, "{% set a=[1] %}{% set b=[1] %}") + "{{ a == b }}"


def _built(times: int) -> str:
    return doubling("{% set a=[a,a] %}", times, "{% set a=[1] %}")


def _pair(times: int) -> str:
    return doubling("{% set a=[a,a] %}{% set b=[b,b] %}", times, "{% set a=[1] %}{% set b=[1] %}")


# name → (template text, what it does). Sizes: the review's == bomb is 28 doublings (about
# 900 bytes); the printing ones stop at 24 so that the unguarded run stays within memory.
ATTACKS: dict[str, tuple[str, str]] = {
    "eq": (_eq(28), "`{{ a == b }}` over two 2^28-leaf lists built by [a,a]"),
    "print": (_built(24) + "{{ a }}", "`{{ a }}` of a 2^24-leaf list (memory)"),
    "in": (_pair(28) + "{{ b in [a] }}", "`b in [a]`: one comparison of the 2^28 pair"),
    "sort": (_pair(28) + "{{ [a, b]|sort|length }}", "`|sort` of the 2^28 pair"),
    "string": (_built(24) + "{{ a|string|length }}", "`|string` of a 2^24-leaf list"),
    "literal": (
        doubling("{% set a=(a,a) %}", 28, "{% set a=(1,) %}") + "{{ {a: 1}|length }}",
        "a dict literal whose key is a 2^28-leaf tuple (hashing it)",
    ),
    "nul": ('{{ "\\x00" }}', "NUL in the output"),
}
SENDS = ("eq", "nul")


@dataclass
class Poller:
    """GET /healthz every `every` seconds from a thread of its own; keeps each latency."""

    base_url: str
    every: float = 0.02
    latencies: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)  # what each failed poll got

    @contextlib.contextmanager
    def polling(self) -> Iterator[Poller]:
        stop = threading.Event()

        def poll() -> None:
            with httpx.Client(base_url=self.base_url, timeout=60) as client:
                while not stop.is_set():
                    began = time.perf_counter()
                    try:
                        answer = client.get("/healthz")
                        if answer.status_code != 200:
                            self.failures.append(str(answer.status_code))
                    except httpx.HTTPError as error:
                        self.failures.append(repr(error))
                    self.latencies.append(time.perf_counter() - began)
                    stop.wait(self.every)

        thread = threading.Thread(target=poll, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            stop.set()
            thread.join()


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _preview(client: httpx.Client, base_url: str, name: str, source: str, pid: int) -> None:
    key = f"attack-{name}"
    saved = client.put(f"/v1/templates/{key}", json={"content": {"sms": {"text": source}}})
    saved.raise_for_status()
    poller = Poller(base_url)
    with poller.polling():
        began = time.perf_counter()
        try:
            answer = client.post(f"/v1/templates/{key}/preview", json={}, timeout=600)
            outcome = _outcome(answer)
        except httpx.HTTPError as error:
            outcome = f"{type(error).__name__}"
        took = time.perf_counter() - began
    slowest = max(poller.latencies, default=float("nan"))
    print(
        f"  {name:8} preview {took * 1000:8.0f} ms  healthz max {slowest * 1000:7.0f} ms "
        f"({len(poller.latencies)} polls, {len(poller.failures)} failed)  "
        f"api peak RSS {_peak_rss_mb(pid):6.0f} MB  → {outcome}"
    )


def _outcome(answer: httpx.Response) -> str:
    if answer.status_code != 200:
        return f"{answer.status_code} {answer.text[:120]}"
    sms = answer.json()["channels"]["sms"]
    if sms["ok"]:
        return f"ok, {len(sms['content']['text'])} chars"
    return f"error: {sms['error']['message'][:110]}"


def _send(client: httpx.Client, other: httpx.Client, name: str, source: str, wait: float) -> None:
    key = f"attack-{name}"
    client.put(f"/v1/templates/{key}", json={"content": {"sms": {"text": source}}})
    body = {"template": key, "to": ["victim"]}
    sent = client.post("/v1/notifications", json=body)
    sent.raise_for_status()
    notification_id = sent.json()["id"]
    # Another tenant's traffic while the hostile dispatch runs: one notification each 0.5 s.
    latencies: list[float] = []
    pending: dict[str, float] = {}
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        accepted = other.post("/v1/notifications", json={"template": "plain", "to": ["other"]})
        pending[accepted.json()["id"]] = time.monotonic()
        for other_id, at in list(pending.items()):
            if other.get(f"/v1/notifications/{other_id}").json()["counts"].get("sent"):
                latencies.append(time.monotonic() - at)
                del pending[other_id]
        time.sleep(0.5)
    state = client.get(f"/v1/notifications/{notification_id}").json()
    messages = [(m["status"], m.get("last_error")) for m in state.get("messages", [])]
    slowest = max(latencies, default=float("nan"))
    print(
        f"  {name:8} send: after {wait:.0f} s the notification is {state['status']}"
        f" {messages[:1]} {state.get('problems') or ''}; the other tenant: "
        f"{len(latencies)} sent, {len(pending)} not yet, slowest accept→sent {slowest:.1f} s"
    )


def run(settings: Settings, *, only: tuple[str, ...], send_wait: float) -> None:
    import asyncio

    assert settings.database_url is not None
    _, secret = asyncio.run(create_tenant_with_key(settings.database_url, "attacker", "test"))
    _, other_secret = asyncio.run(create_tenant_with_key(settings.database_url, "other", "test"))
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    env = service_env(settings)
    names = only or tuple(ATTACKS)
    with running([herald("api", "--port", str(port))], env) as (api,):
        wait_ready(base_url)
        headers = {"Authorization": f"Bearer {secret}"}
        other_headers = {"Authorization": f"Bearer {other_secret}"}
        with (
            httpx.Client(base_url=base_url, headers=headers, timeout=60) as client,
            httpx.Client(base_url=base_url, headers=other_headers, timeout=60) as other,
        ):
            client.put("/v1/recipients/victim", json={"phone": "+14155550100"})
            other.put("/v1/recipients/other", json={"phone": "+14155550101"})
            other.put("/v1/templates/plain", json={"content": {"sms": {"text": "hello"}}})
            print(f"attacks: previews on one `herald api` process (pid {api.pid})")
            for name in names:
                source, what = ATTACKS[name]
                print(f"  {name:8} {what}, {len(source)} bytes")
                _preview(client, base_url, name, source, api.pid)
            sends = [name for name in names if name in SENDS]
            if sends:
                print("sends: one `herald worker` process, sandbox SMS")
                with running([herald("worker")], env):
                    for name in sends:
                        _send(client, other, name, ATTACKS[name][0], send_wait)
