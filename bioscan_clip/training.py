"""Train BIOSCAN-CLIP with Accelerate: from mini-BIOSCAN on two CPU cores to the paper's multi-GPU recipe.

    accelerate launch train_accelerate.py --preset tiny --output_dir runs/tiny
    accelerate launch --multi_gpu --num_processes 2 train_accelerate.py --preset tiny --expect_processes 2 ...
    accelerate launch --config_file configs/accelerate/gpu4_bf16.yaml train_accelerate.py --preset clibd-5m \\
        --source bioscan5m --data_dir /data

A preset fills the defaults of every option (see --preset); each option given on the command line overrides it.
On CPU, ``--multi_gpu --num_processes N`` with this script's ``Accelerator(cpu=True)`` gives N real processes
(gloo + DDP); ``accelerate launch --cpu --num_processes N`` silently runs one, which ``--expect_processes`` turns
into an error.

From Python: ``train(TrainConfig(...))``. Order of work (Accelerate's examples): Accelerator -> seed -> data ->
model -> optimizer -> prepare -> load_state -> loop. The loss is the model's ``contrastive_loss`` with embeddings
gathered from every process (global-batch negatives, gradients on the local slice).
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import logging
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, DistributedDataParallelKwargs, set_seed
from tqdm.auto import tqdm
from transformers import AutoTokenizer, HfArgumentParser

from bioscan_clip import presets
from bioscan_clip.checkpoints import TrainState, load_checkpoint, resolve_resume, save_checkpoint, save_pretrained
from bioscan_clip.data import (
    DataSpec,
    ImageAugmentation,
    SpecimenDataset,
    has_role,
    model_inputs,
    role_records,
    with_modalities,
)
from bioscan_clip.dna_augmentation import DnaAugmentation
from bioscan_clip.evaluation import evaluate_retrieval, format_table, selection_score
from bioscan_clip.features import VALIDATION_PAIRS, embed_dataset, labels_of
from bioscan_clip.safe_io import DEBUG_ENV, error_boundary
from bioscan_clip.sharding import usable_cores
from bioscan_clip.text_tokenizer import train_taxonomy_tokenizer
from dataset_scripts import RETRIEVAL_SPLITS
from modeling_bioscanclip import BioscanClipModel, BioscanClipProcessor, contrastive_loss, taxonomy_to_text
from modeling_bioscanclip.configuration_bioscanclip import DNA_POOLINGS, IMAGE_POOLINGS, MODALITIES, TEXT_POOLINGS
from modeling_bioscanclip.constants_bioscanclip import TAXONOMIC_RANKS

logger = logging.getLogger(__name__)

VALIDATION_ROLES = ("val_queries_seen", "val_queries_unseen")


class TrainingDivergedError(RuntimeError):
    """The loss was NaN or infinite for too many consecutive steps."""


def _option(default: Any, help: str, **argparse_kwargs: Any) -> Any:
    """A dataclass field whose help (and argparse settings) ``HfArgumentParser`` turns into a command-line option."""
    return field(default=default, metadata={"help": help, **argparse_kwargs})


@dataclass
class TrainConfig:
    """Every option of a run. A preset fills the defaults; the command line (or the caller) overrides any field."""

    preset: str = _option("tiny", "defaults for every other option", choices=presets.PRESET_NAMES)
    source: str | None = _option(
        "mini", "dataset builder (mini is generated, synthetic)", choices=tuple(RETRIEVAL_SPLITS)
    )
    data_dir: str | None = _option(
        None, "data root of the builder, or its metadata CSV/TSV (for bold: the export file); mini needs none"
    )
    dataset_path: str | None = _option(None, "instead of a builder, a DatasetDict saved with save_to_disk")
    cache_dir: str | None = _option(None, "where builders keep their Arrow cache (None: the datasets cache)")
    partition: str | None = _option(
        None, "BOLD exports: 'none' (default) trains on every record; 'clibd' holds out seen/unseen queries"
    )
    image_policy: str | None = _option(
        None, "a missing or corrupt image: fail (default), skip the record, keep it without image",
        choices=("fail", "skip", "keep"),
    )  # fmt: skip
    image_package: str | None = _option(None, "image folder under images/ (default cropped_256); 'none': no images")
    keep_provisional_names: bool = _option(False, "BOLD exports: keep 'sp.'/'cf.'/interim names as their own labels")
    genus_from_species: bool = _option(False, "fill a missing genus from the species name (as bioscan-dataset)")
    output_dir: str = _option("runs/train", "checkpoints, logs, the final and the best model")
    modalities: str = _option("image,dna,text", "two or three of image,dna,text (dna,text for barcode-only data)")
    epochs: int = _option(20, "passes over the training records")
    max_steps: int | None = _option(None, "stop after this many optimiser steps (the schedule still spans --epochs)")
    batch_size: int = _option(64, "records per process per step; negatives come from the global batch")
    learning_rate: float = _option(1e-3, "peak one-cycle learning rate at --lr_reference_batch, scaled linearly")
    lr_reference_batch: int = _option(64, "global batch at which --learning_rate applies (500 in the paper)")
    weight_decay: float = _option(0.01, "AdamW weight decay")
    warmup_fraction: float = _option(0.3, "fraction of the steps spent warming up (one-cycle pct_start)")
    gradient_accumulation_steps: int = _option(1, "batches per optimiser step")
    max_grad_norm: float | None = _option(1.0, "clip gradients to this norm (0 or none: no clipping, as the paper)")
    mixed_precision: str = _option("no", "fp16/bf16 need a device that supports them", choices=("no", "bf16", "fp16"))
    seed: int = _option(42, "seeds model initialisation, dropout, sample order and augmentation")
    num_workers: int | None = _option(
        None,
        "DataLoader worker processes per process (None: 1 per 2 cores, at most 8, with images; 0 without); "
        "the run is the same with any number",
    )
    num_threads: int | None = _option(
        None,
        "torch threads per process (None: every core this process may use, shared among the processes on "
        "this machine; `accelerate launch` would otherwise leave one, through OMP_NUM_THREADS=1)",
    )
    same_species_positives: bool = _option(False, "treat records of the same species in a batch as positives")
    crop_scale_min: float = _option(0.08, "smallest area fraction of the random resized crop (0.08 in the paper)")
    dna_augmentation: bool = _option(
        False, "augment training barcodes: random reading frame, end trimming, a few N (off in the paper's recipe)"
    )
    dna_frames: int | None = _option(
        None, "DNA embeddings at inference average the barcode read from its first N bases (None/1: one frame)"
    )
    text_vocab_size: int = _option(2000, "size of the taxonomy WordPiece vocabulary built from the training names")
    image_tower: str | None = _option(None, "start the image tower from this pretrained vision model folder")
    dna_tower: str | None = _option(None, "start the DNA tower from this pretrained BERT over 5-mers (BarcodeBERT)")
    text_tower: str | None = _option(None, "start the text tower from this BERT folder; its tokenizer is then used")
    text_tokenizer: str | None = _option(None, "a tokenizer folder for the taxonomy text (None: built from the names)")
    projection_dim: int | None = _option(None, "size of the shared embedding space (None: the preset's)")
    image_pooling: str | None = _option(None, "image pooling (None: the preset's)", choices=IMAGE_POOLINGS)
    dna_pooling: str | None = _option(None, "softmax_mean is the original's head (None: mean)", choices=DNA_POOLINGS)
    text_pooling: str | None = _option(None, "mean_all is the original's (None: mean)", choices=TEXT_POOLINGS)
    dna_use_attention_mask: bool = _option(True, "--no_dna_use_attention_mask attends to the N padding (original)")
    dna_reference_mode: bool = _option(False, "DNA ids exactly as the original (<MASK> prefix), for BarcodeBERT")
    eval_every_epochs: int = _option(1, "validation retrieval every N epochs (0: never); it picks the best model")
    eval_batch_size: int = _option(128, "embedding batch size of the validation")
    checkpoint_every_steps: int | None = _option(None, "also checkpoint every N steps (always at each epoch end)")
    checkpoints_total_limit: int = _option(2, "complete checkpoints kept (the newest ones)")
    resume_from_checkpoint: str | None = _option(None, "'latest' or a checkpoint folder: continue exactly there")
    max_nan_skips: int = _option(5, "abort after this many consecutive non-finite losses")
    report_to: str = _option("tensorboard", "Accelerate trackers", choices=("tensorboard", "wandb", "all", "none"))
    push_to_hub: bool = _option(False, "upload the chosen model to --hub_model_id at the end")
    hub_model_id: str | None = _option(None, "repository for --push_to_hub (owner/name)")
    cpu: bool = _option(False, "run on the CPU even when a GPU is present")
    expect_processes: int | None = _option(None, "fail unless exactly this many processes run (catches fall-backs)")
    log_every_steps: int = _option(10, "log loss, learning rate and temperature every N steps")
    log_batch_ids: bool = _option(False, "append every step's record ids to batch_ids.jsonl (audits sample order)")

    def __post_init__(self) -> None:
        presets.get_preset(self.preset)
        self.modality_list()
        if self.max_grad_norm is not None and self.max_grad_norm <= 0:
            self.max_grad_norm = None
        if self.push_to_hub and not self.hub_model_id:
            raise ValueError("--push_to_hub needs --hub_model_id")
        if self.dna_frames is not None and not 1 <= self.dna_frames <= 8:
            raise ValueError(f"--dna_frames: expected 1 to 8 reading frames, got {self.dna_frames}")

    @classmethod
    def from_preset(cls, preset: str = "tiny", **overrides: Any) -> TrainConfig:
        """The preset's defaults with ``overrides`` on top: what the command line does, from Python."""
        return cls(**{**presets.get_preset(preset).training, **overrides, "preset": preset})

    def modality_list(self) -> list[str]:
        names = [m.strip() for m in self.modalities.split(",") if m.strip()]
        if len(set(names)) < 2 or set(names) - set(MODALITIES):
            raise ValueError(f"--modalities: expected at least two of {','.join(MODALITIES)}, got {self.modalities!r}")
        return [m for m in MODALITIES if m in names]

    def data(self) -> DataSpec:
        return DataSpec.from_options(self)

    def model_overrides(self) -> dict[str, Any]:
        """The model settings given here, over the preset's architecture."""
        names = ("projection_dim", "image_pooling", "dna_pooling", "text_pooling")
        overrides = {name: getattr(self, name) for name in names if getattr(self, name) is not None}
        if self.dna_frames is not None and self.dna_frames > 1:  # kept in config.json, read by embed_dataset
            overrides["dna_frames"] = self.dna_frames
        return {**overrides, "dna_use_attention_mask": self.dna_use_attention_mask}


@dataclass
class TrainResult:
    """What a run leaves: the chosen model (best validation score, else final) and its summary."""

    output_dir: Path
    model_dir: Path
    summary: dict[str, Any]


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    pass


def parse_args(argv: Sequence[str] | None = None) -> TrainConfig:
    """The preset's values, overridden by whatever the command line gives (``--help`` shows the preset's)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    head = argparse.ArgumentParser(add_help=False)
    head.add_argument("--preset", default=TrainConfig.preset)
    preset_name = head.parse_known_args(argv)[0].preset
    parser = HfArgumentParser(
        TrainConfig,
        prog="train_accelerate.py",
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=_HelpFormatter,
    )
    if preset_name in presets.PRESETS:  # a wrong name is refused by the option's choices below
        parser.set_defaults(**presets.PRESETS[preset_name].training)
    try:
        (config,) = parser.parse_args_into_dataclasses(args=argv)
    except ValueError as error:
        parser.error(str(error))
    return config


def training_loss(model: Any, batch: dict[str, torch.Tensor], *, same_species_positives: bool = False) -> torch.Tensor:
    """The loss of one batch: the model's contrastive loss over every pair of its modalities, with negatives from
    every process. In one process it equals ``model(**inputs, return_loss=True).loss``."""
    out = model(**model_inputs(batch))
    embeds = {m: getattr(out, f"{m}_embeds") for m in MODALITIES if getattr(out, f"{m}_embeds") is not None}
    return contrastive_loss(
        embeds,
        out.logit_scale,
        species_ids=batch["species_id"],
        same_species_positives=same_species_positives,
        gather=True,
    )


def _accelerator(config: TrainConfig) -> Accelerator:
    """CPU unless a GPU is there; every parameter takes part in every step (towers are built without unused
    poolers), so DDP need not search for unused ones; a seedable sampler so that a resume replays the order."""
    accelerator = Accelerator(
        cpu=config.cpu or not torch.cuda.is_available(),
        mixed_precision=config.mixed_precision,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        log_with=None if config.report_to == "none" else config.report_to,
        project_dir=config.output_dir,
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
    return accelerator


def _set_threads(config: TrainConfig, accelerator: Any) -> tuple[int, int]:
    """Sets torch's thread count and picks the loader workers: every core given, never a silent single thread.

    `accelerate launch` exports OMP_NUM_THREADS=1 unless told otherwise, which alone halves a 2-core CPU run.
    """
    local = int(os.environ.get("LOCAL_WORLD_SIZE", accelerator.num_processes))
    cores = usable_cores()
    per_process = max(1, cores // max(1, local))
    threads = config.num_threads or per_process
    torch.set_num_threads(threads)
    workers = config.num_workers
    if workers is None:
        workers = min(8, max(1, per_process // 2)) if "image" in config.modality_list() else 0
    logger.info(
        "torch uses %d thread(s) per process (%d cores for %d local process(es); OMP_NUM_THREADS=%s), "
        "%d loader worker(s); --num_threads and --num_workers change them",
        threads, cores, local, os.environ.get("OMP_NUM_THREADS", "unset"), workers,
    )  # fmt: skip
    return threads, workers


def _text_tokenizer(config: TrainConfig, train_records: Any, accelerator: Any, folder: Path) -> Any:
    """The taxonomy tokenizer: the one given (or the pretrained text tower's), else one built from the training
    records' names. Made once by the main process and kept in the run folder, so that a resume reuses it."""
    if accelerator.is_main_process and not (folder / "tokenizer_config.json").exists():
        source = config.text_tokenizer or config.text_tower
        if source is not None:
            AutoTokenizer.from_pretrained(source).save_pretrained(folder)
        else:
            columns = train_records.select_columns(list(TAXONOMIC_RANKS)).to_dict()
            texts = [taxonomy_to_text({rank: columns[rank][i] for rank in columns}) for i in range(len(train_records))]
            train_taxonomy_tokenizer(texts, vocab_size=config.text_vocab_size).save_pretrained(folder)
    accelerator.wait_for_everyone()
    return AutoTokenizer.from_pretrained(folder)


def _datasets(
    config: TrainConfig, accelerator: Any, output_dir: Path
) -> tuple[SpecimenDataset, dict[str, SpecimenDataset], BioscanClipProcessor]:
    """The training records (augmented) and the validation keys and queries, all through one processor."""
    modalities = config.modality_list()
    with accelerator.main_process_first():  # the main process prepares the builder cache; the others read it
        splits, roles = config.data().load()
    train_records = with_modalities(role_records(splits, roles, "train"), modalities, what="training records")
    if len(train_records) < config.batch_size * accelerator.num_processes:
        raise ValueError(
            f"{len(train_records)} training records are fewer than one global batch "
            f"({config.batch_size} x {accelerator.num_processes})"
        )
    output_dir.mkdir(parents=True, exist_ok=True)
    text_tokenizer = _text_tokenizer(config, train_records, accelerator, output_dir / "text_tokenizer")
    processor = presets.build_processor(config.preset, text_tokenizer, dna_reference_mode=config.dna_reference_mode)
    augmentation = None
    if "image" in modalities:
        image_processor = processor.image_processor
        augmentation = ImageAugmentation(
            image_processor.resize_shortest_edge, image_processor.crop_size, scale=(config.crop_scale_min, 1.0)
        )
    dna_augmentation = DnaAugmentation() if config.dna_augmentation and "dna" in modalities else None
    train_set = SpecimenDataset(
        train_records,
        processor,
        modalities,
        augmentation=augmentation,
        seed=config.seed,
        dna_augmentation=dna_augmentation,
    )
    validation: dict[str, SpecimenDataset] = {}
    # A reference library (BOLD, partition none) has keys but no validation queries: nothing to validate.
    if config.eval_every_epochs > 0 and any(has_role(splits, roles, role) for role in VALIDATION_ROLES):
        for role in ("keys", *VALIDATION_ROLES):
            if has_role(splits, roles, role):
                records = with_modalities(role_records(splits, roles, role), modalities, what=role)
                validation[role] = SpecimenDataset(records, processor, modalities)
    return train_set, validation, processor


def _model(config: TrainConfig, text_vocab_size: int) -> BioscanClipModel:
    """The preset's architecture, from random weights or from pretrained towers (as the paper starts)."""
    model_config = presets.model_config(
        config.preset, config.modality_list(), text_vocab_size, **config.model_overrides()
    )
    towers = {"image_tower": config.image_tower, "dna_tower": config.dna_tower, "text_tower": config.text_tower}
    if any(towers.values()):
        return BioscanClipModel.from_towers(**towers, config=model_config)
    return BioscanClipModel(model_config)


def validate(model: Any, accelerator: Any, validation: dict[str, SpecimenDataset], batch_size: int, workers: int):
    """Retrieval accuracy of the validation queries against all keys (every process embeds its shard)."""
    if "keys" not in validation:
        return None
    kwargs = {"batch_size": batch_size, "accelerator": accelerator, "num_workers": workers}
    key_features = embed_dataset(model, validation["keys"], description="keys", **kwargs)
    query_features, query_labels = {}, {}
    for role in VALIDATION_ROLES:
        queries = validation.get(role)
        if queries is not None and len(queries):
            group = role.rsplit("_", 1)[1]
            query_features[group] = embed_dataset(model, queries, description=group, **kwargs)
            query_labels[group] = labels_of(queries)
    if not query_features:
        return None
    pairs = [p for p in VALIDATION_PAIRS if p[0] in key_features and p[1] in key_features]
    return evaluate_retrieval(query_features, query_labels, key_features, labels_of(validation["keys"]), pairs=pairs)


def train(config: TrainConfig) -> TrainResult:
    """Runs training as ``config`` says, in this process or in each process of an ``accelerate launch``."""
    output_dir = Path(config.output_dir)
    accelerator = _accelerator(config)
    threads, workers = _set_threads(config, accelerator)
    set_seed(config.seed)  # model init and dropout; augmentation draws from (seed, epoch, index)
    train_set, validation, processor = _datasets(config, accelerator, output_dir)
    model = _model(config, len(processor.tokenizer))
    global_batch = config.batch_size * accelerator.num_processes * config.gradient_accumulation_steps
    peak_lr = config.learning_rate * global_batch / config.lr_reference_batch
    optimizer = torch.optim.AdamW(model.parameters(), lr=peak_lr, weight_decay=config.weight_decay)
    train_loader = torch.utils.data.DataLoader(
        train_set,
        batch_size=config.batch_size,
        shuffle=True,
        drop_last=True,  # equal slices on every process, as the gathered loss needs
        # Workers decode and augment ahead of the step; persistent (not restarted each epoch), they read the
        # epoch that set_epoch writes to shared memory.
        num_workers=workers,
        persistent_workers=workers > 0,
        prefetch_factor=4 if workers else None,
        pin_memory=accelerator.device.type == "cuda",
        generator=torch.Generator().manual_seed(config.seed),
    )
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
    # Not registered for checkpointing: Accelerate would pickle them (and unpickle on resume, code included);
    # save_checkpoint/load_checkpoint keep both as JSON instead.
    state = TrainState()
    checkpoints_dir = output_dir / "checkpoints"
    resume = resolve_resume(config.resume_from_checkpoint, checkpoints_dir)
    if resume is not None:  # model, optimiser, scheduler, RNGs, sampler and TrainState come back
        load_checkpoint(accelerator, resume, state, scheduler)
        logger.info("resumed from %s at epoch %d, step %d", resume, state.epoch, state.global_step)
    if accelerator.is_main_process:
        processor.save_pretrained(output_dir / "processor")
        (output_dir / "train_config.json").write_text(json.dumps(dataclasses.asdict(config), indent=2))
    if config.report_to != "none":
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
    throughput = _Throughput(global_batch)
    while state.epoch < config.epochs and state.global_step < max_steps:
        model.train()
        train_loader.set_epoch(state.epoch)  # reshuffles per epoch (the original never did)
        train_set.set_epoch(state.epoch)
        skip = state.step_in_epoch * config.gradient_accumulation_steps
        for batch in accelerator.skip_first_batches(train_loader, skip) if skip else train_loader:
            with accelerator.accumulate(model):
                loss = training_loss(model, batch, same_species_positives=config.same_species_positives)
                # Decided across processes: if one process skipped backward alone, DDP would hang.
                finite = bool(accelerator.gather(torch.isfinite(loss.detach()).float().reshape(1)).min() > 0)
                if finite:
                    # Every process holds the global loss with gradients on its own slice; DDP averages, so
                    # scaling by the process count gives the global loss's gradient.
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
                recent_losses.append(loss.item())
                first_loss = recent_losses[0] if first_loss is None else first_loss
            else:
                _count_nan_skip(state, config.max_nan_skips)
            state.global_step += 1
            state.step_in_epoch += 1
            throughput.step()
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
                throughput.pause()
                save_checkpoint(accelerator, state, checkpoints_dir, config.checkpoints_total_limit, scheduler)
                throughput.resume()
            if config.max_steps is not None and state.global_step >= config.max_steps:
                break  # stop mid-epoch; a full epoch always runs its end-of-epoch work below
        else:  # the epoch ran to its end
            throughput.pause()
            state.epoch += 1
            state.step_in_epoch = 0
            if config.eval_every_epochs and (
                state.epoch % config.eval_every_epochs == 0 or state.epoch == config.epochs
            ):
                last_eval = validate(model, accelerator, validation, config.eval_batch_size, workers)
                if last_eval is not None:
                    score = selection_score(last_eval)
                    accelerator.log({"val/selection_score": score}, step=state.global_step)
                    logger.info("epoch %d: validation selection score %.4f", state.epoch, score)
                    if state.best_score is None or score > state.best_score:
                        state.best_score, state.best_step = score, state.global_step
                        if accelerator.is_main_process:
                            save_pretrained(raw_model, processor, output_dir / "best_model")
            save_checkpoint(accelerator, state, checkpoints_dir, config.checkpoints_total_limit, scheduler)
            throughput.resume()
    progress.close()
    if state.step_in_epoch:  # stopped by --max_steps inside an epoch: keep the exact place
        save_checkpoint(accelerator, state, checkpoints_dir, config.checkpoints_total_limit, scheduler)

    accelerator.wait_for_everyone()
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
        "samples_per_second": throughput.rate(),
        "torch_threads": threads,
        "loader_workers": workers,
        "first_step_loss": first_loss,
        "last_epoch_mean_loss": sum(recent_losses) / len(recent_losses) if recent_losses else None,
        "training_records": len(train_set),
        "selection_score": "mean over pairs and ranks of macro top-1 HM",
    }
    if accelerator.is_main_process:
        save_pretrained(raw_model, processor, output_dir / "final_model")
        (output_dir / "train_summary.json").write_text(json.dumps(summary, indent=2))
        if last_eval is not None:
            logger.info("validation retrieval accuracy\n%s", format_table(last_eval))
        if config.push_to_hub:  # the same export and single commit as `bioscan-clip push model`
            from bioscan_clip.hub import push_model_folder

            push_model_folder(chosen, config.hub_model_id)  # its card: what `evaluate --model_card` wrote, if any
    accelerator.end_training()
    return TrainResult(output_dir=output_dir, model_dir=chosen, summary=summary)


class _Throughput:
    """Training samples per second over the steps after the first (model warm-up), leaving out the time spent
    checkpointing and validating; a new epoch's loader start-up counts, as it does for the user."""

    def __init__(self, samples_per_step: int) -> None:
        self.samples_per_step = samples_per_step
        self.last: float | None = None  # when the previous step ended
        self.paused_at: float | None = None
        self.seconds = 0.0
        self.steps = 0

    def step(self) -> None:
        now = time.perf_counter()
        if self.last is not None:
            self.seconds += now - self.last
            self.steps += 1
        self.last = now

    def pause(self) -> None:
        self.paused_at = time.perf_counter()

    def resume(self) -> None:
        if self.paused_at is not None and self.last is not None:
            self.last += time.perf_counter() - self.paused_at
        self.paused_at = None

    def rate(self) -> float | None:
        return round(self.steps * self.samples_per_step / self.seconds, 2) if self.seconds > 0 else None


def _count_nan_skip(state: TrainState, limit: int) -> None:
    state.consecutive_nan_skips += 1
    state.total_nan_skips += 1
    logger.warning(
        "non-finite loss at step %d: step skipped (%d in a row)", state.global_step, state.consecutive_nan_skips
    )
    if state.consecutive_nan_skips >= limit:
        raise TrainingDivergedError(
            f"loss was not finite for {state.consecutive_nan_skips} consecutive steps "
            f"(last at step {state.global_step}); lower the learning rate or check the data"
        )


def main(argv: Sequence[str] | None = None) -> int:
    """``accelerate launch train_accelerate.py ...`` (or ``-m bioscan_clip.training``): parse, then train."""
    config = parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    # The error boundary: bad data or a refused checkpoint is one line and exit 2 (--debug: BIOSCAN_CLIP_DEBUG=1).
    debug = os.environ.get(DEBUG_ENV, "") not in ("", "0")
    return error_boundary("train_accelerate.py", lambda: train(config) and None, debug=debug)


if __name__ == "__main__":
    sys.exit(main())
