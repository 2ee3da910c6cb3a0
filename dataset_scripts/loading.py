"""Builders by source name: :data:`BUILDERS`, :func:`get_builder` and :func:`load_bioscan` (prepare, or reuse the cache,
and return every split)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import datasets

from .base import BioscanBuilderBase
from .bioscan1m import Bioscan1M
from .bioscan5m import Bioscan5M
from .bold import BoldExport
from .mini_bioscan import MiniBioscan

logger = logging.getLogger("dataset_scripts")

BUILDERS: dict[str, type[BioscanBuilderBase]] = {
    "bioscan5m": Bioscan5M,
    "bioscan1m": Bioscan1M,
    "bold": BoldExport,
    "mini": MiniBioscan,
}
"""Source name -> builder class."""


def get_builder(source: str, data_dir: str | Path | None = None, **config: Any) -> BioscanBuilderBase:
    """Instantiates the builder of ``source`` (``"bioscan5m"``, ``"bioscan1m"``, ``"bold"`` or ``"mini"``).

    Args:
        source (`str`): a key of :data:`BUILDERS`.
        data_dir (`str` or `Path`, *optional*): the data root (the export file for ``"bold"``; may be omitted for
            ``"mini"``, which then generates the default mini-BIOSCAN under the cache directory).
        **config: ``cache_dir`` and any :class:`BioscanBuilderConfig` option.
    """
    if source not in BUILDERS:
        raise ValueError(f"unknown source {source!r}; expected one of {sorted(BUILDERS)}")
    if data_dir is not None:
        config["data_dir"] = str(data_dir)
    return BUILDERS[source](**config)


def load_bioscan(source: str, data_dir: str | Path | None = None, **config: Any) -> datasets.DatasetDict:
    """Prepares (or reuses the cache of) ``source`` and returns every split as a ``DatasetDict``.

    Args:
        source (`str`): ``"bioscan5m"``, ``"bioscan1m"``, ``"bold"`` or ``"mini"``.
        data_dir (`str` or `Path`, *optional*): see :func:`get_builder`.
        **config: ``cache_dir``, builder options (``image_policy``, ``verify_images``, ``embed_images``,
            ``partition``, ...) and ``num_proc`` (processes that check the images and write the splits).

    Returns:
        `datasets.DatasetDict`: split name -> Dataset with :data:`RECORD_FEATURES`.

    Example:

    ```python
    >>> splits = load_bioscan("mini", cache_dir="/tmp/hf")  # doctest: +SKIP
    >>> sorted(splits)  # doctest: +SKIP
    ['key_unseen', 'other_heldout', 'pretrain', 'test', 'test_unseen', 'train', 'val', 'val_unseen']
    ```
    """
    num_proc = config.pop("num_proc", None)
    builder = get_builder(source, data_dir, **config)
    builder.download_and_prepare(num_proc=num_proc)
    if builder.summary is not None:  # on every read, also from the cache: what was read, kept and dropped
        logger.info("%s", builder.summary.describe())
    return builder.as_dataset()
