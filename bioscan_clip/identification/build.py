"""Build a key folder: embed the keys once, index every feature, calibrate the confidence thresholds, write the
records and the manifest last, and swap the whole folder in (format: :mod:`bioscan_clip.identification.key_folder`)."""

from __future__ import annotations

import errno
import functools
import importlib.metadata
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from bioscan_clip.baselines.kmer import build_kmer_key_index, kmer_profile
from bioscan_clip.data.spec import DataSpec, has_role, role_records
from bioscan_clip.data.specimens import SpecimenDataset, available_modalities, with_modalities
from bioscan_clip.features import (
    CALIBRATED_PAIRS,
    DNA,
    KEY_FEATURES,
    KMER,
    TEXT,
    add_combined_features,
    embed_dataset,
    labels_of,
    pair_name,
)
from bioscan_clip.resolve import load_pretrained
from bioscan_clip.retrieval.index_types import INDEX_TYPES, resolve_index_params
from bioscan_clip.retrieval.key_index import KeyIndex
from bioscan_clip.safe_io import (
    file_checksums,
    format_bytes,
    kill_point,
    sealed_json,
    staging_dir,
    swap_in,
)
from modeling_bioscanclip import BioscanClipModel, BioscanClipProcessor, BioscanInputError
from modeling_bioscanclip.constants_bioscanclip import KMER_SIZE, TAXONOMIC_RANKS

from .barcode_search import ALIGNMENT_PAIR, BarcodeSearch, KeyBarcodes, calibrate_barcode_search
from .calibration import (
    CALIBRATION_SEED,
    DEFAULT_PRECISION,
    DEFAULT_VOTE_TEMPERATURE,
    HELD_OUT_FRACTION,
    METHOD_CHECKLIST,
    METHOD_NONE,
    calibrate_pair,
    plot_reliability,
    sample_rows,
)
from .key_folder import (
    CALIBRATION_FILE,
    CALIBRATION_PLOT,
    KEY_FOLDER_FORMAT,
    KEY_FOLDER_VERSION,
    KEY_MANIFEST,
    RECORDS_DIRNAME,
    config_hash,
    refuse_foreign_output,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BuildOptions:
    """How a key folder is built (the settings of :func:`build_key_folder`, which documents them)."""

    precision: float = DEFAULT_PRECISION
    calibrate: bool = True
    index_type: str = "flat"
    index_options: Mapping[str, Any] = field(default_factory=dict)
    batch_size: int = 128
    show_progress: bool = True


@dataclass(frozen=True)
class EmbeddedKeys:
    """What a key folder is written from: the model and processor (None: barcodes only, no embeddings), the
    modalities indexed, the key records, their features (feature -> ``(keys, dim)`` matrix) and labels
    (``processid`` and rank -> one label per key), and the validation queries to calibrate on (None: the keys
    calibrate themselves). ``checklist``: where the keys came from when they are a checklist's names (text keys,
    nothing to calibrate on; see :func:`build_checklist_index`)."""

    model: BioscanClipModel | None
    processor: BioscanClipProcessor | None
    modalities: list[str]
    records: datasets.Dataset
    features: dict[str, np.ndarray]
    labels: dict[str, list]
    calibration_queries: datasets.Dataset | None = None
    checklist: Mapping[str, Any] | None = None


def _specimens(
    records: datasets.Dataset, processor: BioscanClipProcessor, modalities: list[str], what: str
) -> SpecimenDataset:
    """The records that have every modality indexed, ready to embed."""
    return SpecimenDataset(with_modalities(records, modalities, what=what), processor, modalities)


def _embed(
    model: BioscanClipModel, specimens: SpecimenDataset, options: BuildOptions, description: str, **where: Any
) -> tuple[dict[str, np.ndarray], dict[str, list]]:
    """The features and labels of ``specimens``; ``where`` (``out_dir``, ``features``) goes to :func:`embed_dataset`."""
    features = embed_dataset(
        model, specimens, batch_size=options.batch_size, description=description,
        show_progress=options.show_progress, **where,
    )  # fmt: skip
    return features, labels_of(specimens)


def record_labels(records: datasets.Dataset) -> dict[str, list]:
    """``processid`` and the ranks of key records (None where a column is missing), as :func:`labels_of` gives."""
    return {
        column: records[column] if column in records.column_names else [None] * len(records)
        for column in ("processid", *TAXONOMIC_RANKS)
    }


# ---- disk space: checked before embedding; a full disk while staging is one line, nothing left behind ----------
# What the estimate does not count (file-system blocks, Arrow metadata, the calibration plot and reports).
SPACE_MARGIN, SPACE_OVERHEAD = 0.10, 512 << 10
# The write errors of a disk that cannot take more: full, over quota, or a file over the size limit.
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


def key_feature_dims(model: BioscanClipModel | None, modalities: list[str]) -> dict[str, int]:
    """The key features a build embeds (those of ``modalities`` and their combinations that a key folder
    indexes) and their dimensions."""
    if model is None:
        return {}
    empty = {name: np.zeros((0, model.config.projection_dim), np.float32) for name in modalities}
    return {name: matrix.shape[1] for name, matrix in add_combined_features(empty).items() if name in KEY_FEATURES}


def required_space(keys: datasets.Dataset, dims: Mapping[str, int], options: BuildOptions, folder: Path) -> int:
    """About the bytes a build of ``keys`` writes in ``folder`` (beside ``--out``) before the old key folder goes.

    The embeddings of the key features ``dims`` (float32, kept in the scratch folder until the swap); per key feature
    and for the 5-mer profiles, the index (:func:`_index_file_bytes`), a copy of the vectors and of the labels; the
    records with their images; an approximate build's temporary vectors when the temporary folder is on the same
    disk; then :data:`SPACE_MARGIN` and :data:`SPACE_OVERHEAD`.
    """
    count, table = len(keys), keys.data.table
    indexed = dict(dims)
    if "dna_barcode" in keys.column_names:  # the barcode identifier's 5-mer profiles (an upper bound: every key)
        indexed[KMER] = 4**KMER_SIZE
    labels = table.select([c for c in ("processid", *TAXONOMIC_RANKS) if c in table.column_names]).nbytes
    total = 4 * count * sum(dims.values()) + table.nbytes + _image_file_bytes(keys) + len(indexed) * labels
    temporary = 0
    for dim in indexed.values():
        index_type, params = resolve_index_params(options.index_type, count, dim, **options.index_options)
        total += 4 * count * dim + _index_file_bytes(count, dim, params)
        if INDEX_TYPES[index_type].own_storage is None:  # streamed through a temporary file, one index at a time
            temporary = max(temporary, 4 * count * dim)
    if temporary and os.stat(tempfile.gettempdir()).st_dev == os.stat(folder).st_dev:
        total += temporary
    return int(total * (1 + SPACE_MARGIN)) + SPACE_OVERHEAD


def _index_file_bytes(count: int, dim: int, params: Mapping[str, Any]) -> int:
    """What faiss writes for an index of ``count`` keys with these resolved parameters: the PQ codes where it
    compresses, else the float32 vectors; plus an HNSW graph's links, an IVF index's ids and centroids."""
    per_key = params["pq_m"] * params["pq_nbits"] / 8 if "pq_m" in params else 4 * dim
    per_key += 4 * (2 * params["hnsw_m"] + 2) + 12 if "hnsw_m" in params else 0  # level-0 and upper links, offsets
    per_key += 8 if "nlist" in params else 0
    codebooks = 4 * dim * (params.get("nlist", 0) + (2 ** params["pq_nbits"] if "pq_m" in params else 0))
    return int(count * per_key) + codebooks


def _image_file_bytes(keys: datasets.Dataset) -> int:
    """The bytes of the image files that ``keys`` name by path only (the key folder's records embed them)."""
    if "image" not in keys.column_names:
        return 0
    column = keys.data.table.column("image")
    if pa.types.is_struct(column.type):
        column = pc.filter(pc.struct_field(column, "path"), pc.is_null(pc.struct_field(column, "bytes")))
    elif not pa.types.is_string(column.type):
        return 0
    return sum(os.stat(path).st_size for path in column.to_pylist() if path and os.path.isfile(path))


def check_free_space(out_dir: Path, keys: datasets.Dataset, dims: Mapping[str, int], options: BuildOptions) -> None:
    """Refuses, before anything is embedded, a build (see :func:`required_space`) that the disk holding ``out_dir``
    cannot take."""
    folder = out_dir.parent
    while not folder.exists():  # the build creates it
        folder = folder.parent
    needed, free = required_space(keys, dims, options, folder), shutil.disk_usage(folder).free
    if free < needed:
        raise BioscanInputError(
            f"{out_dir.parent}: not enough free space to build the key folder {out_dir.name}: it needs about "
            f"{format_bytes(needed)} (embeddings, indexes and records, with a margin), {format_bytes(free)} is free, "
            f"short by {format_bytes(needed - free)}; free some space or choose another --out"
        )


def _full_disk_is_one_line(build: Callable[..., Path]) -> Callable[..., Path]:
    """A disk that cannot take the build's writes (full, over quota, a file over the size limit) becomes one line
    naming ``--out``'s folder. The build has removed its staging and scratch folders by then, and ``--out`` is as it
    was: the swap, the one step that changes it, writes nothing."""

    @functools.wraps(build)
    def guarded(
        model: BioscanClipModel | None, processor: Any, keys: datasets.Dataset, out_dir: str | Path, **options: Any
    ) -> Path:
        try:
            return build(model, processor, keys, out_dir, **options)
        except OSError as error:
            if error.errno not in DISK_FULL_ERRNOS:
                raise
            out_dir = Path(out_dir)
            raise BioscanInputError(
                f"{out_dir.parent}: could not write the key folder {out_dir.name} ({error.strerror}); the partial "
                f"build was removed and {out_dir} is as it was; free some space and run again"
            ) from error

    return guarded


@_full_disk_is_one_line
def build_key_folder(
    model: BioscanClipModel | None,
    processor: BioscanClipProcessor | None,
    keys: datasets.Dataset,
    out_dir: str | Path,
    *,
    calibration_queries: datasets.Dataset | None = None,
    precision: float = DEFAULT_PRECISION,
    calibrate: bool = True,
    index_type: str = "flat",
    index_options: Mapping[str, Any] | None = None,
    batch_size: int = 128,
    show_progress: bool = True,
    overwrite: bool = False,
    checklist: Mapping[str, Any] | None = None,
) -> Path:
    """Embeds ``keys`` once and writes a key folder: one index per feature, the records, the calibration; keys
    with barcodes also get the 5-mer index and the identity calibration of the barcode identifier
    (:mod:`~bioscan_clip.identification.barcode_search`). Without a model (``model=None``) only that is built:
    barcodes are then identified against the library with no embedding at all.

    Everything is written into a sibling temporary folder, with ``key_folder.json`` last, and swapped in by rename:
    a crash at any point leaves the previous folder (or none), never a partial or mixed one.

    Args:
        model, processor: the trained model and its processor.
        keys (`datasets.Dataset`): labelled key records (the package's record schema).
        out_dir: the folder to write (replaced if it is a key folder or empty; anything else is refused).
        calibration_queries (`datasets.Dataset`, *optional*): validation queries whose 1-NN correctness sets the
            confidence thresholds, searched against the keys with a share of the labels held out at each rank;
            without them the keys calibrate themselves, leave-one-out (see :mod:`bioscan_clip.identification.calibration`).
        precision (`float`, defaults to 0.9): precision the confident predictions must reach on those queries.
        calibrate (`bool`, defaults to True): False writes no thresholds (no rank is ever confident, every query is
            flagged unknown species), with a warning in ``calibration.json``.
        index_type (`str`, defaults to ``"flat"``): ``flat`` (exact), an approximate faiss index or ``auto`` (chosen
            by key count; see :meth:`KeyIndex.build`).
        index_options (`dict`, *optional*): further :meth:`KeyIndex.build` index settings (``nlist``, ``nprobe``,
            ``pq_m``, ``rerank``, ...), the same for every feature.
        overwrite (`bool`, defaults to False): replace ``out_dir`` even when it is not a key folder.
        checklist (`dict`, *optional*): the keys are the taxa of this checklist (file name, sha256, entries; see
            :func:`build_checklist_index`): only their taxonomy text is embedded, and nothing is calibrated.
    """
    out_dir = Path(out_dir)
    refuse_foreign_output(out_dir, overwrite)
    options = BuildOptions(
        precision=precision, calibrate=calibrate, index_type=index_type, index_options=dict(index_options or {}),
        batch_size=batch_size, show_progress=show_progress,
    )  # fmt: skip
    # Metadata-only keys (barcodes, no images) are indexed with the modalities they have.
    if model is None:
        modalities, key_set = [DNA], None
        keys = with_modalities(keys, modalities, what="keys")
        if len(keys) == 0:
            raise BioscanInputError("no key record has a DNA barcode: without a model only barcodes are indexed")
    elif checklist is not None:  # names only: the taxonomy-text tower embeds them
        modalities = [TEXT]
        key_set = _specimens(keys, processor, modalities, "checklist taxa")
    else:
        modalities = available_modalities(keys, model.config.modalities, what="keys")
        key_set = _specimens(keys, processor, modalities, "keys")
        if len(key_set) == 0:
            raise BioscanInputError(f"no key record has every modality the index needs ({', '.join(modalities)})")
        keys = key_set.records
    check_free_space(out_dir, keys, key_feature_dims(model, modalities), options)
    final_dir, staging = out_dir, staging_dir(out_dir)
    # The key embeddings go to disk batch by batch and are indexed one feature at a time from there, so memory
    # stays about one feature's index whatever the library's size. The scratch folder is a second staging folder:
    # removed here, or, after a kill, by the next build (stale staging folders of dead processes).
    scratch = staging_dir(out_dir)
    try:
        if key_set is None:
            features, labels = {}, record_labels(keys)
        else:
            features, labels = _embed(model, key_set, options, "embedding keys", out_dir=scratch, features=KEY_FEATURES)
        kill_point("index:embedded")
        embedded = EmbeddedKeys(model, processor, modalities, keys, features, labels, calibration_queries, checklist)
        _write_key_folder(embedded, options, staging)
        refuse_foreign_output(final_dir, overwrite)  # nothing foreign appeared there while we embedded
        swap_in(staging, final_dir, stage_prefix="index:")
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    kill_point("index:swapped")
    return final_dir


def _write_key_folder(keys: EmbeddedKeys, options: BuildOptions, out_dir: Path) -> None:
    """The parts of a key folder, written into ``out_dir`` (a fresh staging folder), manifest last."""
    indexed = [name for name in keys.features if name in KEY_FEATURES]
    approximate = []  # what "auto" or the caller chose per feature: only approximate indexes have a recall to measure
    for name in indexed:
        index = KeyIndex.build(
            keys.features[name], keys.labels, index_type=options.index_type, modality=name, **options.index_options
        )
        index.save(out_dir / name)
        if not index.exact:
            approximate.append(name)
        del index  # one feature's index in memory at a time
        kill_point(f"index:{name}")
    barcodes = keys.records["dna_barcode"] if "dna_barcode" in keys.records.column_names else []
    if len(barcodes) and all(barcodes):  # the barcode identifier's model-free candidates, rows as the records
        index = build_kmer_key_index(barcodes, keys.labels, index_type=options.index_type, **options.index_options)
        index.save(out_dir / KMER)
        indexed.append(KMER)
        if not index.exact:
            approximate.append(KMER)
        del index
        kill_point(f"index:{KMER}")
    calibration = _calibrate(keys, options, out_dir, approximate)
    (out_dir / CALIBRATION_FILE).write_text(json.dumps(calibration, indent=2))
    kill_point("index:calibration")
    stored = keys.records
    if "image" in stored.column_names:
        stored = stored.cast_column("image", datasets.Image())
    stored.save_to_disk(str(out_dir / RECORDS_DIRNAME))
    kill_point("index:records")
    manifest = {
        "format": KEY_FOLDER_FORMAT,
        "format_version": KEY_FOLDER_VERSION,
        "model": None
        if keys.model is None
        else {
            "name_or_path": str(getattr(keys.model.config, "_name_or_path", "") or ""),
            "revision": getattr(keys.model.config, "_commit_hash", None),
            "config_sha256": config_hash(keys.model),
        },
        "index_type": options.index_type,
        "count": len(keys.records),
        # When and by what this folder was built, for `bioscan-clip info` and bug reports.
        "built_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "bioscan_clip_version": importlib.metadata.version("bioscan-clip"),
        "features": sorted(indexed),
        **({"checklist": dict(keys.checklist)} if keys.checklist is not None else {}),
        "files": file_checksums(out_dir),
    }
    (out_dir / KEY_MANIFEST).write_text(sealed_json(manifest))
    kill_point("index:manifest")


def _calibrate(keys: EmbeddedKeys, options: BuildOptions, out_dir: Path, approximate: list[str]) -> dict[str, Any]:
    """The confidence thresholds of every calibrated pair and their report, and the reliability diagram in
    ``out_dir``; every fallback is logged and listed in ``warnings``."""
    calibration: dict[str, Any] = {
        "precision": options.precision,
        "vote_temperature": DEFAULT_VOTE_TEMPERATURE,
        "thresholds": {},
        "held_out_fraction": HELD_OUT_FRACTION,
        "seed": CALIBRATION_SEED,
        "warnings": [],
    }
    if not options.calibrate:
        calibration["method"] = METHOD_NONE
        calibration["warnings"].append(
            "calibration turned off: no rank is ever confident and every query is flagged unknown species"
        )
        logger.warning(calibration["warnings"][-1])
        return calibration
    if keys.checklist is not None:
        return _checklist_calibration(keys, calibration)
    if keys.model is None:  # barcodes only: the library calibrates the alignment identity itself, below
        query_features, query_labels = {}, keys.labels
        leave_one_out = True
        calibration["method"] = "leave-one-out over the keys, labels held out per rank (barcodes only, no model)"
    elif keys.calibration_queries is not None and len(keys.calibration_queries):
        query_set = _specimens(keys.calibration_queries, keys.processor, keys.modalities, "calibration queries")
        query_features, query_labels = _embed(keys.model, query_set, options, "calibration queries")
        leave_one_out = False
        calibration["method"] = "validation queries, labels held out of the keys per rank"
    else:
        # No validation queries (e.g. a BOLD library with every record a key): the keys calibrate themselves,
        # each searched against the others, with a share of the species (and of each rank's labels) held out.
        query_features, query_labels = keys.features, keys.labels
        leave_one_out = True
        calibration["method"] = "leave-one-out over the keys, labels held out per rank (no validation queries)"
    rows = sample_rows(len(query_labels["processid"]))
    own_rows = rows if leave_one_out else None
    query_features = {name: matrix[rows] for name, matrix in query_features.items()}
    truth = {rank: [query_labels[rank][r] for r in rows] for rank in TAXONOMIC_RANKS}
    calibration["calibration_queries"] = int(len(rows))
    calibration["report"], curves = {}, {}
    for query_name, key_name in CALIBRATED_PAIRS:
        if query_name not in query_features or key_name not in keys.features:
            continue
        name = pair_name((query_name, key_name))
        result = calibrate_pair(
            query_features[query_name], truth, keys.features[key_name], keys.labels,
            own_rows=own_rows, precision=options.precision, name=name,
        )  # fmt: skip
        calibration["thresholds"][name] = result["thresholds"]
        calibration["report"][name] = result["report"]
        calibration["warnings"].extend(result["warnings"])
        curves[name] = result["curves"]
    if (out_dir / KMER).exists():
        # The barcode identifier: always on the library itself (every key against the others), whatever the
        # embeddings were calibrated on, since its hits come from the library's own barcodes.
        search = BarcodeSearch(
            KeyBarcodes(keys.records["dna_barcode"]),
            KeyIndex.load(out_dir / KMER),
            KeyIndex.load(out_dir / DNA) if DNA in keys.features else None,
        )
        result = calibrate_barcode_search(search, dna_vectors=keys.features.get(DNA), precision=options.precision)
        calibration["thresholds"][ALIGNMENT_PAIR] = result["thresholds"]
        calibration["report"][ALIGNMENT_PAIR] = result["report"]
        calibration["warnings"].extend(result["warnings"])
        curves[ALIGNMENT_PAIR] = result["curves"]
    for warning in calibration["warnings"]:
        logger.warning(warning)
    if curves:
        plot_reliability(curves, calibration["thresholds"], out_dir / CALIBRATION_PLOT, precision=options.precision)
        calibration["plot"] = CALIBRATION_PLOT
    # What an approximate index costs, measured on the calibration queries (an exact one loses nothing).
    for name in approximate:
        if name == KMER:
            sample = sample_rows(len(keys.records))
            barcodes = keys.records["dna_barcode"]
            vectors = kmer_profile([barcodes[int(r)] for r in sample])
        elif name in query_features:
            vectors = query_features[name]
        else:
            continue
        recall = KeyIndex.load(out_dir / name).recall_at_k(vectors, min(5, len(keys.records)))
        calibration.setdefault("recall_at_5", {})[name] = recall
    return calibration


def build_index(
    model: str | Path | None,
    data: DataSpec,
    out: str | Path,
    *,
    index_type: str = "flat",
    index_options: Mapping[str, Any] | None = None,
    precision: float = DEFAULT_PRECISION,
    calibrate: bool = True,
    batch_size: int = 128,
    overwrite: bool = False,
) -> Path:
    """Embeds the keys of a dataset with a saved model (None: barcodes only) and writes a key folder (see
    :func:`build_key_folder`),
    calibrated on the dataset's validation queries when it has them, else leave-one-out over the keys (a BOLD
    library with ``partition="none"``); ``calibrate=False`` writes no thresholds. The output and the data are
    checked before the model is loaded."""
    refuse_foreign_output(Path(out), overwrite)
    splits, roles = data.load()
    calibration = None
    if calibrate:
        parts = [
            role_records(splits, roles, r)
            for r in ("val_queries_seen", "val_queries_unseen")
            if has_role(splits, roles, r)
        ]
        if parts:
            calibration = datasets.concatenate_datasets(parts) if len(parts) > 1 else parts[0]
    keys = role_records(splits, roles, "keys")
    network, processor = load_pretrained(model) if model is not None else (None, None)
    return build_key_folder(
        network,
        processor,
        keys,
        out,
        calibration_queries=calibration,
        precision=precision,
        calibrate=calibrate,
        index_type=index_type,
        index_options=index_options,
        batch_size=batch_size,
        overwrite=overwrite,
    )


def _checklist_calibration(keys: EmbeddedKeys, calibration: dict[str, Any]) -> dict[str, Any]:
    """A checklist's calibration: no thresholds (no labelled query exists to set one, and a fixed similarity would
    hold for no model in particular), so no call is marked confident; the confidence vote uses the model's own
    learnt temperature, which makes it the CLIP zero-shot softmax over the nearest names."""
    scale = float(keys.model.logit_scale.detach().exp())
    calibration.update(method=METHOD_CHECKLIST, vote_temperature=1.0 / scale, calibration_queries=0)
    calibration["warnings"].append(
        "checklist keys are uncalibrated: no rank is ever marked confident and every query is flagged unknown "
        "species; read each rank's confidence (the model's softmax over the k nearest names, temperature "
        f"1/{scale:.1f}) and the similarity instead"
    )
    logger.warning(calibration["warnings"][-1])
    return calibration


def build_checklist_index(
    model: str | Path,
    checklist: str | Path,
    out: str | Path,
    *,
    index_type: str = "flat",
    index_options: Mapping[str, Any] | None = None,
    batch_size: int = 128,
    overwrite: bool = False,
) -> Path:
    """Writes a key folder of **text keys** from a checklist's names alone, no specimens: each taxon of the file
    (:func:`dataset_scripts.checklist.read_checklist`: a ``.txt`` of binomials or full paths, or a ``.csv``/``.tsv``
    with order..species columns) is one key, embedded by the model's taxonomy-text tower as the records' text
    (``"order family genus species"``, ``not_classified`` where a rank is not given), its ``processid`` the taxon's
    name. :class:`~bioscan_clip.identification.Identifier` and ``predict`` search it as any key folder: images and
    barcodes are answered against the names (``image->text``, ``dna->text``), with the nearest names and their
    similarity, and each rank's label and confidence.

    Nothing is calibrated (see ``calibration.json``): without specimens there is no query whose answer is known, so
    no call is marked confident and every query is flagged unknown species. The manifest names the checklist (file
    name, sha256, taxa per rank).

    Raises:
        `BioscanInputError`: one line naming the checklist file and line, the model (no text tower) or ``out``.
    """
    from dataset_scripts.checklist import read_checklist
    from dataset_scripts.integrity import sha256_file

    refuse_foreign_output(Path(out), overwrite)
    listed = read_checklist(checklist)  # the file is checked before the model is loaded
    network, processor = load_pretrained(model)
    if TEXT not in network.config.modalities:
        raise BioscanInputError(
            f"{model}: has no taxonomy-text tower (modalities {', '.join(network.config.modalities)}); checklist "
            "names are embedded by it: use a model trained with text"
        )
    columns = {"processid": [entry.name for entry in listed.entries]}
    columns.update({rank: [entry.taxonomy[rank] for entry in listed.entries] for rank in TAXONOMIC_RANKS})
    records = datasets.Dataset.from_dict(
        columns, features=datasets.Features(dict.fromkeys(columns, datasets.Value("string")))
    )
    source = {
        "file": listed.path.name,
        "sha256": sha256_file(listed.path),
        "taxa": {rank: len(names) for rank, names in listed.by_rank().items()},
    }
    return build_key_folder(
        network, processor, records, out, index_type=index_type, index_options=index_options,
        batch_size=batch_size, overwrite=overwrite, checklist=source,
    )  # fmt: skip
