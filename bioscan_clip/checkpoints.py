"""Checkpoints that a crash cannot half-write, and where a run is, saved without pickle.

A checkpoint is Accelerate's ``save_state`` folder plus ``train_state.json``, written under a temporary name and
renamed once complete (with a ``COMPLETE`` marker), so a crash while saving leaves the previous one intact.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CHECKPOINT_MARKER = "COMPLETE"
STATE_FILE = "train_state.json"


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


def list_checkpoints(folder: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints (with their marker) and their global step, read from the saved state."""
    found = []
    for path in folder.glob("checkpoint-*"):
        if (path / CHECKPOINT_MARKER).exists() and (path / STATE_FILE).exists():
            found.append((json.loads((path / STATE_FILE).read_text())["global_step"], path))
    return sorted(found)


def save_checkpoint(accelerator: Any, state: TrainState, folder: Path, keep: int) -> Path:
    """``save_state`` into a temporary folder, marked complete and renamed only when everything is written;
    older checkpoints are pruned afterwards."""
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


def save_pretrained(model: Any, processor: Any, folder: Path) -> None:
    """Model + processor + code, loadable with AutoModel/AutoProcessor(trust_remote_code=True); atomic."""
    temporary = folder.with_name(f".tmp-{folder.name}")
    if temporary.exists():
        shutil.rmtree(temporary)
    model.save_pretrained(temporary)
    processor.save_pretrained(temporary)
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(temporary, folder)
