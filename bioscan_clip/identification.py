"""Identify specimens: a saved model plus saved key indexes answer "what is this, at each rank, how sure".

A *key folder* (written by :func:`build_key_folder`, ``bioscan-clip index``) holds one :class:`KeyIndex` per
feature (``image``, ``dna``, ``text``, ``averaged``) over the same key records, the key records themselves (with
their images, for galleries), the calibration of the confidence thresholds and ``key_folder.json``: the model it was
built with (id and config hash) and every file's size and sha256. It is built in a sibling temporary folder and
swapped in by rename, so a reader sees the old folder or the new one, never parts of both; :meth:`Identifier.load`
verifies the manifest first and refuses a partial, mixed or corrupted folder by name.

Prediction at each rank is the label of the nearest key (1-NN, as the paper). Its *confidence* is the
similarity-weighted share of the k nearest keys that agree with it. A rank is *confident* when the nearest key's
cosine similarity reaches that rank's threshold, calibrated so that confident predictions reach a target precision
(default 90 %) on queries whose answer at that rank is in the keys as well as absent from them (labels held out of
the keys; on validation queries, or leave-one-out over the keys without them: :mod:`bioscan_clip.calibration`).
The *unknown species* flag is raised when the species rank is not confident: the query is probably from a species
absent from the keys. ``calibration.json`` holds the thresholds and their report (precision and coverage of the
confident calls, novel-species detection AUROC, warnings where calibration had to fall back) and
``calibration.png`` the reliability diagram.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
from PIL import Image

from bioscan_clip.calibration import (
    CALIBRATION_SEED,
    DEFAULT_PRECISION,
    HELD_OUT_FRACTION,
    METHOD_NONE,
    calibrate_pair,
    plot_reliability,
    sample_rows,
)
from bioscan_clip.data import (
    DataSpec,
    SpecimenDataset,
    available_modalities,
    has_role,
    role_records,
    with_modalities,
)
from bioscan_clip.features import (
    CALIBRATED_PAIRS,
    KEY_FEATURES,
    add_combined_features,
    embed_dataset,
    embed_inputs,
    labels_of,
    pair_name,
    query_feature,
)
from bioscan_clip.retrieval import KeyIndex
from bioscan_clip.safe_io import (
    check_seal,
    file_checksums,
    kill_point,
    read_json,
    sealed_json,
    staging_dir,
    swap_in,
    verify_checksums,
)
from modeling_bioscanclip import BioscanClipModel, BioscanClipProcessor, BioscanInputError, load_image_safely
from modeling_bioscanclip.constants_bioscanclip import TAXONOMIC_RANKS

logger = logging.getLogger(__name__)

RECORDS_DIRNAME = "records"
CALIBRATION_FILE = "calibration.json"
CALIBRATION_PLOT = "calibration.png"
KEY_MANIFEST = "key_folder.json"
KEY_FOLDER_FORMAT = "bioscan-clip-key-folder"
KEY_FOLDER_VERSION = 1
# What the config hash leaves out, at every level: where the model was loaded from, which library version wrote it,
# and the dtype it was loaded in (None in memory, float32 once saved).
_UNHASHED_CONFIG_KEYS = (
    "_name_or_path", "transformers_version", "_commit_hash", "architectures", "auto_map", "dtype", "torch_dtype",
)  # fmt: skip
DEFAULT_VOTE_TEMPERATURE = 0.05  # cosine differences of a few hundredths decide between neighbours


@dataclass
class RankPrediction:
    """The answer at one rank."""

    rank: str
    label: str | None
    confidence: float
    similarity: float
    confident: bool


@dataclass
class Neighbour:
    """One of the nearest keys."""

    row: int
    processid: str
    similarity: float
    taxonomy: dict[str, str | None]


@dataclass
class Identification:
    """The answer for one query."""

    query_feature: str
    key_feature: str
    ranks: list[RankPrediction]
    deepest_confident_rank: str | None
    unknown_species: bool
    neighbours: list[Neighbour] = field(default_factory=list)

    def to_row(self) -> dict[str, Any]:
        """A flat, JSON/Parquet-friendly row."""
        row: dict[str, Any] = {"query_feature": self.query_feature, "key_feature": self.key_feature}
        for prediction in self.ranks:
            row[f"{prediction.rank}"] = prediction.label
            row[f"{prediction.rank}_confidence"] = round(prediction.confidence, 4)
            row[f"{prediction.rank}_confident"] = prediction.confident
        row["similarity"] = round(self.ranks[0].similarity, 4) if self.ranks else None
        row["deepest_confident_rank"] = self.deepest_confident_rank
        row["unknown_species"] = self.unknown_species
        row["neighbours"] = json.dumps([asdict(n) for n in self.neighbours])
        return row


def vote_confidence(similarities: np.ndarray, labels: Sequence[str | None], temperature: float) -> float:
    """Similarity-weighted share of the neighbours whose label equals the nearest one's."""
    weights = np.exp((similarities - similarities.max()) / temperature)
    agree = np.array([label == labels[0] and label is not None for label in labels])
    return float(weights[agree].sum() / weights.sum())


def config_hash(model: BioscanClipModel) -> str:
    """sha256 of the model's configuration (architecture, vocabularies, projection): keys embedded by a model with
    another hash are not comparable with this model's queries."""

    def strip(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k not in _UNHASHED_CONFIG_KEYS}
        return value

    config = strip(model.config.to_dict())
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()


def is_key_folder(path: Path) -> bool:
    """A folder written by :func:`build_key_folder` (this version's manifest, or an older one's calibration)."""
    return path.is_dir() and ((path / KEY_MANIFEST).is_file() or (path / CALIBRATION_FILE).is_file())


def verify_key_folder(key_dir: str | Path) -> dict[str, Any]:
    """Checks a key folder against its manifest and returns the manifest.

    Raises:
        `BioscanInputError`: one line naming the folder when it is missing, not a key folder, written by an older
        version or half-written (no manifest), or when any file is missing, resized or changed (corrupted, or mixed
        from two builds).
    """
    key_dir = Path(key_dir)
    if not key_dir.is_dir():
        raise BioscanInputError(f"{key_dir}: no such key folder; build it with `bioscan-clip index`")
    if not (key_dir / KEY_MANIFEST).is_file():
        what = "incomplete or written by an older bioscan-clip" if is_key_folder(key_dir) else "not a key folder"
        raise BioscanInputError(f"{key_dir}: {what} (no {KEY_MANIFEST}); build it with `bioscan-clip index`")
    manifest = read_json(key_dir / KEY_MANIFEST, "the key folder manifest")
    if (
        not isinstance(manifest, dict)
        or manifest.get("format") != KEY_FOLDER_FORMAT
        or manifest.get("format_version") != KEY_FOLDER_VERSION
        or not isinstance(manifest.get("files"), dict)
    ):
        raise BioscanInputError(
            f"{key_dir / KEY_MANIFEST}: not a {KEY_FOLDER_FORMAT} manifest version {KEY_FOLDER_VERSION}; rebuild it"
        )
    check_seal(manifest, key_dir / KEY_MANIFEST, "the key folder manifest")
    verify_checksums(key_dir, manifest["files"], "the key folder")
    return manifest


def key_records(key_dir: str | Path) -> datasets.Dataset | None:
    """The key records of a key folder (None when it holds none), images kept encoded (decode them with the safe
    loader, as :meth:`Identifier.key_image` does)."""
    key_dir = Path(key_dir)
    if not (key_dir / RECORDS_DIRNAME).exists():
        return None
    try:
        records = datasets.load_from_disk(str(key_dir / RECORDS_DIRNAME))
    except (OSError, ValueError, KeyError) as error:
        raise BioscanInputError(f"{key_dir}: the key records cannot be read ({error}); rebuild it") from None
    if "image" in records.column_names:
        records = records.cast_column("image", datasets.Image(decode=False))
    return records


def refuse_foreign_output(out_dir: Path, overwrite: bool) -> None:
    """``--out`` may replace a key folder or an empty folder; anything else only with ``overwrite``."""
    if overwrite or not out_dir.exists() or is_key_folder(out_dir):
        return
    if out_dir.is_dir() and not any(out_dir.iterdir()):
        return
    kind = "folder" if out_dir.is_dir() else "file"
    raise BioscanInputError(
        f"--out {out_dir}: exists and is a {kind} that is not a key folder; refusing to replace it "
        "(choose another --out, or pass --overwrite)"
    )


class Identifier:
    """A model, its processor and a key folder, ready to identify queries.

    Example (after the main job)::

        identifier = Identifier.load("runs/quickstart/model", "runs/quickstart/keys")
        [answer] = identifier.identify(images=["specimen.jpg"])
        answer.deepest_confident_rank, answer.ranks[-1].label
    """

    def __init__(
        self,
        model: BioscanClipModel,
        processor: BioscanClipProcessor,
        indexes: dict[str, KeyIndex],
        calibration: dict[str, Any],
        records: datasets.Dataset | None = None,
    ) -> None:
        self.model = model.eval()
        self.processor = processor
        self.indexes = indexes
        self.calibration = calibration
        self.records = records

    @classmethod
    def load(cls, model_dir: str | Path, key_dir: str | Path) -> Identifier:
        """Loads a saved model folder and a key folder written by :func:`build_key_folder`.

        The key folder is verified against its manifest before the model is loaded (see :func:`verify_key_folder`),
        and refused when it was built with a model of another configuration.
        """
        key_dir = Path(key_dir)
        manifest = verify_key_folder(key_dir)
        indexes = {
            name: KeyIndex.load(key_dir / name, verify=False) for name in KEY_FEATURES if (key_dir / name).exists()
        }
        records = key_records(key_dir)
        calibration = read_json(key_dir / CALIBRATION_FILE, "the calibration")
        model = BioscanClipModel.from_pretrained(model_dir)
        processor = BioscanClipProcessor.from_pretrained(model_dir)
        built_with = manifest.get("model", {}).get("config_sha256")
        if built_with is not None and built_with != config_hash(model):
            raise BioscanInputError(
                f"{key_dir}: built with another model ({manifest['model'].get('name_or_path')}, config "
                f"{built_with[:12]}) than {model_dir} (config {config_hash(model)[:12]}); rebuild the keys with it"
            )
        return cls(model, processor, indexes, calibration, records)

    @classmethod
    def from_pretrained(
        cls,
        repo_id_or_path: str | Path,
        revision: str | None = None,
        *,
        model: str | Path | None = None,
        model_revision: str | None = None,
    ) -> Identifier:
        """Loads a key library by Hub repository id (a dataset repo written by ``bioscan-clip push keys``, downloaded
        or found in the Hub cache offline, at ``revision``) or local folder, with the model it names (the revision
        the keys were embedded with). ``model`` / ``model_revision`` override that model. A plain key folder needs
        ``model``.

        Example::

            identifier = Identifier.from_pretrained("my-lab/bioscan-keys", revision="<commit sha>")
        """
        from bioscan_clip.hub import resolve_key_library  # the Hub layer sits above this module

        model_dir, key_dir = resolve_key_library(
            repo_id_or_path, revision=revision, model=model, model_revision=model_revision
        )
        return cls.load(model_dir, key_dir)

    @torch.inference_mode()
    def embed(
        self,
        images: Sequence[Any] | None = None,
        barcodes: Sequence[str] | None = None,
        names: Sequence[Any] | None = None,
    ) -> dict[str, np.ndarray]:
        """Unit-length query features (``image``, ``dna`` and, with both, ``averaged``); errors name the query by
        ``names`` (e.g. its FASTA id) when given, else by its position."""
        if not images and not barcodes:
            raise BioscanInputError("expected images and/or barcodes to identify, got neither")
        if images and barcodes and len(images) != len(barcodes):
            raise BioscanInputError(
                f"paired queries need as many images as barcodes, got {len(images)} and {len(barcodes)}"
            )
        # As the keys were embedded: the model's DNA reading frames averaged (features.embed_inputs).
        embedded = embed_inputs(self.model, self.processor, images=images, barcodes=barcodes, names=names)
        return add_combined_features({name: value.numpy() for name, value in embedded.items()})

    def identify(
        self,
        images: Sequence[Any] | None = None,
        barcodes: Sequence[str] | None = None,
        *,
        k: int = 5,
        key_feature: str | None = None,
        restrict: Mapping[str, str | Sequence[str]] | None = None,
        names: Sequence[Any] | None = None,
    ) -> list[Identification]:
        """Identifies each query (an image, a barcode, or an image with its barcode).

        Args:
            images, barcodes: the queries; given together, they are paired row by row and the averaged image+DNA
                feature is searched against averaged keys.
            k (`int`, defaults to 5): neighbours returned and used for the confidence vote.
            key_feature (`str`, *optional*): search other keys than the query's own modality, e.g. ``"dna"`` for
                image queries (the cross-modal view).
            restrict (`dict`, *optional*): search only keys with these taxa, e.g. ``{"order": ["Diptera"]}``.
            names (`Sequence`, *optional*): one name per query, used by error messages.
        """
        features = self.embed(images, barcodes, names)
        searched = query_feature(features)
        key_feature = key_feature or searched
        if key_feature not in self.indexes:
            raise BioscanInputError(f"no {key_feature} keys in this key folder; it has {sorted(self.indexes)}")
        index = self.indexes[key_feature]
        found = index.search_labels(features[searched], min(k, len(index)), restrict=restrict)
        thresholds = self.calibration.get("thresholds", {}).get(pair_name((searched, key_feature)), {})
        temperature = self.calibration.get("vote_temperature", DEFAULT_VOTE_TEMPERATURE)
        ids = index.keys["processid"]
        answers = []
        for q in range(len(found.scores)):
            similarities = found.scores[q]
            ranks = []
            for rank in TAXONOMIC_RANKS:
                labels = found.labels[rank][q]
                threshold = thresholds.get(rank, float("inf"))
                ranks.append(
                    RankPrediction(
                        rank=rank,
                        label=labels[0],
                        confidence=vote_confidence(similarities, labels, temperature),
                        similarity=float(similarities[0]),
                        confident=bool(labels[0] is not None and similarities[0] >= threshold),
                    )
                )
            deepest = None
            for prediction in ranks:  # ranks run from order to species; stop at the first unsure one
                if not prediction.confident:
                    break
                deepest = prediction.rank
            neighbours = [
                Neighbour(
                    row=int(row),
                    processid=ids[int(row)],
                    similarity=float(similarities[j]),
                    taxonomy={rank: found.labels[rank][q][j] for rank in TAXONOMIC_RANKS},
                )
                for j, row in enumerate(found.indices[q])
            ]
            answers.append(Identification(searched, key_feature, ranks, deepest, not ranks[-1].confident, neighbours))
        return answers

    def key_image(self, row: int) -> Image.Image | None:
        """The stored image of key ``row``, decoded by the safe loader, or None when it has none."""
        if self.records is None or "image" not in self.records.column_names:
            return None
        stored = self.records[int(row)]["image"]
        if not stored:
            return None
        return load_image_safely(
            stored.get("bytes") or stored["path"], name=f"key {self.records[int(row)]['processid']}"
        )


def build_key_folder(
    model: BioscanClipModel,
    processor: BioscanClipProcessor,
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
) -> Path:
    """Embeds ``keys`` once and writes a key folder: one index per feature, the records, the calibration.

    Everything is written into a sibling temporary folder, with ``key_folder.json`` last, and swapped in by rename:
    a crash at any point leaves the previous folder (or none), never a partial or mixed one.

    Args:
        model, processor: the trained model and its processor.
        keys (`datasets.Dataset`): labelled key records (the package's record schema).
        out_dir: the folder to write (replaced if it is a key folder or empty; anything else is refused).
        calibration_queries (`datasets.Dataset`, *optional*): validation queries whose 1-NN correctness sets the
            confidence thresholds, searched against the keys with a share of the labels held out at each rank;
            without them the keys calibrate themselves, leave-one-out (see :mod:`bioscan_clip.calibration`).
        precision (`float`, defaults to 0.9): precision the confident predictions must reach on those queries.
        calibrate (`bool`, defaults to True): False writes no thresholds (no rank is ever confident, every query is
            flagged unknown species), with a warning in ``calibration.json``.
        index_type (`str`, defaults to ``"flat"``): ``flat`` (exact), an approximate faiss index or ``auto`` (chosen
            by key count; see :meth:`KeyIndex.build`).
        index_options (`dict`, *optional*): further :meth:`KeyIndex.build` index settings (``nlist``, ``nprobe``,
            ``pq_m``, ``rerank``, ...), the same for every feature.
        overwrite (`bool`, defaults to False): replace ``out_dir`` even when it is not a key folder.
    """
    out_dir = Path(out_dir)
    refuse_foreign_output(out_dir, overwrite)
    # Metadata-only keys (barcodes, no images) are indexed with the modalities they have.
    modalities = available_modalities(keys, model.config.modalities, what="keys")
    keys = with_modalities(keys, modalities, what="keys")
    if len(keys) == 0:
        raise BioscanInputError(f"no key record has every modality the index needs ({', '.join(modalities)})")
    key_set = SpecimenDataset(keys, processor, modalities)
    final_dir, staging = out_dir, staging_dir(out_dir)
    # The key embeddings go to disk batch by batch and are indexed one feature at a time from there, so memory
    # stays about one feature's index whatever the library's size. The scratch folder is a second staging folder:
    # removed here, or, after a kill, by the next build (stale staging folders of dead processes).
    scratch = staging_dir(out_dir)
    try:
        features = embed_dataset(
            model, key_set, batch_size=batch_size, description="embedding keys", show_progress=show_progress,
            out_dir=scratch, features=KEY_FEATURES,
        )  # fmt: skip
        labels = labels_of(key_set)
        kill_point("index:embedded")
        _write_key_folder(model, processor, modalities, key_set, features, labels, staging, calibration_queries,
                          precision, index_type, batch_size, show_progress, calibrate=calibrate,
                          index_options=index_options)  # fmt: skip
        refuse_foreign_output(final_dir, overwrite)  # nothing foreign appeared there while we embedded
        swap_in(staging, final_dir, stage_prefix="index:")
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    kill_point("index:swapped")
    return final_dir


def _write_key_folder(
    model: BioscanClipModel,
    processor: BioscanClipProcessor,
    modalities: list[str],
    key_set: SpecimenDataset,
    features: dict[str, np.ndarray],
    labels: dict[str, list],
    out_dir: Path,
    calibration_queries: datasets.Dataset | None,
    precision: float,
    index_type: str,
    batch_size: int,
    show_progress: bool,
    *,
    calibrate: bool = True,
    index_options: Mapping[str, Any] | None = None,
) -> None:
    """The parts of a key folder, written into ``out_dir`` (a fresh staging folder), manifest last."""
    options = dict(index_options or {})
    for name, matrix in features.items():
        if name in KEY_FEATURES:
            KeyIndex.build(matrix, labels, index_type=index_type, modality=name, **options).save(out_dir / name)
            kill_point(f"index:{name}")
    calibration = _calibrate(model, processor, modalities, key_set, features, labels, out_dir, calibration_queries,
                             precision, index_type, batch_size, show_progress, calibrate)  # fmt: skip
    (out_dir / CALIBRATION_FILE).write_text(json.dumps(calibration, indent=2))
    kill_point("index:calibration")
    stored = key_set.records
    if "image" in stored.column_names:
        stored = stored.cast_column("image", datasets.Image())
    stored.save_to_disk(str(out_dir / RECORDS_DIRNAME))
    kill_point("index:records")
    manifest = {
        "format": KEY_FOLDER_FORMAT,
        "format_version": KEY_FOLDER_VERSION,
        "model": {
            "name_or_path": str(getattr(model.config, "_name_or_path", "") or ""),
            "revision": getattr(model.config, "_commit_hash", None),
            "config_sha256": config_hash(model),
        },
        "index_type": index_type,
        "count": len(key_set),
        "features": sorted(name for name in features if name in KEY_FEATURES),
        "files": file_checksums(out_dir),
    }
    (out_dir / KEY_MANIFEST).write_text(sealed_json(manifest))
    kill_point("index:manifest")


def _calibrate(
    model: BioscanClipModel,
    processor: BioscanClipProcessor,
    modalities: list[str],
    key_set: SpecimenDataset,
    features: dict[str, np.ndarray],
    labels: dict[str, list],
    out_dir: Path,
    calibration_queries: datasets.Dataset | None,
    precision: float,
    index_type: str,
    batch_size: int,
    show_progress: bool,
    calibrate: bool,
) -> dict[str, Any]:
    """The confidence thresholds of every calibrated pair and their report, and the reliability diagram in
    ``out_dir``; every fallback is logged and listed in ``warnings``."""
    calibration: dict[str, Any] = {
        "precision": precision,
        "vote_temperature": DEFAULT_VOTE_TEMPERATURE,
        "thresholds": {},
        "held_out_fraction": HELD_OUT_FRACTION,
        "seed": CALIBRATION_SEED,
        "warnings": [],
    }
    if not calibrate:
        calibration["method"] = METHOD_NONE
        calibration["warnings"].append(
            "calibration turned off: no rank is ever confident and every query is flagged unknown species"
        )
        logger.warning(calibration["warnings"][-1])
        return calibration
    if calibration_queries is not None and len(calibration_queries):
        query_set = SpecimenDataset(with_modalities(calibration_queries, modalities), processor, modalities)
        rows = sample_rows(len(query_set))
        query_features = embed_dataset(
            model, query_set, batch_size=batch_size, description="calibration queries", show_progress=show_progress
        )
        query_features = {name: matrix[rows] for name, matrix in query_features.items()}
        query_labels = labels_of(query_set)
        truth = {rank: [query_labels[rank][r] for r in rows] for rank in TAXONOMIC_RANKS}
        own_rows = None
        calibration["method"] = "validation queries, labels held out of the keys per rank"
    else:
        # No validation queries (e.g. a BOLD library with every record a key): the keys calibrate themselves,
        # each searched against the others, with a share of the species (and of each rank's labels) held out.
        rows = sample_rows(len(key_set))
        query_features = {name: matrix[rows] for name, matrix in features.items()}
        truth = {rank: [labels[rank][r] for r in rows] for rank in TAXONOMIC_RANKS}
        own_rows = rows
        calibration["method"] = "leave-one-out over the keys, labels held out per rank (no validation queries)"
    calibration["calibration_queries"] = int(len(rows))
    calibration["report"], curves = {}, {}
    for query_name, key_name in CALIBRATED_PAIRS:
        if query_name not in query_features or key_name not in features:
            continue
        name = pair_name((query_name, key_name))
        result = calibrate_pair(
            query_features[query_name], truth, features[key_name], labels,
            own_rows=own_rows, precision=precision, name=name,
        )  # fmt: skip
        calibration["thresholds"][name] = result["thresholds"]
        calibration["report"][name] = result["report"]
        calibration["warnings"].extend(result["warnings"])
        curves[name] = result["curves"]
    for warning in calibration["warnings"]:
        logger.warning(warning)
    if curves:
        plot_reliability(curves, calibration["thresholds"], out_dir / CALIBRATION_PLOT, precision=precision)
        calibration["plot"] = CALIBRATION_PLOT
    if index_type != "flat":  # what the approximation costs, measured on the calibration queries
        calibration["recall_at_5"] = {
            name: KeyIndex.load(out_dir / name).recall_at_k(query_features[name], min(5, len(key_set)))
            for name in features
            if name in KEY_FEATURES and name in query_features
        }
    return calibration


def build_index(
    model: str | Path,
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
    """Embeds the keys of a dataset with a saved model and writes a key folder (see :func:`build_key_folder`),
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
    network, processor = BioscanClipModel.from_pretrained(model).eval(), BioscanClipProcessor.from_pretrained(model)
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


def identify(
    model: str | Path,
    keys: str | Path,
    images: Sequence[Any] | None = None,
    barcodes: Sequence[str] | None = None,
    **options: Any,
) -> list[Identification]:
    """Identifies queries against a key folder in one call (:meth:`Identifier.identify` takes the ``options``).
    Load an :class:`Identifier` once instead when identifying many batches."""
    return Identifier.load(model, keys).identify(images, barcodes, **options)
