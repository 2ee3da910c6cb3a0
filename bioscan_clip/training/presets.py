"""Presets: a tiny one that trains on two CPU cores, one for a lab's BOLD export (DNA+text), and the paper's CLIBD
recipe on BIOSCAN-1M and -5M.

One record per name holds everything a preset decides: the model architecture, the evaluation image size and the
training defaults (any :class:`~bioscan_clip.training.TrainConfig` field; the command line overrides each one).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from modeling_bioscanclip import (
    BioscanClipConfig,
    BioscanClipImageProcessor,
    BioscanClipProcessor,
    BioscanDnaTokenizer,
)


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


@dataclass(frozen=True)
class Preset:
    """What a preset name stands for.

    Args:
        name: the ``--preset`` value.
        description: one line for ``--help``.
        model: [`BioscanClipConfig`] keyword arguments; the text tower's ``vocab_size`` is set from the taxonomy
            tokenizer when the model is built.
        image_processor: [`BioscanClipImageProcessor`] keyword arguments (the evaluation-time transform).
        training: defaults for :class:`~bioscan_clip.training.TrainConfig` fields.
    """

    name: str
    description: str
    model: dict[str, Any]
    image_processor: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)


_TINY_MODEL: dict[str, Any] = {
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
    "text_config": _tiny_bert(2000, 64),
    "projection_dim": 128,
}
_TINY_IMAGES: dict[str, Any] = {"resize_shortest_edge": 72, "crop_size": 64}
_TINY_TRAINING: dict[str, Any] = {
    "epochs": 12,
    "batch_size": 64,
    "learning_rate": 2e-3,
    "lr_reference_batch": 64,
    "crop_scale_min": 0.5,
    "text_vocab_size": 600,
    "mixed_precision": "no",
    "max_grad_norm": 1.0,
    "eval_every_epochs": 4,
    # Real barcodes start anywhere: train on every reading frame and average the 5 frames at
    # inference (bioscan_clip/data/augmentation.py; the paper's recipe, below, does neither).
    "dna_augmentation": True,
    "dna_frames": 5,
}
# Chosen on two real BOLD libraries with species held out (README, "Choosing the DNA encoder";
# scripts/dna_encoder_comparison.py): every overlapping 5-mer's embedding, averaged without attention, trains in half
# the 2-layer BERT's time and flags fewer known species; soft targets by shared rank pull congeners together, so a new
# species lands nearer its genus. One reading frame: overlapping k-mers are the same in every frame.
BOLD_TRAINING: dict[str, Any] = {
    **_TINY_TRAINING,
    "source": "bold",
    "modalities": "dna,text",
    "epochs": 8,
    "eval_every_epochs": 0,
    "dna_stride": 1,
    "dna_layers": 0,
    "dna_frames": 1,
    "rank_weight": 0.1,
}

# ViT-B/16, BarcodeBERT-style BERT-base over 5-mers, BERT-small text, 768-d (CLIBD_REFERENCE.md §1); 500 per GPU,
# AdamW wd 0.01, one-cycle peak 5e-5 at batch 500 scaled with the global batch, 30 % warm-up, bf16 (§2.2).
_CLIBD_MODEL: dict[str, Any] = {
    "image_config": {"model_type": "vit", "image_size": 224, "patch_size": 16, "layer_norm_eps": 1e-6},
    "dna_config": {"model_type": "bert", "vocab_size": 1027, "max_position_embeddings": 512},
    "text_config": {
        "model_type": "bert",
        "hidden_size": 512,
        "num_hidden_layers": 4,
        "num_attention_heads": 8,
        "intermediate_size": 2048,
    },
    "projection_dim": 768,
}
_CLIBD_TRAINING: dict[str, Any] = {
    "batch_size": 500,
    "learning_rate": 5e-5,
    "lr_reference_batch": 500,
    "mixed_precision": "bf16",
    "max_grad_norm": None,
    "crop_scale_min": 0.08,
    "text_vocab_size": 30522,
}

PRESETS: MappingProxyType[str, Preset] = MappingProxyType(
    {
        preset.name: preset
        for preset in (
            Preset(
                name="tiny",
                description="CPU-sized: a small ResNet and 2-layer BERTs, 64-px crops, 12 epochs on mini-BIOSCAN",
                model=_TINY_MODEL,
                image_processor=_TINY_IMAGES,
                training=_TINY_TRAINING,
            ),
            Preset(
                name="bold",
                description="a BOLD export, DNA+text: tiny's towers, the DNA one a bag of overlapping 5-mers, "
                "taxonomy-aware targets, 8 epochs",
                model=_TINY_MODEL,
                image_processor=_TINY_IMAGES,
                training=BOLD_TRAINING,
            ),
            Preset(
                name="clibd-1m",
                description="the paper's CLIBD recipe on BIOSCAN-1M (50 epochs)",
                model=_CLIBD_MODEL,
                training={**_CLIBD_TRAINING, "source": "bioscan1m", "epochs": 50},
            ),
            Preset(
                name="clibd-5m",
                description="the paper's CLIBD recipe on BIOSCAN-5M (20 epochs)",
                model=_CLIBD_MODEL,
                training={**_CLIBD_TRAINING, "source": "bioscan5m", "epochs": 20},
            ),
        )
    }
)
PRESET_NAMES = tuple(PRESETS)


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise ValueError(f"preset: expected one of {', '.join(PRESETS)}, got {name!r}")
    return PRESETS[name]


def model_config(
    preset: str,
    modalities: list[str],
    text_vocab_size: int,
    dna_tokenizer: BioscanDnaTokenizer | None = None,
    dna_layers: int | None = None,
    **overrides: Any,
) -> BioscanClipConfig:
    """The [`BioscanClipConfig`] of a preset for the given modalities and text vocabulary size; with
    ``dna_tokenizer``, the DNA tower's vocabulary and positions fit its k-mers (overlapping ones are 5 times as
    many); ``dna_layers`` replaces the preset's depth of the DNA tower (0: a bag of k-mer embeddings)."""
    kwargs = {key: dict(value) if isinstance(value, dict) else value for key, value in get_preset(preset).model.items()}
    kwargs["text_config"]["vocab_size"] = text_vocab_size
    if dna_tokenizer is not None:
        dna = kwargs["dna_config"]
        dna["vocab_size"] = dna_tokenizer.vocab_size
        dna["max_position_embeddings"] = max(dna["max_position_embeddings"], dna_tokenizer.sequence_length)
    if dna_layers is not None:
        kwargs["dna_config"]["num_hidden_layers"] = dna_layers
    kwargs.update(overrides)
    return BioscanClipConfig(modalities=modalities, **kwargs)


def image_processor(preset: str) -> BioscanClipImageProcessor:
    """The evaluation-time image processor of a preset (64-px crops for ``tiny``, 224 for the paper's)."""
    return BioscanClipImageProcessor(**get_preset(preset).image_processor)


def build_processor(
    preset: str,
    text_tokenizer: Any,
    *,
    dna_reference_mode: bool = False,
    stride: int | None = None,
) -> BioscanClipProcessor:
    """A processor with the preset's image processor, the DNA 5-mer tokenizer (``<CLS>`` prefix and padding masked;
    ``stride`` bases between k-mers, non-overlapping by default; with ``dna_reference_mode``, the original's ids:
    ``<MASK>`` prefix) and ``text_tokenizer``."""
    return BioscanClipProcessor(
        image_processor=image_processor(preset),
        dna_tokenizer=BioscanDnaTokenizer(reference_mode=dna_reference_mode, **({"stride": stride} if stride else {})),
        tokenizer=text_tokenizer,
    )
