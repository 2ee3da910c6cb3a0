"""Data for bioscan-clip: ``datasets`` builders, the CLIBD partition, integrity checks and mini-BIOSCAN.

Builders (used directly: datasets 5 no longer runs loading scripts)::

    from dataset_scripts import Bioscan5M
    builder = Bioscan5M(data_dir="/data", cache_dir="/tmp/hf")
    builder.download_and_prepare()
    splits = builder.as_dataset()                     # DatasetDict in the record schema (RECORD_FEATURES)

or in one call: ``load_bioscan("bioscan5m", "/data")``. Which splits serve as training data, retrieval keys and
seen/unseen queries for each source is in :data:`RETRIEVAL_SPLITS`.

This package imports ``modeling_bioscanclip`` (constants, errors, the safe image loader); the reverse never
happens.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import datasets

from .base import BioscanBuilderBase, BioscanBuilderConfig
from .bioscan1m import Bioscan1M, Bioscan1MConfig
from .bioscan5m import BIOSCAN5M_SPLITS, Bioscan5M, Bioscan5MConfig
from .bold import BoldExport, BoldExportConfig
from .export import export_parquet
from .integrity import DataIntegrityError, PrepareSummary, sha256_file, source_fingerprint
from .mini_bioscan import MiniBioscan, MiniBioscanConfig
from .partition import CLIBD_METASPLITS, CLIBD_SPLITS, PAPER_COUNTS, clibd_partition, partition_report
from .schema import RECORD_COLUMNS, RECORD_FEATURES, normalise_missing
from .synth import add_synth_arguments, generate_mini_bioscan, run_synth
from .tables import detect_delimiter, read_fasta, read_query_table, read_table

logger = logging.getLogger(__name__)

__all__ = [
    "BIOSCAN5M_SPLITS",
    "BUILDERS",
    "CLIBD_METASPLITS",
    "CLIBD_SPLITS",
    "PAPER_COUNTS",
    "RECORD_COLUMNS",
    "RECORD_FEATURES",
    "RETRIEVAL_SPLITS",
    "Bioscan1M",
    "Bioscan1MConfig",
    "Bioscan5M",
    "Bioscan5MConfig",
    "BioscanBuilderBase",
    "BioscanBuilderConfig",
    "BoldExport",
    "BoldExportConfig",
    "DataIntegrityError",
    "MiniBioscan",
    "MiniBioscanConfig",
    "PrepareSummary",
    "add_synth_arguments",
    "clibd_partition",
    "detect_delimiter",
    "export_parquet",
    "generate_mini_bioscan",
    "get_builder",
    "load_bioscan",
    "normalise_missing",
    "partition_report",
    "read_fasta",
    "read_query_table",
    "read_table",
    "run_synth",
    "sha256_file",
    "source_fingerprint",
]

BUILDERS: dict[str, type[BioscanBuilderBase]] = {
    "bioscan5m": Bioscan5M,
    "bioscan1m": Bioscan1M,
    "bold": BoldExport,
    "mini": MiniBioscan,
}
"""Source name -> builder class."""

_5M_RETRIEVAL = {
    "train": ("pretrain", "train"),
    "keys": ("train", "key_unseen"),
    "val_queries_seen": ("val",),
    "val_queries_unseen": ("val_unseen",),
    "test_queries_seen": ("test",),
    "test_queries_unseen": ("test_unseen",),
}
_CLIBD_RETRIEVAL = {
    "train": ("no_split", "train_seen"),
    "keys": ("seen_keys", "val_unseen_keys", "test_unseen_keys"),  # = the metasplit all_keys
    "val_queries_seen": ("val_seen",),
    "val_queries_unseen": ("val_unseen",),
    "test_queries_seen": ("test_seen",),
    "test_queries_unseen": ("test_unseen",),
}

# A BOLD export is a reference library by default (partition "none": one split "train", whose records are all
# training records and all keys, with no queries); with partition "clibd" it has the CLIBD splits. The two sets of
# split names do not overlap, so one table serves both.
_BOLD_RETRIEVAL = {
    "train": ("train", *_CLIBD_RETRIEVAL["train"]),
    "keys": ("train", *_CLIBD_RETRIEVAL["keys"]),
    **{role: names for role, names in _CLIBD_RETRIEVAL.items() if role not in ("train", "keys")},
}

RETRIEVAL_SPLITS: dict[str, dict[str, tuple[str, ...]]] = {
    "bioscan5m": _5M_RETRIEVAL,
    "mini": _5M_RETRIEVAL,
    "bioscan1m": _CLIBD_RETRIEVAL,
    "bold": _BOLD_RETRIEVAL,
}
"""For each source, the disjoint splits that make up each role of the retrieval protocol.

Roles: ``train`` (contrastive training data), ``keys`` (the labelled database every query is compared against:
seen and unseen keys together, so unseen queries compete with all keys, open set, as in the paper),
``{val,test}_queries_{seen,unseen}``. BIOSCAN-5M (and mini-BIOSCAN): its ``train`` split is both training data
and seen keys (CLIBD ``map_dict``). BIOSCAN-1M: the CLIBD partition (train = ``no_split_and_seen_train``,
keys = ``all_keys``). BOLD exports: with ``partition="none"`` (the default) the one ``train`` split is both the
training records and the keys (a reference library: every record a key, no queries); with ``partition="clibd"``
the CLIBD splits as for BIOSCAN-1M. Concatenate the listed splits of ``as_dataset()`` to get a role's records.
"""


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
