"""The demo under an upload flood (the small version of benchmarks/bench_demo_load.py), on a real loopback server.

A few clients (distinct ``X-Forwarded-For`` addresses, trusted as on a Space) upload as fast as they can: the upload
cache stays under its cap, each client past its rate gets ``429`` with ``Retry-After``, and a normal client still
gets its answer. ``/config`` and the page name no server path.
"""

from __future__ import annotations

import importlib.util
import sys
import tempfile

import httpx
import pytest
from conftest import environment_variable
from test_space import REPO_ROOT, _free_port, demo_app, demo_folders  # noqa: F401  (fixtures)

CAP_MB = 6
UPLOAD_MB = 1


def _bench():
    spec = importlib.util.spec_from_file_location("bench_demo_load", REPO_ROOT / "benchmarks" / "bench_demo_load.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, module)  # its dataclasses look their module up
    spec.loader.exec_module(sys.modules[spec.name])
    return sys.modules[spec.name]


@pytest.fixture(scope="module")
def guarded(demo_app, demo_folders, tmp_path_factory):  # noqa: F811
    model_dir, key_dir = demo_folders
    root = tmp_path_factory.mktemp("guarded")
    cache_dir = root / "gradio-cache"
    cache_dir.mkdir()
    with environment_variable("GRADIO_TEMP_DIR", str(cache_dir)):
        demo = demo_app.build_demo(model_dir, key_dir, examples_dir=root / "examples")
        _, url, _ = demo_app.launch(
            demo, port=_free_port(), upload_cache_mb=CAP_MB, uploads_per_minute=30, upload_burst=3,
            trust_forwarded_for=True, prevent_thread_lock=True, quiet=True,
        )  # fmt: skip
        try:
            yield url.rstrip("/"), cache_dir, (model_dir, key_dir)
        finally:
            demo.close()


def test_upload_flood_keeps_the_cache_under_its_cap(guarded):
    url, cache_dir, _ = guarded
    bench = _bench()
    report = bench.flood(
        url, cache_dir, clients=4, duration_s=6, upload_bytes=UPLOAD_MB * 1024 * 1024, backoff=False,
        max_requests_per_client=40, cache_cap_bytes=CAP_MB * 1024 * 1024,
    )  # fmt: skip
    # The cap held at every sample, though far more than the cap was offered.
    assert report.statuses.get("upload 200", 0) > CAP_MB  # the cap was exceeded many times over: evicted
    assert report.max_cache_bytes <= CAP_MB * 1024 * 1024, report
    assert bench.folder_bytes(cache_dir) <= CAP_MB * 1024 * 1024
    # Beyond the per-client rate: 429, always with Retry-After.
    assert report.statuses.get("upload 429", 0) > 0 and report.retry_after_missing == 0, report
    assert report.answered > 0 and report.p99_s is not None
    # The example photos named by the page are never evicted.
    page = httpx.get(f"{url}/config", timeout=10).json()
    assert "demo-file/" in str(page)


def test_rate_limit_is_per_client_and_says_when_to_retry(guarded):
    url, _, _ = guarded
    payload = {"files": ("specimen.jpg", b"\xff\xd8" + b"\0" * 1000, "image/jpeg")}
    with httpx.Client(base_url=url, timeout=10, headers={"X-Forwarded-For": "192.0.2.7"}) as greedy:
        codes = [greedy.post("/gradio_api/upload", files=payload) for _ in range(6)]
    assert [r.status_code for r in codes[:3]] == [200, 200, 200]  # the burst
    refused = [r for r in codes if r.status_code == 429]
    assert refused and all(int(r.headers["retry-after"]) >= 1 for r in refused)
    # Another client is not held back by the first one.
    with httpx.Client(base_url=url, timeout=10, headers={"X-Forwarded-For": "192.0.2.8"}) as polite:
        assert polite.post("/gradio_api/upload", files=payload).status_code == 200
        joined = polite.post("/gradio_api/call/identify", json={"data": [None, _bench().BARCODE, 1]})
        assert joined.status_code == 200
        answer = polite.get(f"/gradio_api/call/identify/{joined.json()['event_id']}").text
    assert "event: complete" in answer and "Deepest confident rank" in answer


def test_upload_without_length_or_with_several_files_is_refused(guarded):
    url, _, _ = guarded
    headers = {"X-Forwarded-For": "192.0.2.9"}
    big = b"\0" * (6 * 1024 * 1024)
    two = [("files", ("a.jpg", big, "image/jpeg")), ("files", ("b.jpg", big, "image/jpeg"))]
    response = httpx.post(f"{url}/gradio_api/upload", files=two, headers=headers, timeout=30)
    assert response.status_code == 413

    def chunks():
        yield b"--x\r\n"

    response = httpx.post(
        f"{url}/gradio_api/upload", content=chunks(), timeout=10,
        headers={**headers, "content-type": "multipart/form-data; boundary=x"},
    )  # fmt: skip
    assert response.status_code == 411


def test_config_and_page_name_no_server_paths(guarded):
    url, cache_dir, (model_dir, key_dir) = guarded
    forbidden = [str(cache_dir), tempfile.gettempdir() + "/", str(REPO_ROOT), str(model_dir), str(key_dir)]
    for page in ("/config", "/", "/gradio_api/info"):
        text = httpx.get(f"{url}{page}", timeout=10).text
        leaked = [path for path in forbidden if path in text]
        assert not leaked, (page, leaked)
    # The example photos are still shown, through their alias (and only they are served there).
    config = httpx.get(f"{url}/config", timeout=10).text
    start = config.index("/gradio_api/demo-file/")
    alias = config[start : config.index('"', start)]
    photo = httpx.get(f"{url}{alias}", timeout=10)
    assert photo.status_code == 200 and photo.content[:2] == b"\xff\xd8"
    assert httpx.get(f"{url}/gradio_api/demo-file/0000/etc/passwd", timeout=10).status_code == 404
