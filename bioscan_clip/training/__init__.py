"""Training: the options (:class:`TrainConfig`, declared once), presets, checkpoints and the loop (:func:`train`).
The command line is :mod:`bioscan_clip.apps.train` (``accelerate launch train_accelerate.py``)."""

from .config import TrainConfig, TrainResult
from .loop import train

__all__ = ["TrainConfig", "TrainResult", "train"]
