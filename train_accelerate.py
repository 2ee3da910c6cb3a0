"""Train BIOSCAN-CLIP with Accelerate: from mini-BIOSCAN on two CPU cores to the paper's multi-GPU recipe.

    accelerate launch train_accelerate.py --preset tiny --output_dir runs/tiny
    accelerate launch --multi_gpu --num_processes 2 train_accelerate.py --preset tiny --expect_processes 2 ...
    accelerate launch --multi_gpu --num_processes 4 --mixed_precision bf16 train_accelerate.py --preset clibd-5m \\
        --source bioscan5m --data_dir /data/BIOSCAN-5M

On CPU, ``--multi_gpu --num_processes N`` with this script's ``Accelerator(cpu=True)`` gives N real processes
(gloo + DDP); ``accelerate launch --cpu --num_processes N`` silently runs one (HF_STACK_NOTES.md §2d), which
``--expect_processes`` turns into an error.

Order of work (Accelerate's examples): Accelerator -> seed -> data -> model -> optimizer -> prepare ->
load_state -> loop. The contrastive loss gathers embeddings from every process, keeping gradients on the local
slice (global-batch negatives, as open_clip's ClipLoss).
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import logging
import math
import os
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, DistributedDataParallelKwargs, set_seed
from tqdm.auto import tqdm

from bioscan_clip import presets
from bioscan_clip.data import (
    ImageAugmentation,
    SpecimenDataset,
    load_splits,
    model_inputs,
    role_records,
    with_modalities,
)
from bioscan_clip.evaluation import (
    add_combined_features,
    embed_dataset,
    evaluate_retrieval,
    format_table,
    labels_of,
    selection_score,
)
from bioscan_clip.text_tokenizer import train_taxonomy_tokenizer
from modeling_bioscanclip import BioscanClipModel, BioscanClipProcessor, taxonomy_to_text
from modeling_bioscanclip.configuration_bioscanclip import DNA_POOLINGS, IMAGE_POOLINGS, MODALITIES, TEXT_POOLINGS

logger = logging.getLogger("train_accelerate")

CHECKPOINT_MARKER = "COMPLETE"
STATE_FILE = "train_state.json"


class TrainingDivergedError(RuntimeError):
    """The loss was NaN or infinite for too many consecutive steps."""


@dataclass
class TrainConfig:
    """Every option of a run. A preset fills the defaults; the command line overrides any field."""

    preset: str = "tiny"
    source: str | None = "mini"
    data_dir: str | None = None
    dataset_path: str | None = None
    cache_dir: str | None = None
    output_dir: str = "runs/train"
    modalities: str = "image,dna,text"
    epochs: int = 20
    max_steps: int | None = None
    batch_size: int = 64
    learning_rate: float = 1e-3
    lr_reference_batch: int = 64
    weight_decay: float = 0.01
    warmup_fraction: float = 0.3
    gradient_accumulation_steps: int = 1
    max_grad_norm: float | None = 1.0
    mixed_precision: str = "no"
    seed: int = 42
    num_workers: int = 0
    same_species_positives: bool = False
    crop_scale_min: float = 0.08
    text_vocab_size: int = 2000
    image_tower: str | None = None
    dna_tower: str | None = None
    text_tower: str | None = None
    text_tokenizer: str | None = None
    projection_dim: int | None = None
    image_pooling: str | None = None
    dna_pooling: str | None = None
    text_pooling: str | None = None
    dna_use_attention_mask: bool | None = None
    dna_reference_mode: bool = False
    eval_every_epochs: int = 1
    eval_batch_size: int = 128
    checkpoint_every_steps: int | None = None
    checkpoints_total_limit: int = 2
    resume_from_checkpoint: str | None = None
    max_nan_skips: int = 5
    report_to: str = "tensorboard"
    push_to_hub: bool = False
    hub_model_id: str | None = None
    cpu: bool = False
    expect_processes: int | None = None
    log_every_steps: int = 10
    log_batch_ids: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def modality_list(self) -> list[str]:
        names = [m.strip() for m in self.modalities.split(",") if m.strip()]
        if len(set(names)) < 2 or set(names) - set(MODALITIES):
            raise ValueError(f"--modalities: expected at least two of {','.join(MODALITIES)}, got {self.modalities!r}")
        return [m for m in MODALITIES if m in names]


# The paper's recipe (CLIBD_REFERENCE.md §2.2): 500 per GPU, AdamW wd 0.01, one-cycle peak 5e-5 at batch 500
# scaled with the global batch, 30 % warm-up, bf16; 50 epochs on BIOSCAN-1M, 20 on BIOSCAN-5M.
_CLIBD_RECIPE: dict[str, Any] = {
    "batch_size": 500,
    "learning_rate": 5e-5,
    "lr_reference_batch": 500,
    "mixed_precision": "bf16",
    "max_grad_norm": None,
    "crop_scale_min": 0.08,
    "text_vocab_size": 30522,
}
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {
        "epochs": 12,
        "batch_size": 64,
        "learning_rate": 2e-3,
        "lr_reference_batch": 64,
        "crop_scale_min": 0.5,
        "text_vocab_size": 600,
        "mixed_precision": "no",
        "max_grad_norm": 1.0,
        "eval_every_epochs": 4,
    },
    "clibd-1m": {**_CLIBD_RECIPE, "source": "bioscan1m", "epochs": 50},
    "clibd-5m": {**_CLIBD_RECIPE, "source": "bioscan5m", "epochs": 20},
}

HELP = {
    "preset": f"defaults for every other option: {', '.join(PRESETS)}",
    "source": "dataset builder: mini (generated, default), bioscan5m, bioscan1m or bold",
    "data_dir": "data root of the builder (for bold: the export file); mini needs none",
    "dataset_path": "instead of a builder, a DatasetDict saved with save_to_disk (5M split names)",
    "cache_dir": "where builders keep their Arrow cache (default: the datasets cache)",
    "output_dir": "checkpoints, logs, the final model",
    "modalities": "two or three of image,dna,text (dna,text for barcode-only BOLD libraries)",
    "epochs": "passes over the training records",
    "max_steps": "stop after this many optimiser steps (the schedule still spans --epochs)",
    "batch_size": "records per process per step; negatives come from the global batch",
    "learning_rate": "peak one-cycle learning rate at --lr_reference_batch, scaled linearly with the global batch",
    "lr_reference_batch": "global batch at which --learning_rate applies (500 in the paper)",
    "warmup_fraction": "fraction of the steps spent warming up (one-cycle pct_start)",
    "max_grad_norm": "clip gradients to this norm (none: no clipping, as the paper)",
    "mixed_precision": "no, bf16 or fp16 (fp16/bf16 need a device that supports them)",
    "same_species_positives": "treat records of the same species in a batch as positives (soft targets)",
    "crop_scale_min": "smallest area fraction of the random resized crop (0.08 in the paper)",
    "text_vocab_size": "size of the taxonomy WordPiece vocabulary built from the training records' names",
    "image_tower": "start the image tower from this pretrained vision model folder (any AutoModel vision model)",
    "dna_tower": "start the DNA tower from this pretrained BERT over DNA k-mers (BarcodeBERT-style; 5-mer vocab)",
    "text_tower": "start the text tower from this pretrained BERT folder; its tokenizer becomes the text tokenizer",
    "text_tokenizer": "a tokenizer folder for the taxonomy text (default: the text tower's, else built from the names)",
    "projection_dim": "size of the shared embedding space (default: the preset's)",
    "image_pooling": "cls, mean or pooler (CNN towers) (default: the preset's)",
    "dna_pooling": "cls, mean (masked), or softmax_mean (the original's head) (default: mean)",
    "text_pooling": "cls, mean (masked), or mean_all (the original: padding included) (default: mean)",
    "dna_use_attention_mask": "--no-dna_use_attention_mask attends to the N padding, as the original does",
    "dna_reference_mode": "DNA ids exactly as the original (<MASK> prefix); use with a BarcodeBERT 5-mer --dna_tower",
    "eval_every_epochs": "retrieval evaluation on the validation queries every N epochs (0: never); picks the best model",
    "checkpoint_every_steps": "also checkpoint every N steps (always at each epoch end)",
    "checkpoints_total_limit": "complete checkpoints kept (the newest ones)",
    "resume_from_checkpoint": "'latest' or a checkpoint folder: continue exactly where that run was",
    "max_nan_skips": "abort after this many consecutive non-finite losses",
    "report_to": "Accelerate trackers: tensorboard, wandb, all, or none",
    "hub_model_id": "repository for --push_to_hub",
    "cpu": "run on the CPU even when a GPU is present",
    "expect_processes": "fail unless exactly this many processes run (catches launches that silently fall back)",
    "log_batch_ids": "append the record ids of every step to batch_ids.jsonl (audits sample order and resumes)",
}


def parse_args(argv: Sequence[str] | None) -> TrainConfig:
    """The preset's values, overridden by whatever the command line gives."""
    parser = argparse.ArgumentParser(
        prog="train_accelerate.py",
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    for item in dataclasses.fields(TrainConfig):
        if item.name == "extra":
            continue
        flag = f"--{item.name}"
        if item.type in ("bool", "bool | None"):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=HELP.get(item.name))
        else:
            kind = {"int": int, "float": float, "int | None": int, "float | None": float}.get(item.type, str)
            parser.add_argument(flag, type=kind, default=None, help=HELP.get(item.name), metavar=item.name.upper())
    args = parser.parse_args(argv)
    preset = args.preset or TrainConfig.preset
    if preset not in PRESETS:
        parser.error(f"--preset: expected one of {', '.join(PRESETS)}, got {preset!r}")
    values = {**PRESETS[preset], **{k: v for k, v in vars(args).items() if v is not None}, "preset": preset}
    for name, allowed in (
        ("image_pooling", IMAGE_POOLINGS),
        ("dna_pooling", DNA_POOLINGS),
        ("text_pooling", TEXT_POOLINGS),
    ):
        if values.get(name) is not None and values[name] not in allowed:
            parser.error(f"--{name}: expected one of {', '.join(allowed)}, got {values[name]!r}")
    if values.get("max_grad_norm") is not None and values["max_grad_norm"] <= 0:
        values["max_grad_norm"] = None
    config = TrainConfig(**values)
    config.modality_list()
    return config


@dataclass
class TrainState:
    """Where a run is; saved in every checkpoint (never parsed from folder names)."""

    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    best_score: float | None = None
    best_step: int | None = None
    consecutive_nan_skips: int = 0
    total_nan_skips: int = 0

    def state_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            setattr(self, key, value)


def gather_with_local_grad(accelerator: Accelerator, tensor: torch.Tensor) -> torch.Tensor:
    """All processes' rows, with this process's rows kept as the autograd-tracked originals."""
    if accelerator.num_processes == 1:
        return tensor
    gathered = accelerator.gather(tensor.detach().contiguous())
    rows = tensor.shape[0]
    start = accelerator.process_index * rows
    return torch.cat([gathered[:start], tensor, gathered[start + rows :]])


def contrastive_targets(species_ids: torch.Tensor, same_species_positives: bool) -> torch.Tensor | None:
    """Soft targets: the diagonal, plus every same-species record when asked (rows normalised)."""
    if not same_species_positives:
        return None
    same = (species_ids[:, None] == species_ids[None, :]) & (species_ids[:, None] >= 0)
    targets = (same | torch.eye(len(species_ids), dtype=torch.bool, device=species_ids.device)).float()
    return targets / targets.sum(dim=1, keepdim=True)


def global_contrastive_loss(
    accelerator: Accelerator,
    embeds: dict[str, torch.Tensor],
    logit_scale: torch.Tensor,
    species_ids: torch.Tensor,
    same_species_positives: bool = False,
) -> torch.Tensor:
    """Symmetric InfoNCE over every pair of modalities on the global batch (all processes' records).

    Every process computes the same loss; the gradient reaches only its own slice, and DDP then averages over
    processes, so ``loss * num_processes`` is what must be back-propagated for the gradient of the global loss.
    """
    gathered = {name: gather_with_local_grad(accelerator, value) for name, value in embeds.items()}
    targets = contrastive_targets(accelerator.gather(species_ids), same_species_positives)
    names = [m for m in MODALITIES if m in gathered]
    losses = []
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            logits = logit_scale * gathered[a] @ gathered[b].t()
            if targets is None:
                labels = torch.arange(logits.shape[0], device=logits.device)
                losses.append((F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2)
            else:
                losses.append((F.cross_entropy(logits, targets) + F.cross_entropy(logits.t(), targets)) / 2)
    return torch.stack(losses).mean()


def build_text_tokenizer(config: TrainConfig, train_records: Any, accelerator: Accelerator, folder: Path) -> Any:
    """The taxonomy tokenizer: the one given (or the pretrained text tower's), else one built from the training
    records' names. Made once by the main process and kept in the run folder, so that a resume reuses it."""
    from transformers import AutoTokenizer

    if accelerator.is_main_process and not (folder / "tokenizer_config.json").exists():
        source = config.text_tokenizer or config.text_tower
        if source is not None:
            AutoTokenizer.from_pretrained(source).save_pretrained(folder)
        else:
            columns = train_records.select_columns(["order", "family", "genus", "species"]).to_dict()
            texts = [taxonomy_to_text({rank: columns[rank][i] for rank in columns}) for i in range(len(train_records))]
            train_taxonomy_tokenizer(texts, vocab_size=config.text_vocab_size).save_pretrained(folder)
    accelerator.wait_for_everyone()
    return AutoTokenizer.from_pretrained(folder)


def list_checkpoints(folder: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints (with their marker) and their global step, read from the saved state."""
    found = []
    for path in folder.glob("checkpoint-*"):
        if (path / CHECKPOINT_MARKER).exists() and (path / STATE_FILE).exists():
            found.append((json.loads((path / STATE_FILE).read_text())["global_step"], path))
    return sorted(found)


def save_checkpoint(accelerator: Accelerator, state: TrainState, folder: Path, keep: int) -> Path:
    """``save_state`` into a temporary folder, marked complete and renamed only when everything is written;
    older checkpoints are pruned afterwards, so a crash while saving leaves the previous one intact."""
    final = folder / f"checkpoint-{state.global_step:08d}"
    temporary = folder / f".tmp-checkpoint-{state.global_step:08d}"
    if accelerator.is_main_process and temporary.exists():
        shutil.rmtree(temporary)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(temporary))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (temporary / STATE_FILE).write_text(json.dumps(state.state_dict()))
        (temporary / CHECKPOINT_MARKER).write_text("")
        if final.exists():
            shutil.rmtree(final)
        os.replace(temporary, final)
        for _, old in list_checkpoints(folder)[:-keep]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


def resolve_resume(value: str | None, folder: Path) -> Path | None:
    if value is None:
        return None
    if value == "latest":
        checkpoints = list_checkpoints(folder)
        return checkpoints[-1][1] if checkpoints else None
    path = Path(value)
    if not (path / CHECKPOINT_MARKER).exists():
        raise FileNotFoundError(f"--resume_from_checkpoint {value}: not a complete checkpoint (no {CHECKPOINT_MARKER})")
    return path


def evaluate_on_validation(model, accelerator, datasets_by_role, config) -> dict[str, dict[str, Any]] | None:
    """Retrieval accuracy of the validation queries against all keys (every process embeds its shard)."""
    if "keys" not in datasets_by_role:
        return None
    kwargs = {"batch_size": config.eval_batch_size, "accelerator": accelerator, "num_workers": config.num_workers}
    keys = datasets_by_role["keys"]
    key_features = add_combined_features(embed_dataset(model, keys, description="keys", **kwargs))
    query_features, query_labels = {}, {}
    for group in ("seen", "unseen"):
        queries = datasets_by_role.get(f"val_queries_{group}")
        if queries is not None and len(queries):
            query_features[group] = add_combined_features(embed_dataset(model, queries, description=group, **kwargs))
            query_labels[group] = labels_of(queries)
    if not query_features:
        return None
    # Image->image, DNA->DNA, image->DNA and text pairs: the paper's main table.
    pairs = [
        p
        for p in (("image", "image"), ("dna", "dna"), ("image", "dna"), ("image", "text"), ("dna", "text"))
        if p[0] in key_features and p[1] in key_features
    ]
    return evaluate_retrieval(query_features, query_labels, key_features, labels_of(keys), pairs=pairs)


def main(argv: Sequence[str] | None = None) -> int:
    config = parse_args(argv)
    modalities = config.modality_list()
    output_dir = Path(config.output_dir)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)

    # --- Accelerator: CPU unless a GPU is there; every parameter takes part in every step (towers are built
    # without unused poolers), so DDP need not search for unused ones; a seedable sampler so that a resume
    # replays the sample order.
    use_cpu = config.cpu or not torch.cuda.is_available()
    report_to = None if config.report_to == "none" else config.report_to
    accelerator = Accelerator(
        cpu=use_cpu,
        mixed_precision=config.mixed_precision,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        log_with=report_to,
        project_dir=str(output_dir),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=False)],
    )
    if config.expect_processes is not None and accelerator.num_processes != config.expect_processes:
        raise RuntimeError(
            f"expected {config.expect_processes} processes, got {accelerator.num_processes} "
            f"({accelerator.distributed_type}); on CPU launch with `accelerate launch --multi_gpu --num_processes N`"
        )
    if not accelerator.is_main_process:
        logging.getLogger().setLevel(logging.WARNING)
    logger.info(
        "%d process(es), %s, device %s, mixed precision %s",
        accelerator.num_processes,
        accelerator.distributed_type,
        accelerator.device,
        accelerator.mixed_precision,
    )

    # --- Seed everything (model init, dropout); augmentation draws from (seed, epoch, index).
    set_seed(config.seed)

    # --- Data. The main process prepares the builder cache first; the others then read it.
    with accelerator.main_process_first():
        splits, roles = load_splits(config.source, config.data_dir, config.dataset_path, config.cache_dir)
    train_records = with_modalities(role_records(splits, roles, "train"), modalities, what="training records")
    if len(train_records) < config.batch_size * accelerator.num_processes:
        raise ValueError(
            f"{len(train_records)} training records are fewer than one global batch "
            f"({config.batch_size} x {accelerator.num_processes})"
        )
    output_dir.mkdir(parents=True, exist_ok=True)
    text_tokenizer = build_text_tokenizer(config, train_records, accelerator, output_dir / "text_tokenizer")
    processor = presets.build_processor(config.preset, text_tokenizer, dna_reference_mode=config.dna_reference_mode)
    image_processor = processor.image_processor
    augmentation = (
        ImageAugmentation(
            image_processor.resize_shortest_edge, image_processor.crop_size, scale=(config.crop_scale_min, 1.0)
        )
        if "image" in modalities
        else None
    )
    train_dataset = SpecimenDataset(train_records, processor, modalities, augmentation=augmentation, seed=config.seed)
    eval_datasets: dict[str, SpecimenDataset] = {}
    if config.eval_every_epochs > 0:
        for role in ("keys", "val_queries_seen", "val_queries_unseen"):
            if any(name in splits for name in roles[role]):
                records = with_modalities(role_records(splits, roles, role), modalities, what=role)
                eval_datasets[role] = SpecimenDataset(records, processor, modalities)
    generator = torch.Generator().manual_seed(config.seed)
    train_loader = torch.utils.data.DataLoader(
        train_dataset,
        batch_size=config.batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=config.num_workers,
        generator=generator,
        persistent_workers=False,
    )

    # --- Model and optimiser.
    model_overrides = {
        name: getattr(config, name)
        for name in ("projection_dim", "image_pooling", "dna_pooling", "text_pooling", "dna_use_attention_mask")
        if getattr(config, name) is not None
    }
    model_config = presets.model_config(config.preset, modalities, len(text_tokenizer), **model_overrides)
    towers = {"image_tower": config.image_tower, "dna_tower": config.dna_tower, "text_tower": config.text_tower}
    if any(towers.values()):  # start from pretrained towers, as the paper does (ViT, BarcodeBERT, BERT-small)
        model = BioscanClipModel.from_towers(**towers, config=model_config)
    else:
        model = BioscanClipModel(model_config)
    global_batch = config.batch_size * accelerator.num_processes * config.gradient_accumulation_steps
    peak_lr = config.learning_rate * global_batch / config.lr_reference_batch
    optimizer = torch.optim.AdamW(model.parameters(), lr=peak_lr, weight_decay=config.weight_decay)

    # --- prepare(): DDP wrapping, device placement, sharded and seedable data loading.
    model, optimizer, train_loader = accelerator.prepare(model, optimizer, train_loader)
    steps_per_epoch = math.ceil(len(train_loader) / config.gradient_accumulation_steps)
    total_steps = steps_per_epoch * config.epochs
    # Stepped once per optimiser step by us (an `accelerator.prepare`d scheduler would step once per process).
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer,
        max_lr=peak_lr,
        total_steps=max(total_steps, 1),
        pct_start=config.warmup_fraction,
        anneal_strategy="cos",
        cycle_momentum=False,
    )
    state = TrainState()
    accelerator.register_for_checkpointing(scheduler, state)

    # --- Resume: model, optimiser, scheduler, RNGs, sampler and TrainState come back from the checkpoint.
    checkpoints_dir = output_dir / "checkpoints"
    resume = resolve_resume(config.resume_from_checkpoint, checkpoints_dir)
    if resume is not None:
        accelerator.load_state(str(resume))
        logger.info("resumed from %s at epoch %d, step %d", resume, state.epoch, state.global_step)

    if accelerator.is_main_process:
        processor.save_pretrained(output_dir / "processor")
        (output_dir / "train_config.json").write_text(json.dumps(dataclasses.asdict(config), indent=2))
    if report_to:
        flat = {k: v for k, v in dataclasses.asdict(config).items() if isinstance(v, (int, float, str, bool))}
        accelerator.init_trackers("bioscan-clip", config=flat)

    raw_model = accelerator.unwrap_model(model)
    max_steps = config.max_steps if config.max_steps is not None else total_steps
    progress = tqdm(
        total=min(max_steps, total_steps),
        initial=state.global_step,
        desc="training",
        disable=not accelerator.is_local_main_process,
    )
    started = time.time()
    last_eval: dict[str, Any] | None = None
    recent_losses: collections.deque[float] = collections.deque(maxlen=steps_per_epoch)  # the last epoch's
    first_loss: float | None = None
    while state.epoch < config.epochs and state.global_step < max_steps:
        model.train()
        train_loader.set_epoch(state.epoch)  # reshuffles per epoch (the original never did)
        train_dataset.set_epoch(state.epoch)
        batches = (
            accelerator.skip_first_batches(train_loader, state.step_in_epoch * config.gradient_accumulation_steps)
            if state.step_in_epoch
            else train_loader
        )
        for batch in batches:
            with accelerator.accumulate(model):
                out = model(**model_inputs(batch))
                embeds = {m: getattr(out, f"{m}_embeds") for m in modalities}
                loss = global_contrastive_loss(
                    accelerator, embeds, out.logit_scale, batch["species_id"], config.same_species_positives
                )
                # Decided across processes: if one process skipped backward alone, DDP would hang.
                finite = bool(accelerator.gather(torch.isfinite(loss.detach()).float().reshape(1)).min() > 0)
                if finite:
                    accelerator.backward(loss * accelerator.num_processes)
                    if accelerator.sync_gradients and config.max_grad_norm is not None:
                        accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
                    optimizer.step()
                optimizer.zero_grad()
            if config.log_batch_ids:
                ids = accelerator.gather(batch["index"]).tolist()
                if accelerator.is_main_process:
                    with open(output_dir / "batch_ids.jsonl", "a") as handle:
                        handle.write(json.dumps({"step": state.global_step, "epoch": state.epoch, "ids": ids}) + "\n")
            if not accelerator.sync_gradients:
                continue
            if finite:
                state.consecutive_nan_skips = 0
                raw_model.clamp_logit_scale()  # the temperature is clamped after every step (open_clip)
                scheduler.step()
            else:
                state.consecutive_nan_skips += 1
                state.total_nan_skips += 1
                logger.warning(
                    "non-finite loss at step %d: step skipped (%d in a row)",
                    state.global_step,
                    state.consecutive_nan_skips,
                )
                if state.consecutive_nan_skips >= config.max_nan_skips:
                    raise TrainingDivergedError(
                        f"loss was not finite for {state.consecutive_nan_skips} consecutive steps "
                        f"(last at step {state.global_step}); lower the learning rate or check the data"
                    )
            if finite:
                recent_losses.append(loss.item())
                first_loss = recent_losses[0] if first_loss is None else first_loss
            state.global_step += 1
            state.step_in_epoch += 1
            progress.update(1)
            if state.global_step % config.log_every_steps == 0 or state.global_step == 1:
                logs = {
                    "loss": loss.item(),
                    "lr": scheduler.get_last_lr()[0],
                    "logit_scale": raw_model.logit_scale.exp().item(),
                    "epoch": state.epoch,
                }
                progress.set_postfix(loss=f"{logs['loss']:.3f}", lr=f"{logs['lr']:.2e}")
                accelerator.log(logs, step=state.global_step)
            if config.checkpoint_every_steps and state.global_step % config.checkpoint_every_steps == 0:
                save_checkpoint(accelerator, state, checkpoints_dir, config.checkpoints_total_limit)
            if config.max_steps is not None and state.global_step >= config.max_steps:
                break  # stop mid-epoch; a full epoch always runs its end-of-epoch work below
        else:  # the epoch ran to its end
            state.epoch += 1
            state.step_in_epoch = 0
            if config.eval_every_epochs and (
                state.epoch % config.eval_every_epochs == 0 or state.epoch == config.epochs
            ):
                last_eval = evaluate_on_validation(model, accelerator, eval_datasets, config)
                if last_eval is not None:
                    score = selection_score(last_eval)
                    accelerator.log({"val/selection_score": score}, step=state.global_step)
                    logger.info("epoch %d: validation selection score %.4f", state.epoch, score)
                    if state.best_score is None or score > state.best_score:
                        state.best_score, state.best_step = score, state.global_step
                        if accelerator.is_main_process:
                            save_pretrained(raw_model, processor, output_dir / "best_model")
            save_checkpoint(accelerator, state, checkpoints_dir, config.checkpoints_total_limit)
    progress.close()
    if state.step_in_epoch:  # stopped by --max_steps inside an epoch: keep the exact place
        save_checkpoint(accelerator, state, checkpoints_dir, config.checkpoints_total_limit)

    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        save_pretrained(raw_model, processor, output_dir / "final_model")
        best = output_dir / "best_model"
        chosen = best if best.exists() else output_dir / "final_model"
        summary = {
            "model": str(chosen),
            "global_step": state.global_step,
            "epochs": state.epoch,
            "best_score": state.best_score,
            "best_step": state.best_step,
            "nan_skips": state.total_nan_skips,
            "processes": accelerator.num_processes,
            "seconds": round(time.time() - started, 1),
            "first_step_loss": first_loss,
            "last_epoch_mean_loss": sum(recent_losses) / len(recent_losses) if recent_losses else None,
            "training_records": len(train_dataset),
            "selection_score": "mean over pairs and ranks of macro top-1 HM",
        }
        (output_dir / "train_summary.json").write_text(json.dumps(summary, indent=2))
        if last_eval is not None:
            logger.info("validation retrieval accuracy\n%s", format_table(last_eval))
        if config.push_to_hub:
            if not config.hub_model_id:
                raise ValueError("--push_to_hub needs --hub_model_id")
            raw_best = BioscanClipModel.from_pretrained(chosen)
            raw_best.push_to_hub(config.hub_model_id)
            BioscanClipProcessor.from_pretrained(chosen).push_to_hub(config.hub_model_id)
    accelerator.end_training()
    return 0


def save_pretrained(model: BioscanClipModel, processor: BioscanClipProcessor, folder: Path) -> None:
    """Model + processor + code, loadable with AutoModel/AutoProcessor(trust_remote_code=True); atomic."""
    temporary = folder.with_name(f".tmp-{folder.name}")
    if temporary.exists():
        shutil.rmtree(temporary)
    model.save_pretrained(temporary)
    processor.save_pretrained(temporary)
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(temporary, folder)


if __name__ == "__main__":
    sys.exit(main())
