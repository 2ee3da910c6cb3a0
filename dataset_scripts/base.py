"""Shared machinery of the BIOSCAN builders: config, integrity checks, image policy and Arrow writing.

The builders are ``datasets.ArrowBasedBuilder`` subclasses used directly (datasets 5 no longer runs loading
scripts)::

    builder = Bioscan5M(data_dir="/data", cache_dir="/tmp/cache")
    builder.download_and_prepare()
    val = builder.as_dataset(split="val")
    stream = builder.as_streaming_dataset(split="val")

Why Arrow-based rather than ``GeneratorBasedBuilder``: the API is the same, but tables are written in batches
built from pandas columns, so preparing BIOSCAN-1M's 1.1 M metadata rows costs about as much as reading the TSV
with pandas (see ``benchmarks/README.md``); a per-row generator would encode every field in Python. Images are
still checked one by one, because each must pass the safe loader.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import datasets
import pandas as pd
from datasets.builder import Key

from modeling_bioscanclip.constants_bioscanclip import ALL_RANKS, MAX_NUCLEOTIDES
from modeling_bioscanclip.errors_bioscanclip import BioscanImageError

from .integrity import (
    IMAGE_POLICIES,
    DataIntegrityError,
    PrepareSummary,
    check_unique,
    expected_sha256,
    official_mismatch,
    source_fingerprint,
    verify_sha256,
)
from .schema import RECORD_FEATURES, fill_genus_from_species, normalise_missing, records_to_arrow, truncate_dna
from .tables import TABLE_SUFFIXES

logger = logging.getLogger(__name__)

__all__ = ["BioscanBuilderConfig", "BioscanBuilderBase"]

_BATCH_ROWS = 10_000  # rows per Arrow batch: large enough to amortise, small enough for streaming


@dataclass
class BioscanBuilderConfig(datasets.BuilderConfig):
    """Options shared by every BIOSCAN builder.

    Args:
        data_dir (`str`): the folder that holds the official layout (``bioscan1m/``, ``bioscan5m/``) or, for BOLD,
            the export file's folder.
        metadata_file (`str`, *optional*): overrides the metadata path (absolute, or relative to ``data_dir``).
        image_package (`str` or `None`, *optional*, defaults to ``"cropped_256"``): image folder under
            ``images/``; ``None`` (or ``"none"``) reads metadata only and leaves ``image`` empty.
        image_policy (`str`, *optional*, defaults to ``"fail"``): a missing or corrupt image ``"fail"``s the
            preparation (error names the processid and file), is ``"skip"``ped (record dropped) or ``"keep"``s
            the record with ``image=None``. Skipped/kept counts go into the preparation summary.
        verify_images (`bool`, *optional*, defaults to `True`): decode each image with the package's safe loader
            during preparation, so a corrupt file fails here and not in a DataLoader worker at training time.
        embed_images (`bool`, *optional*, defaults to `False`): store image bytes in the Arrow files (portable
            Parquet export) instead of absolute paths.
        max_nucleotides (`int` or `None`, *optional*, defaults to 660): barcodes are cut to this length.
        require_dna (`bool`, *optional*, defaults to `False`): raise instead of warning when the source has no
            DNA column.
        sha256 (`str`, *optional*): expected sha256 of the metadata file, or ``"official"`` for the recorded digest
            of the official release (:data:`~dataset_scripts.integrity.KNOWN_SHA256`).
        manifest (`str`, *optional*): a ``sha256sum``-style manifest holding the metadata file's digest.
        partition (`str`, *optional*, defaults to ``"auto"``): how 1M/BOLD records are split (see the builders).
        genus_from_species (`bool`, *optional*, defaults to `False`): where the genus is missing and the species
            is known, take the genus from the species name's first word, as the ``bioscan-dataset`` loader of
            BIOSCAN-1M does (counted as ``labels_filled["genus_from_species"]``). Off by default: it changes
            labels of the source (on BIOSCAN-1M, records labelled to species but not to genus).
        seed (`int`, *optional*, defaults to 0): seed of a rebuilt partition.
        source_fingerprint (`str`, *optional*): size+mtime digest of the source files, filled in automatically so
            that a changed file gets a new cache directory.
    """

    metadata_file: str | None = None
    image_package: str | None = "cropped_256"
    image_policy: str = "fail"
    verify_images: bool = True
    embed_images: bool = False
    max_nucleotides: int | None = MAX_NUCLEOTIDES
    require_dna: bool = False
    sha256: str | None = None
    manifest: str | None = None
    partition: str = "auto"
    genus_from_species: bool = False
    seed: int = 0
    source_fingerprint: str | None = None

    def __post_init__(self):
        super().__post_init__()
        if self.image_policy not in IMAGE_POLICIES:
            raise ValueError(f"image_policy must be one of {IMAGE_POLICIES}, got {self.image_policy!r}")
        if isinstance(self.image_package, str) and self.image_package.lower() == "none":
            self.image_package = None
        if self.max_nucleotides is not None and int(self.max_nucleotides) < 1:
            raise ValueError(f"max_nucleotides must be a positive integer or None, got {self.max_nucleotides!r}")


class BioscanBuilderBase(datasets.ArrowBasedBuilder):
    """Base of the BIOSCAN builders: subclasses define the layout (``_metadata_path``, ``_load_frame``).

    After :meth:`download_and_prepare`, :attr:`summary` holds what was read, dropped and written (also stored
    in ``info.description`` and therefore in the cache).
    """

    BUILDER_CONFIG_CLASS = BioscanBuilderConfig
    VERSION = datasets.Version("1.0.0")
    SPLITS: ClassVar[tuple[str, ...]] = ()
    METASPLITS: ClassVar[dict[str, tuple[str, ...]]] = {}
    DESCRIPTION: ClassVar[str] = ""
    CITATION: ClassVar[str] = ""
    HOMEPAGE: ClassVar[str] = ""
    LICENSE: ClassVar[str] = ""

    config: BioscanBuilderConfig

    def __init__(self, *args, **kwargs):
        if kwargs.get("source_fingerprint") is None:
            files = self._source_files(kwargs.get("data_dir"), kwargs.get("metadata_file"))
            kwargs["source_fingerprint"] = source_fingerprint(files)
        super().__init__(*args, **kwargs)
        self._summary = PrepareSummary()
        self._image_problem_ids: set[str] = set()

    # --- layout hooks -------------------------------------------------------------------------------------
    @classmethod
    def _default_metadata_path(cls, data_dir: Path) -> Path:
        raise NotImplementedError

    @classmethod
    def _resolve_metadata(cls, data_dir: str | None, metadata_file: str | None) -> Path:
        if metadata_file is not None:
            path = Path(metadata_file)
            return path if path.is_absolute() or data_dir is None else Path(data_dir) / path
        if data_dir is None:
            raise DataIntegrityError(f"{cls.__name__} needs data_dir= (the folder holding the official layout)")
        root = Path(data_dir)
        if root.is_file():  # a metadata table given where the folder could be
            if root.suffix.lower() not in TABLE_SUFFIXES:
                raise DataIntegrityError(
                    f"{cls.__name__}: data_dir {root} is a file but not a table ({', '.join(TABLE_SUFFIXES)}); "
                    "expected the folder holding the official layout or its CSV/TSV metadata file"
                )
            return root
        if not root.exists():
            raise DataIntegrityError(f"{cls.__name__}: data_dir {root} does not exist")
        return cls._default_metadata_path(root)

    @classmethod
    def _source_files(cls, data_dir: str | None, metadata_file: str | None) -> list[Path]:
        """The files whose change must invalidate the cache (metadata, and partition lists for 1M)."""
        try:
            return [cls._resolve_metadata(data_dir, metadata_file)]
        except DataIntegrityError:
            return []

    def _split_layout(self) -> tuple[tuple[str, ...], dict[str, tuple[str, ...]]]:
        """The disjoint splits and the metasplits (unions) this configuration writes."""
        return self.SPLITS, self.METASPLITS

    def _load_frame(self, metadata: Path, summary: PrepareSummary) -> pd.DataFrame:
        """Returns one row per record with :data:`STRING_COLUMNS` and ``image_path`` (str or None)."""
        raise NotImplementedError

    # --- datasets hooks -----------------------------------------------------------------------------------
    def _info(self) -> datasets.DatasetInfo:
        return datasets.DatasetInfo(
            description=self.DESCRIPTION,
            features=RECORD_FEATURES,
            citation=self.CITATION,
            homepage=self.HOMEPAGE,
            license=self.LICENSE,
        )

    @property
    def summary(self) -> PrepareSummary | None:
        """The preparation summary: live during preparation/streaming, else read back from the cached info."""
        if self._summary.source:
            return self._summary
        return PrepareSummary.from_description(self.info.description)

    @property
    def metadata_path(self) -> Path:
        """The metadata file this builder reads."""
        return self._resolve_metadata(self.config.data_dir, self.config.metadata_file)

    def _split_generators(self, dl_manager) -> list[datasets.SplitGenerator]:
        metadata = self.metadata_path
        if not metadata.is_file():
            raise DataIntegrityError(
                f"{type(self).__name__}: metadata file not found: {metadata} (data_dir={self.config.data_dir!r})"
            )
        expected = expected_sha256(metadata, sha256=self.config.sha256, manifest=self.config.manifest)
        summary = PrepareSummary(source=str(metadata), sha256=verify_sha256(metadata, expected))
        if expected is None and (warning := official_mismatch(metadata, summary.sha256)):
            summary.warnings.append(warning)
        self._summary = summary
        self._image_problem_ids = set()

        frame = self._load_frame(metadata, summary)
        missing_ids = frame["processid"].isna()
        if missing_ids.any():
            raise DataIntegrityError(f"{int(missing_ids.sum())} row(s) of {metadata} have no processid")
        check_unique(frame["processid"], column="processid", source=metadata)
        frame["dna_barcode"] = truncate_dna(frame["dna_barcode"], self.config.max_nucleotides)
        if self.config.genus_from_species:
            frame["genus"], filled = fill_genus_from_species(frame["genus"], frame["species"])
            summary.labels_filled["genus_from_species"] = filled
        summary.rows_kept = len(frame)
        frame = self._apply_missing_image_policy(frame)
        self._update_description()
        for warning in summary.warnings:
            logger.warning(warning)

        splits, metasplits = self._split_layout()
        generators = []
        for split in (*splits, *metasplits):
            members = metasplits.get(split, (split,))
            part = frame[frame["split"].isin(members)]
            if len(part) == 0:
                # datasets cannot read back a split with no rows ("corresponds to no data"): leave it out.
                summary.warnings.append(f"split {split!r} has no records and is not written")
                continue
            generators.append(datasets.SplitGenerator(name=split, gen_kwargs={"frame": part, "split": split}))
        return generators

    def _apply_missing_image_policy(self, frame: pd.DataFrame) -> pd.DataFrame:
        """Checks that every expected image file exists, before splitting, so skipped records never empty a split.

        Corrupt files are found later, while decoding during generation.
        """
        expected = frame["image_path"].notna()
        if not expected.any():
            return frame
        exists = frame.loc[expected, "image_path"].map(os.path.isfile)
        missing = exists.index[~exists.to_numpy(dtype=bool)]
        if len(missing) == 0:
            return frame
        if self.config.image_policy == "fail":
            first = missing[0]
            raise DataIntegrityError(
                f"image of processid {frame.at[first, 'processid']!r} is missing: {frame.at[first, 'image_path']} "
                f"({len(missing)} image(s) missing in total; image_policy='fail'; use 'skip' to drop such records "
                "or 'keep' to keep them without image)"
            )
        self._summary.images_missing += len(missing)
        self._image_problem_ids.update(frame.loc[missing, "processid"])
        logger.warning(
            "%s: %d image(s) missing under %s; image_policy=%r", type(self).__name__, len(missing),
            os.path.dirname(str(frame.at[missing[0], "image_path"])), self.config.image_policy,
        )  # fmt: skip
        if self.config.image_policy == "skip":
            self._summary.images_skipped += len(missing)
            return frame.drop(index=missing)
        frame = frame.copy()
        frame.loc[missing, "image_path"] = None
        return frame

    def _generate_tables(self, frame: pd.DataFrame, split: str):
        self._summary.records[split] = 0  # restarted, not accumulated, when a split is streamed twice
        for batch_index, start in enumerate(range(0, max(len(frame), 1), _BATCH_ROWS)):
            batch = frame.iloc[start : start + _BATCH_ROWS]
            images, keep = self._image_cells(batch)
            batch = batch[keep]
            self._summary.records[split] = self._summary.records.get(split, 0) + len(batch)
            yield Key(0, batch_index), records_to_arrow(batch, [img for img, k in zip(images, keep, strict=True) if k])
        self._update_description()

    # --- images -------------------------------------------------------------------------------------------
    def _image_cells(self, batch: pd.DataFrame) -> tuple[list[dict | None], list[bool]]:
        """Validates each image of the batch and applies ``image_policy``; returns the cells and a keep mask."""
        if batch["image_path"].isna().all():
            return [None] * len(batch), [True] * len(batch)
        # Imported here: the lead's loader lives in the Hub code, which must never import dataset_scripts.
        from modeling_bioscanclip.image_processing_bioscanclip import load_image_safely

        images: list[dict | None] = []
        keep: list[bool] = []
        for processid, path in zip(batch["processid"].tolist(), batch["image_path"].tolist(), strict=True):
            if path is None:
                images.append(None)
                keep.append(True)
                continue
            problem = None
            data = None
            try:
                data = Path(path).read_bytes()
            except FileNotFoundError:
                problem = "missing"
            except OSError as error:
                problem = f"unreadable ({error})"
            if data is not None and self.config.verify_images:
                try:
                    load_image_safely(data, name=path)
                except BioscanImageError as error:
                    problem = f"corrupt ({error})"
            if problem is None:
                cell = (
                    {"bytes": data, "path": Path(path).name}
                    if self.config.embed_images
                    else {"bytes": None, "path": path}
                )
                images.append(cell)
                keep.append(True)
                continue
            self._record_image_problem(processid, path, problem)
            images.append(None)
            keep.append(self.config.image_policy == "keep")
        return images, keep

    def _record_image_problem(self, processid: str, path: str, problem: str) -> None:
        if self.config.image_policy == "fail":
            raise DataIntegrityError(
                f"image of processid {processid!r} is {problem}: {path} "
                "(image_policy='fail'; use 'skip' to drop such records or 'keep' to keep them without image)"
            )
        if processid in self._image_problem_ids:  # a record in a split and a metasplit is counted once
            return
        self._image_problem_ids.add(processid)
        if problem == "missing":
            self._summary.images_missing += 1
        else:
            self._summary.images_corrupt += 1
        if self.config.image_policy == "skip":
            self._summary.images_skipped += 1
        logger.warning("image of %s is %s: %s (image_policy=%r)", processid, problem, path, self.config.image_policy)

    def _update_description(self) -> None:
        self.info.description = self._summary.to_description(self.DESCRIPTION)


def record_frame(
    raw: pd.DataFrame,
    metadata: Path,
    summary: PrepareSummary,
    *,
    dna_column: str,
    bin_column: str,
    require_dna: bool,
) -> pd.DataFrame:
    """The record-schema columns (ids, DNA, BIN, ranks) of a BIOSCAN metadata table, named as its source names them.

    A table without a DNA column is read with ``dna_barcode`` None everywhere and a warning in ``summary``, or
    refused when ``require_dna``.
    """
    if "processid" not in raw.columns:
        raise DataIntegrityError(f"{metadata} has no 'processid' column (columns: {list(raw.columns)})")
    if dna_column not in raw.columns:
        message = f"{metadata} has no {dna_column!r} (DNA) column: dna_barcode is None for every record"
        if require_dna:
            raise DataIntegrityError(message)
        summary.warnings.append(message)
    frame = pd.DataFrame(index=raw.index)
    frame["processid"] = take_column(raw, "processid")
    frame["sampleid"] = take_column(raw, "sampleid")
    frame["dna_barcode"] = take_column(raw, dna_column)
    frame["dna_bin"] = take_column(raw, bin_column)
    for rank in ALL_RANKS:
        frame[rank] = take_column(raw, rank)  # a rank the source lacks (5M has no tribe) is all None
    return frame


def take_column(raw: pd.DataFrame, name: str) -> pd.Series:
    """The normalised column ``name`` of ``raw``, or all-``None`` when the source lacks it."""
    if name in raw.columns:
        return normalise_missing(raw[name])
    return pd.Series([None] * len(raw), index=raw.index, dtype=object)
