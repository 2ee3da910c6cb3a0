"""Identify specimens: a key folder (and, for images, the model that embedded it) answers "what is this, at each
rank, how sure".

A key folder (:mod:`bioscan_clip.identification.key_folder`) is verified before anything in it is used.

A *barcode* is answered by its hits, as BOLD's identification engine and BLAST answer: candidate keys from the
5-mer profile index and, with a model, the learned DNA index, re-ranked by alignment identity; the answer at each
rank, its confidence and its calibrated identity threshold are those of
:mod:`bioscan_clip.identification.barcode_search`. No model is needed for barcodes.

An *image* is answered as in the paper: the label of the nearest key (1-NN) at each rank. Its *confidence* is the
similarity-weighted share of the k nearest keys that agree with it. A rank is *confident* when the nearest key's
cosine similarity reaches that rank's threshold, calibrated so that confident predictions reach a target precision
(default 90 %) on queries whose answer at that rank is in the keys as well as absent from them (labels held out of
the keys; on validation queries, or leave-one-out over the keys without them: :mod:`bioscan_clip.identification.calibration`).
A photo with its barcode (one specimen) takes each rank from the barcode where it is confident there.

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
import pyarrow as pa
import torch
from PIL import Image

from bioscan_clip.data.barcodes import clean_barcodes
from bioscan_clip.features import (
    AVERAGED,
    DNA,
    INDEXED_FEATURES,
    KMER,
    TEXT,
    add_combined_features,
    embed_inputs,
    pair_name,
    query_feature,
)
from bioscan_clip.resolve import load_pretrained
from bioscan_clip.retrieval.key_index import KeyIndex
from bioscan_clip.safe_io import SEAL_KEY, folder_lock
from modeling_bioscanclip import BioscanClipModel, BioscanClipProcessor, BioscanInputError, load_image_safely
from modeling_bioscanclip.constants_bioscanclip import TAXONOMIC_RANKS

from .barcode_search import ALIGNMENT_PAIR, CANDIDATES, DEFAULT_HITS, BarcodeSearch, KeyBarcodes
from .calibration import DEFAULT_VOTE_TEMPERATURE, read_calibration
from .key_folder import CALIBRATION_FILE, config_hash, key_folder_snapshot, key_records
from .library import resolve_key_folder, resolve_key_library

logger = logging.getLogger(__name__)

DEFAULT_NEIGHBOURS = 5  # nearest keys of an image query, returned and voting on its confidence
HITS_FEATURE = "dna (alignment hits)"  # key_feature of a barcode answered by its hits


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


def _answer(
    searched: str, key_feature: str, ranks: list[RankPrediction], neighbours: list[Neighbour]
) -> Identification:
    """An identification from its rank calls: the deepest confident rank (ranks run from order to species; stop at
    the first unsure one) and the unknown-species flag (species not confident)."""
    deepest = None
    for prediction in ranks:
        if not prediction.confident:
            break
        deepest = prediction.rank
    return Identification(searched, key_feature, ranks, deepest, not ranks[-1].confident, neighbours)


def _paired(by_barcode: Identification, by_both: Identification) -> Identification:
    """One specimen's photo and barcode: per rank the barcode's call where confident, else the averaged image+DNA
    embedding's where confident, else the barcode's; the barcode's hits as neighbours."""
    ranks = []
    for barcode_call, both_call in zip(by_barcode.ranks, by_both.ranks, strict=True):
        ranks.append(barcode_call if barcode_call.confident or not both_call.confident else both_call)
    return _answer(AVERAGED, f"{HITS_FEATURE} + {AVERAGED}", ranks, by_barcode.neighbours)


class Identifier:
    """A model, its processor and a key folder, ready to identify queries.

    Example (after the main job)::

        identifier = Identifier.load("runs/quickstart/model", "runs/quickstart/keys")
        [answer] = identifier.identify(images=["specimen.jpg"])
        answer.deepest_confident_rank, answer.ranks[-1].label
    """

    def __init__(
        self,
        model: BioscanClipModel | None,
        processor: BioscanClipProcessor | None,
        indexes: dict[str, KeyIndex],
        calibration: dict[str, Any],
        records: datasets.Dataset | None = None,
        keys_manifest_sha256: str | None = None,
    ) -> None:
        self.model = model.eval() if model is not None else None
        self.processor = processor
        self.indexes = indexes
        self.calibration = calibration
        self.records = records
        self.keys_manifest_sha256 = keys_manifest_sha256
        self.barcode_search = None  # barcodes are answered by their hits where the keys hold barcodes
        if KMER in indexes and records is not None and "dna_barcode" in records.column_names:
            self.barcode_search = BarcodeSearch(
                KeyBarcodes(records.data.column("dna_barcode")),
                indexes[KMER],
                indexes.get(DNA) if model is not None else None,
                thresholds=calibration.get("thresholds", {}).get(ALIGNMENT_PAIR),
            )

    @property
    def provenance(self) -> dict[str, str]:
        """What made the answers, for the record beside them: the package version, the model (its folder or Hub id)
        and Hub revision, and the sealed sha256 of the key folder's manifest ("none" where unknown)."""
        import importlib.metadata

        config = self.model.config if self.model is not None else None
        return {
            "bioscan_clip_version": importlib.metadata.version("bioscan-clip"),
            "model": str(getattr(config, "_name_or_path", "") or "none"),
            "model_revision": str(getattr(config, "_commit_hash", None) or "none"),
            "keys_manifest_sha256": self.keys_manifest_sha256 or "none",
        }

    @classmethod
    def load(
        cls,
        model: str | Path | None,
        keys: str | Path,
        *,
        model_revision: str | None = None,
        keys_revision: str | None = None,
    ) -> Identifier:
        """Loads a model and a key folder written by :func:`build_key_folder`.

        Args:
            model: a saved model folder or a Hub model repository id (:func:`bioscan_clip.resolve.load_pretrained`),
                or None: barcodes only, answered from the keys' barcodes (5-mer candidates and alignment).
            keys: a key folder, or a key library (its folder or Hub dataset repository id; its ``keys/`` folder is
                used, its model is not: see :meth:`from_pretrained` for that), through
                :func:`~bioscan_clip.identification.library.resolve_key_folder`.
            model_revision, keys_revision: Hub revisions (branch, tag or commit sha) of those repositories.

        The key folder is verified against its manifest before the model is loaded (see :func:`verify_key_folder`),
        and refused when it was built with a model of another configuration. A rebuild swapped in meanwhile (``index
        --out`` the same folder) gives this identifier the old build or the new one, whole
        (:func:`~bioscan_clip.identification.key_folder.key_folder_snapshot`); it keeps the one it loaded.
        """
        # A local folder is not resolved in the instant between the two renames of a swap (it would look absent).
        with folder_lock(Path(keys).expanduser()):
            key_dir = resolve_key_folder(keys, revision=keys_revision)
        with key_folder_snapshot(key_dir) as manifest:  # every part of the build verified, even during a rebuild
            indexes = {
                name: KeyIndex.load(key_dir / name, verify=False)
                for name in INDEXED_FEATURES
                if (key_dir / name).exists()
            }
            records = key_records(key_dir)
            calibration = read_calibration(key_dir / CALIBRATION_FILE)
        if model is None:
            if KMER not in indexes:
                raise BioscanInputError(f"{key_dir}: holds no barcodes to identify against without a model; give one")
            return cls(None, None, indexes, calibration, records, manifest.get(SEAL_KEY))
        network, processor = load_pretrained(model, revision=model_revision)
        built_with = (manifest.get("model") or {}).get("config_sha256")
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
        if self.model is None:
            raise BioscanInputError(
                "this identifier has no model: it identifies barcodes against the key folder's barcodes only; "
                "give a model (--model) to identify images"
            )
        # As the keys were embedded: the model's DNA reading frames averaged (features.embed_inputs).
        embedded = embed_inputs(self.model, self.processor, images=images, barcodes=barcodes, names=names)
        return add_combined_features({name: value.numpy() for name, value in embedded.items()})

    def identify(
        self,
        images: Sequence[Any] | None = None,
        barcodes: Sequence[str] | None = None,
        *,
        k: int | None = None,
        key_feature: str | None = None,
        restrict: Mapping[str, str | Sequence[str]] | None = None,
        names: Sequence[Any] | None = None,
    ) -> list[Identification]:
        """Identifies each query (an image, a barcode, or an image with its barcode).

        A barcode is answered by its hits (:mod:`~bioscan_clip.identification.barcode_search`: candidate keys from
        the 5-mer and, with a model, the DNA index, re-ranked by alignment identity); an image by the nearest keys of
        its embedding. An image with its barcode (one specimen) takes, at each rank, the barcode's call where it is
        confident, else the averaged image+DNA embedding's where that is confident, else the barcode's.

        Args:
            images, barcodes: the queries; given together, they are paired row by row.
            k (`int`, *optional*): hits (barcodes, default 25, as BOLD lists) or nearest keys (images, default 5)
                returned; for images also the keys of the confidence vote. Fewer when fewer keys match ``restrict``
                (a species with 4 keys is answered with those 4, not refused).
            key_feature (`str`, *optional*): search other keys than the query's own modality, e.g. ``"dna"`` for
                image queries (the cross-modal view); ``"dna"`` for barcodes is the default hit search. A key
                folder of text keys only (a checklist, ``bioscan-clip index --checklist``) is searched with
                ``"text"`` by default.
            restrict (`dict`, *optional*): search only keys with these taxa, e.g. ``{"order": ["Diptera"]}``.
            names (`Sequence`, *optional*): one name per query, used by error messages.
        """
        if not images and not barcodes:
            raise BioscanInputError("expected images and/or barcodes to identify, got neither")
        if k is not None and (isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1):
            raise BioscanInputError(f"k must be a positive int, got {k!r}")
        by_hits = bool(barcodes) and key_feature in (None, DNA) and self.barcode_search is not None
        features = self.embed(images, barcodes, names) if (images or not by_hits or self._dna_candidates) else {}
        if not by_hits:
            return self._identify_by_embedding(features, key_feature, DEFAULT_NEIGHBOURS if k is None else k, restrict)
        hit_answers = self._identify_by_hits(
            barcodes, features.get(DNA), DEFAULT_HITS if k is None else k, restrict, names
        )
        if not images:
            return hit_answers
        specimen = self._identify_by_embedding(features, None, DEFAULT_NEIGHBOURS if k is None else k, restrict)
        return [_paired(by_barcode, by_both) for by_barcode, by_both in zip(hit_answers, specimen, strict=True)]

    @property
    def _dna_candidates(self) -> bool:
        """Whether barcode candidates come from the model's DNA index too (keys embedded by the model loaded)."""
        return self.model is not None and DNA in self.indexes

    def _identify_by_embedding(
        self,
        features: Mapping[str, np.ndarray],
        key_feature: str | None,
        k: int,
        restrict: Mapping[str, str | Sequence[str]] | None,
    ) -> list[Identification]:
        """Answers from the nearest keys of the query embedding (the paper's 1-NN, with the vote confidence)."""
        searched = query_feature(features)
        if key_feature is None:  # a checklist's key folder holds names only: every query is searched against them
            key_feature = TEXT if set(self.indexes) == {TEXT} else searched
        if key_feature not in self.indexes or key_feature == KMER:
            embedded = sorted(set(self.indexes) - {KMER})
            raise BioscanInputError(f"no {key_feature} keys in this key folder; it has {embedded}")
        index = self.indexes[key_feature]
        rows = None if restrict is None else index.restrict_ids(restrict)  # the restriction resolved once
        if rows is not None and k > len(rows):  # a rare taxon is answered with the keys it has, not refused
            logger.info("k=%d: only %d keys match restrict=%r; answering with those", k, len(rows), dict(restrict))
        found = index.search_labels(features[searched], min(k, len(index) if rows is None else len(rows)), rows=rows)
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
            neighbours = [
                Neighbour(
                    row=int(row),
                    processid=ids[int(row)],
                    similarity=float(similarities[j]),
                    taxonomy={rank: found.labels[rank][q][j] for rank in TAXONOMIC_RANKS},
                )
                for j, row in enumerate(found.indices[q])
            ]
            answers.append(_answer(searched, key_feature, ranks, neighbours))
        return answers

    def _identify_by_hits(
        self,
        barcodes: Sequence[str],
        dna_vectors: np.ndarray | None,
        k: int,
        restrict: Mapping[str, str | Sequence[str]] | None,
        names: Sequence[Any] | None,
    ) -> list[Identification]:
        """Answers from the barcode hits: per rank the call of :meth:`BarcodeSearch.calls`, the top ``k`` hits as
        neighbours with their identity, overlap and BIN."""
        search = self.barcode_search
        queries = clean_barcodes(barcodes, names)
        all_hits = search.hits(queries, dna_vectors, restrict=restrict, count=max(CANDIDATES, k))  # k hits to list
        ids = search.kmer.column("processid")
        shown = np.concatenate([hits.rows[:k] for hits in all_hits] + [np.zeros(0, dtype=np.int64)])
        bins = self._record_values("dna_bin", shown)
        answers = []
        for hits in all_hits:
            ranks = [
                RankPrediction(rank, call.label, call.agreement, call.identity, call.confident)
                for rank, call in search.calls(hits).items()
            ]
            neighbours = [
                Neighbour(
                    row=int(row),
                    processid=ids[int(row)],
                    similarity=round(float(identity), 4),
                    taxonomy={rank: search.labels[rank][int(row)] for rank in TAXONOMIC_RANKS},
                    percent_identity=round(100 * float(identity), 2),
                    overlap=int(overlap),
                    bin=bins.get(int(row)),
                )
                for row, identity, overlap in zip(hits.rows[:k], hits.identity[:k], hits.overlap[:k], strict=True)
            ]
            answers.append(_answer(DNA, HITS_FEATURE, ranks, neighbours))
        return answers

    def _record_values(self, column: str, rows: np.ndarray) -> dict[int, Any]:
        """``row -> value`` of one key-record column for some rows ({} when the records lack it)."""
        if self.records is None or column not in self.records.column_names or not len(rows):
            return {}
        wanted = sorted({int(r) for r in rows})
        values = self.records.data.column(column).take(pa.array(wanted, type=pa.int64())).to_pylist()
        return dict(zip(wanted, values, strict=True))

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
    model: str | Path | None,
    keys: str | Path,
    images: Sequence[Any] | None = None,
    barcodes: Sequence[str] | None = None,
    **options: Any,
) -> list[Identification]:
    """Identifies queries against a key folder in one call (:meth:`Identifier.identify` takes the ``options``).
    Load an :class:`Identifier` once instead when identifying many batches."""
    return Identifier.load(model, keys).identify(images, barcodes, **options)
