"""The training loop, in Accelerate's order: Accelerator -> seed -> data -> model -> optimizer -> prepare ->
load_state -> loop. The loss is the model's ``contrastive_loss`` with embeddings gathered from every process
(global-batch negatives, gradients on the local slice). The command line is :mod:`bioscan_clip.apps.train`."""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, DistributedDataParallelKwargs, set_seed
from tqdm.auto import tqdm
from transformers import AutoTokenizer

from bioscan_clip.data.augmentation import DnaAugmentation
from bioscan_clip.data.spec import has_role, role_records
from bioscan_clip.data.specimens import ImageAugmentation, SpecimenDataset, model_inputs, with_modalities
from bioscan_clip.evaluation.protocol import evaluate_retrieval, format_table, selection_score
from bioscan_clip.features import VALIDATION_PAIRS, embed_dataset, labels_of
from bioscan_clip.sharding import usable_cores
from modeling_bioscanclip import BioscanClipModel, BioscanClipProcessor, contrastive_loss, taxonomy_to_text
from modeling_bioscanclip.configuration_bioscanclip import MODALITIES
from modeling_bioscanclip.constants_bioscanclip import TAXONOMIC_RANKS

from . import presets
from .checkpoints import TrainState, load_checkpoint, resolve_resume, save_checkpoint, save_pretrained
from .config import TrainConfig, TrainResult
from .text_tokenizer import train_taxonomy_tokenizer

logger = logging.getLogger(__name__)

VALIDATION_ROLES = ("val_queries_seen", "val_queries_unseen")


class TrainingDivergedError(RuntimeError):
    """The loss was NaN or infinite for too many consecutive steps."""


def training_loss(
    model: Any, batch: dict[str, torch.Tensor], *, same_species_positives: bool = False, rank_weight: float = 0.0
) -> torch.Tensor:
    """The loss of one batch: the model's contrastive loss over every pair of its modalities, with negatives from
    every process (and, with ``rank_weight``, soft targets by shared rank). In one process, without either option,
    it equals ``model(**inputs, return_loss=True).loss``."""
    out = model(**model_inputs(batch))
    embeds = {m: getattr(out, f"{m}_embeds") for m in MODALITIES if getattr(out, f"{m}_embeds") is not None}
    return contrastive_loss(
        embeds,
        out.logit_scale,
        species_ids=batch["species_id"],
        same_species_positives=same_species_positives,
        taxon_ids=batch.get("taxon_ids"),
        rank_weight=rank_weight,
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
    processor = presets.build_processor(
        config.preset,
        text_tokenizer,
        dna_reference_mode=config.dna_reference_mode,
        stride=config.stride(),
    )
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


def _model(config: TrainConfig, processor: BioscanClipProcessor) -> BioscanClipModel:
    """The preset's architecture, from random weights or from pretrained towers (as the paper starts)."""
    model_config = presets.model_config(
        config.preset,
        config.modality_list(),
        len(processor.tokenizer),
        dna_tokenizer=processor.dna_tokenizer,
        dna_layers=config.dna_layers,
        **config.model_overrides(),
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
    model = _model(config, processor)
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
                loss = training_loss(
                    model,
                    batch,
                    same_species_positives=config.same_species_positives,
                    rank_weight=config.rank_weight,
                )
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
