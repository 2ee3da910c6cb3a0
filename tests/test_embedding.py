"""Embedding at scale: JPEG draft decoding, images decoded in loader workers (errors still one line), and `embed`
sharded over 2 CPU processes by `accelerate launch` into one output equal to the 1-process one (dataset records;
photos and FASTA barcodes), and a shard that fails ends the job instead of leaving the other process waiting."""

from __future__ import annotations

import doctest
import os
import re
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import REPO_ROOT
from reliability_fixtures import save_tiny_model

from bioscan_clip import sharding
from bioscan_clip.apps.cli import main
from bioscan_clip.data.specimens import SpecimenDataset, image_file_records
from bioscan_clip.features import IMAGE, embed_dataset
from bioscan_clip.sharding import ProcessShard, process_shard, shard_bounds
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


def test_embedding_to_disk_gives_the_in_memory_features_memory_mapped(tmp_path, tiny_processor, mini_dir, mini_cache):
    from bioscan_clip.data.spec import load_splits
    from bioscan_clip.features import AVERAGED, CONCATENATED, DNA, KEY_FEATURES

    model = BioscanClipModel.from_pretrained(save_tiny_model(tmp_path / "model", tiny_processor, seed=1)).eval()
    splits, _ = load_splits("mini", str(mini_dir), cache_dir=str(mini_cache))
    dataset = SpecimenDataset(splits["val"].select(range(10)), tiny_processor, ["image", "dna", "text"])
    in_memory = embed_dataset(model, dataset, batch_size=4, num_workers=0, show_progress=False)
    (tmp_path / "scratch").mkdir()
    on_disk = embed_dataset(
        model, dataset, batch_size=4, num_workers=0, show_progress=False, out_dir=tmp_path / "scratch",
        features=KEY_FEATURES,
    )  # fmt: skip
    assert set(on_disk) == set(KEY_FEATURES) and CONCATENATED in in_memory  # only the features asked for
    for name in KEY_FEATURES:
        assert isinstance(on_disk[name], np.memmap) and not on_disk[name].flags.writeable
        np.testing.assert_array_equal(on_disk[name], in_memory[name])
    assert sorted(p.name for p in (tmp_path / "scratch").iterdir()) == sorted(f"{n}.npy" for n in KEY_FEATURES)
    assert np.allclose(np.linalg.norm(on_disk[AVERAGED], axis=1), 1, atol=1e-5) and on_disk[DNA].shape[0] == 10


def test_index_embeds_its_keys_to_disk_and_indexes_them_from_there(
    tmp_path, tiny_processor, mini_dir, mini_cache, monkeypatch
):
    from pathlib import Path

    from bioscan_clip.data.spec import load_splits
    from bioscan_clip.features import KEY_FEATURES
    from bioscan_clip.identification import build as identification
    from bioscan_clip.retrieval.key_index import KeyIndex

    model = BioscanClipModel.from_pretrained(save_tiny_model(tmp_path / "model", tiny_processor, seed=1)).eval()
    splits, _ = load_splits("mini", str(mini_dir), cache_dir=str(mini_cache))
    keys = splits["val"].select(range(12))
    calls = []

    def recording(*args, **kwargs):  # the real embed_dataset, its key features kept for the check below
        result = embed_dataset(*args, **kwargs)
        calls.append((kwargs, {name: np.array(matrix) for name, matrix in result.items()}, result))
        return result

    monkeypatch.setattr(identification, "embed_dataset", recording)
    out = identification.build_key_folder(model, tiny_processor, keys, tmp_path / "keys", show_progress=False)
    kwargs, features, returned = calls[0]
    assert kwargs["features"] == KEY_FEATURES and all(isinstance(m, np.memmap) for m in returned.values())
    assert not Path(kwargs["out_dir"]).exists()  # the scratch folder is gone with the build
    for name in features:  # each index holds the features written to disk (every one finds itself at cosine 1)
        scores, _ = KeyIndex.load(out / name).exact_search(features[name], 1)
        np.testing.assert_allclose(scores[:, 0], 1, atol=1e-5)


def _launch_embed(
    processes: int, embed_args: list[str], timeout: int = 600, subcommand: str = "embed"
) -> subprocess.CompletedProcess:
    """`accelerate launch ... -m bioscan_clip.apps.cli embed EMBED_ARGS` as a user types it (on CPU, 2 processes need
    --multi_gpu: without it Accelerate starts one); ``subcommand`` launches another sharded command."""
    flags = ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    launcher = ["--multi_gpu", "--num_processes", "2", *flags] if processes == 2 else ["--num_processes", "1", *flags]
    command = [sys.executable, "-m", "accelerate.commands.launch", *launcher, "-m", "bioscan_clip.apps.cli", subcommand]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [*command, *embed_args], capture_output=True, text=True, env=env, timeout=timeout, cwd=REPO_ROOT
    )


def _assert_same_output(sharded, single) -> pd.DataFrame:
    a, b = pd.read_parquet(single), pd.read_parquet(sharded)
    assert list(b.columns) == list(a.columns)
    assert len(b) == len(a) and list(b["id"]) == list(a["id"]) and list(b["feature"]) == list(a["feature"])
    for column in a.columns.drop(["embedding"]):
        assert list(b[column]) == list(a[column]), column
    for left, right in zip(b["embedding"], a["embedding"], strict=True):  # features differ in width (concatenated)
        np.testing.assert_allclose(left, right, atol=1e-5)
    return a


def test_shards_are_contiguous_equal_and_cover_every_item_in_order():
    for total in (0, 1, 5, 16, 17, 1001):
        for world in (1, 2, 3, 8):
            bounds = [shard_bounds(total, rank, world) for rank in range(world)]
            assert bounds[0][0] == 0 and bounds[-1][1] == total
            assert all(bounds[r][1] == bounds[r + 1][0] for r in range(world - 1))  # contiguous, in rank order
            sizes = [stop - start for start, stop in bounds]
            assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)
    items = list(range(11))
    shards = [ProcessShard(rank=r, world_size=3).take(items) for r in range(3)]
    assert [x for shard in shards for x in shard] == items and shards[0] == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="rank 2 of 2"):
        shard_bounds(4, 2, 2)
    assert doctest.testmod(sharding).failed == 0
    assert ProcessShard().gather("x") == ["x"]  # not launched: no process group, the one result


def test_a_one_process_accelerate_launch_embeds_with_every_core(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")  # what `accelerate launch` exports, with OMP_NUM_THREADS=1
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        shard = process_shard()
        assert shard.world_size == 1 and shard.is_main and torch.get_num_threads() == len(os.sched_getaffinity(0))
    finally:
        torch.set_num_threads(before)


@pytest.mark.slow
def test_embed_shards_over_two_processes_into_one_output(tmp_path, tiny_processor, mini_dir, mini_cache):
    model_dir = save_tiny_model(tmp_path / "model", tiny_processor, seed=3)
    single, sharded = tmp_path / "one.parquet", tmp_path / "two.parquet"
    data = ["--model", str(model_dir), "--source", "mini", "--data_dir", str(mini_dir), "--cache_dir", str(mini_cache),
            "--split", "val", "--batch_size", "4"]  # fmt: skip
    assert main(["embed", *data, "--out", str(single)]) == 0
    result = _launch_embed(2, [*data, "--out", str(sharded)])
    assert result.returncode == 0, result.stderr[-4000:]
    assert "(2 processes)" in result.stdout, result.stdout[-2000:]
    assert "process 1 of 2: records " in result.stderr, result.stderr[-4000:]
    a = _assert_same_output(sharded, single)
    assert {"order", "species"} <= set(a.columns)  # the records' taxonomy travels with each shard
    assert len(set(a["id"])) > 8  # more records than two batches: each process had a shard of several batches
    assert not list(tmp_path.glob(".two.parquet.tmp-*"))  # one writer, nothing half-written left


@pytest.mark.slow
def test_embed_shards_photos_and_fasta_and_a_failing_shard_ends_the_job(tmp_path, tiny_processor, realdata):
    """Real photos and real barcodes, 2 processes = 1 process; a bad photo in the second shard ends every process
    (no process left waiting for it) with the one-line error, and writes nothing."""
    paths = photos(realdata, 7)
    barcodes = pd.read_csv(realdata / "coi_fulltax_sample.tsv", sep="\t", dtype=str).dropna(subset=["nuc"]).head(21)
    fasta = tmp_path / "barcodes.fasta"
    fasta.write_text("".join(f">{row.processid}\n{row.nuc}\n" for row in barcodes.itertuples()))
    model_dir = save_tiny_model(tmp_path / "model", tiny_processor, seed=5)
    inputs = ["--model", str(model_dir), "--images", *paths, "--fasta", str(fasta), "--batch_size", "3"]
    single, sharded = tmp_path / "one.parquet", tmp_path / "two.parquet"
    assert main(["embed", *inputs, "--out", str(single)]) == 0
    result = _launch_embed(2, [*inputs, "--out", str(sharded)])
    assert result.returncode == 0, result.stderr[-4000:]
    assert "(2 processes)" in result.stdout, result.stdout[-2000:]
    a = _assert_same_output(sharded, single)
    assert list(a["feature"]) == [IMAGE] * 7 + ["dna"] * 21 and list(a["id"][7:]) == list(barcodes["processid"])
    for shard in ("process 0 of 2: images 0-4 of 7, barcodes 0-11 of 21", "process 1 of 2: images 4-7 of 7, "
                  "barcodes 11-21 of 21"):  # fmt: skip
        assert shard in result.stderr, result.stderr[-4000:]  # each process embedded its own contiguous shard

    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    failed_out = tmp_path / "failed.parquet"
    started = time.monotonic()
    failed = _launch_embed(2, ["--model", str(model_dir), "--images", *paths[:3], str(broken),
                               "--out", str(failed_out)], timeout=300)  # fmt: skip
    assert failed.returncode != 0 and time.monotonic() - started < 240
    # (the main process's progress bar may precede the line on the same terminal line: stderr is shared)
    errors = re.findall(r"bioscan-clip embed: error: [^\r\n]*", failed.stderr)
    assert errors and "broken.jpg" in errors[0], failed.stderr[-4000:]
    assert "[rank0]" not in failed.stderr and "[rank1]" not in failed.stderr  # no worker traceback, only one-liners
    assert not failed_out.exists() and not list(tmp_path.glob(".failed.parquet.tmp-*"))


def test_predict_streams_its_parts_and_shards_over_two_processes_into_what_one_process_writes(
    tmp_path, realdata, monkeypatch
):
    """predict writes its rows in parts (memory holds one part) and merges them into the same table, in every output
    format; under `accelerate launch` with 2 processes each identifies a contiguous shard and the one output equals
    the 1-process one, row for row (barcodes against a model-free key folder of real BOLD records)."""
    from bioscan_clip.apps.commands import predict

    table = realdata / "coi_fulltax_sample.tsv"
    keys = tmp_path / "keys"
    data = ["--source", "bold", "--partition", "none", "--data_dir", str(table), "--cache_dir", str(tmp_path / "c")]
    assert main(["index", *data, "--out", str(keys)]) == 0
    queries = tmp_path / "queries.tsv"
    pd.read_csv(table, sep="\t", dtype=str).iloc[::20].to_csv(queries, sep="\t", index=False)  # 21 labelled rows
    inputs = ["--keys", str(keys), "--table", str(queries), "--batch_size", "4"]
    whole = {suffix: tmp_path / f"whole{suffix}" for suffix in (".parquet", ".csv", ".json")}
    for path in whole.values():
        assert main(["predict", *inputs, "--out", str(path)]) == 0
    monkeypatch.setattr(predict, "PART_SIZE", 5)  # 21 queries -> 5 parts
    for suffix, path in whole.items():
        parted = tmp_path / f"parted{suffix}"
        assert main(["predict", *inputs, "--out", str(parted), "--hits", str(tmp_path / "hits.tsv")]) == 0
        if suffix != ".parquet":  # text outputs: the very same bytes
            assert parted.read_bytes() == path.read_bytes()
        read = {".parquet": pd.read_parquet, ".csv": pd.read_csv, ".json": pd.read_json}[suffix]
        pd.testing.assert_frame_equal(read(parted), read(path))
    assert not list(tmp_path.glob(".*.parts.tmp-*"))  # the parts are gone once merged
    assert len(pd.read_csv(tmp_path / "hits.tsv", sep="\t")) == 21 * 25

    sharded = tmp_path / "sharded.parquet"
    result = _launch_embed(2, [*inputs, "--out", str(sharded)], subcommand="predict")
    assert result.returncode == 0, result.stderr[-4000:]
    assert "(2 processes)" in result.stdout and "process 1 of 2: queries 11-21 of 21" in result.stderr
    one, two = pd.read_parquet(whole[".parquet"]), pd.read_parquet(sharded)
    pd.testing.assert_frame_equal(two, one)
