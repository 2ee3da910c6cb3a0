"""Embedding throughput on the real BIOSCAN-1M photos (1024x768 JPEG) and real barcodes, against a bare forward.

The bare forward is the model alone: `torch.inference_mode()`, `model.embed` on pixel tensors (or token ids)
prepared beforehand, batch by batch. The project's figure is `embed_dataset` (what `embed`, `index`, `predict`'s
key side and evaluation run) from the image files: decode (JPEG draft mode), resize and crop in loader workers,
overlapped with the forward. Random-initialised models of each preset (throughput does not depend on the weights);
the draft-mode difference is measured on the same photos through the same model. Interleaved, best of N.

    python benchmarks/bench_embedding.py [--size smoke|default|large]
"""

from __future__ import annotations

import csv
import os
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Figure, interleaved_best, standalone  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
REALDATA = Path(os.environ.get("BIOSCAN_REALDATA", REPO_ROOT.parent / "shared" / "realdata"))
PHOTOS = REALDATA / "3dlg-hcvc__Bioscan-ImgFilter" / "images"
BARCODES = REALDATA / "coi_fulltax_sample.tsv"
SECTION = "Embedding (real BIOSCAN-1M photos and barcodes)"

# size -> preset -> (photos, batch size); repeats
SETTINGS = {
    "smoke": ({"tiny": (32, 16), "clibd-1m": (4, 4)}, 1),
    "default": ({"tiny": (620, 64), "clibd-1m": (48, 16)}, 3),
    "large": ({"tiny": (620, 64), "clibd-1m": (620, 32)}, 3),
}
TARGETS = {"tiny": 0.6, "clibd-1m": 0.9}


def _model_and_processor(preset: str):
    from bioscan_clip.training import presets
    from bioscan_clip.training.text_tokenizer import train_taxonomy_tokenizer
    from modeling_bioscanclip import BioscanClipModel

    tokenizer = train_taxonomy_tokenizer(["Diptera Sciaridae Bradysia", "Hymenoptera Formicidae Lasius"], 120)
    torch.manual_seed(0)
    model = BioscanClipModel(presets.model_config(preset, ["image", "dna", "text"], len(tokenizer))).eval()
    return model, presets.build_processor(preset, tokenizer)


def _barcodes(count: int) -> list[str]:
    with open(BARCODES, newline="", encoding="utf-8") as handle:
        rows = csv.DictReader(handle, delimiter="\t")
        column = next(name for name in rows.fieldnames if name in ("nucleotides", "nuc", "dna_barcode"))
        found = [row[column] for row in rows if row[column]]
    return (found * (count // max(1, len(found)) + 1))[:count]


def _embedding_figures(preset: str, count: int, batch: int, repeats: int) -> list[Figure]:
    from bioscan_clip.data.specimens import SpecimenDataset, image_file_records
    from bioscan_clip.features import IMAGE, embed_dataset, loader_workers
    from bioscan_clip.sharding import usable_cores

    paths = sorted(str(p) for p in PHOTOS.glob("*.jpg"))[:count]
    if len(paths) < count:
        raise FileNotFoundError(f"{PHOTOS}: expected {count} photos, found {len(paths)} (the real data is absent)")
    model, processor = _model_and_processor(preset)
    processor.image_processor.jpeg_draft = True  # opt-in: the project's path is measured with draft decoding
    records = image_file_records(paths, [Path(p).stem for p in paths])
    dataset = SpecimenDataset(records, processor, [IMAGE])
    full_processor = type(processor.image_processor)(**{**processor.image_processor.to_dict(), "jpeg_draft": False})
    pixels = torch.from_numpy(np.stack([full_processor.process_one(p) for p in paths]))  # ready, outside the clock
    workers = loader_workers(dataset, batch)

    def bare() -> None:
        with torch.inference_mode():
            for start in range(0, len(pixels), batch):
                model.embed(pixel_values=pixels[start : start + batch])

    def project() -> None:
        embed_dataset(model, dataset, batch_size=batch, show_progress=False, combined=False)

    def inline_full_decode() -> None:  # the earlier path: one at a time in the main process, full decode
        processor.image_processor.jpeg_draft = False
        try:
            embed_dataset(model, dataset, batch_size=batch, num_workers=0, show_progress=False, combined=False)
        finally:
            processor.image_processor.jpeg_draft = True

    def decode_only() -> None:  # what the loader does per image, alone: the ceiling of any overlap
        for path in paths:
            processor.image_processor.process_one(path)

    functions = {"bare": bare, "project": project, "decode": decode_only}
    if preset == "tiny":
        functions["inline"] = inline_full_decode
    best = interleaved_best(functions, repeats)
    rate = {name: count / seconds for name, seconds in best.items()}

    # Draft decode against full decode, through the same model: the embeddings' cosine similarity.
    draft = embed_dataset(model, dataset, batch_size=batch, show_progress=False, combined=False)[IMAGE]
    with torch.inference_mode():
        full = torch.cat([model.embed(pixel_values=pixels[s : s + batch])[IMAGE] for s in range(0, count, batch)])
    cosine = np.sum(draft * full.numpy(), axis=1)

    ratio = rate["project"] / rate["bare"]
    cores = usable_cores()
    # The loader's decoding and the forward run on the same cores: perfectly overlapped, an image costs one core's
    # decode time plus the forward's time on every core, spread over all of them.
    overlap_limit = cores / (1 / rate["decode"] + cores / rate["bare"])
    figures = [
        Figure(
            name=f"{preset}: embed {count} photos (embed_dataset from files)",
            value=round(rate["project"], 1),
            unit="images/s",
            baseline=f"bare inference_mode forward on ready tensors, batch {batch}",
            baseline_value=round(rate["bare"], 1),
            limit=f"decoding (1 core) and the forward ({cores} cores) on the same {cores} cores, perfectly overlapped",
            limit_value=round(overlap_limit, 1),
            target=f">= {TARGETS[preset]}x bare",
            met=ratio >= TARGETS[preset],
            note=f"{workers} loader worker(s), {torch.get_num_threads()} torch threads, JPEG draft decode"
            + (
                ""
                if ratio >= TARGETS[preset]
                else f"; short: decoding alone is slower than the forward (the decode figure below), and the "
                f"workers share the cores with it: even perfectly overlapped they cap this at "
                f"{overlap_limit / rate['bare']:.2f}x (the limit)"
                if rate["decode"] < rate["bare"]
                else f"; short: not decoding (alone it runs at {rate['decode'] / rate['bare']:.0f}x the forward's "
                "rate): the loader worker shares the cores with the forward's threads, and this figure's spread "
                "between runs on this VM is of the same size (benchmarks/README.md)"
            ),
        ),
        Figure(
            name=f"{preset}: JPEG draft vs full decode, embedding cosine (min over {count} photos)",
            value=round(float(cosine.min()), 5),
            unit="cosine",
            baseline="full decode",
            target="min >= 0.99 (opt-in, jpeg_draft=True)",
            met=bool(cosine.min() >= 0.99),
            note=f"mean {cosine.mean():.5f}; random-initialised {preset} model",
        ),
    ]
    if "decode" in rate:
        figures.append(
            Figure(
                name=f"{preset}: decode + resize + crop alone (JPEG draft, 1 process, no model)",
                value=round(rate["decode"], 1),
                unit="images/s",
                baseline="bare forward",
                baseline_value=round(rate["bare"], 1),
                note=f"{rate['decode'] / rate['bare']:.0f}x the forward's rate on one core: decoding does not limit "
                f"the {preset} size"
                if rate["decode"] >= rate["bare"]
                else f"even with all {cores} cores decoding and none left for the model, images would arrive at "
                f"{rate['decode'] * cores / rate['bare']:.2f}x the bare forward's rate: a 1024x768 JPEG costs more to "
                f"decode than the {preset} model's forward, the measured cause of the {preset} shortfall",
            )
        )
    if "inline" in rate:
        figures.append(
            Figure(
                name=f"{preset}: embed photos, earlier path (main-process full decode, no workers)",
                value=round(rate["inline"], 1),
                unit="images/s",
                baseline="bare forward",
                baseline_value=round(rate["bare"], 1),
                note="num_workers=0, jpeg_draft=False",
            )
        )
    return figures


def _dna_figure(count: int, batch: int, repeats: int) -> Figure:
    import datasets

    from bioscan_clip.data.specimens import SpecimenDataset
    from bioscan_clip.features import DNA, embed_dataset

    model, processor = _model_and_processor("tiny")
    barcodes = _barcodes(count)
    records = datasets.Dataset.from_dict({"processid": [f"B{i}" for i in range(count)], "dna_barcode": barcodes})
    dataset = SpecimenDataset(records, processor, [DNA])
    ids, mask = dataset.tokens["dna_input_ids"], dataset.tokens["dna_attention_mask"]

    def bare() -> None:
        with torch.inference_mode():
            for s in range(0, count, batch):
                model.embed(dna_input_ids=ids[s : s + batch], dna_attention_mask=mask[s : s + batch])

    def project() -> None:  # tokenising included: SpecimenDataset tokenises once, embed_dataset runs the batches
        embed_dataset(model, SpecimenDataset(records, processor, [DNA]), batch_size=batch, show_progress=False)

    best = interleaved_best({"bare": bare, "project": project}, repeats)
    return Figure(
        name=f"tiny: embed {count} real barcodes (tokenise + embed_dataset)",
        value=round(count / best["project"], 1),
        unit="barcodes/s",
        baseline=f"bare inference_mode forward on ready ids, batch {batch}",
        baseline_value=round(count / best["bare"], 1),
        target=">= 0.6x bare",
        met=best["bare"] / best["project"] >= 0.6,
        note="tokenising is included in the project's time; one reading frame on both sides (a model trained "
        "with the tiny preset averages 5: 5 DNA forwards per barcode)",
    )


def measure(size: str) -> list[Figure]:
    settings, repeats = SETTINGS[size]
    figures: list[Figure] = []
    for preset, (count, batch) in settings.items():
        figures += _embedding_figures(preset, count, batch, repeats)
    figures.append(_dna_figure(256 if size == "smoke" else 2048, 64, repeats))
    return figures


if __name__ == "__main__":
    sys.exit(standalone(measure, __doc__.split("\n\n")[0]))
