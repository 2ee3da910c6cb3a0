"""mini-BIOSCAN builder: the SYNTHETIC embedded default, read through the BIOSCAN-5M code path.

mini-BIOSCAN is written by :func:`dataset_scripts.synth.generate_mini_bioscan` in the BIOSCAN-5M on-disk layout,
so this builder is :class:`~dataset_scripts.bioscan5m.Bioscan5M` with its own name (hence its own cache folder)
and one convenience: without ``data_dir`` it generates the dataset for ``synth_seed``/``synth_size`` under the
cache directory first (reused when already there).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import datasets

from .bioscan5m import Bioscan5M, Bioscan5MConfig

__all__ = ["MiniBioscan", "MiniBioscanConfig"]

_DESCRIPTION = """\
mini-BIOSCAN: a SYNTHETIC dataset in the BIOSCAN-5M layout (procedural specimen images, COI-like barcodes evolved
down a random taxonomy). For tests, demos and smoke training only; no real specimen is depicted."""


@dataclass
class MiniBioscanConfig(Bioscan5MConfig):
    """:class:`Bioscan5MConfig` named ``mini_bioscan``; ``synth_seed``/``synth_size`` apply when generating."""

    name: str = "mini_bioscan"
    synth_seed: int = 0
    synth_size: str = "small"


class MiniBioscan(Bioscan5M):
    """Builder for the synthetic mini-BIOSCAN (BIOSCAN-5M layout and splits).

    Example:

    ```python
    >>> builder = MiniBioscan(cache_dir="/tmp/hf")  # generates seed 0, size small first  # doctest: +SKIP
    >>> builder.download_and_prepare()  # doctest: +SKIP
    ```
    """

    BUILDER_CONFIG_CLASS = MiniBioscanConfig
    DESCRIPTION = _DESCRIPTION
    CITATION = ""
    HOMEPAGE = ""
    LICENSE = "CC0-1.0 (synthetic)"

    def __init__(self, *args, **kwargs):
        if kwargs.get("data_dir") is None:
            from .synth import generate_mini_bioscan  # lazy: numpy/PIL rendering only when needed

            seed, size = int(kwargs.get("synth_seed", 0)), str(kwargs.get("synth_size", "small"))
            root = Path(kwargs.get("cache_dir") or datasets.config.HF_DATASETS_CACHE) / "mini_bioscan_raw"
            target = root / f"{size}-seed{seed}"
            if not (target / "README.md").is_file():  # the card is written last: its presence means complete
                generate_mini_bioscan(target, seed=seed, size=size, progress=False)
            kwargs["data_dir"] = str(target)
        super().__init__(*args, **kwargs)
