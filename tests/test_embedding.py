"""Embedding at scale: JPEG draft decoding, images decoded in loader workers (errors still one line), and `embed`
sharded over 2 CPU processes by `accelerate launch` into one output equal to the 1-process one."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import REPO_ROOT
from reliability_fixtures import save_tiny_model

from bioscan_clip.cli import main
from bioscan_clip.data import SpecimenDataset, image_file_records
from bioscan_clip.features import IMAGE, embed_dataset
from modeling_bioscanclip import BioscanClipModel, BioscanClipProcessor, BioscanImageError
from modeling_bioscanclip.image_processing_bioscanclip import BioscanClipImageProcessor, load_image_safely

PHOTOS = "3dlg-hcvc__Bioscan-ImgFilter/images"


def photos(realdata, count: int) -> list[str]:
    found = sorted(str(p) for p in (realdata / PHOTOS).glob("*.jpg"))[:count]
    if len(found) < count:
        pytest.skip(f"{realdata / PHOTOS}: fewer than {count} photos")
    return found


def test_jpeg_draft_decodes_at_the_smallest_scale_that_still_covers_the_resize(realdata):
    path = photos(realdata, 1)[0]
    full = load_image_safely(path)
    assert full.size == (1024, 768)
    assert load_image_safely(path, min_side=72).size == (128, 96)  # 1/8: still >= 72 on the short side
    assert load_image_safely(path, min_side=256).size == (512, 384)  # 1/4 would give 192 < 256
    assert load_image_safely(path, min_side=700).size == (1024, 768)  # no scale covers it: full decode


def test_jpeg_draft_pixels_stay_close_to_a_full_decode(realdata):
    paths = photos(realdata, 8)
    for resize, crop in ((72, 64), (256, 224)):
        draft = BioscanClipImageProcessor(resize_shortest_edge=resize, crop_size=crop, jpeg_draft=True)
        full = BioscanClipImageProcessor(resize_shortest_edge=resize, crop_size=crop, jpeg_draft=False)
        a = np.stack([draft.process_one(p) for p in paths])
        b = np.stack([full.process_one(p) for p in paths])
        levels = np.abs(a - b) * 0.5 * 255  # normalised with std 0.5: back to 8-bit levels
        assert 0 < levels.mean() < 1.0, levels.mean()  # different decodes (so draft ran), under a level on average


def test_loader_workers_give_the_same_embeddings_and_one_line_errors(tmp_path, tiny_processor, realdata):
    paths = photos(realdata, 6)
    model = BioscanClipModel.from_pretrained(save_tiny_model(tmp_path / "model", tiny_processor, seed=0)).eval()
    processor = BioscanClipProcessor.from_pretrained(tmp_path / "model")
    dataset = SpecimenDataset(image_file_records(paths, [f"P{i}" for i in range(6)]), processor, [IMAGE])
    inline = embed_dataset(model, dataset, batch_size=2, num_workers=0, show_progress=False, combined=False)
    workers = embed_dataset(model, dataset, batch_size=2, num_workers=2, show_progress=False, combined=False)
    np.testing.assert_allclose(workers[IMAGE], inline[IMAGE], atol=1e-6)
    direct = processor(images=paths[:1])["pixel_values"]
    with torch.inference_mode():
        expected = model.embed(pixel_values=direct)[IMAGE].numpy()
    np.testing.assert_allclose(inline[IMAGE][:1], expected, atol=1e-5)

    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    bad = SpecimenDataset(image_file_records([*paths[:3], str(broken)], ["A", "B", "C", "BAD1"]), processor, [IMAGE])
    with pytest.raises(BioscanImageError) as raised:
        embed_dataset(model, bad, batch_size=2, num_workers=1, show_progress=False)
    message = str(raised.value)
    assert "BAD1" in message and "\n" not in message and "Traceback" not in message


def _launch_embed(processes: int, model_dir, mini_dir, mini_cache, out) -> subprocess.CompletedProcess:
    flags = ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    launcher = ["--multi_gpu", "--num_processes", "2", *flags] if processes == 2 else ["--num_processes", "1", *flags]
    command = [
        sys.executable, "-m", "accelerate.commands.launch", *launcher, "-m", "bioscan_clip.cli", "embed",
        "--model", str(model_dir), "--source", "mini", "--data_dir", str(mini_dir), "--cache_dir", str(mini_cache),
        "--split", "val", "--batch_size", "16", "--out", str(out),
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=600, cwd=REPO_ROOT)


@pytest.mark.slow
def test_embed_shards_over_two_processes_into_one_output(tmp_path, tiny_processor, mini_dir, mini_cache):
    model_dir = save_tiny_model(tmp_path / "model", tiny_processor, seed=3)
    single, sharded = tmp_path / "one.parquet", tmp_path / "two.parquet"
    assert main(["embed", "--model", str(model_dir), "--source", "mini", "--data_dir", str(mini_dir),
                 "--cache_dir", str(mini_cache), "--split", "val", "--batch_size", "16", "--out", str(single)]) == 0  # fmt: skip
    result = _launch_embed(2, model_dir, mini_dir, mini_cache, sharded)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "(2 processes)" in result.stdout, result.stdout[-2000:]
    a, b = pd.read_parquet(single), pd.read_parquet(sharded)
    assert len(b) == len(a) and list(b["id"]) == list(a["id"]) and list(b["feature"]) == list(a["feature"])
    for left, right in zip(b["embedding"], a["embedding"], strict=True):
        np.testing.assert_allclose(left, right, atol=1e-5)
    assert len(set(a["id"])) > 16  # more records than one batch: both processes had a shard
    assert not list(tmp_path.glob(".two.parquet.tmp-*"))  # one writer, nothing half-written left
