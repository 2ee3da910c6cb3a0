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

import importlib
from typing import Any

# Name -> the module that defines it, imported on first use: reaching a reader (``dataset_scripts.queries``) or the
# source table never imports every builder.
_WHERE = {
    "BIOSCAN5M_SPLITS": "bioscan5m",
    "BUILDERS": "loading",
    "Bioscan1M": "bioscan1m",
    "Bioscan1MConfig": "bioscan1m",
    "Bioscan5M": "bioscan5m",
    "Bioscan5MConfig": "bioscan5m",
    "BioscanBuilderBase": "base",
    "BioscanBuilderConfig": "base",
    "BoldExport": "bold",
    "BoldExportConfig": "bold",
    "CLIBD_METASPLITS": "partition",
    "CLIBD_SPLITS": "partition",
    "DataIntegrityError": "integrity",
    "MiniBioscan": "mini_bioscan",
    "MiniBioscanConfig": "mini_bioscan",
    "PAPER_COUNTS": "partition",
    "PrepareSummary": "integrity",
    "RECORD_COLUMNS": "schema",
    "RECORD_FEATURES": "schema",
    "RETRIEVAL_SPLITS": "sources",
    "clibd_partition": "partition",
    "detect_delimiter": "tables",
    "export_parquet": "export",
    "generate_mini_bioscan": "synth",
    "get_builder": "loading",
    "load_bioscan": "loading",
    "normalise_missing": "schema",
    "partition_report": "partition",
    "read_fasta": "queries",
    "read_query_table": "queries",
    "read_table": "tables",
    "sha256_file": "integrity",
    "source_fingerprint": "integrity",
}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'dataset_scripts' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
