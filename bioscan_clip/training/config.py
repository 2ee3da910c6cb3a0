"""Every option of a training run, declared once as dataclass fields: ``HfArgumentParser`` turns them into
``train_accelerate.py``'s options, and the data options are :class:`~bioscan_clip.data.DataSpec`'s own fields."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bioscan_clip.data.spec import DataSpec
from bioscan_clip.option_fields import option
from modeling_bioscanclip.configuration_bioscanclip import DNA_POOLINGS, IMAGE_POOLINGS, MODALITIES, TEXT_POOLINGS
from modeling_bioscanclip.constants_bioscanclip import KMER_SIZE

from . import presets

logger = logging.getLogger(__name__)


# TrainConfig *is* a DataSpec: it inherits the data options (source, data_dir, ... num_proc) with their defaults,
# help and choices, so they are declared once, in DataSpec, and HfArgumentParser turns them into options here exactly
# as ``bioscan-clip`` commands do (tests/test_data_options.py fails if one is declared again). ``data()`` still gives
# a plain DataSpec. Dataclass inheritance puts the inherited fields first.
@dataclass
class TrainConfig(DataSpec):
    """Every option of a run. A preset fills the defaults; the command line (or the caller) overrides any field."""

    preset: str = option("tiny", "defaults for every other option", choices=presets.PRESET_NAMES)
    output_dir: str = option("runs/train", "checkpoints, logs, the final and the best model")
    modalities: str = option("image,dna,text", "two or three of image,dna,text (dna,text for barcode-only data)")
    epochs: int = option(20, "passes over the training records")
    max_steps: int | None = option(None, "stop after this many optimiser steps (the schedule still spans --epochs)")
    batch_size: int = option(64, "records per process per step; negatives come from the global batch")
    learning_rate: float = option(1e-3, "peak one-cycle learning rate at --lr_reference_batch, scaled linearly")
    lr_reference_batch: int = option(64, "global batch at which --learning_rate applies (500 in the paper)")
    weight_decay: float = option(0.01, "AdamW weight decay")
    warmup_fraction: float = option(0.3, "fraction of the steps spent warming up (one-cycle pct_start)")
    gradient_accumulation_steps: int = option(1, "batches per optimiser step")
    max_grad_norm: float | None = option(1.0, "clip gradients to this norm (0 or none: no clipping, as the paper)")
    mixed_precision: str = option("no", "fp16/bf16 need a device that supports them", choices=("no", "bf16", "fp16"))
    seed: int = option(42, "seeds model initialisation, dropout, sample order and augmentation")
    num_workers: int | None = option(
        None,
        "DataLoader worker processes per process (None: 1 per 2 cores, at most 8, with images; 0 without); "
        "the run is the same with any number",
    )
    num_threads: int | None = option(
        None,
        "torch threads per process (None: every core this process may use, shared among the processes on "
        "this machine; `accelerate launch` would otherwise leave one, through OMP_NUM_THREADS=1)",
    )
    same_species_positives: bool = option(False, "treat records of the same species in a batch as positives")
    rank_weight: float = option(
        0.0,
        "taxonomy-aware targets: records of the same genus are positives weighing W, of the same family W^2, of the "
        "same order W^3 (same species 1); 0: the plain InfoNCE of the paper",
    )
    crop_scale_min: float = option(0.08, "smallest area fraction of the random resized crop (0.08 in the paper)")
    dna_augmentation: bool = option(
        False, "augment training barcodes: random reading frame, end trimming, a few N (off in the paper's recipe)"
    )
    dna_frames: int | None = option(
        None,
        "DNA embeddings at inference average the barcode read from its first N bases (None/1: one frame); never "
        "more than --dna_stride, since frames a stride apart hold the same k-mers",
    )
    dna_layers: int | None = option(
        None, "transformer layers of the DNA tower (None: the preset's; 0: a bag of k-mer embeddings, no attention)"
    )
    dna_stride: int | None = option(
        None, "bases between successive k-mers (None: the k-mer length, non-overlapping as the paper; 1: every k-mer)"
    )
    text_vocab_size: int = option(2000, "size of the taxonomy WordPiece vocabulary built from the training names")
    image_tower: str | None = option(None, "start the image tower from this pretrained vision model folder")
    dna_tower: str | None = option(None, "start the DNA tower from this pretrained BERT over 5-mers (BarcodeBERT)")
    text_tower: str | None = option(None, "start the text tower from this BERT folder; its tokenizer is then used")
    text_tokenizer: str | None = option(None, "a tokenizer folder for the taxonomy text (None: built from the names)")
    projection_dim: int | None = option(None, "size of the shared embedding space (None: the preset's)")
    image_pooling: str | None = option(None, "image pooling (None: the preset's)", choices=IMAGE_POOLINGS)
    dna_pooling: str | None = option(None, "softmax_mean is the original's head (None: mean)", choices=DNA_POOLINGS)
    text_pooling: str | None = option(None, "mean_all is the original's (None: mean)", choices=TEXT_POOLINGS)
    dna_use_attention_mask: bool = option(True, "--no_dna_use_attention_mask attends to the N padding (original)")
    dna_reference_mode: bool = option(False, "DNA ids exactly as the original (<MASK> prefix), for BarcodeBERT")
    eval_every_epochs: int = option(1, "validation retrieval every N epochs (0: never); it picks the best model")
    eval_batch_size: int = option(128, "embedding batch size of the validation")
    checkpoint_every_steps: int | None = option(None, "also checkpoint every N steps (always at each epoch end)")
    checkpoints_total_limit: int = option(2, "complete checkpoints kept (the newest ones)")
    resume_from_checkpoint: str | None = option(None, "'latest' or a checkpoint folder: continue exactly there")
    max_nan_skips: int = option(5, "abort after this many consecutive non-finite losses")
    report_to: str = option("tensorboard", "Accelerate trackers", choices=("tensorboard", "wandb", "all", "none"))
    push_to_hub: bool = option(False, "upload the chosen model to --hub_model_id at the end")
    hub_model_id: str | None = option(None, "repository for --push_to_hub (owner/name)")
    cpu: bool = option(False, "run on the CPU even when a GPU is present")
    expect_processes: int | None = option(None, "fail unless exactly this many processes run (catches fall-backs)")
    log_every_steps: int = option(10, "log loss, learning rate and temperature every N steps")
    log_batch_ids: bool = option(False, "append every step's record ids to batch_ids.jsonl (audits sample order)")

    def __post_init__(self) -> None:
        presets.get_preset(self.preset)
        self.modality_list()
        if self.max_grad_norm is not None and self.max_grad_norm <= 0:
            self.max_grad_norm = None
        if self.push_to_hub and not self.hub_model_id:
            raise ValueError("--push_to_hub needs --hub_model_id")
        if not 0 <= self.rank_weight < 1:
            raise ValueError(f"--rank_weight: expected 0 (off) or a weight below 1, got {self.rank_weight}")
        if self.dna_frames is not None and not 1 <= self.dna_frames <= 8:
            raise ValueError(f"--dna_frames: expected 1 to 8 reading frames, got {self.dna_frames}")
        if self.dna_reference_mode and self.stride() != KMER_SIZE:
            raise ValueError("--dna_reference_mode reads the original's non-overlapping 5-mers; drop --dna_stride")
        if self.dna_layers is not None and not 0 <= self.dna_layers <= 48:
            raise ValueError(f"--dna_layers: expected 0 to 48, got {self.dna_layers}")
        if self.dna_stride is not None and not 1 <= self.dna_stride <= KMER_SIZE:
            raise ValueError(f"--dna_stride: expected 1 to the k-mer length ({KMER_SIZE}), got {self.dna_stride}")

    @classmethod
    def from_preset(cls, preset: str = "tiny", **overrides: Any) -> TrainConfig:
        """The preset's defaults with ``overrides`` on top: what the command line does, from Python."""
        return cls(**{**presets.get_preset(preset).training, **overrides, "preset": preset})

    def modality_list(self) -> list[str]:
        names = [m.strip() for m in self.modalities.split(",") if m.strip()]
        if len(set(names)) < 2 or set(names) - set(MODALITIES):
            raise ValueError(f"--modalities: expected at least two of {','.join(MODALITIES)}, got {self.modalities!r}")
        return [m for m in MODALITIES if m in names]

    def stride(self) -> int:
        return self.dna_stride or KMER_SIZE

    def frames(self) -> int:
        """Reading frames averaged at inference: as asked, but at most the stride (frames a stride apart hold the
        same k-mers, one position later), so overlapping k-mers (stride 1) read one frame."""
        return min(self.dna_frames or 1, self.stride())

    def data(self) -> DataSpec:
        """The data options of this run, as a plain :class:`DataSpec`."""
        return DataSpec.from_options(self)

    def model_overrides(self) -> dict[str, Any]:
        """The model settings given here, over the preset's architecture."""
        names = ("projection_dim", "image_pooling", "dna_pooling", "text_pooling")
        overrides = {name: getattr(self, name) for name in names if getattr(self, name) is not None}
        if self.frames() > 1:  # kept in config.json, read by embed_dataset
            overrides["dna_frames"] = self.frames()
        return {**overrides, "dna_use_attention_mask": self.dna_use_attention_mask}


@dataclass
class TrainResult:
    """What a run leaves: the chosen model (best validation score, else final) and its summary."""

    output_dir: Path
    model_dir: Path
    summary: dict[str, Any]
