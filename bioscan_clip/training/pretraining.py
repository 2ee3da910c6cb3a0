"""Masked-k-mer pretraining of the DNA tower (BarcodeBERT's objective), run by ``train_accelerate.py --objective
masked_kmers``: a share of each barcode's k-mers is replaced by ``<MASK>`` and the tower learns to name them from
the rest. No labels are read. The tower is written to ``OUTPUT_DIR/dna_tower`` (a ``BertForMaskedLM`` with the DNA
tokenizer beside it), which a contrastive run then starts from with ``--dna_tower OUTPUT_DIR/dna_tower``.

The corpus is the barcodes of the training records only (the ``train`` role of the data options), so that a tower
pretrained for a measurement has never read a query's or a held-out species' barcode. Barcodes are augmented as in
contrastive training (random reading frame, end trimming, a few ``N``) when ``--dna_augmentation`` is on.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate.utils import set_seed
from tqdm.auto import tqdm
from transformers import BertConfig, BertForMaskedLM

from bioscan_clip.data.augmentation import DnaAugmentation
from bioscan_clip.data.barcodes import clean_barcodes
from bioscan_clip.data.spec import role_records
from bioscan_clip.safe_io import staging_dir, swap_in
from modeling_bioscanclip import BioscanDnaTokenizer
from modeling_bioscanclip.constants_bioscanclip import DNA_SPECIAL_TOKENS

from . import presets
from .config import TrainConfig
from .loop import _accelerator, _set_threads

logger = logging.getLogger(__name__)

TOWER_FOLDER = "dna_tower"
# Stream of the masking draws, apart from the augmentation's (seed, epoch, index, 1).
MASK_STREAM = 2


def mask_kmers(
    input_ids: torch.Tensor, attention_mask: torch.Tensor, ratio: float, rng: np.random.Generator, mask_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The masked inputs and the labels (-100 where nothing is asked): ``ratio`` of the real k-mers of each barcode
    (not the prefix, padding or ``<UNK>``), at least one, become ``mask_id``."""
    maskable = attention_mask.bool() & (input_ids >= len(DNA_SPECIAL_TOKENS))
    draws = torch.from_numpy(rng.random(input_ids.shape))
    chosen = maskable & (draws < ratio)
    # A short barcode might draw nothing: ask for its likeliest k-mer then, so every row has a target.
    empty = ~chosen.any(dim=1) & maskable.any(dim=1)
    if empty.any():
        first = torch.where(maskable, draws, torch.inf).argmin(dim=1)
        chosen[empty, first[empty]] = True
    labels = torch.where(chosen, input_ids, torch.full_like(input_ids, -100))
    return input_ids.masked_fill(chosen, mask_id), labels


class MaskedKmerDataset(torch.utils.data.Dataset):
    """The training barcodes, augmented and masked per (seed, epoch, index), tokenised a batch at a time."""

    def __init__(
        self,
        barcodes: Sequence[str],
        tokenizer: BioscanDnaTokenizer,
        ratio: float,
        seed: int,
        augmentation: DnaAugmentation | None,
    ) -> None:
        self.barcodes = list(barcodes)
        self.tokenizer, self.ratio, self.seed, self.augmentation = tokenizer, ratio, seed, augmentation
        self.mask_id = tokenizer.vocab[tokenizer.mask_token]
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.barcodes)

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, torch.Tensor]]:
        indices = [int(i) for i in indices]
        barcodes = [self.barcodes[i] for i in indices]
        if self.augmentation is not None:
            barcodes = [
                self.augmentation(b, np.random.default_rng([self.seed, self.epoch, i, 1]))
                for b, i in zip(barcodes, indices, strict=True)
            ]
        encoded = self.tokenizer.encode_batch(barcodes)
        rng = np.random.default_rng([self.seed, self.epoch, indices[0], MASK_STREAM])
        ids, mask = torch.from_numpy(encoded.input_ids), torch.from_numpy(encoded.attention_mask)
        masked, labels = mask_kmers(ids, mask, self.ratio, rng, self.mask_id)
        return [
            {"input_ids": masked[row], "attention_mask": mask[row], "labels": labels[row]}
            for row in range(len(indices))
        ]


def tower_config(config: TrainConfig, tokenizer: BioscanDnaTokenizer) -> BertConfig:
    """The preset's DNA tower (a BERT), its vocabulary and positions fitted to the tokenizer."""
    dna = presets.model_config(
        config.preset,
        ["dna", "text"],
        2,
        dna_tokenizer=tokenizer,
        dna_layers=config.dna_layers,
        dna_hidden_size=config.dna_hidden_size,
    ).dna_config.to_dict()
    for key in ("architectures", "transformers_version", "model_type"):
        dna.pop(key, None)
    return BertConfig(**dna)


def pretrain_dna_tower(config: TrainConfig) -> Path:
    """Masked-k-mer pretraining as ``config`` says (epochs, batch, learning rate, seed, tokenisation, augmentation);
    returns the tower folder. Every process trains on its shard of the barcodes (DDP)."""
    output_dir = Path(config.output_dir)
    accelerator = _accelerator(config)
    _set_threads(config, accelerator)
    set_seed(config.seed)
    with accelerator.main_process_first():
        splits, roles = config.data().load()
    records = role_records(splits, roles, "train")
    names = records["processid"] if "processid" in records.column_names else None
    barcodes = [b for b in clean_barcodes(records["dna_barcode"], names) if b]
    tokenizer = BioscanDnaTokenizer(kmer_size=config.kmer_size(), stride=config.stride())
    augmentation = DnaAugmentation(max_shift=config.kmer_size() - 1) if config.dna_augmentation else None
    dataset = MaskedKmerDataset(barcodes, tokenizer, config.mask_ratio, config.seed, augmentation)
    if len(dataset) < config.batch_size * accelerator.num_processes:
        raise ValueError(
            f"{len(dataset)} training barcodes are fewer than one global batch "
            f"({config.batch_size} x {accelerator.num_processes})"
        )
    model = BertForMaskedLM(tower_config(config, tokenizer))
    global_batch = config.batch_size * accelerator.num_processes * config.gradient_accumulation_steps
    peak_lr = config.learning_rate * global_batch / config.lr_reference_batch
    optimizer = torch.optim.AdamW(model.parameters(), lr=peak_lr, weight_decay=config.weight_decay)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=config.batch_size,
        shuffle=True,
        drop_last=True,
        collate_fn=lambda items: {key: torch.stack([item[key] for item in items]) for key in items[0]},
        generator=torch.Generator().manual_seed(config.seed),
    )
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    steps_per_epoch = math.ceil(len(loader) / config.gradient_accumulation_steps)
    total_steps = max(1, steps_per_epoch * config.epochs)
    if config.max_steps is not None:
        total_steps = min(total_steps, config.max_steps)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer,
        max_lr=peak_lr,
        total_steps=total_steps,
        pct_start=config.warmup_fraction,
        anneal_strategy="cos",
        cycle_momentum=False,
    )
    progress = tqdm(total=total_steps, desc="masked k-mers", disable=not accelerator.is_local_main_process)
    started, step, epoch = time.time(), 0, 0
    epoch_losses: list[float] = []
    accuracy: list[float] = []
    while step < total_steps:
        model.train()
        loader.set_epoch(epoch)
        dataset.epoch = epoch
        losses, right, asked = [], 0, 0
        for batch in loader:
            with accelerator.accumulate(model):
                out = model(**batch)
                accelerator.backward(out.loss)
                if accelerator.sync_gradients and config.max_grad_norm is not None:
                    accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad()
            if not accelerator.sync_gradients:
                continue
            scheduler.step()
            with torch.no_grad():
                target = batch["labels"] != -100
                right += int((out.logits.argmax(-1)[target] == batch["labels"][target]).sum())
                asked += int(target.sum())
            losses.append(out.loss.item())
            step += 1
            progress.update(1)
            progress.set_postfix(loss=f"{losses[-1]:.3f}")
            if step >= total_steps:
                break
        epoch += 1
        epoch_losses.append(sum(losses) / max(1, len(losses)))
        accuracy.append(right / max(1, asked))
        logger.info("epoch %d: masked-k-mer loss %.4f, accuracy %.3f", epoch, epoch_losses[-1], accuracy[-1])
    progress.close()
    accelerator.wait_for_everyone()
    folder = output_dir / TOWER_FOLDER
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        staging = staging_dir(folder)
        accelerator.unwrap_model(model).save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        swap_in(staging, folder)
        summary: dict[str, Any] = {
            "objective": "masked_kmers",
            "tower": str(folder),
            "barcodes": len(dataset),
            "mask_ratio": config.mask_ratio,
            "kmer_size": config.kmer_size(),
            "stride": config.stride(),
            "steps": step,
            "epochs": epoch,
            "seconds": round(time.time() - started, 1),
            "epoch_mean_loss": epoch_losses,
            "masked_accuracy": accuracy,
        }
        (output_dir / "train_summary.json").write_text(json.dumps(summary, indent=2))
    return folder
