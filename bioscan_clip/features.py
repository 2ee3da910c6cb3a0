"""The one place that knows the modalities, the features built from them and the query -> key pairs.

A *modality* is a model tower (``image``, ``dna``, ``text``). A *feature* is a kind of embedding a query or a key
can have: one modality's, or a combination of the image and DNA embeddings of the same specimen (``averaged``,
``concatenated``), or, on the key side only, ``all`` (every key's image, DNA and text embeddings stacked). A
*pair* is (query feature, key feature), as in the paper's tables.

Evaluation, indexing, identification, training validation and the demo import these names; none repeats them.
This module also embeds whole datasets, the one step they all share.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from bioscan_clip.data.specimens import SpecimenDataset, model_inputs
from bioscan_clip.sharding import usable_cores
from modeling_bioscanclip import BioscanInputError
from modeling_bioscanclip.configuration_bioscanclip import MODALITIES
from modeling_bioscanclip.constants_bioscanclip import TAXONOMIC_RANKS

IMAGE, DNA, TEXT = MODALITIES
AVERAGED = "averaged"  # mean of a specimen's image and DNA embeddings, unit length again
CONCATENATED = "concatenated"  # their concatenation, scaled to unit length
ALL = "all"  # key side only: the image, DNA and text embeddings of every key, stacked
COMBINED_FEATURES = (AVERAGED, CONCATENATED)
FEATURES = (*MODALITIES, *COMBINED_FEATURES)

Pair = tuple[str, str]

# The paper's query -> key combinations.
PAPER_PAIRS: tuple[Pair, ...] = (
    (IMAGE, IMAGE),
    (IMAGE, DNA),
    (IMAGE, TEXT),
    (DNA, DNA),
    (DNA, TEXT),
    (AVERAGED, AVERAGED),
    (CONCATENATED, CONCATENATED),
    (IMAGE, ALL),
    (DNA, ALL),
)
# Scored on the validation queries during training to pick the best checkpoint (the paper's main table).
VALIDATION_PAIRS: tuple[Pair, ...] = ((IMAGE, IMAGE), (DNA, DNA), (IMAGE, DNA), (IMAGE, TEXT), (DNA, TEXT))
# A key folder holds one index per key feature, and confidence thresholds for the pairs a user queries.
KEY_FEATURES = (IMAGE, DNA, TEXT, AVERAGED)
# Key side only, needs no model: the 5-mer profiles of the keys' barcodes, the barcode identifier's model-free
# candidates (bioscan_clip.identification.barcode_search).
KMER = "kmer"
INDEXED_FEATURES = (*KEY_FEATURES, KMER)
CALIBRATED_PAIRS: tuple[Pair, ...] = ((IMAGE, IMAGE), (DNA, DNA), (AVERAGED, AVERAGED), (IMAGE, DNA))


def pair_name(pair: Pair) -> str:
    """``"image->dna"``: how a pair is named in results, calibration files and tables."""
    return f"{pair[0]}->{pair[1]}"


def query_feature(features: Sequence[str]) -> str:
    """The feature a specimen query is searched with: image and barcode together when it has both."""
    if IMAGE in features and DNA in features:
        return AVERAGED
    for name in (IMAGE, DNA, TEXT):
        if name in features:
            return name
    raise ValueError(f"a query needs an image, a barcode or a text; got features {sorted(features)}")


def add_combined_features(embeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Adds the ``averaged`` and ``concatenated`` image+DNA features when both embeddings exist."""
    features = dict(embeds)
    if IMAGE in features and DNA in features:
        averaged = features[IMAGE] + features[DNA]
        features[AVERAGED] = averaged / np.linalg.norm(averaged, axis=1, keepdims=True).clip(1e-12)
        features[CONCATENATED] = np.concatenate([features[IMAGE], features[DNA]], axis=1) / np.sqrt(2)
    return features


def available_pairs(features: Sequence[str], pairs: Sequence[Pair] = PAPER_PAIRS) -> list[Pair]:
    """The pairs whose query and key features exist (``all`` needs every modality)."""
    present = set(features)
    if set(MODALITIES) <= present:
        present.add(ALL)
    return [pair for pair in pairs if pair[0] in present and pair[1] in present]


def key_matrix(
    features: Mapping[str, np.ndarray], labels: Mapping[str, list[Any]], name: str
) -> tuple[np.ndarray, Mapping[str, list[Any]]]:
    """The key embeddings and labels of one key feature (``all`` stacks the modalities and repeats the labels)."""
    if name != ALL:
        return features[name], labels
    stacked = np.concatenate([features[m] for m in MODALITIES])
    return stacked, {column: list(values) * len(MODALITIES) for column, values in labels.items()}


def labels_of(dataset: SpecimenDataset) -> dict[str, list[Any]]:
    """``processid`` and the taxonomic ranks of a dataset's records, in dataset order."""
    return {column: dataset.metadata.get(column, [None] * len(dataset)) for column in ("processid", *TAXONOMIC_RANKS)}


class _Failed:
    """A user-input error raised in a loader worker, carried to the main process to be raised there as itself
    (the DataLoader would otherwise re-raise it with the worker's traceback in its message)."""

    def __init__(self, error: BioscanInputError) -> None:
        self.error = error


class _Guarded(torch.utils.data.Dataset):
    def __init__(self, dataset: torch.utils.data.Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        try:
            return self.dataset[index]
        except BioscanInputError as error:
            return _Failed(error)


def _collate_guarded(items: list[Any]) -> Any:
    failed = next((item for item in items if isinstance(item, _Failed)), None)
    return failed or torch.utils.data.default_collate(items)


def loader_workers(dataset: SpecimenDataset, batch_size: int, processes: int = 1) -> int:
    """Loader workers for embedding: images are decoded and resized in workers, overlapped with the forward (one per
    two cores of this process's share, at most 8); none for barcodes and text (tokenised once, beforehand) or for
    a single batch (nothing to overlap)."""
    if dataset.images is None or len(dataset) <= batch_size:
        return 0
    return min(8, max(1, usable_cores() // max(1, processes) // 2))


def dna_frames_of(model: Any) -> int:
    """The reading frames a model's DNA embedding averages at inference: its config's ``dna_frames`` (1 when
    absent, as in converted CLIBD weights, whose embeddings stay exactly the original's)."""
    return int(getattr(getattr(model, "config", None), "dna_frames", 1) or 1)


def _checked_frames(model: Any, dna_frames: int | None) -> int:
    frames = dna_frames_of(model) if dna_frames is None else int(dna_frames)
    if frames < 1:
        raise ValueError(f"dna_frames: expected >= 1, got {frames}")
    return frames


@torch.inference_mode()
def embed_inputs(
    model: Any,
    processor: Any,
    *,
    images: Sequence[Any] | None = None,
    barcodes: Sequence[str] | None = None,
    names: Sequence[Any] | None = None,
    dna_frames: int | None = None,
) -> dict[str, torch.Tensor]:
    """Unit-length ``image`` and ``dna`` embeddings of raw queries (CPU, float32), made as :func:`embed_dataset`
    makes a dataset's: the processor gives each barcode in the model's reading frames (see ``dna_frames`` there)
    and the model averages them, so that queries and keys embedded either way compare. Errors name a query by
    ``names`` when given, else by its position."""
    names = list(names) if names is not None else None
    frames = _checked_frames(model, dna_frames)
    inputs = processor(
        images=list(images) if images else None,
        dna=list(barcodes) if barcodes else None,
        names=names,
        dna_frames=frames,
    )
    device = next(model.parameters()).device
    embeds = model.embed(**{name: value.to(device) for name, value in inputs.items()})
    return {name: value.float().cpu() for name, value in embeds.items()}


@torch.inference_mode()
def embed_dataset(
    model: Any,
    dataset: SpecimenDataset,
    *,
    batch_size: int = 64,
    num_workers: int | None = None,
    accelerator: Any = None,
    description: str = "embedding",
    show_progress: bool = True,
    combined: bool = True,
    dna_frames: int | None = None,
    out_dir: str | os.PathLike[str] | None = None,
    features: Sequence[str] | None = None,
) -> dict[str, np.ndarray]:
    """Unit-length embeddings of every modality of ``dataset`` (and, with ``combined``, the combined features),
    in dataset order.

    ``out_dir``: each feature is written, batch by batch, to ``out_dir/<feature>.npy`` (its whole size reserved at
    the first batch, see :class:`FeatureFile`) and returned memory-mapped (read-only), so that memory stays one batch
    whatever the number of records (a BIOSCAN-5M key set's four 768-d features are about 60 GB); without it they are
    gathered in memory. ``features``: only these are kept (None:
    all). ``out_dir`` does not combine with an ``accelerator``.

    With an ``accelerator``, the work is sharded over processes and gathered (``gather_for_metrics`` drops the
    duplicates that pad the last batch); every process gets the full result. ``num_workers`` None: see
    :func:`loader_workers`.

    ``dna_frames`` (None: the model's :func:`dna_frames_of`): with F > 1, a barcode's DNA embedding is the mean of
    the embeddings of the barcode read from each of its first F bases (``barcode[s:]``, s = 0..F-1), unit length
    again: the non-overlapping 5-mers then see every reading frame, so where a barcode starts matters much less.
    The model computes it (``dna_input_ids`` of shape (batch, F, seq), made per batch by
    :meth:`SpecimenDataset.dna_inputs`), exactly as for a Hub user of the model; it costs F DNA sequences per
    record.
    """
    if out_dir is not None and accelerator is not None:
        raise ValueError("embed_dataset: out_dir does not combine with an accelerator (one writer per file)")
    if num_workers is None:
        num_workers = loader_workers(dataset, batch_size, 1 if accelerator is None else accelerator.num_processes)
    loader = torch.utils.data.DataLoader(
        _Guarded(dataset) if num_workers else dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=_collate_guarded if num_workers else None,
        prefetch_factor=4 if num_workers else None,
    )
    core = model
    if accelerator is not None:
        loader = accelerator.prepare(loader)
        core = accelerator.unwrap_model(model)
        show_progress = show_progress and accelerator.is_local_main_process
    frames = _checked_frames(core, dna_frames)
    was_training = core.training
    core.eval()
    parts: dict[str, list[torch.Tensor]] = {}
    files: dict[str, FeatureFile] = {}
    try:
        for batch in tqdm(loader, desc=description, disable=not show_progress, leave=False):
            if isinstance(batch, _Failed):
                raise batch.error
            device = next(core.parameters()).device  # a prepared loader has moved the batch there already
            inputs = model_inputs(batch)
            if frames > 1 and "dna_input_ids" in inputs:  # the stored ids are one frame: the batch's in all frames
                inputs.update(dataset.dna_inputs(batch["index"].tolist(), frames))
            embeds = core.embed(**{name: value.to(device) for name, value in inputs.items()})
            embeds["index"] = batch["index"]
            if accelerator is not None:
                embeds = accelerator.gather_for_metrics(embeds)
            if out_dir is None:
                for name, value in embeds.items():
                    parts.setdefault(name, []).append(value.float().cpu())
                continue
            rows = embeds.pop("index").cpu().numpy()
            batch_features = {name: value.float().cpu().numpy() for name, value in embeds.items()}
            for name, matrix in _kept(add_combined_features(batch_features) if combined else batch_features, features):
                if name not in files:
                    files[name] = FeatureFile(_feature_file(out_dir, name), len(dataset), matrix.shape[1])
                files[name].write_rows(rows, matrix)
    finally:
        for file in files.values():
            file.close()
    core.train(was_training)
    if out_dir is not None:
        return {name: np.load(_feature_file(out_dir, name), mmap_mode="r") for name in files}
    if not parts:
        return {}
    order = torch.argsort(torch.cat(parts.pop("index")))
    embeds = {name: torch.cat(values)[order].numpy() for name, values in parts.items()}
    return dict(_kept(add_combined_features(embeds) if combined else embeds, features))


class FeatureFile:
    """A ``(rows, dim)`` float32 ``.npy`` written with ordinary writes at row offsets, its whole size reserved when
    it is created.

    Not a writable memory map: a store into a mapped page that the filesystem cannot back (a full disk, a quota)
    kills the process with SIGBUS, with no message and nothing cleaned up. Here the space is reserved up front
    (``posix_fallocate``), so a disk too small fails at the first batch as an ``OSError`` naming the file, and a
    filesystem that cannot reserve still reports a failed write as one.
    """

    def __init__(self, path: str | os.PathLike[str], rows: int, dim: int) -> None:
        self.path, self.row_bytes = os.fspath(path), dim * 4
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype("<f4")), "fortran_order": False, "shape": (rows, dim)}
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            with os.fdopen(os.dup(self.fd), "wb") as handle:
                np.lib.format.write_array_header_1_0(handle, header)
                self.offset = handle.tell()
            self._reserve(self.offset + rows * self.row_bytes)
        except BaseException:
            self.close()
            raise

    def _reserve(self, size: int) -> None:
        try:
            os.posix_fallocate(self.fd, 0, size)
        except OSError as error:
            if error.errno not in (errno.EOPNOTSUPP, errno.EINVAL):  # cannot reserve here: the writes still report
                raise OSError(error.errno, error.strerror, self.path) from None

    def write_rows(self, rows: np.ndarray, matrix: np.ndarray) -> None:
        """Writes ``matrix[i]`` as row ``rows[i]`` (one write when the rows are consecutive, as without shuffling)."""
        data = np.ascontiguousarray(matrix, dtype="<f4")
        if len(rows) and np.array_equal(rows, np.arange(rows[0], rows[0] + len(rows))):
            self._write_at(int(rows[0]), data)
        else:
            for row, vector in zip(rows.tolist(), data, strict=True):
                self._write_at(int(row), vector)

    def _write_at(self, row: int, data: np.ndarray) -> None:
        view, position = memoryview(data).cast("B"), self.offset + row * self.row_bytes
        try:
            while view:
                written = os.pwrite(self.fd, view, position)
                view, position = view[written:], position + written
        except OSError as error:
            raise OSError(error.errno, error.strerror, self.path) from None

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _feature_file(out_dir: str | os.PathLike[str], name: str) -> str:
    return os.path.join(out_dir, f"{name}.npy")


def _kept(embeds: Mapping[str, np.ndarray], features: Sequence[str] | None) -> list[tuple[str, np.ndarray]]:
    return [(name, matrix) for name, matrix in embeds.items() if features is None or name in features]
