"""A saved ``index.faiss`` checked against its manifest before faiss reads a byte of it.

faiss is not hardened against hostile files: its reader allocates whatever a length field says, and its search follows
the list ids and graph links a file stores without bounds checks (an IVF id of 10^12 or an HNSW link past the end is
a read out of bounds, a stored nprobe of 3.4e11 an allocation that aborts the process). So a key library from anyone
is walked here first, field by field in the order faiss writes it (``faiss/impl/index_write.cpp``), over a read-only
memory map and without allocating anything the file declares: every length must fit in the bytes that are left and
the structure must be exactly the one :mod:`~bioscan_clip.retrieval.index_types` builds for the manifest's index type
and parameters (dimension, key count, lists, sub-quantisers, graph degree, search settings); every id a list holds
and every graph link must be a row of the key table (each row exactly once in the lists). Only then is the file
handed to ``faiss.read_index``. Checking costs one pass over the ids and links, not over the vectors (measured
against rebuilding from the stored vectors in ``benchmarks/bench_untrusted_load.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from modeling_bioscanclip.errors_bioscanclip import BioscanInputError

METRIC_INNER_PRODUCT = 0  # faiss.METRIC_INNER_PRODUCT, as the header stores it
FAST_SCAN_BLOCK = 32  # keys per block of IVF-PQ fast-scan codes (faiss's bbs, the only value `index` builds)
BLOCK_CODE_SIZE = 2**64 - 1  # what block inverted lists store as their code size (faiss's "invalid": codes are packed)


class _Malformed(Exception):
    """What is wrong with the file, said once by :func:`check_index_file` with the folder and the part."""


class _Fields:
    """A cursor over the file's bytes: little-endian scalars and length-prefixed arrays, each checked to fit."""

    def __init__(self, data: np.ndarray) -> None:
        self.data, self.pos = data, 0

    def take(self, nbytes: int, what: str) -> np.ndarray:
        if nbytes < 0 or nbytes > self.data.size - self.pos:
            raise _Malformed(
                f"{what} needs {nbytes} bytes at offset {self.pos}, the file has {self.data.size - self.pos} left"
            )
        chunk = self.data[self.pos : self.pos + nbytes]
        self.pos += nbytes
        return chunk

    def scalar(self, dtype: str, what: str) -> int:
        kind = np.dtype(dtype)
        return self.take(kind.itemsize, what).view(kind)[0].item()

    def fourcc(self, what: str) -> str:
        return bytes(self.take(4, what)).decode("latin-1")

    def array(self, dtype: str, count: int, what: str) -> np.ndarray:
        kind = np.dtype(dtype)
        if count < 0 or count > (self.data.size - self.pos) // kind.itemsize:
            raise _Malformed(f"{what} declares {count} entries, more than the file holds")
        return self.take(count * kind.itemsize, what).view(kind)

    def vector(self, dtype: str, what: str, expected: int | None = None) -> np.ndarray:
        """A faiss ``WRITEVECTOR``: its length (uint64), then the elements."""
        count = self.scalar("<u8", f"{what} length")
        if expected is not None and count != expected:
            raise _Malformed(f"{what} has {count} entries, expected {expected}")
        return self.array(dtype, count, what)


def _expect(found: Any, expected: Any, what: str) -> None:
    if found != expected:
        raise _Malformed(f"{what} is {found!r}, the manifest says {expected!r}")


def _header(fields: _Fields, dim: int, ntotal: int, what: str) -> None:
    _expect(fields.scalar("<i4", f"{what} dimension"), dim, f"{what} dimension")
    _expect(fields.scalar("<i8", f"{what} ntotal"), ntotal, f"{what} vector count")
    fields.take(16, f"{what} header")  # two unused int64 fields
    _expect(fields.scalar("<u1", f"{what} is_trained"), 1, f"{what} is_trained")
    _expect(fields.scalar("<i4", f"{what} metric"), METRIC_INNER_PRODUCT, f"{what} metric (0 = inner product)")


def _flat(fields: _Fields, dim: int, ntotal: int, what: str) -> None:
    _expect(fields.fourcc(what), "IxFI", f"{what} type")
    _header(fields, dim, ntotal, what)
    fields.vector("<f4", f"{what} vectors", ntotal * dim)  # stored as floats: length in floats, then the bytes


def _ids_are_rows(ids: np.ndarray, count: int, what: str) -> None:
    """Every id a row of the key table, each row exactly once."""
    if ids.size != count:
        raise _Malformed(f"{what} hold {ids.size} ids, the key table {count} rows")
    if count and (int(ids.min()) < 0 or int(ids.max()) >= count):
        raise _Malformed(f"{what} hold ids outside [0, {count}) (from {int(ids.min())} to {int(ids.max())})")
    if count and int(np.bincount(ids, minlength=count).max()) != 1:
        raise _Malformed(f"{what} hold some key rows twice (and others not at all)")


def _array_lists(fields: _Fields, nlist: int, code_size: int, count: int) -> None:
    _expect(fields.fourcc("inverted lists"), "ilar", "inverted lists type")
    _expect(fields.scalar("<u8", "inverted lists nlist"), nlist, "inverted lists nlist")
    _expect(fields.scalar("<u8", "inverted lists code size"), code_size, "inverted list code size")
    layout = fields.fourcc("inverted lists layout")
    if layout == "full":
        sizes = fields.vector("<u8", "inverted list sizes", nlist).astype(np.int64)
    elif layout == "sprs":
        pairs = fields.vector("<u8", "inverted list sizes")
        if pairs.size % 2 or (pairs.size and int(pairs[0::2].max()) >= nlist):
            raise _Malformed("inverted list sizes name lists outside [0, nlist)")
        sizes = np.zeros(nlist, dtype=np.int64)
        sizes[pairs[0::2].astype(np.int64)] = pairs[1::2].astype(np.int64)
    else:
        raise _Malformed(f"inverted lists layout is {layout!r}, expected 'full' or 'sprs'")
    if sizes.size and (int(sizes.max()) > count or int(sizes.sum()) != count):
        raise _Malformed(f"inverted lists hold {int(sizes.sum())} entries, the key table {count} rows")
    ids = []
    for size in sizes[sizes > 0].tolist():
        fields.array("<u1", size * code_size, "inverted list codes")
        ids.append(fields.array("<i8", size, "inverted list ids"))
    _ids_are_rows(np.concatenate(ids) if ids else np.zeros(0, np.int64), count, "the inverted lists")


def _block_lists(fields: _Fields, nlist: int, m2: int, count: int) -> None:
    _expect(fields.fourcc("inverted lists"), "ilbl", "inverted lists type")
    _expect(fields.scalar("<u8", "inverted lists nlist"), nlist, "inverted lists nlist")
    _expect(fields.scalar("<u8", "inverted lists code size"), BLOCK_CODE_SIZE, "inverted list code size")
    _expect(fields.scalar("<u8", "keys per block"), FAST_SCAN_BLOCK, "keys per code block")
    block_size = FAST_SCAN_BLOCK * m2 // 2  # 4-bit codes of M2 sub-quantisers, 32 keys interleaved
    _expect(fields.scalar("<u8", "block bytes"), block_size, "bytes per code block")
    ids, total = [], 0
    for _ in range(nlist):
        listed = fields.vector("<i8", "inverted list ids")
        total += listed.size
        if total > count:
            raise _Malformed(f"inverted lists hold more entries than the key table's {count} rows")
        blocks = -(-listed.size // FAST_SCAN_BLOCK)
        fields.vector("<u1", "inverted list codes", blocks * block_size)
        ids.append(listed)
    _ids_are_rows(np.concatenate(ids) if ids else np.zeros(0, np.int64), count, "the inverted lists")


def _ivf_header(fields: _Fields, dim: int, count: int, params: Mapping[str, Any]) -> None:
    _header(fields, dim, count, "the IVF index")
    _expect(fields.scalar("<u8", "nlist"), params["nlist"], "nlist")
    _expect(fields.scalar("<u8", "nprobe"), params["nprobe"], "nprobe")
    _flat(fields, dim, params["nlist"], "the IVF quantizer")
    _expect(fields.scalar("<u1", "direct map type"), 0, "direct map type")
    fields.vector("<i8", "direct map", 0)


def _pq(fields: _Fields, dim: int, params: Mapping[str, Any]) -> None:
    _expect(fields.scalar("<u8", "PQ dimension"), dim, "PQ dimension")
    _expect(fields.scalar("<u8", "PQ sub-quantisers"), params["pq_m"], "pq_m")
    _expect(fields.scalar("<u8", "PQ bits"), params["pq_nbits"], "pq_nbits")
    fields.vector("<f4", "PQ centroids", dim * 2 ** params["pq_nbits"])


def ivf_layout(fields: _Fields, dim: int, count: int, params: Mapping[str, Any]) -> None:
    _expect(fields.fourcc("index type"), "IwFl", "index.faiss type (IVF-Flat)")
    _ivf_header(fields, dim, count, params)
    _array_lists(fields, params["nlist"], 4 * dim, count)


def ivfpq_layout(fields: _Fields, dim: int, count: int, params: Mapping[str, Any]) -> None:
    fast = params["pq_fast_scan"]
    _expect(fields.fourcc("index type"), "IwPf" if fast else "IwPQ", "index.faiss type (IVF-PQ)")
    _ivf_header(fields, dim, count, params)
    # faiss encodes IVF-PQ residuals, but the fast-scan inner-product variant the vectors themselves
    _expect(fields.scalar("<u1", "by_residual"), 0 if fast else 1, "by_residual")
    code_size = (params["pq_m"] * params["pq_nbits"] + 7) // 8
    _expect(fields.scalar("<u8", "code size"), code_size, "PQ code size")
    if not fast:
        _pq(fields, dim, params)
        _array_lists(fields, params["nlist"], code_size, count)
        return
    m2 = params["pq_m"] + params["pq_m"] % 2
    _expect(fields.scalar("<i4", "bbs"), FAST_SCAN_BLOCK, "fast-scan block size")
    _expect(fields.scalar("<u8", "M2"), m2, "fast-scan M2")
    _expect(fields.scalar("<i4", "implem"), 0, "fast-scan implementation")
    _expect(fields.scalar("<u8", "qbs2"), 0, "fast-scan query block")
    _pq(fields, dim, params)
    _block_lists(fields, params["nlist"], m2, count)


def hnsw_layout(fields: _Fields, dim: int, count: int, params: Mapping[str, Any]) -> None:
    _expect(fields.fourcc("index type"), "IHNf", "index.faiss type (HNSW-Flat)")
    _header(fields, dim, count, "the HNSW index")
    probas = fields.vector("<f8", "level probabilities")
    degree = params["hnsw_m"]
    cumulative = fields.vector("<i4", "neighbours per level", probas.size + 1)
    expected = np.concatenate([[0], 2 * degree + degree * np.arange(probas.size)]) if probas.size else [0]
    if probas.size == 0 or not np.array_equal(cumulative, expected):
        raise _Malformed(f"the HNSW neighbours per level are not those of hnsw_m={degree}")
    levels = fields.vector("<i4", "node levels", count)
    if count and (int(levels.min()) < 1 or int(levels.max()) > probas.size):
        raise _Malformed(f"the HNSW node levels are outside [1, {probas.size}]")
    offsets = fields.vector("<u8", "node offsets", count + 1)
    links = fields.vector("<i4", "graph links")
    spans = cumulative[levels].astype(np.uint64)
    if offsets[0] != 0 or not np.array_equal(np.diff(offsets), spans) or int(offsets[-1]) != links.size:
        raise _Malformed("the HNSW node offsets do not match the node levels and the links")
    if links.size and (int(links.min()) < -1 or int(links.max()) >= count):
        raise _Malformed(f"the HNSW graph links keys outside [0, {count})")
    entry = fields.scalar("<i4", "entry point")
    max_level = fields.scalar("<i4", "max level")
    if not 0 <= entry < count or max_level != int(levels[entry]) - 1 or max_level != int(levels.max()) - 1:
        raise _Malformed(f"the HNSW entry point {entry} at level {max_level} is not a key of the top level")
    for level in range(1, max_level + 1):  # a link at a level must reach a key that has that level
        nodes = np.flatnonzero(levels > level)
        slots = offsets[nodes].astype(np.int64)[:, None] + np.arange(cumulative[level], cumulative[level + 1])
        linked = links[slots]
        if (levels[np.maximum(linked, 0)][linked >= 0] <= level).any():
            raise _Malformed(f"the HNSW graph links level {level} to keys below it")
    _expect(fields.scalar("<i4", "efConstruction"), params["ef_construction"], "ef_construction")
    _expect(fields.scalar("<i4", "efSearch"), params["ef_search"], "ef_search")
    fields.scalar("<i4", "upper beam")  # deprecated, unused
    _flat(fields, dim, count, "the HNSW storage")


Layout = Callable[[_Fields, int, int, Mapping[str, Any]], None]


def flat_layout(fields: _Fields, dim: int, count: int, params: Mapping[str, Any]) -> None:
    """``faiss.IndexFlatIP`` of ``count`` vectors."""
    _flat(fields, dim, count, "index.faiss")


def check_index_file(
    path: Path, layout: Layout, index_type: str, dim: int, count: int, params: Mapping[str, Any]
) -> None:
    """Raises `BioscanInputError` naming ``path`` unless it is, field by field (``layout``, from the index type's
    entry), the faiss index that ``index`` writes for ``index_type`` with ``params`` over ``count`` keys of ``dim``,
    every id and graph link a key row."""
    try:
        data = np.memmap(path, dtype=np.uint8, mode="r") if path.stat().st_size else np.zeros(0, np.uint8)
        fields = _Fields(data)
        layout(fields, dim, count, params)
        if fields.pos != data.size:
            raise _Malformed(f"{data.size - fields.pos} bytes follow the index")
    except _Malformed as error:
        raise BioscanInputError(
            f"{path}: not the {index_type} index its manifest declares: {error}; rebuild it"
        ) from None
