"""Test helper: an untrained tiny model and a small key folder, the demo's whole path with no training."""

from __future__ import annotations

import logging
from pathlib import Path

logger = logging.getLogger(__name__)


def write_untrained_demo_folders(root: str | Path, *, keys: int = 60, seed: int = 0) -> tuple[Path, Path]:
    """An untrained tiny model and a key folder of ``keys`` generated mini-BIOSCAN specimens (calibrated on its
    validation queries) under ``root``: the demo's whole path with no training, for its tests and load benchmark.
    Returns ``(model_dir, keys_dir)``. The answers are meaningless: the model has random weights."""
    import torch

    from bioscan_clip.data.spec import load_splits, role_records
    from bioscan_clip.identification.build import build_key_folder
    from bioscan_clip.training import presets
    from bioscan_clip.training.text_tokenizer import train_taxonomy_tokenizer
    from dataset_scripts.synth import generate_mini_bioscan
    from modeling_bioscanclip import BioscanClipModel, taxonomy_to_text

    root = Path(root)
    generate_mini_bioscan(root / "data", seed=seed, size="tiny", progress=False)
    splits, roles = load_splits("mini", data_dir=str(root / "data"), cache_dir=str(root / "hf-cache"))
    key_records = role_records(splits, roles, "keys").select(range(keys))
    val = role_records(splits, roles, "val_queries_seen")
    tokenizer = train_taxonomy_tokenizer([taxonomy_to_text(record) for record in key_records], vocab_size=200)
    with torch.random.fork_rng():  # the caller's random state is left as it was
        torch.manual_seed(seed)
        model = BioscanClipModel(presets.model_config("tiny", ["image", "dna", "text"], tokenizer.vocab_size))
    processor = presets.build_processor("tiny", tokenizer)
    model.save_pretrained(root / "model")
    processor.save_pretrained(root / "model")
    build_key_folder(model, processor, key_records, root / "keys", calibration_queries=val, show_progress=False)
    return root / "model", root / "keys"
