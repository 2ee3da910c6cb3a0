"""Builder for BOLD specimen exports: a user's own DNA-only reference library.

Three export formats are read, told apart by their columns, each separated by tabs, commas or ``;`` (read by
:func:`dataset_scripts.tables.read_table`: separator from the header line, BOM, CRLF, quoted fields):

* BCDM (current BOLD data packages): sequence in ``nuc``, marker in ``marker_code``, BIN in ``bin_uri``;
* the older BOLD portal TSV: sequence in ``nucraw``;
* the BOLD v3 public API TSV: ``nucleotides``, ``markercode``, ``order_name`` ... ``species_name``
  (:data:`BOLD_COLUMN_ALIASES` maps them to the BCDM names).

Rules, each counted in the preparation summary:

* only ``COI-5P`` rows are kept; rows of other markers (16S, ITS, ...) or with no marker are dropped
  (``rows_dropped["non_coi_marker"]``). A file without ``marker_code`` is taken as all COI-5P, with a warning;
* COI-5P rows without a sequence are dropped (``rows_dropped["no_sequence"]``): a DNA-only record needs DNA;
* ``;``-separated multi-value cells: when ``marker_code`` lists several markers and ``nuc`` as many sequences,
  the sequence at the COI-5P position is taken; any other multi-value cell (a second BIN, two names) keeps its
  first value (``multi_value_cells[column]``);
* ``None``, ``NA``, ``not_classified`` and empty cells are missing;
* species names in open nomenclature or interim codes (``Aus sp.``, ``Aus sp. 2ES``, ``Aus cf. bus``) are read as
  missing (``labels_cleared["provisional_species"]``; the record stays, labelled to genus), unless
  ``keep_provisional_names=True`` keeps each as a label of its own;
* sequences are kept as written (lower case, ``-`` gaps, ambiguity codes): the DNA tokenizer normalises them.

There is no image: ``image`` is always ``None``. ``partition="none"`` (default, also ``"auto"``) writes one
``train`` split: a reference library, whose every record is a training record and a key
(:data:`dataset_scripts.RETRIEVAL_SPLITS`); ``partition="clibd"`` applies the CLIBD rules of
:mod:`dataset_scripts.partition` to the species labels (seen/unseen queries and keys).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pandas as pd

from .base import BioscanBuilderBase, BioscanBuilderConfig
from .bold_table import bold_frame
from .integrity import DataIntegrityError, PrepareSummary
from .partition import CLIBD_METASPLITS, CLIBD_SPLITS, clibd_partition
from .tables import read_table

__all__ = ["BoldExport", "BoldExportConfig"]

_PARTITION_MODES = ("auto", "none", "clibd")  # auto = none: an export is a reference library unless asked


_DESCRIPTION = """\
A BOLD Systems specimen export (BCDM or the older BOLD TSV), COI-5P barcodes with their taxonomy, read into the
bioscan-clip record schema. DNA only: no images."""

_CITATION = """\
@article{ratnasingham2007bold,
  title={{BOLD}: The Barcode of Life Data System},
  author={Ratnasingham, Sujeevan and Hebert, Paul D. N.},
  journal={Molecular Ecology Notes},
  volume={7}, number={3}, pages={355--364}, year={2007}
}"""


@dataclass
class BoldExportConfig(BioscanBuilderConfig):
    """:class:`BioscanBuilderConfig` named ``bold``; ``partition`` is ``none`` (one ``train`` split) or ``clibd``.

    ``data_dir`` may be the export file itself, or its folder with ``metadata_file`` naming it.

    Args:
        keep_provisional_names (`bool`, *optional*, defaults to `False`): keep ``sp.``/``cf.``/interim species names
            as labels of their own instead of reading them as missing.
    """

    name: str = "bold"
    image_package: str | None = None
    keep_provisional_names: bool = False

    def __post_init__(self):
        super().__post_init__()
        if self.partition not in _PARTITION_MODES:
            raise ValueError(f"partition must be one of {_PARTITION_MODES} for BOLD exports, got {self.partition!r}")


class BoldExport(BioscanBuilderBase):
    """Builder for a BOLD TSV export (DNA only).

    Example:

    ```python
    >>> builder = BoldExport(data_dir="exports/odonata.tsv", cache_dir="/tmp/hf")  # doctest: +SKIP
    >>> builder.download_and_prepare()  # doctest: +SKIP
    >>> library = builder.as_dataset(split="train")  # doctest: +SKIP
    ```
    """

    BUILDER_CONFIG_CLASS = BoldExportConfig
    SPLITS: ClassVar[tuple[str, ...]] = ("train",)
    DESCRIPTION = _DESCRIPTION
    CITATION = _CITATION
    HOMEPAGE = "https://boldsystems.org"
    LICENSE = "per-record BOLD terms; see the export"

    config: BoldExportConfig

    @classmethod
    def _resolve_metadata(cls, data_dir: str | None, metadata_file: str | None) -> Path:
        if metadata_file is None and (data_dir is None or Path(data_dir).is_dir()):
            raise DataIntegrityError(
                f"BoldExport needs the export file: data_dir=<file.tsv> or metadata_file= (got data_dir={data_dir!r})"
            )
        return super()._resolve_metadata(data_dir, metadata_file)

    def _split_layout(self) -> tuple[tuple[str, ...], dict[str, tuple[str, ...]]]:
        if self.config.partition == "clibd":
            return CLIBD_SPLITS, CLIBD_METASPLITS
        return self.SPLITS, {}

    def _load_frame(self, metadata: Path, summary: PrepareSummary) -> pd.DataFrame:
        raw = read_table(metadata)
        summary.rows_read = len(raw)
        frame = bold_frame(raw, metadata, summary, keep_provisional_names=self.config.keep_provisional_names)
        if self.config.partition == "clibd":
            frame["split"] = clibd_partition(frame["species"], seed=self.config.seed)
        else:
            frame["split"] = "train"
        return frame
