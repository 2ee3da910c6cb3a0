"""The Gradio demo (bioscan_clip.apps.demo, launched by space/app.py and `bioscan-clip demo`): end to end over HTTP with
gradio_client, its limits, and a real browser.

Everything runs on loopback against a randomly initialised tiny model and a 60-specimen key folder built from the
generated mini-BIOSCAN (the plumbing, not the accuracy, is under test), queried with a real BIOSCAN-1M photo and a
real BOLD COI barcode.
"""

from __future__ import annotations

import csv
import importlib.util
import os
import shutil
import socket
import struct
import tempfile
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from conftest import environment_variable

from modeling_bioscanclip import BioscanInputError
from modeling_bioscanclip.constants_bioscanclip import MAX_IMAGE_PIXELS, TAXONOMIC_RANKS

REPO_ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
# Headless Chromium on a machine with no outside network: without the background-networking flags it keeps
# trying to reach Google's services (see scripts/install_test_browser.sh for the install).
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-quic",
    "--no-first-run",
    "--disable-component-update",
    "--disable-sync",
]
N_KEYS = 60


@pytest.fixture(scope="session")
def demo_app() -> SimpleNamespace:
    """What `bioscan-clip demo` runs and space/app.py re-exports: the page, the guard's launch and the command."""
    from bioscan_clip.apps.commands import demo as command
    from bioscan_clip.apps.demo import guard, page

    return SimpleNamespace(
        build_demo=page.build_demo,
        launch=guard.launch,
        add_arguments=command.add_arguments,
        main=command.main,
        DEFAULT_EXAMPLES_DIR=page.DEFAULT_EXAMPLES_DIR,
    )


@pytest.fixture(scope="session")
def demo_folders(tmp_path_factory) -> tuple[Path, Path]:
    """A saved tiny model (random weights) and a key folder of 60 mini-BIOSCAN specimens, calibrated on val."""
    from demo_folders import write_untrained_demo_folders

    return write_untrained_demo_folders(tmp_path_factory.mktemp("space"), keys=N_KEYS)


@pytest.fixture(scope="session")
def real_image(realdata) -> Path:
    images = sorted((realdata / "zahrag__BIOSCAN-1M" / "cropped_images").glob("*.jpg"))
    if not images:
        pytest.skip("no BIOSCAN-1M images in the real data folder")
    return images[0]


@pytest.fixture(scope="session")
def real_barcode(realdata) -> str:
    with open(realdata / "coi_fulltax_sample.tsv", newline="") as handle:
        for row in csv.DictReader(handle, delimiter="\t"):
            if row["nuc"]:
                return row["nuc"]
    pytest.skip("no barcode in coi_fulltax_sample.tsv")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class Served:
    app: SimpleNamespace
    demo: Any
    url: str
    identifier: Any
    cache_dir: Path


@pytest.fixture(scope="module")
def served(demo_app, demo_folders, tmp_path_factory):
    """The demo launched on loopback (an ephemeral port), with its own gradio cache folder."""
    from bioscan_clip.identification.identifier import Identifier

    model_dir, key_dir = demo_folders
    root = tmp_path_factory.mktemp("served")
    cache_dir = root / "gradio-cache"
    cache_dir.mkdir()
    # GRADIO_TEMP_DIR is read when components are built and on each upload.
    with environment_variable("GRADIO_TEMP_DIR", str(cache_dir)):
        identifier = Identifier.load(model_dir, key_dir)
        demo = demo_app.build_demo(model_dir, key_dir, identifier=identifier, examples_dir=root / "examples")
        # One test client uploads many files and fills the queue alone: the per-client quotas are lifted
        # (tests/test_demo_load.py and tests/test_demo_quotas.py check them).
        _, url, _ = demo_app.launch(
            demo, port=_free_port(), uploads_per_minute=6000, upload_burst=1000, calls_per_minute=6000,
            call_burst=1000, pending_per_client=1000, prevent_thread_lock=True, quiet=True,
        )  # fmt: skip
        try:
            yield Served(demo_app, demo, url.rstrip("/"), identifier, cache_dir)
        finally:
            demo.close()


@pytest.fixture(scope="module")
def client(served, tmp_path_factory):
    from gradio_client import Client

    return Client(served.url, verbose=False, download_files=str(tmp_path_factory.mktemp("client-downloads")))


def _app_error(call) -> str:
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError) as caught:
        call()
    message = str(caught.value)
    assert "Traceback" not in message and 'File "' not in message, message
    return message


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares width x height pixels but carries no image data (a decompression-bomb header)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


# --- building without launching ------------------------------------------------------------------------------------


def test_build_demo_without_launching(demo_app, demo_folders, tmp_path):
    import gradio as gr
    from PIL import Image

    from modeling_bioscanclip import load_image_safely

    model_dir, key_dir = demo_folders
    demo = demo_app.build_demo(model_dir, key_dir, examples_dir=tmp_path)
    assert isinstance(demo, gr.Blocks)
    assert not demo.is_running
    # A few key specimens written as examples (photo files the safe loader reads), one per species.
    photos = sorted(tmp_path.glob("example_*.jpg"))
    assert 1 <= len(photos) <= 3
    for photo in photos:
        assert load_image_safely(photo).size[0] > 0
    # The mini-BIOSCAN key set is labelled SYNTHETIC on the page.
    texts = [c.get("props", {}).get("value") for c in demo.config["components"]]
    assert any(isinstance(text, str) and "SYNTHETIC" in text for text in texts)
    # The Pillow backstop is set by the app module (the library leaves it alone).
    assert Image.MAX_IMAGE_PIXELS == MAX_IMAGE_PIXELS
    # Building writes nothing beside the source (gradio writes .pyi stubs for component subclasses; we have none).
    assert not (REPO_ROOT / "bioscan_clip" / "demo.pyi").exists()


def test_default_examples_are_written_outside_the_source_tree(demo_app, demo_folders):
    model_dir, key_dir = demo_folders
    assert Path(demo_app.DEFAULT_EXAMPLES_DIR).is_relative_to(tempfile.gettempdir())
    demo_app.build_demo(model_dir, key_dir)
    written = sorted(Path(demo_app.DEFAULT_EXAMPLES_DIR).glob("*/example_*.jpg"))
    assert written and not any(path.is_relative_to(REPO_ROOT) for path in written)
    assert not (REPO_ROOT / "space" / "examples").exists()


def test_space_entry_point_reexports_the_demo(demo_app):
    """space/app.py, loaded by path as a Space runs it, is only the package's demo."""
    spec = importlib.util.spec_from_file_location("space_app_under_test", REPO_ROOT / "space" / "app.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.build_demo is demo_app.build_demo and module.main is demo_app.main


def test_resolve_folder_local_and_refusals(demo_folders, tmp_path):
    from bioscan_clip.resolve import resolve_folder

    model_dir, _ = demo_folders
    assert resolve_folder(model_dir) == model_dir  # a local folder never reaches the Hub
    with pytest.raises(BioscanInputError, match="not a Hub repository id"):
        resolve_folder(tmp_path / "missing")
    with pytest.raises(BioscanInputError, match="plain relative path"):
        resolve_folder("lab/keys/../../elsewhere", repo_type="dataset")


def test_demo_options_use_underscores_and_keep_the_dashed_spellings_hidden(demo_app):
    import argparse

    parser = demo_app.add_arguments(argparse.ArgumentParser())
    shown = parser.format_help()
    assert "--max_file_size_mb" in shown and "--max-file-size-mb" not in shown and "--upload_dir" in shown
    old = parser.parse_args(["--max-file-size-mb", "3", "--cache-dir", "/tmp/u", "--keys-repo-type", "model"])
    new = parser.parse_args(["--max_file_size_mb", "3", "--upload_dir", "/tmp/u", "--keys_repo_type", "model"])
    assert vars(old) == vars(new)
    assert parser.parse_args([]).keys_repo_type == "dataset"  # where `push keys` publishes


def test_space_requirements_pin_this_package():
    """The Space installs the package (no source folders copied beside app.py), at the version of pyproject.toml."""
    tomllib = pytest.importorskip("tomllib")
    version = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["version"]
    lines = [line.strip() for line in (REPO_ROOT / "space" / "requirements.txt").read_text().splitlines()]
    requirements = [line for line in lines if line and not line.startswith(("#", "-"))]
    assert requirements == [f"bioscan-clip=={version}"]


def test_cli_arguments_are_safe_by_default(demo_app):
    import argparse

    args = demo_app.add_arguments(argparse.ArgumentParser()).parse_args([])
    assert args.host == os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1")
    assert args.max_file_size_mb == 10 and args.queue_size == 16
    assert args.model.endswith(os.path.join("runs", "quickstart", "model")) or "BIOSCAN_CLIP_MODEL" in os.environ


# --- served over HTTP ----------------------------------------------------------------------------------------------


def test_launch_is_loopback_and_bounded(served):
    assert served.url.startswith("http://127.0.0.1:")
    assert served.demo.server_name == "127.0.0.1"
    assert served.demo.max_file_size == 10 * 1024 * 1024
    assert served.demo._queue.max_size == 16
    assert served.demo._queue.default_concurrency_limit == 1
    assert not served.demo.allowed_paths
    assert not served.demo.share


def test_identify_real_photo_and_barcode(served, client, real_image, real_barcode):
    from gradio_client import handle_file

    status, ranks, gallery, cross_text, cross = client.predict(
        handle_file(str(real_image)), real_barcode, 5, api_name="/identify"
    )
    assert "photo + barcode" in status and "Deepest confident rank" in status and "Unknown species?" in status
    assert [row[0] for row in ranks["data"]] == list(TAXONOMIC_RANKS)
    assert all(row[4] in ("yes", "no") and row[2].endswith("%") for row in ranks["data"])
    # The page shows what the identification API answers for the same pair.
    [expected] = served.identifier.identify(images=[str(real_image)], barcodes=[real_barcode], k=5)
    assert [row[1] for row in ranks["data"]] == [p.label or "—" for p in expected.ranks]
    assert len(gallery) == 5
    assert all("similarity" in item["caption"] and Path(item["image"]).is_file() for item in gallery)
    assert [item["caption"].split(" · ")[-1] for item in gallery] == [n.processid for n in expected.neighbours]
    # With a barcode, each hit says how identical its barcode is, as BOLD's and BLAST's results do.
    assert all(n.percent_identity is not None for n in expected.neighbours)
    for item, n in zip(gallery, expected.neighbours, strict=True):
        assert f"{n.percent_identity:.1f} % identity over {n.overlap} bp" in item["caption"]
    # Cross-modal: the photo alone against the DNA keys.
    [cross_expected] = served.identifier.identify(images=[str(real_image)], k=5, key_feature="dna")
    assert "DNA barcodes" in cross_text
    assert [row[1] for row in cross["data"]] == [n.processid for n in cross_expected.neighbours]


def test_identify_photo_only_and_fasta_barcode_only(client, real_image, real_barcode):
    from gradio_client import handle_file

    status, ranks, gallery, _, cross = client.predict(handle_file(str(real_image)), "", 3, api_name="/identify")
    assert "**Query:** photo," in status and len(gallery) == 3 and len(cross["data"]) == 3
    fasta = ">BOLD-sample real COI\n" + "\n".join(real_barcode[i : i + 60] for i in range(0, len(real_barcode), 60))
    status, ranks, gallery, cross_text, cross = client.predict(None, fasta, 5, api_name="/identify")
    assert "**Query:** barcode," in status and len(ranks["data"]) == len(TAXONOMIC_RANKS)
    assert "Upload a photo" in cross_text and not cross["data"]


def test_bad_inputs_give_clear_messages(client, real_image, tmp_path):
    from gradio_client import handle_file

    def ask(image, barcode):
        return lambda: client.predict(image, barcode, 5, api_name="/identify")

    assert "Nothing to identify" in _app_error(ask(None, "   "))
    assert "invalid character 'Z'" in _app_error(ask(None, "ACGTACGTZZACGT"))
    assert "one FASTA record" in _app_error(ask(None, ">a\nACGTACGT\n>b\nACGTACGT"))
    assert "characters long" in _app_error(ask(None, "A" * 25_000))

    not_an_image = tmp_path / "specimen.png"
    not_an_image.write_text("this is not a picture")
    message = _app_error(ask(handle_file(str(not_an_image)), ""))
    assert "The uploaded image" in message and "not a decodable image" in message
    assert str(tmp_path) not in message  # no server paths in user-facing messages

    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(real_image.read_bytes()[:2000])
    assert "The uploaded image" in _app_error(ask(handle_file(str(truncated)), ""))

    large = tmp_path / "large.png"  # 64 Mpx: over the safe loader's 40 Mpx cap, read from the header
    large.write_bytes(_png_header_only(8_000, 8_000))
    assert "exceeds the limit of 40,000,000 pixels" in _app_error(ask(handle_file(str(large)), ""))
    bomb = tmp_path / "bomb.png"  # 10 Gpx: Pillow's own backstop (set by the app) refuses it while opening
    bomb.write_bytes(_png_header_only(100_000, 100_000))
    assert "decompression bomb" in _app_error(ask(handle_file(str(bomb)), ""))


def test_oversized_upload_is_refused(served):
    import httpx

    before = sorted(served.cache_dir.rglob("*"))
    payload = b"\xff\xd8" + b"\0" * (11 * 1024 * 1024)  # 11 MB, over the 10 MB cap
    response = httpx.post(
        f"{served.url}/gradio_api/upload", files={"files": ("big.jpg", payload, "image/jpeg")}, timeout=30
    )
    assert response.status_code == 413, response.text[:200]
    assert sorted(served.cache_dir.rglob("*")) == before


def test_no_files_served_outside_the_app(served, demo_folders, client, real_image):
    import httpx

    model_dir, key_dir = demo_folders
    weights = next(model_dir.glob("*.safetensors"))
    attempts = [
        "/gradio_api/file=/etc/passwd",
        "/gradio_api/file=..%2f..%2f..%2f..%2f..%2fetc%2fpasswd",
        "/gradio_api/file=%2fetc%2fpasswd",
        f"/gradio_api/file={served.cache_dir}/..%2f..%2f..%2f..%2fetc%2fpasswd",
        f"/gradio_api/file={served.cache_dir}/../../../../../etc/passwd",
        "/file=/etc/passwd",
        f"/gradio_api/file={weights}",  # the model and keys are loaded, never served
        f"/gradio_api/file={key_dir / 'calibration.json'}",
    ]
    with httpx.Client(base_url=served.url, timeout=10) as http:
        for path in attempts:
            response = http.get(path)
            assert response.status_code in (403, 404), (path, response.status_code)
            assert "root:" not in response.text
    # A request naming a server file as the uploaded photo is refused before the handler runs.
    forged = {"path": "/etc/passwd", "meta": {"_type": "gradio.FileData"}, "orig_name": "passwd.png"}
    with pytest.raises(Exception) as caught:
        client.predict(forged, "", 5, api_name="/identify")
    assert "root:" not in str(caught.value)
    # Positive control: the route works for what belongs to the app (an upload in its own cache folder).
    with open(real_image, "rb") as handle:
        [uploaded] = httpx.post(f"{served.url}/gradio_api/upload", files={"files": handle}, timeout=10).json()
    assert Path(uploaded).is_relative_to(served.cache_dir)
    assert httpx.get(f"{served.url}/gradio_api/file={uploaded}", timeout=10).content == real_image.read_bytes()


def test_burst_of_requests_hits_the_bounded_queue(served, client, real_barcode, monkeypatch):
    """30 concurrent requests: one runs at a time, at most 16 wait, the rest get "queue full"; then it recovers."""
    import httpx

    release = threading.Event()
    lock = threading.Lock()
    active = {"now": 0, "max": 0}
    original = served.identifier.identify

    def gated(*args, **kwargs):
        with lock:
            active["now"] += 1
            active["max"] = max(active["max"], active["now"])
        try:
            release.wait(timeout=20)  # hold the first job so the waiting line fills deterministically
            return original(*args, **kwargs)
        finally:
            with lock:
                active["now"] -= 1

    monkeypatch.setattr(served.identifier, "identify", gated)
    short_barcode = real_barcode[:120]

    def join(_: int) -> int:
        response = httpx.post(
            f"{served.url}/gradio_api/call/identify", json={"data": [None, short_barcode, 1]}, timeout=15
        )
        return response.status_code

    started = time.monotonic()
    try:
        with ThreadPoolExecutor(max_workers=30) as pool:
            codes = list(pool.map(join, range(30)))
        # While the queue is full the server still answers.
        assert httpx.get(f"{served.url}/gradio_api/info", timeout=5).status_code == 200
    finally:
        release.set()
    assert set(codes) <= {200, 503}, codes
    assert codes.count(200) <= 16 + 1  # the waiting line plus the one running
    assert codes.count(503) >= 30 - 17
    # The queue drains and a later request succeeds (once the held jobs have run: a client retries on "queue full").
    from gradio_client.utils import QueueError

    deadline = time.monotonic() + 30
    while True:
        try:
            status, ranks, *_ = client.predict(None, short_barcode, 1, api_name="/identify")
            break
        except QueueError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    assert "**Query:** barcode," in status and len(ranks["data"]) == len(TAXONOMIC_RANKS)
    assert active["max"] == 1  # default_concurrency_limit=1
    assert time.monotonic() - started < 60


# --- a real browser ------------------------------------------------------------------------------------------------


def test_browser_upload_shows_prediction_table(served, real_image, real_barcode, tmp_path):
    """Headless Chromium (Debian's, driven by Playwright) uploads a photo and a barcode and reads the table."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} not found: run scripts/install_test_browser.sh (Debian's chromium package)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")

    [expected] = served.identifier.identify(images=[str(real_image)], barcodes=[real_barcode], k=5)
    screenshot = tmp_path / "space-demo.png"
    with sync_api.sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),  # a fresh, empty profile
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_FLAGS,
            viewport={"width": 1400, "height": 1000},
        )
        try:
            page = context.new_page()
            page.set_default_timeout(20_000)
            page.goto(served.url)
            page.locator("#synthetic-banner").wait_for()
            page.locator("#specimen-image input[type=file]").set_input_files(str(real_image))
            page.locator("#specimen-image img").first.wait_for()  # the preview of the upload
            page.locator("#barcode textarea").fill(real_barcode)
            page.locator("#identify").click()
            table = page.locator("#rank-table")
            # (the data frame also keeps hidden copies of its cells for measuring: look at visible ones only)
            table.get_by_text(expected.ranks[-1].label, exact=True).filter(visible=True).first.wait_for()
            page.locator("#status").get_by_text("Deepest confident rank").wait_for()
            page.locator("#neighbours img").first.wait_for()
            for prediction in expected.ranks:
                assert table.get_by_text(prediction.label, exact=True).filter(visible=True).count() >= 1
            page.screenshot(path=str(screenshot), full_page=True)
        finally:
            context.close()
    assert screenshot.stat().st_size > 10_000
    # The committed space/screenshot.png is refreshed only on request, so test runs leave the tree clean.
    if os.environ.get("BIOSCAN_CLIP_UPDATE_SCREENSHOT") == "1":
        shutil.copyfile(screenshot, REPO_ROOT / "space" / "screenshot.png")
