"""Identification: key folders (:mod:`.key_folder`, the format; :mod:`.build`, writing one), calibration of the
confidence thresholds, key libraries from the Hub (:mod:`.library`) and :class:`Identifier`."""

from .build import build_index, build_key_folder
from .identifier import Identification, Identifier, identify

__all__ = ["Identification", "Identifier", "build_index", "build_key_folder", "identify"]
