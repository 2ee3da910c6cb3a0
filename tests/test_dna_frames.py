"""The model embeds what the keys hold: a model whose ``config.dna_frames`` is over 1 averages the reading frames
itself (``get_dna_features``, ``embed``, ``forward`` on ids of shape (batch, frames, seq) from the processor), so a
Hub user with ``AutoModel``/``AutoProcessor`` and no package gets the key library's DNA vectors; one frame (the
original, converted CLIBD weights) is the plain (batch, seq) path, unchanged to the last bit."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import subprocess
import sys
import sysconfig
import textwrap

import datasets
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hub_cache import hub_cache_layout

from bioscan_clip.data.specimens import SpecimenDataset
from bioscan_clip.features import embed_dataset, embed_inputs
from modeling_bioscanclip import (
    BioscanClipConfig,
    BioscanClipModel,
    BioscanClipProcessor,
    BioscanDnaTokenizer,
    BioscanInputError,
)
from modeling_bioscanclip.constants_bioscanclip import TAXONOMIC_RANKS
from modeling_bioscanclip.tokenization_dna import clean_barcodes, frame_shifted_barcodes
from tests.conftest import tiny_config_kwargs

SAMPLE = "coi_fulltax_sample.tsv"
REPO_ID = "my-lab/bioscan-clip-frames"
COMMIT = hashlib.sha1(REPO_ID.encode()).hexdigest()


@pytest.fixture(scope="module")
def real_barcodes(realdata) -> tuple[list[str], list[str]]:
    """Every 16th record of the real BOLD COI sample (processids, raw ``nuc``): lower case, alignment gaps and
    barcodes longer than the tokenizer's 660 nt among them."""
    path = realdata / SAMPLE
    if not path.is_file():
        pytest.skip(f"{path} not found")
    with open(path, newline="") as handle:
        rows = [row for row in csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE) if row["nuc"].strip()]
    lower_case = next(row for row in rows if row["nuc"].islower())
    rows = [*rows[::16], lower_case]
    barcodes = [row["nuc"] for row in rows]
    assert any("-" in b for b in barcodes) and any(b.islower() for b in barcodes)
    assert any(len(b.replace("-", "")) > 665 for b in barcodes)  # frames read past the first 660 nt
    return [row["processid"] for row in rows], barcodes


def _model(text_vocab_size: int, **overrides) -> BioscanClipModel:
    torch.manual_seed(0)
    config = BioscanClipConfig(**tiny_config_kwargs(("dna", "text"), text_vocab_size=text_vocab_size, **overrides))
    return BioscanClipModel(config).eval()


def _saved(folder, processor, **overrides):
    model = _model(len(processor.tokenizer), **overrides)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)  # the session processor: dna_frames left at its default, 1
    return folder


def _records(names: list[str], barcodes: list[str]) -> datasets.Dataset:
    columns = {"processid": names, "dna_barcode": barcodes, **{rank: [None] * len(names) for rank in TAXONOMIC_RANKS}}
    return datasets.Dataset.from_dict(columns)


def _naive_frame_average(model, tokenizer, barcodes: list[str], frames: int) -> torch.Tensor:
    """The frame average as the package computed it before the model did: frame 0 from the barcode as given, frame
    s from the cleaned barcode read from base s, each a separate one-frame (batch, seq) forward, unit embeddings
    summed from frame 0, unit length again."""
    cleaned = clean_barcodes(barcodes)
    with torch.inference_mode():
        total = None
        for shift in range(frames):
            strings = barcodes if shift == 0 else frame_shifted_barcodes(cleaned, shift)
            encoded = tokenizer.encode_batch(strings)
            unit = model.get_dna_features(
                torch.from_numpy(encoded.input_ids), torch.from_numpy(encoded.attention_mask), normalize=True
            )
            total = unit.clone() if total is None else total.add_(unit)
    return F.normalize(total, dim=-1)


# ---- (a) frames: the model's path is the key library's ----------------------------------------------------------


def test_the_processor_loaded_with_its_model_gives_every_frame(tmp_path, tiny_processor, real_barcodes):
    _, barcodes = real_barcodes
    folder = _saved(tmp_path / "model", tiny_processor, dna_frames=5)
    assert json.loads((folder / "processor_config.json").read_text())["dna_frames"] == 1  # saved as it was
    processor = BioscanClipProcessor.from_pretrained(folder)
    assert processor.dna_frames == 5  # the model's config.json beside it wins
    assert BioscanClipProcessor.from_pretrained(folder, dna_frames=2).dna_frames == 2  # an explicit value wins
    inputs = processor(dna=barcodes)
    assert inputs["dna_input_ids"].shape == (len(barcodes), 5, 133)
    assert inputs["dna_attention_mask"].shape == (len(barcodes), 5, 133)
    # Frame 0 is the one-frame encoding; frame s is the cleaned barcode from base s (past the first 660 nt too).
    one = processor(dna=barcodes, dna_frames=1)
    assert one["dna_input_ids"].shape == (len(barcodes), 133)
    assert torch.equal(inputs["dna_input_ids"][:, 0], one["dna_input_ids"])
    cleaned = clean_barcodes(barcodes)
    for shift in range(1, 5):
        shifted = processor.dna_tokenizer.encode_batch([c[shift:] for c in cleaned])
        assert np.array_equal(inputs["dna_input_ids"][:, shift].numpy(), shifted.input_ids)
    # Records refused (on_error="drop") leave every frame, as one frame.
    dropped = processor(dna=[barcodes[0], "ACGTX", barcodes[1]], on_error="drop")
    assert dropped["kept"].tolist() == [0, 2]
    assert torch.equal(dropped["dna_input_ids"], inputs["dna_input_ids"][:2])
    with pytest.raises(ValueError, match="dna_frames"):
        processor(dna=barcodes, dna_frames=0)


def test_get_dna_features_on_frames_is_embed_inputs_and_the_key_vectors(tmp_path, tiny_processor, real_barcodes):
    torch.set_num_threads(1)  # the same kernels for every batch shape: exact comparisons below
    names, barcodes = real_barcodes
    folder = _saved(tmp_path / "model", tiny_processor, dna_frames=5)
    model = BioscanClipModel.from_pretrained(folder).eval()
    processor = BioscanClipProcessor.from_pretrained(folder)
    with torch.inference_mode():
        inputs = processor(dna=barcodes)
        features = model.get_dna_features(**inputs)
        unit = model.get_dna_features(**inputs, normalize=True)
        embedded = model.embed(**inputs)["dna"]
        forward = model(**inputs, input_ids=torch.ones(len(barcodes), 4, dtype=torch.long)).dna_embeds
    # Unnormalised: the sum of the frames' unit embeddings (norm up to the frame count).
    assert features.shape == (len(barcodes), 16)
    assert (features.norm(dim=-1) > 1.5).all() and (features.norm(dim=-1) <= 5 + 1e-5).all()
    assert torch.equal(unit, F.normalize(features, dim=-1))
    assert torch.equal(embedded, unit) and torch.equal(forward, unit)
    # The package's paths go through the model's: bit for bit.
    queries = embed_inputs(model, processor, barcodes=barcodes, names=names)["dna"]
    assert torch.equal(queries, unit)
    dataset = SpecimenDataset(_records(names, barcodes), processor, ["dna"])
    keys = embed_dataset(model, dataset, batch_size=len(barcodes), show_progress=False, combined=False)["dna"]
    np.testing.assert_array_equal(keys, unit.numpy())
    smaller = embed_dataset(model, dataset, batch_size=7, show_progress=False, combined=False)["dna"]
    np.testing.assert_allclose(smaller, unit.numpy(), atol=1e-6)
    # ... and they are the frame average the package computed before (naive reference, separate forwards).
    np.testing.assert_array_equal(unit.numpy(), _naive_frame_average(model, processor.dna_tokenizer, barcodes, 5))
    # One frame is far from it: the check above would fail if the model ignored the frames.
    with torch.inference_mode():
        single = model.get_dna_features(**processor(dna=barcodes, dna_frames=1), normalize=True)
    assert (single - unit).abs().max() > 1e-2


def test_frames_train_through_the_average(tiny_processor, real_barcodes):
    _, barcodes = real_barcodes
    model = _model(len(tiny_processor.tokenizer), dna_frames=3).train()
    inputs = tiny_processor(dna=barcodes[:4], text=["Diptera Sciaridae"] * 4, dna_frames=3)
    out = model(**inputs, return_loss=True)
    assert out.dna_embeds.shape == (4, 16) and out.dna_model_output.last_hidden_state.shape[0] == 12
    out.loss.backward()
    assert model.dna_projection.weight.grad is not None
    with pytest.raises(BioscanInputError, match="dna_attention_mask"):
        model.get_dna_features(inputs["dna_input_ids"], inputs["dna_attention_mask"][:, 0])
    with pytest.raises(BioscanInputError, match=r"\(batch, frames, seq\)"):
        model.get_dna_features(inputs["dna_input_ids"][None])


def test_training_items_stay_one_frame(tmp_path, tiny_processor, real_barcodes):
    """Training draws one (random) frame per record: a dataset made with a 5-frame processor still holds one."""
    names, barcodes = real_barcodes
    processor = BioscanClipProcessor.from_pretrained(_saved(tmp_path / "model", tiny_processor, dna_frames=5))
    dataset = SpecimenDataset(_records(names, barcodes), processor, ["dna"])
    assert dataset[0]["dna_input_ids"].shape == (133,)
    assert dataset.dna_inputs([0, 1], 5)["dna_input_ids"].shape == (2, 5, 133)


# ---- (b) one frame: unchanged to the last bit -------------------------------------------------------------------


# The first 3x3 DNA embeddings (float32) of the seed-0 tiny model on the first three sample barcodes, computed by the
# code before the model averaged frames (one frame: get_dna_features; five: the package's frame average).
GOLDEN = {
    1: [[-0.1863035, -0.1506049, -0.0008988], [-0.2070217, -0.1594135, 0.0056402], [-0.2129553, -0.15049, 0.0547988]],
    5: [[-0.1989253, -0.1406146, 0.0303503], [-0.2293874, -0.1396029, 0.0389171], [-0.2243107, -0.1441167, 0.0414004]],
}


@pytest.mark.parametrize(
    "overrides",
    [
        {},  # a config without the field, as converted CLIBD weights
        {"dna_frames": 1},
        {"dna_frames": 1, "dna_use_attention_mask": False, "dna_pooling": "softmax_mean"},  # the original's settings
    ],
)
def test_one_frame_is_the_plain_path_bit_for_bit(tmp_path, text_tokenizer, tiny_processor, real_barcodes, overrides):
    names, barcodes = real_barcodes
    reference_processor = BioscanClipProcessor(
        image_processor=tiny_processor.image_processor,
        dna_tokenizer=BioscanDnaTokenizer(reference_mode=True),
        tokenizer=text_tokenizer,
    )
    folder = _saved(tmp_path / "model", reference_processor, **overrides)
    config = json.loads((folder / "config.json").read_text())
    if not overrides:
        config.pop("dna_frames", None)  # an older config.json, without the field
        (folder / "config.json").write_text(json.dumps(config))
    model = BioscanClipModel.from_pretrained(folder).eval()
    processor = BioscanClipProcessor.from_pretrained(folder)
    assert processor.dna_frames == 1
    encoded = processor.dna_tokenizer.encode_batch(barcodes)  # the tokenizer's own (batch, seq) ids
    ids, mask = torch.from_numpy(encoded.input_ids), torch.from_numpy(encoded.attention_mask)
    inputs = processor(dna=barcodes)
    assert torch.equal(inputs["dna_input_ids"], ids) and torch.equal(inputs["dna_attention_mask"], mask)
    with torch.inference_mode():
        plain = model.get_dna_features(ids, mask)
        reference = F.normalize(plain, dim=-1)
        assert torch.equal(model.get_dna_features(**inputs), plain)
        assert torch.equal(model.embed(**inputs)["dna"], reference)
        # A frame axis of length 1 is the same computation.
        framed = model.get_dna_features(ids[:, None], mask[:, None], normalize=True)
        assert torch.equal(framed, reference)
    assert torch.equal(embed_inputs(model, processor, barcodes=barcodes)["dna"], reference)
    dataset = SpecimenDataset(_records(names, barcodes), processor, ["dna"])
    keys = embed_dataset(model, dataset, batch_size=len(barcodes), show_progress=False, combined=False)["dna"]
    np.testing.assert_array_equal(keys, reference.numpy())


def test_pinned_values_of_the_tiny_model(tiny_processor, real_barcodes):
    """Golden slices computed before the model averaged frames: the frame definition and arithmetic are pinned."""
    torch.set_num_threads(1)
    _, barcodes = real_barcodes
    for frames, golden in GOLDEN.items():
        model = _model(len(tiny_processor.tokenizer), dna_frames=frames)
        with torch.inference_mode():
            inputs = tiny_processor(dna=barcodes[:3], dna_frames=frames)
            values = model.get_dna_features(**inputs, normalize=True)[:, :3].numpy()
        np.testing.assert_allclose(values, np.array(golden, dtype=np.float32), atol=1e-5, err_msg=f"{frames} frames")


# ---- (c) a Hub user without the package ------------------------------------------------------------------------

HUB_USER = textwrap.dedent(
    """
    import json, sys
    site_packages, out = sys.argv[1:3]
    sys.path.append(site_packages)  # -I -S: neither the project, nor its editable install, nor PYTHONPATH
    for name in ("bioscan_clip", "modeling_bioscanclip"):
        try:
            __import__(name)
        except ModuleNotFoundError:
            continue
        raise SystemExit(f"{name} is importable here")
    import numpy as np, torch
    from transformers import AutoModel, AutoProcessor

    torch.set_num_threads(1)
    barcodes = json.load(open(f"{out}/barcodes.json"))
    model = AutoModel.from_pretrained(%(repo)r, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(%(repo)r, trust_remote_code=True)
    assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
    with torch.no_grad():
        inputs = processor(dna=barcodes)
        np.save(f"{out}/hub.npy", model.get_dna_features(**inputs, normalize=True).numpy())
        np.save(f"{out}/hub_forward.npy", model(**inputs, input_ids=torch.ones(len(barcodes), 4, dtype=torch.long)).dna_embeds.numpy())
    print(json.dumps({"frames": processor.dna_frames, "shape": list(inputs["dna_input_ids"].shape)}))
    """
) % {"repo": REPO_ID}


def test_automodel_from_the_hub_cache_without_the_package_gives_the_key_vectors(
    tmp_path, tiny_processor, real_barcodes
):
    torch.set_num_threads(1)
    names, barcodes = real_barcodes
    folder = _saved(tmp_path / "model", tiny_processor, dna_frames=5)
    cache = tmp_path / "hf-cache"
    hub_cache_layout(cache, REPO_ID, folder, repo_type="model", commit=COMMIT)
    # The key library's vectors, made by the package.
    model = BioscanClipModel.from_pretrained(folder).eval()
    processor = BioscanClipProcessor.from_pretrained(folder)
    dataset = SpecimenDataset(_records(names, barcodes), processor, ["dna"])
    keys = embed_dataset(model, dataset, batch_size=len(barcodes), show_progress=False, combined=False)["dna"]
    with torch.inference_mode():
        single = model.get_dna_features(**processor(dna=barcodes, dna_frames=1), normalize=True).numpy()
    out = tmp_path / "out"
    out.mkdir()
    np.save(out / "keys.npy", keys)
    (out / "barcodes.json").write_text(json.dumps(barcodes))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "HF_HUB_CACHE", "HF_HOME")}
    env.update(HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(cache), HF_HOME=str(tmp_path / "hf-home"))
    # -I -S: no user site, no .pth files (the editable install), no current folder: only site-packages itself.
    command = [sys.executable, "-I", "-S", "-c", HUB_USER, sysconfig.get_paths()["purelib"], str(out)]
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=elsewhere, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == {"frames": 5, "shape": [len(barcodes), 5, 133]}
    hub = np.load(out / "hub.npy")
    np.testing.assert_allclose(hub, keys, atol=1e-6)
    np.testing.assert_allclose(np.load(out / "hub_forward.npy"), keys, atol=1e-6)
    assert np.abs(single - keys).max() > 1e-2  # what a one-frame user got before: other vectors
