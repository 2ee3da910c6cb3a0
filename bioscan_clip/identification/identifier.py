"""Identify specimens: a saved model plus saved key indexes answer "what is this, at each rank, how sure".

A key folder (:mod:`bioscan_clip.identification.key_folder`) is verified before anything in it is used.

Prediction at each rank is the label of the nearest key (1-NN, as the paper). Its *confidence* is the
similarity-weighted share of the k nearest keys that agree with it. A rank is *confident* when the nearest key's
cosine similarity reaches that rank's threshold, calibrated so that confident predictions reach a target precision
(default 90 %) on queries whose answer at that rank is in the keys as well as absent from them (labels held out of
the keys; on validation queries, or leave-one-out over the keys without them: :mod:`bioscan_clip.identification.calibration`).
The *unknown species* flag is raised when the species rank is not confident: the query is probably from a species
absent from the keys. ``calibration.json`` holds the thresholds and their report (precision and coverage of the
confident calls, novel-species detection AUROC, warnings where calibration had to fall back) and
``calibration.png`` the reliability diagram.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
from PIL import Image

from bioscan_clip.features import (
    KEY_FEATURES,
    add_combined_features,
    embed_inputs,
    pair_name,
    query_feature,
)
from bioscan_clip.resolve import load_pretrained
from bioscan_clip.retrieval.key_index import KeyIndex
from bioscan_clip.safe_io import SEAL_KEY, read_json
from modeling_bioscanclip import BioscanClipModel, BioscanClipProcessor, BioscanInputError, load_image_safely
from modeling_bioscanclip.constants_bioscanclip import TAXONOMIC_RANKS

from .calibration import DEFAULT_VOTE_TEMPERATURE
from .key_folder import CALIBRATION_FILE, config_hash, key_records, verify_key_folder
from .library import resolve_key_folder, resolve_key_library

logger = logging.getLogger(__name__)


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
    """One of the nearest keys. For a barcode query against keys with barcodes, also what barcoders read in BOLD
    or BLAST: the percent identity of the two barcodes aligned, the overlap (alignment columns) it is measured
    over (below :data:`~bioscan_clip.baselines.identity.MIN_OVERLAP` the identity is 0) and the key's BIN."""

    row: int
    processid: str
    similarity: float
    taxonomy: dict[str, str | None]
    percent_identity: float | None = None
    overlap: int | None = None
    bin: str | None = None


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
        keys_manifest_sha256: str | None = None,
    ) -> None:
        self.model = model.eval()
        self.processor = processor
        self.indexes = indexes
        self.calibration = calibration
        self.records = records
        self.keys_manifest_sha256 = keys_manifest_sha256

    @property
    def provenance(self) -> dict[str, str]:
        """What made the answers, for the record beside them: the package version, the model (its folder or Hub id)
        and Hub revision, and the sealed sha256 of the key folder's manifest ("none" where unknown)."""
        import importlib.metadata

        config = self.model.config
        return {
            "bioscan_clip_version": importlib.metadata.version("bioscan-clip"),
            "model": str(getattr(config, "_name_or_path", "") or "none"),
            "model_revision": str(getattr(config, "_commit_hash", None) or "none"),
            "keys_manifest_sha256": self.keys_manifest_sha256 or "none",
        }

    @classmethod
    def load(
        cls,
        model: str | Path,
        keys: str | Path,
        *,
        model_revision: str | None = None,
        keys_revision: str | None = None,
    ) -> Identifier:
        """Loads a model and a key folder written by :func:`build_key_folder`.

        Args:
            model: a saved model folder or a Hub model repository id (:func:`bioscan_clip.resolve.load_pretrained`).
            keys: a key folder, or a key library (its folder or Hub dataset repository id; its ``keys/`` folder is
                used, its model is not: see :meth:`from_pretrained` for that), through
                :func:`~bioscan_clip.identification.library.resolve_key_folder`.
            model_revision, keys_revision: Hub revisions (branch, tag or commit sha) of those repositories.

        The key folder is verified against its manifest before the model is loaded (see :func:`verify_key_folder`),
        and refused when it was built with a model of another configuration.
        """
        key_dir = resolve_key_folder(keys, revision=keys_revision)
        manifest = verify_key_folder(key_dir)
        indexes = {
            name: KeyIndex.load(key_dir / name, verify=False) for name in KEY_FEATURES if (key_dir / name).exists()
        }
        records = key_records(key_dir)
        calibration = read_json(key_dir / CALIBRATION_FILE, "the calibration")
        network, processor = load_pretrained(model, revision=model_revision)
        built_with = manifest.get("model", {}).get("config_sha256")
        if built_with is not None and built_with != config_hash(network):
            raise BioscanInputError(
                f"{key_dir}: built with another model ({manifest['model'].get('name_or_path')}, config "
                f"{built_with[:12]}) than {model} (config {config_hash(network)[:12]}); rebuild the keys with it"
            )
        return cls(network, processor, indexes, calibration, records, manifest.get(SEAL_KEY))

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
        hits = self._barcode_hits(barcodes, names) if barcodes else None
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
                    **(hits(q, int(row)) if hits else {}),
                )
                for j, row in enumerate(found.indices[q])
            ]
            answers.append(Identification(searched, key_feature, ranks, deepest, not ranks[-1].confident, neighbours))
        return answers

    def _barcode_hits(self, barcodes: Sequence[str], names: Sequence[Any] | None) -> Any:
        """``(query, key row) -> {percent_identity, overlap, bin}`` for barcode queries, or None when the key
        records hold no barcodes (a key folder built without records)."""
        from bioscan_clip.baselines.identity import alignment_identity
        from bioscan_clip.data.barcodes import clean_barcodes

        if self.records is None or "dna_barcode" not in self.records.column_names:
            return None
        queries = clean_barcodes(barcodes, names)
        wanted = [c for c in ("processid", "dna_barcode", "dna_bin") if c in self.records.column_names]
        columns = self.records.select_columns(wanted)

        def hit(query: int, row: int) -> dict[str, Any]:
            record = columns[row]
            if not record["dna_barcode"]:  # a key without barcode (an image-only record)
                return {"bin": record.get("dna_bin")}
            [key] = clean_barcodes([record["dna_barcode"]], [record.get("processid", row)])
            identity, overlap = alignment_identity(queries[query], key)
            return {"percent_identity": round(100 * identity, 2), "overlap": overlap, "bin": record.get("dna_bin")}

        return hit

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
