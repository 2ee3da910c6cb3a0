"""Small models, key records and key folders for the reliability tests (random weights: fast, no training)."""

from __future__ import annotations

import io
from pathlib import Path

import datasets
import numpy as np
from conftest import tiny_config_kwargs
from PIL import Image

BARCODE = "ACGT" * 160  # 640 nt
SPECIES = [("Diptera", "Sciaridae", "Bradysia", "Bradysia impatiens"), ("Coleoptera", "Carabidae", "Carabus", None)]


def save_tiny_model(folder: Path, processor, *, seed: int, modalities=("image", "dna", "text")) -> Path:
    import torch

    from modeling_bioscanclip import BioscanClipConfig, BioscanClipModel

    torch.manual_seed(seed)
    config = BioscanClipConfig(**tiny_config_kwargs(modalities=modalities, text_vocab_size=len(processor.tokenizer)))
    BioscanClipModel(config).eval().save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def png_bytes(seed: int, size: int = 40) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def key_records(count: int = 12, *, images: bool = True) -> datasets.Dataset:
    rng = np.random.default_rng(0)
    rows = []
    for i in range(count):
        order, family, genus, species = SPECIES[i % 2]
        barcode = "".join(rng.choice(list("ACGT"), 640))
        rows.append({
            "processid": f"KEY{i:03d}", "sampleid": f"S{i}", "dna_barcode": barcode, "dna_bin": None,
            "order": order, "family": family, "subfamily": None, "tribe": None, "genus": genus, "species": species,
            "split": "key_unseen", **({"image": {"bytes": png_bytes(i), "path": None}} if images else {}),
        })  # fmt: skip
    features = {
        name: datasets.Value("string")
        for name in ("processid", "sampleid", "dna_barcode", "dna_bin", "order", "family", "subfamily", "tribe",
                     "genus", "species", "split")
    }  # fmt: skip
    if images:
        features["image"] = datasets.Image()
    return datasets.Dataset.from_list(rows, features=datasets.Features(features))
