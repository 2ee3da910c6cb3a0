"""The exported Space boots from its folder alone in a fresh venv and answers a real photo and barcode.

The Space repository (``bioscan-clip push space --wheel``) is copied as a Space checks it out; a fresh venv gets only
its ``requirements.txt`` (this package from the wheel the test builds, shipped in the folder), the test venv's
dependencies made visible as tests/test_wheel.py does; ``python app.py`` then finds the model and key library
named in the README front matter in a Hub cache (offline) and serves the demo, queried through gradio_client.
"""

from __future__ import annotations

import csv
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
from hub_cache import hub_cache_layout
from wheel_build import build_wheel, check, expose_test_dependencies, isolated_env, make_venv, pip_install

from bioscan_clip.apps import publish as hub

pytestmark = pytest.mark.slow

MODEL_REPO, KEYS_REPO, SPACE_REPO = "my-lab/bioscan-clip-tiny", "my-lab/bioscan-keys", "my-lab/bioscan-clip-demo"
START_TIMEOUT_S = 180


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _real_query(realdata: Path) -> tuple[Path, str]:
    images = sorted((realdata / "zahrag__BIOSCAN-1M" / "cropped_images").glob("*.jpg"))
    if not images:
        pytest.skip("no BIOSCAN-1M images in the real data folder")
    with open(realdata / "coi_fulltax_sample.tsv", newline="") as handle:
        barcode = next((row["nuc"] for row in csv.DictReader(handle, delimiter="\t") if row["nuc"]), None)
    if barcode is None:
        pytest.skip("no barcode in coi_fulltax_sample.tsv")
    return images[0], barcode


def test_exported_space_boots_in_a_fresh_venv_and_answers(tmp_path, realdata):
    from demo_folders import write_untrained_demo_folders
    from gradio_client import Client, handle_file

    from bioscan_clip.identification.identifier import Identifier

    image, barcode = _real_query(realdata)
    wheel = build_wheel(tmp_path / "build")
    model_dir, key_dir = write_untrained_demo_folders(tmp_path / "built", keys=20)
    cache = tmp_path / "hf-cache"
    model_commit, keys_commit = "1" * 40, "2" * 40
    hub_cache_layout(cache, MODEL_REPO, hub.export_model(model_dir, tmp_path / "model", repo_id=MODEL_REPO),
                         repo_type="model", commit=model_commit)  # fmt: skip
    keys = hub.export_keys(key_dir, tmp_path / "keys", repo_id=KEYS_REPO, model_repo=MODEL_REPO,
                           model_revision=model_commit)  # fmt: skip
    hub_cache_layout(cache, KEYS_REPO, keys, repo_type="dataset", commit=keys_commit)
    exported = hub.export_space(tmp_path / "space-export", repo_id=SPACE_REPO, keys_repo=KEYS_REPO,
                                model_repo=MODEL_REPO, wheel=wheel)  # fmt: skip
    space = tmp_path / "space-checkout"  # the repository's files and nothing else, as a Space checks them out
    snapshot = hub_cache_layout(tmp_path / "space-cache", SPACE_REPO, exported, repo_type="space", commit="3" * 40)
    shutil.copytree(snapshot, space, symlinks=False)
    assert sorted(p.name for p in space.iterdir()) == sorted(["README.md", "app.py", "requirements.txt",
                                                             "screenshot.png", wheel.name])  # fmt: skip

    venv = tmp_path / "venv"
    python = make_venv(venv)
    pip_install(python, "--find-links", wheel.parent, "-r", "requirements.txt", cwd=space)
    site_packages, _ = expose_test_dependencies(python)
    env = isolated_env(venv, tmp_path)
    for name in ("BIOSCAN_CLIP_KEYS", "BIOSCAN_CLIP_MODEL", "BIOSCAN_CLIP_REVISION", "HF_HUB_CACHE"):
        env.pop(name, None)
    port = _free_port()
    env.update(HF_HUB_CACHE=str(cache), GRADIO_SERVER_PORT=str(port))
    where = check(subprocess.run([python, "-c", "import bioscan_clip; print(bioscan_clip.__file__)"], cwd=space,
                                 env=env, capture_output=True, text=True, timeout=120))  # fmt: skip
    assert Path(where.strip()).is_relative_to(site_packages), where

    log = tmp_path / "space.log"
    with open(log, "w") as handle:
        server = subprocess.Popen([python, "app.py"], cwd=space, env=env, stdout=handle, stderr=subprocess.STDOUT)
        try:
            client = None
            deadline = time.monotonic() + START_TIMEOUT_S
            while client is None and time.monotonic() < deadline and server.poll() is None:
                try:
                    client = Client(f"http://127.0.0.1:{port}/", verbose=False)
                except Exception:  # not listening yet
                    time.sleep(1)
            if client is None:
                pytest.fail(f"the Space did not start (exit {server.poll()}):\n{log.read_text()[-4000:]}")
            status, ranks, gallery, cross_text, cross = client.predict(
                handle_file(str(image)), barcode, 5, api_name="/identify"
            )
        finally:
            server.terminate()
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait(timeout=20)
    assert "photo + barcode" in status, status
    [expected] = Identifier.load(model_dir, key_dir).identify(images=[str(image)], barcodes=[barcode], k=5)
    assert [row[1] for row in ranks["data"]] == [p.label or "—" for p in expected.ranks]
    assert len(gallery) == 5
