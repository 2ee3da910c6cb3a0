"""Shared test set-up: offline, a throwaway HF cache, and the real data in ../shared when present."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

# Set before transformers/datasets are imported anywhere in the test session.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ.setdefault("HF_HOME", tempfile.mkdtemp(prefix="bioscan-clip-hf-home-"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO_ROOT = Path(__file__).resolve().parents[1]
REALDATA = REPO_ROOT.parent / "shared" / "realdata"


def load_script(name: str):
    """``scripts/<name>.py`` as a module (registered in ``sys.modules``, which its dataclasses need)."""
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def realdata() -> Path:
    """The real BOLD barcodes and BIOSCAN-1M images in ../shared/realdata; skips when absent."""
    if not REALDATA.is_dir():
        pytest.skip(f"real data not found at {REALDATA} (the shared/ folder beside the project)")
    return REALDATA


TAXONOMY_SAMPLE = [
    {"order": "Diptera", "family": "Sciaridae", "genus": "Bradysia", "species": "Bradysia impatiens"},
    {"order": "Diptera", "family": "Cecidomyiidae", "genus": None, "species": None},
    {"order": "Coleoptera", "family": "Carabidae", "genus": "Carabus", "species": "Carabus nemoralis"},
]


def tiny_config_kwargs(modalities=("image", "dna", "text"), text_vocab_size: int = 120, **overrides):
    """A hidden-32, 2-layer configuration of every tower (image 32 px, patch 8), as transformers' own tests do."""

    def bert(vocab: int, positions: int) -> dict:
        return {
            "model_type": "bert",
            "vocab_size": vocab,
            "hidden_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "intermediate_size": 64,
            "max_position_embeddings": positions,
            "hidden_dropout_prob": 0.0,
            "attention_probs_dropout_prob": 0.0,
        }

    kwargs = {
        "modalities": list(modalities),
        "projection_dim": 16,
        "image_config": {
            "model_type": "vit",
            "hidden_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "intermediate_size": 64,
            "image_size": 32,
            "patch_size": 8,
        },
        "dna_config": bert(1027, 140),
        "text_config": bert(text_vocab_size, 32),
    }
    kwargs.update(overrides)
    return kwargs


@pytest.fixture(scope="session")
def text_tokenizer():
    from bioscan_clip.training.text_tokenizer import train_taxonomy_tokenizer
    from modeling_bioscanclip import taxonomy_to_text

    return train_taxonomy_tokenizer([taxonomy_to_text(r) for r in TAXONOMY_SAMPLE] * 3, vocab_size=120)


@pytest.fixture(scope="session")
def tiny_processor(text_tokenizer):
    from modeling_bioscanclip import BioscanClipImageProcessor, BioscanClipProcessor, BioscanDnaTokenizer

    return BioscanClipProcessor(
        image_processor=BioscanClipImageProcessor(resize_shortest_edge=36, crop_size=32),
        dna_tokenizer=BioscanDnaTokenizer(),
        tokenizer=text_tokenizer,
    )


@pytest.fixture(scope="session")
def mini_dir(tmp_path_factory) -> Path:
    """A tiny SYNTHETIC mini-BIOSCAN in the BIOSCAN-5M layout, generated once per session."""
    from dataset_scripts.synth import generate_mini_bioscan

    return generate_mini_bioscan(tmp_path_factory.mktemp("mini-bioscan"), seed=0, size="tiny", progress=False)


@pytest.fixture(scope="session")
def mini_cache(tmp_path_factory, mini_dir) -> Path:
    """The builder cache of :func:`mini_dir`, prepared once per session."""
    from bioscan_clip.data.spec import load_splits

    cache = tmp_path_factory.mktemp("hf-cache")
    load_splits("mini", str(mini_dir), cache_dir=str(cache))
    return cache


@pytest.fixture(scope="session")
def trained_tiny(tmp_path_factory, mini_dir, mini_cache) -> Path:
    """A tiny-preset model trained for a few epochs on the tiny mini-BIOSCAN (its ``final_model`` folder)."""
    from bioscan_clip.apps import train as training

    out = tmp_path_factory.mktemp("trained-tiny")
    training.main([
        "--preset", "tiny", "--source", "mini", "--data_dir", str(mini_dir), "--cache_dir", str(mini_cache),
        "--output_dir", str(out), "--batch_size", "32", "--epochs", "8", "--eval_every_epochs", "0",
        "--report_to", "none", "--cpu",
    ])  # fmt: skip
    return out / "final_model"


@contextlib.contextmanager
def environment_variable(name: str, value: str) -> Iterator[None]:
    """Sets ``name`` for the duration (session fixtures cannot use monkeypatch), then restores what was there."""
    previous = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = previous
