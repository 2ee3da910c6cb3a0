"""bioscan-clip: identify insects from photos and DNA barcodes with BIOSCAN-CLIP (CLIBD) models.

The Python API (the ``bioscan-clip`` commands and ``train_accelerate.py`` are thin wrappers over it)::

    from bioscan_clip import DataSpec, TrainConfig, train, evaluate, build_index, identify

    data = DataSpec(source="mini", data_dir="runs/quickstart/mini-bioscan")
    result = train(TrainConfig.from_preset("tiny", source="mini", data_dir=data.data_dir, output_dir="runs/tiny"))
    evaluate(result.model_dir, data, out="runs/tiny/evaluation")
    build_index(result.model_dir, data, "runs/tiny/keys")
    identify(result.model_dir, "runs/tiny/keys", barcodes=["AACATTATATTTTATTTTTGG..."])

Names are imported on first use, so ``import bioscan_clip`` (and ``bioscan-clip --help``) stays fast.
"""

from __future__ import annotations

import importlib
from typing import Any

_API = {
    "DataSpec": "bioscan_clip.data",
    "TrainConfig": "bioscan_clip.training",
    "TrainResult": "bioscan_clip.training",
    "train": "bioscan_clip.training",
    "Evaluation": "bioscan_clip.evaluation",
    "evaluate": "bioscan_clip.evaluation",
    "build_index": "bioscan_clip.identification",
    "identify": "bioscan_clip.identification",
    "Identifier": "bioscan_clip.identification",
    "Identification": "bioscan_clip.identification",
}
__all__ = sorted(_API)


def __getattr__(name: str) -> Any:
    if name not in _API:
        raise AttributeError(f"module 'bioscan_clip' has no attribute {name!r}")
    return getattr(importlib.import_module(_API[name]), name)
