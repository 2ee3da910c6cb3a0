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
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from datasets.builder import Key
from datasets.download.streaming_download_manager import StreamingDownloadManager

from modeling_bioscanclip.constants_bioscanclip import ALL_RANKS, MAX_NUCLEOTIDES

from .images import VERIFY_MODES, image_problems
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
from .schema import (
    RECORD_FEATURES,
    fill_genus_from_species,
    record_table,
    records_to_arrow,
    take_column,
    truncate_dna,
)
from .tables import TABLE_SUFFIXES, read_table_chunks

logger = logging.getLogger(__name__)

__all__ = ["BioscanBuilderConfig", "BioscanBuilderBase"]

_BATCH_ROWS = 10_000  # rows per Arrow batch: large enough to amortise, small enough for streaming
# With num_proc > 1, images are checked in a process pool; a split's shards go to datasets' processes only when
# they read image bytes (embed_images) and the split has this many rows. Shipping metadata rows to a worker costs
# more than writing them here (0.73x at num_proc=2, benchmarks/bench_prepare_metadata.py).
_SPREAD_MIN_ROWS = 50_000


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
        verify_images (`str`, *optional*, defaults to ``"header"``): how each image is checked while preparing, so
            that a bad file fails here and not in a DataLoader worker at training time: ``"header"`` (format,
            size and the safe loader's limits read from the header, truncation caught by the JPEG end marker or
            the PNG checksums; :mod:`dataset_scripts.images`), ``"decode"`` (a full decode by the safe loader) or
            ``"none"``. ``True``/``False`` mean ``"header"``/``"none"``.
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
    verify_images: str = "header"
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
        if isinstance(self.verify_images, bool):  # the former switch: on meant "verify"
            self.verify_images = "header" if self.verify_images else "none"
        if self.verify_images not in VERIFY_MODES:
            raise ValueError(f"verify_images must be one of {VERIFY_MODES}, got {self.verify_images!r}")
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

    def _streams_by_row(self) -> bool:
        """Whether each row's split follows from the row alone, so streaming can read the table chunk by chunk
        (a partition rebuilt from species counts needs every row first)."""
        return False

    def _frame_from_raw(self, raw: pd.DataFrame, metadata: Path, summary: PrepareSummary) -> pd.DataFrame:
        """The record frame (with ``split`` and ``image_path``) of some rows of the table; for streaming by row."""
        raise NotImplementedError

    def _make_split_generators_kwargs(self, prepare_split_kwargs):
        return {"num_proc": prepare_split_kwargs.get("num_proc")}

    def _start_summary(self, metadata: Path, *, hash_file: bool = True) -> PrepareSummary:
        if not metadata.is_file():
            raise DataIntegrityError(
                f"{type(self).__name__}: metadata file not found: {metadata} (data_dir={self.config.data_dir!r})"
            )
        expected = expected_sha256(metadata, sha256=self.config.sha256, manifest=self.config.manifest)
        digest = verify_sha256(metadata, expected) if hash_file or expected is not None else ""
        summary = PrepareSummary(source=str(metadata), sha256=digest)
        if digest and expected is None and (warning := official_mismatch(metadata, digest)):
            summary.warnings.append(warning)
        self._summary = summary
        self._image_problem_ids = set()
        return summary

    def _split_generators(self, dl_manager, num_proc: int | None = None) -> list[datasets.SplitGenerator]:
        metadata = self.metadata_path
        streaming = isinstance(dl_manager, StreamingDownloadManager)
        splits, metasplits = self._split_layout()
        if streaming and self._streams_by_row():
            # Nothing read yet: each split's generator reads the table chunk by chunk (the sha256 only when a
            # digest is expected, since it needs the whole file before the first record).
            self._start_summary(metadata, hash_file=False)
            return [
                datasets.SplitGenerator(
                    name=split, gen_kwargs={"split": split, "members": metasplits.get(split, (split,))}
                )
                for split in (*splits, *metasplits)
            ]
        summary = self._start_summary(metadata)
        frame = self._checked_frame(self._load_frame(metadata, summary), metadata, summary)
        summary.rows_kept = len(frame)
        frame = self._apply_missing_image_policy(frame)
        if not streaming:  # streaming checks each batch's images as it goes
            frame = self._apply_image_checks(frame, num_proc)
        self._update_description()
        for warning in summary.warnings:
            logger.warning(warning)

        # One conversion to Arrow; each split is then a list of 10,000-row tables, which datasets spreads over
        # `num_proc` processes.
        table = record_table(frame, extra=("image_path",))
        split_values = table["split"]
        generators = []
        for split in (*splits, *metasplits):
            members = metasplits.get(split, (split,))
            part = table.filter(pc.is_in(split_values, value_set=pa.array(members, type=pa.large_string())))
            if len(part) == 0:
                # datasets cannot read back a split with no rows ("corresponds to no data"): leave it out.
                summary.warnings.append(f"split {split!r} has no records and is not written")
                continue
            if split in metasplits and not streaming:
                summary.records[split] = len(part)  # not written: as_dataset serves it as its members together
                continue
            chunks = [part.slice(start, _BATCH_ROWS) for start in range(0, len(part), _BATCH_ROWS)]
            if num_proc and num_proc > 1 and self.config.embed_images and len(part) >= _SPREAD_MIN_ROWS:
                # Workers read the image bytes. A pickled slice carries its whole buffers: send compact copies.
                chunks = [chunk.take(np.arange(len(chunk))) for chunk in chunks]
            else:  # a tuple is one shard: written here, datasets starts no process pool
                chunks = tuple(chunks)
            gen_kwargs = {"split": split, "chunks": chunks, "checked": not streaming}
            generators.append(datasets.SplitGenerator(name=split, gen_kwargs=gen_kwargs))
        self._update_description()
        return generators

    def _checked_frame(self, frame: pd.DataFrame, metadata: Path, summary: PrepareSummary) -> pd.DataFrame:
        """Refuses rows without ``processid`` and duplicate ids; cuts barcodes; fills genera when asked."""
        missing_ids = frame["processid"].isna()
        if missing_ids.any():
            raise DataIntegrityError(f"{int(missing_ids.sum())} row(s) of {metadata} have no processid")
        check_unique(frame["processid"], column="processid", source=metadata)
        frame["dna_barcode"] = truncate_dna(frame["dna_barcode"], self.config.max_nucleotides)
        if self.config.genus_from_species:
            frame["genus"], filled = fill_genus_from_species(frame["genus"], frame["species"])
            summary.labels_filled["genus_from_species"] = summary.labels_filled.get("genus_from_species", 0) + filled
        return frame

    def _prepare_split(self, split_generator, **kwargs):
        super()._prepare_split(split_generator, **kwargs)
        # With num_proc > 1 the generators ran in other processes: the count comes from what datasets wrote.
        self._summary.records[split_generator.name] = split_generator.split_info.num_examples
        self._update_description()

    # --- metasplits: unions of disjoint splits, served as views -------------------------------------------
    def as_dataset(self, split=None, **kwargs):
        """As ``datasets``' ``as_dataset``, with each metasplit (e.g. BIOSCAN-1M's ``all_keys``) served as its
        member splits concatenated (memory-mapped, not copied): written once, the rows are not stored twice."""
        _, metasplits = self._split_layout()
        written = set(self.info.splits or {})
        views = {name: [m for m in members if m in written] for name, members in metasplits.items()}
        views = {name: members for name, members in views.items() if members and name not in written}
        if isinstance(split, str) and split in views:
            parts = super().as_dataset(split="+".join(views[split]), **kwargs)
            return parts
        result = super().as_dataset(split=split, **kwargs)
        if split is None and isinstance(result, datasets.DatasetDict):
            for name, members in views.items():
                result[name] = datasets.concatenate_datasets([result[m] for m in members])
        return result

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

    def _generate_tables(self, split: str, chunks: list[pa.Table] | tuple | None = None, members=(), checked=False):
        if chunks is None:
            yield from self._stream_by_row(split, members)
            return
        self._summary.records[split] = 0  # restarted, not accumulated, when a split is streamed twice
        for index, chunk in enumerate(chunks):
            cells, keep = self._image_cells(chunk, checked=checked)
            if not all(keep):
                chunk = chunk.filter(pa.array(keep))
                cells = [cell for cell, kept in zip(cells, keep, strict=True) if kept]
            self._summary.records[split] = self._summary.records.get(split, 0) + len(chunk)
            yield Key(0, index), records_to_arrow(chunk, cells)
        self._update_description()

    def _stream_by_row(self, split: str, members: tuple[str, ...]):
        """Streaming without reading the table first: chunk by chunk, each checked as preparation checks it
        (a duplicate processid is refused when it is reached, after the records before it were yielded)."""
        metadata = self.metadata_path
        summary = self._summary
        summary.rows_read = summary.rows_kept = 0
        summary.records[split] = 0
        seen: set[str] = set()
        wanted = set(members)
        for index, raw in enumerate(read_table_chunks(metadata, _BATCH_ROWS, usecols=self._used_columns())):
            frame = self._checked_frame(self._frame_from_raw(raw, metadata, summary), metadata, summary)
            ids = frame["processid"].tolist()
            repeated = seen.intersection(ids)
            if repeated:
                raise DataIntegrityError(f"duplicate processid {sorted(repeated)[0]!r} in {metadata}")
            seen.update(ids)
            summary.rows_kept += len(frame)
            frame = frame[frame["split"].isin(wanted)]
            if len(frame) == 0:
                continue
            frame = self._apply_missing_image_policy(frame)
            chunk = record_table(frame, extra=("image_path",))
            cells, keep = self._image_cells(chunk, checked=False)
            if not all(keep):
                chunk = chunk.filter(pa.array(keep))
                cells = [cell for cell, kept in zip(cells, keep, strict=True) if kept]
            summary.records[split] += len(chunk)
            yield Key(0, index), records_to_arrow(chunk, cells)

    def _used_columns(self) -> list[str] | None:
        """The table columns the builder reads (``None``: all); the others are never parsed into strings."""
        return None

    # --- images -------------------------------------------------------------------------------------------
    def _apply_image_checks(self, frame: pd.DataFrame, num_proc: int | None) -> pd.DataFrame:
        """Checks every image once (``verify_images``; ``num_proc`` processes) and applies ``image_policy``,
        before splitting: the counts stay in this process and a failure is raised before anything is written."""
        expected = frame["image_path"].notna().to_numpy()
        if not expected.any() or self.config.verify_images == "none":
            return frame
        paths = frame["image_path"].to_numpy(dtype=object)[expected].tolist()
        problems = image_problems(paths, self.config.verify_images, num_proc)
        bad = [position for position, problem in enumerate(problems) if problem is not None]
        if not bad:
            return frame
        rows = np.flatnonzero(expected)[bad]
        ids = frame["processid"].to_numpy(dtype=object)[rows]
        for processid, position in zip(ids, bad, strict=True):
            self._record_image_problem(processid, paths[position], problems[position])
        if self.config.image_policy == "skip":
            return frame.drop(index=frame.index[rows])
        frame = frame.copy()
        frame.loc[frame.index[rows], "image_path"] = None
        return frame

    def _image_cells(self, chunk: pa.Table, *, checked: bool) -> tuple[list[dict | None], list[bool]]:
        """The image cell of each row (bytes read only for ``embed_images``) and a keep mask; rows whose images
        were not ``checked`` yet are checked here and ``image_policy`` applied."""
        paths = chunk["image_path"].to_pylist()
        if all(path is None for path in paths):
            return [None] * len(paths), [True] * len(paths)
        problems: list[str | None] = [None] * len(paths)
        if not checked:
            present = [position for position, path in enumerate(paths) if path is not None]
            found = image_problems([paths[p] for p in present], self.config.verify_images)
            for position, problem in zip(present, found, strict=True):
                problems[position] = problem
        ids = chunk["processid"].to_pylist()
        cells: list[dict | None] = []
        keep: list[bool] = []
        for processid, path, problem in zip(ids, paths, problems, strict=True):
            if path is not None and problem is None and self.config.embed_images:
                try:
                    cells.append({"bytes": Path(path).read_bytes(), "path": Path(path).name})
                    keep.append(True)
                    continue
                except OSError as error:  # gone or unreadable since it was checked
                    problem = "missing" if isinstance(error, FileNotFoundError) else f"unreadable ({error})"
            if path is None or problem is None:
                cells.append(None if path is None else {"bytes": None, "path": path})
                keep.append(True)
                continue
            self._record_image_problem(processid, path, problem)
            cells.append(None)
            keep.append(self.config.image_policy == "keep")
        return cells, keep

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
        if message not in summary.warnings:  # streaming calls this once per chunk
            summary.warnings.append(message)
    frame = pd.DataFrame(index=raw.index)
    # Arrow-backed columns (missing = NaN): no Python object per cell on the way to the Arrow files.
    frame["processid"] = take_column(raw, "processid", arrow=True)
    frame["sampleid"] = take_column(raw, "sampleid", arrow=True)
    frame["dna_barcode"] = take_column(raw, dna_column, arrow=True)
    frame["dna_bin"] = take_column(raw, bin_column, arrow=True)
    for rank in ALL_RANKS:
        frame[rank] = take_column(raw, rank, arrow=True)  # a rank the source lacks (5M has no tribe) is all None
    return frame
