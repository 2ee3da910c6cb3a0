"""Model presets: a tiny one that trains on two CPU cores, and the paper's CLIBD architecture.

Each preset gives the [`BioscanClipConfig`] keyword arguments and the image-processor settings; the training
script (``train_accelerate.py``) adds the optimisation settings. Every field can be overridden.
"""

from __future__ import annotations

from typing import Any

from modeling_bioscanclip import (
    BioscanClipConfig,
    BioscanClipImageProcessor,
    BioscanClipProcessor,
    BioscanDnaTokenizer,
)

PRESET_NAMES = ("tiny", "clibd-1m", "clibd-5m")


def _tiny_bert(vocab_size: int, max_positions: int) -> dict[str, Any]:
    return {
        "model_type": "bert",
        "vocab_size": vocab_size,
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": 128,
        "max_position_embeddings": max_positions,
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
    }


def model_config(preset: str, modalities: list[str], text_vocab_size: int, **overrides: Any) -> BioscanClipConfig:
    """The [`BioscanClipConfig`] of a preset for the given modalities and text vocabulary size."""
    if preset == "tiny":
        kwargs: dict[str, Any] = {
            # A small ResNet learns colour and shape from 64-px crops in minutes on a CPU.
            "image_config": {
                "model_type": "resnet",
                "num_channels": 3,
                "embedding_size": 24,
                "hidden_sizes": [32, 64, 128],
                "depths": [1, 1, 1],
                "layer_type": "basic",
                "downsample_in_first_stage": False,
            },
            "image_pooling": "pooler",
            "dna_config": _tiny_bert(1027, 160),
            "text_config": _tiny_bert(text_vocab_size, 64),
            "projection_dim": 128,
        }
    elif preset in ("clibd-1m", "clibd-5m"):
        # ViT-B/16, BarcodeBERT-style BERT-base over 5-mers, BERT-small text, 768-d (CLIBD_REFERENCE.md §1).
        kwargs = {
            "image_config": {"model_type": "vit", "image_size": 224, "patch_size": 16, "layer_norm_eps": 1e-6},
            "dna_config": {"model_type": "bert", "vocab_size": 1027, "max_position_embeddings": 512},
            "text_config": {
                "model_type": "bert",
                "vocab_size": text_vocab_size,
                "hidden_size": 512,
                "num_hidden_layers": 4,
                "num_attention_heads": 8,
                "intermediate_size": 2048,
            },
            "projection_dim": 768,
        }
    else:
        raise ValueError(f"preset: expected one of {PRESET_NAMES}, got {preset!r}")
    kwargs.update(overrides)
    return BioscanClipConfig(modalities=modalities, **kwargs)


def image_processor(preset: str) -> BioscanClipImageProcessor:
    """The evaluation-time image processor of a preset (64-px crops for ``tiny``, 224 for the paper's)."""
    if preset == "tiny":
        return BioscanClipImageProcessor(resize_shortest_edge=72, crop_size=64)
    return BioscanClipImageProcessor()


def build_processor(preset: str, text_tokenizer: Any, *, dna_reference_mode: bool = False) -> BioscanClipProcessor:
    """A processor with the preset's image processor, the DNA k-mer tokenizer (``<CLS>`` prefix and padding masked;
    or, with ``dna_reference_mode``, the original's ids: ``<MASK>`` prefix) and ``text_tokenizer``."""
    return BioscanClipProcessor(
        image_processor=image_processor(preset),
        dna_tokenizer=BioscanDnaTokenizer(reference_mode=dna_reference_mode),
        tokenizer=text_tokenizer,
    )
