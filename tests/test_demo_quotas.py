"""The demo's body cap and per-client quotas on a real loopback server (the guard as `bioscan-clip demo` serves it).

Clients are told apart by their loopback source address (``127.0.0.2``, ``127.0.0.3``, ...), as the demo counts
them off a Space; the ``X-Forwarded-For`` they send is not trusted. Large bodies are sent over a raw socket that
stops as soon as the server answers, so "refused before it was read" is what the byte count shows.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import httpx
import pytest
from conftest import environment_variable
from test_demo_load import _bench
from test_space import _free_port, demo_app, demo_folders  # noqa: F401  (fixtures)

from bioscan_clip.apps.demo.guard import DemoGuard, RateLimiter, UploadCache

CALL_BURST, PENDING = 4, 2
MB = 1024 * 1024


@pytest.fixture(scope="module")
def quota_server(demo_app, demo_folders, tmp_path_factory):  # noqa: F811
    from bioscan_clip.identification.identifier import Identifier

    model_dir, key_dir = demo_folders
    root = tmp_path_factory.mktemp("quotas")
    with environment_variable("GRADIO_TEMP_DIR", str(root / "gradio-cache")):
        identifier = Identifier.load(model_dir, key_dir)
        demo = demo_app.build_demo(model_dir, key_dir, identifier=identifier, examples_dir=root / "examples")
        _, url, _ = demo_app.launch(
            demo, port=_free_port(), calls_per_minute=20, call_burst=CALL_BURST, pending_per_client=PENDING,
            prevent_thread_lock=True, quiet=True,
        )  # fmt: skip
        try:
            yield SimpleNamespace(url=url.rstrip("/"), identifier=identifier)
        finally:
            demo.close()


def _identify(http: httpx.Client) -> httpx.Response:
    return http.post("/gradio_api/call/identify", json={"data": [None, _bench().BARCODE, 1]})


@pytest.mark.parametrize("route", ["/gradio_api/queue/join", "/gradio_api/call/identify"])
def test_oversized_body_is_refused_with_413_before_it_is_read(quota_server, route):
    bench = _bench()
    before = bench.rss_mb()
    declared = bench.send_body(quota_server.url, route, 300 * MB, chunked=False, address="127.0.0.5")
    assert declared.status == 413, declared
    assert "at most 256 KB" in declared.body.decode()
    assert declared.sent_bytes < 64 * MB  # answered from the headers, long before the 300 MB were sent
    chunked = bench.send_body(quota_server.url, route, 64 * MB, chunked=True, address="127.0.0.6")
    assert chunked.status == 413, chunked
    assert chunked.sent_bytes < 32 * MB  # read up to the cap only
    assert bench.rss_mb() - before < 32, (before, bench.rss_mb())  # the server (this process) kept none of it
    # Within the cap, the same routes work for the same addresses.
    with bench.client_at(quota_server.url, "127.0.0.5") as http:
        assert _identify(http).status_code == 200


def test_chunked_upload_is_refused(quota_server):
    answer = _bench().send_body(quota_server.url, "/gradio_api/upload", 4 * MB, chunked=True, address="127.0.0.7")
    assert answer.status == 411 and "Content-Length" in answer.body.decode()


def test_greedy_client_over_its_quota_gets_429_while_another_address_is_answered(quota_server, monkeypatch):
    """A greedy client's jobs held running: past its 2 pending it gets 429 (with Retry-After and the cap), whatever
    X-Forwarded-For it forges; a polite client from another address joins the same queue and is answered."""
    bench = _bench()
    release = threading.Event()
    original = quota_server.identifier.identify

    def held(*args, **kwargs):
        release.wait(timeout=20)  # the greedy client's first job runs until the polite one has joined
        return original(*args, **kwargs)

    monkeypatch.setattr(quota_server.identifier, "identify", held)
    with bench.client_at(quota_server.url, "127.0.0.2") as greedy:

        def attempt(number: int) -> httpx.Response:
            forged = {"X-Forwarded-For": f"198.51.100.{number}"}
            return greedy.post("/gradio_api/call/identify", json={"data": [None, bench.BARCODE, 1]}, headers=forged)

        try:
            with ThreadPoolExecutor(max_workers=12) as pool:
                answers = list(pool.map(attempt, range(12)))
            codes = [answer.status_code for answer in answers]
            assert codes.count(200) == PENDING and codes.count(429) == 12 - PENDING, codes
            for refused in (answer for answer in answers if answer.status_code == 429):
                assert int(refused.headers["retry-after"]) >= 1
                assert f"at most {PENDING} at once" in refused.json()["detail"]
                assert refused.headers["x-ratelimit-policy"].startswith(f"{PENDING} at once")
            with bench.client_at(quota_server.url, "127.0.0.3") as polite:
                joined = _identify(polite)
                assert joined.status_code == 200, joined.text
                release.set()
                answer = polite.get(f"/gradio_api/call/identify/{joined.json()['event_id']}", timeout=30).text
            assert "event: complete" in answer and "Deepest confident rank" in answer
        finally:
            release.set()


def test_calls_past_the_per_client_rate_get_429_and_the_rest_routes_skip_no_queue(quota_server):
    bench = _bench()
    with bench.client_at(quota_server.url, "127.0.0.4") as http:
        for _ in range(CALL_BURST):  # one at a time, each answered: never over the pending cap
            joined = _identify(http)
            assert joined.status_code == 200, joined.text
            http.get(f"/gradio_api/call/identify/{joined.json()['event_id']}", timeout=30)
        refused = _identify(http)
    assert refused.status_code == 429 and "at most 20 per minute" in refused.json()["detail"]
    assert int(refused.headers["retry-after"]) >= 1
    with bench.client_at(quota_server.url, "127.0.0.8") as other:
        assert _identify(other).status_code == 200  # the quota is that address's only
        # The direct REST route, which would run outside the queue and its quotas, is closed.
        assert other.post("/gradio_api/run/identify", json={"data": [None, bench.BARCODE, 1]}).status_code == 404


def test_forwarded_for_is_trusted_only_when_asked_and_then_only_its_last_entry(tmp_path):
    scope = {"client": ("10.16.3.80", 51000), "headers": [(b"x-forwarded-for", b"203.0.113.9, 192.0.2.44")]}
    limiter = RateLimiter(1, 1)
    common = {"blocks": None, "limiter": limiter, "cache": UploadCache(tmp_path, 0), "max_request_bytes": 0,
              "call_limiter": limiter}  # fmt: skip
    assert DemoGuard(None, **common).client_key(scope) == "10.16.3.80"
    # Behind a proxy that appends the peer it saw, the entries before the last are whatever the client sent.
    assert DemoGuard(None, **common, trust_forwarded_for=True).client_key(scope) == "192.0.2.44"


def test_calls_whose_bodies_arrive_late_count_against_the_cap_from_their_headers(quota_server, monkeypatch):
    """8 calls from one address send their headers, then their bodies 0.3 s later: the cap counts each call from
    its admission, so no more than 2 are admitted while the bodies are on their way."""
    import json
    import socket
    import time

    release = threading.Event()
    original = quota_server.identifier.identify

    def held(*args, **kwargs):
        release.wait(timeout=20)
        return original(*args, **kwargs)

    monkeypatch.setattr(quota_server.identifier, "identify", held)
    host, port = quota_server.url.split("//")[1].split(":")
    body = json.dumps({"data": [None, _bench().BARCODE, 1]}).encode()
    head = (f"POST /gradio_api/call/identify HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()  # fmt: skip
    sockets = [
        socket.create_connection((host, int(port)), timeout=20, source_address=("127.0.0.9", 0)) for _ in range(8)
    ]
    try:
        for sock in sockets:
            sock.sendall(head)
        time.sleep(0.3)
        for sock in sockets:
            sock.sendall(body)
        statuses = [int(sock.recv(65536).split(b" ", 2)[1]) for sock in sockets]
    finally:
        release.set()
        for sock in sockets:
            sock.close()
    assert sorted(statuses) == [200] * PENDING + [429] * (8 - PENDING), statuses
