"""Checkpoints that a crash cannot half-write, and where a run is, saved without pickle.

A checkpoint is Accelerate's ``save_state`` folder plus ``train_state.json`` and ``scheduler_state.json``, written
under a temporary name and renamed once complete (with a ``COMPLETE`` marker), so a crash while saving leaves the
previous one intact.

Resuming unpickles nothing that can run code. Where the run is (:class:`TrainState`) and the learning-rate schedule
are JSON, read by us; nothing is registered with ``register_for_checkpointing``, whose ``custom_checkpoint_*.pkl``
Accelerate loads with ``weights_only=False`` (arbitrary code): a checkpoint holding one is refused unread. What
``load_state`` still reads is the model (``model.safetensors``, required: no ``pytorch_model.bin`` fall-back), the
optimiser (``optimizer.bin``) and the RNG states (``random_states_*.pkl``), all through PyTorch's weights-only
loader (a restricted unpickler that refuses any global outside its allow-list). Accelerate
swallows a failed RNG restore silently (logged at INFO), which would break exact resume without a word, so the RNG
files are checked with the same restricted loader first and a refusal is an error naming the file.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bioscan_clip.safe_io import staging_dir, swap_in

CHECKPOINT_MARKER = "COMPLETE"
STATE_FILE = "train_state.json"
SCHEDULER_FILE = "scheduler_state.json"
MODEL_FILE = "model.safetensors"


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed safely or exactly; the message names the file."""


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
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(state) - known)
        if unknown:
            raise CheckpointError(f"{STATE_FILE}: unknown fields {unknown}; expected {sorted(known)}")
        for key, value in state.items():
            if value is not None and not isinstance(value, (int, float)):
                raise CheckpointError(f"{STATE_FILE}: {key} must be a number, got {value!r}")
            setattr(self, key, value)


def list_checkpoints(folder: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints (with their marker) and their global step, read from the saved state."""
    found = []
    for path in folder.glob("checkpoint-*"):
        if (path / CHECKPOINT_MARKER).exists() and (path / STATE_FILE).exists():
            found.append((json.loads((path / STATE_FILE).read_text())["global_step"], path))
    return sorted(found)


def save_checkpoint(accelerator: Any, state: TrainState, folder: Path, keep: int, scheduler: Any = None) -> Path:
    """``save_state`` into a temporary folder plus the run state (and ``scheduler``'s state) as JSON, marked complete
    and renamed only when everything is written; older checkpoints are pruned afterwards."""
    final = folder / f"checkpoint-{state.global_step:08d}"
    temporary = folder / f".tmp-checkpoint-{state.global_step:08d}"
    if accelerator.is_main_process and temporary.exists():
        shutil.rmtree(temporary)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(temporary))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (temporary / STATE_FILE).write_text(json.dumps(state.state_dict()))
        if scheduler is not None:  # floats written by repr: they read back bit for bit
            (temporary / SCHEDULER_FILE).write_text(json.dumps(scheduler.state_dict()))
        (temporary / CHECKPOINT_MARKER).write_text("")
        if final.exists():
            shutil.rmtree(final)
        os.replace(temporary, final)
        for _, old in list_checkpoints(folder)[:-keep]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


def resolve_resume(value: str | None, folder: Path) -> Path | None:
    """The checkpoint that ``--resume_from_checkpoint`` names: ``latest`` (None when there is none yet) or a path."""
    if value is None:
        return None
    if value == "latest":
        checkpoints = list_checkpoints(folder)
        return checkpoints[-1][1] if checkpoints else None
    path = Path(value)
    if not (path / CHECKPOINT_MARKER).exists():
        raise FileNotFoundError(f"--resume_from_checkpoint {value}: not a complete checkpoint (no {CHECKPOINT_MARKER})")
    return path


def load_checkpoint(accelerator: Any, path: Path, state: TrainState, scheduler: Any = None) -> None:
    """Restores a checkpoint written by :func:`save_checkpoint` without unpickling anything that can run code.

    Raises:
        `CheckpointError`: the model is not in safetensors, an RNG file is refused by the restricted unpickler, or the
        JSON state is missing or malformed; the message names the file.
    """
    from accelerate.utils.other import load as restricted_load  # torch.load(weights_only=True) + numpy RNG types

    path = Path(path)
    if not (path / MODEL_FILE).is_file():
        raise CheckpointError(f"{path}: no {MODEL_FILE}; refusing to resume from pickled weights")
    planted = sorted(p.name for p in path.glob("custom_checkpoint_*.pkl"))
    if planted:  # we never write these; Accelerate would unpickle them with weights_only=False
        raise CheckpointError(
            f"{path}: holds {', '.join(planted)}, pickles that run code when loaded and that this version never "
            f"writes (the run state is in {STATE_FILE}); refusing to resume from it"
        )
    rng_file = path / f"random_states_{accelerator.process_index}.pkl"
    if rng_file.exists():
        try:
            restricted_load(rng_file)
        except (pickle.UnpicklingError, RuntimeError, EOFError, AttributeError, ValueError) as error:
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise CheckpointError(f"{rng_file}: refused by the restricted (weights-only) unpickler: {first}") from None
    for name in (STATE_FILE, *([SCHEDULER_FILE] if scheduler is not None else [])):
        if not (path / name).is_file():
            raise CheckpointError(f"{path}: no {name}; this checkpoint cannot be resumed exactly")
    try:
        saved_state = json.loads((path / STATE_FILE).read_text())
        saved_schedule = json.loads((path / SCHEDULER_FILE).read_text()) if scheduler is not None else None
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{path}: its JSON state is malformed ({error})") from None
    if not isinstance(saved_state, dict) or (scheduler is not None and not isinstance(saved_schedule, dict)):
        raise CheckpointError(f"{path}: its JSON state is not an object")
    try:
        accelerator.load_state(str(path))  # model (safetensors), optimiser and RNGs: weights_only=True
    except pickle.UnpicklingError as error:  # e.g. a crafted optimizer.bin, refused by the weights-only loader
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(
            f"{path}: a state file is refused by the restricted (weights-only) unpickler: {first}"
        ) from None
    state.load_state_dict(saved_state)
    if scheduler is not None:
        scheduler.load_state_dict(saved_schedule)


def save_pretrained(model: Any, processor: Any, folder: Path) -> None:
    """Model + processor + code, loadable with AutoModel/AutoProcessor(trust_remote_code=True); atomic: written into
    a staging sibling and swapped in whole (:func:`~bioscan_clip.safe_io.swap_in`), so a crash leaves the old folder
    or the new one, never a mixture or nothing; on an error the staging folder is removed and the old one stays."""
    folder = Path(folder)
    staging = staging_dir(folder)
    try:
        model.save_pretrained(staging)
        processor.save_pretrained(staging)
        swap_in(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
