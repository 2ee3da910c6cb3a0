"""Key and query vectors: checks, chunked L2 normalisation, the build's temporary vector file, faiss's sgemm blocks.

Memory at BIOSCAN-5M scale (5.15M keys of 768 floats = 15.8 GB per feature): vectors are validated and normalised in
float32 chunks of :data:`NORMALIZE_CHUNK_ROWS` rows, never as a whole-array float64 or float32 copy, and an
approximate build streams them to an unlinked temporary ``.npy`` (:class:`VectorFile`) instead of holding them in RAM.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from modeling_bioscanclip.errors_bioscanclip import BioscanInputError

# Rows validated / normalised at a time: the only full-width temporaries a build makes are this many rows.
NORMALIZE_CHUNK_ROWS = 16_384
# faiss's exhaustive search multiplies 4096 queries by 1024 keys at a time: at 768-d that small key block runs sgemm
# at ~0.6x of its large-block rate. 1024 x 16384 blocks (a 64 MiB score block) measured 1.7x faster on 2 cores.
BLAS_QUERY_BLOCK, BLAS_KEY_BLOCK = 1024, 16_384


@contextlib.contextmanager
def large_blas_blocks() -> Iterator[None]:
    """faiss's (process-wide) sgemm block sizes raised for the duration of one search, then put back."""
    previous = (faiss.cvar.distance_compute_blas_query_bs, faiss.cvar.distance_compute_blas_database_bs)
    faiss.cvar.distance_compute_blas_query_bs, faiss.cvar.distance_compute_blas_database_bs = (
        BLAS_QUERY_BLOCK,
        BLAS_KEY_BLOCK,
    )
    try:
        yield
    finally:
        faiss.cvar.distance_compute_blas_query_bs, faiss.cvar.distance_compute_blas_database_bs = previous


def checked_matrix(values: Any, name: str) -> np.ndarray:
    """The shape and dtype checks of :func:`as_embedding_matrix`, without converting or copying anything."""
    array = values if isinstance(values, np.ndarray) else np.asarray(values)
    if array.ndim != 2:
        raise BioscanInputError(f"{name} must be a 2-D (rows, dim) array, got shape {array.shape}")
    if array.shape[0] == 0:
        raise BioscanInputError(f"{name} is empty (shape {array.shape}): there is nothing to index or search")
    if array.shape[1] == 0:
        raise BioscanInputError(f"{name} has dimension 0 (shape {array.shape})")
    if not np.issubdtype(array.dtype, np.floating):
        raise BioscanInputError(f"{name} must be floating point, got dtype {array.dtype}")
    return array


def prepared_chunks(
    matrix: np.ndarray, name: str, normalize: bool, out: np.ndarray | None = None
) -> Iterator[tuple[int, np.ndarray]]:
    """Yields ``(first row, float32 chunk)``: rows checked finite and (with ``normalize``) scaled to unit length.

    With ``out`` (a ``(rows, dim)`` float32 array, which may be ``matrix`` itself) the chunks are slices of it, written
    in place; without it they share one reusable buffer, so a caller must use each chunk before asking for the next.
    Norms are summed in float64 one chunk at a time (no float64 copy of the matrix): float32 squares of very large or
    tiny values would overflow or underflow.
    """
    count, dim = matrix.shape
    buffer = None if out is not None else np.empty((min(count, NORMALIZE_CHUNK_ROWS), dim), dtype=np.float32)
    for start in range(0, count, NORMALIZE_CHUNK_ROWS):
        stop = min(count, start + NORMALIZE_CHUNK_ROWS)
        chunk = out[start:stop] if out is not None else buffer[: stop - start]
        if out is not matrix:
            with np.errstate(over="ignore"):  # float64 values beyond float32 range become inf, refused below
                chunk[...] = matrix[start:stop]
        finite = np.isfinite(chunk).all(axis=1)
        if not finite.all():
            bad = start + int(np.flatnonzero(~finite)[0])
            raise BioscanInputError(
                f"{name} row {bad} contains NaN or inf ({_count_rows(matrix, 'bad')} bad rows in all)"
            )
        if normalize:
            norms = np.sqrt(np.einsum("ij,ij->i", chunk, chunk, dtype=np.float64))
            zero = norms == 0
            if zero.any():
                bad = start + int(np.flatnonzero(zero)[0])
                raise BioscanInputError(
                    f"{name} row {bad} is a zero vector and has no direction ({_count_rows(matrix, 'zero')} in all)"
                )
            chunk /= norms.astype(np.float32)[:, None]
        yield start, chunk


def _count_rows(matrix: np.ndarray, kind: str) -> int:
    # Only on the error path: one more chunked pass for the message's total of non-finite or all-zero rows.
    total = 0
    for start in range(0, matrix.shape[0], NORMALIZE_CHUNK_ROWS):
        chunk = matrix[start : start + NORMALIZE_CHUNK_ROWS]
        bad = ~np.isfinite(chunk).all(axis=1) if kind == "bad" else ~(chunk != 0).any(axis=1)
        total += int(bad.sum())
    return total


def as_embedding_matrix(values: Any, name: str = "embeddings") -> np.ndarray:
    """Checks a 2-D float array of embeddings and returns it as C-contiguous float32.

    Args:
        values (`np.ndarray` or array-like): A ``(rows, dim)`` floating-point array.
        name (`str`, *optional*, defaults to `"embeddings"`): Used in error messages.

    Returns:
        `np.ndarray`: ``(rows, dim)`` float32, C-contiguous (faiss needs both); ``values`` itself when it already is.

    Raises:
        `BioscanInputError`: not 2-D, no rows or no columns, not floating point, or any NaN / inf (the first bad row is
        named).
    """
    matrix = np.ascontiguousarray(checked_matrix(values, name), dtype=np.float32)
    for _ in prepared_chunks(matrix, name, normalize=False, out=matrix):
        pass  # checks finiteness chunk by chunk (no full-size boolean temporary)
    return matrix


def l2_normalize(embeddings: np.ndarray, name: str = "embeddings", *, inplace: bool = False) -> np.ndarray:
    """Returns ``embeddings`` as float32 with unit-length rows; zero rows are an error, not a silent 0 score.

    Normalises in float32 chunks (norms summed in float64 per chunk), so the only full-size array is the result.

    Args:
        embeddings (`np.ndarray`): ``(rows, dim)`` finite floats.
        name (`str`, *optional*, defaults to `"embeddings"`): Used in error messages.
        inplace (`bool`, *optional*, defaults to `False`): Normalise ``embeddings`` itself and return it when it is a
            writable C-contiguous float32 array (no copy at all); any other input gets a new array either way.

    Raises:
        `BioscanInputError`: a row with zero norm (named), or anything :func:`as_embedding_matrix` refuses.
    """
    matrix = checked_matrix(embeddings, name)
    writable = inplace and matrix.dtype == np.float32 and matrix.flags["C_CONTIGUOUS"] and matrix.flags["WRITEABLE"]
    out = matrix if writable else np.empty(matrix.shape, dtype=np.float32)
    for _ in prepared_chunks(matrix, name, normalize=True, out=out):
        pass
    return out


class VectorFile:
    """An unlinked temporary ``.npy`` of ``(count, dim)`` float32, written in order, read back by rows or mapped.

    The build of an approximate index streams the normalised keys here instead of holding them in RAM; reads go
    through the file (not a mapping) so that they do not count as the process's resident memory.
    """

    def __init__(self, count: int, dim: int, directory: str | os.PathLike[str] | None) -> None:
        self.count, self.dim = count, dim
        # Unlinked at once on POSIX (a crash leaves nothing); open for as long as the index that maps it.
        self.file = tempfile.TemporaryFile(dir=directory)  # noqa: SIM115
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype("<f4")), "fortran_order": False, "shape": (count, dim)}
        np.lib.format.write_array_header_1_0(self.file, header)
        self.offset = self.file.tell()

    def write(self, chunk: np.ndarray) -> None:
        self.file.write(memoryview(np.ascontiguousarray(chunk, dtype="<f4")).cast("B"))

    def read(self, start: int, stop: int) -> np.ndarray:
        rows = np.empty((stop - start, self.dim), dtype=np.float32)
        self.file.seek(self.offset + start * self.dim * 4)
        self.file.readinto(memoryview(rows).cast("B"))
        return rows

    def mapped(self) -> np.ndarray:
        self.file.flush()
        return np.memmap(self.file, dtype="<f4", mode="r", offset=self.offset, shape=(self.count, self.dim))

    def copy_to(self, path: Path) -> None:
        self.file.flush()
        self.file.seek(0)
        with path.open("wb") as out:
            shutil.copyfileobj(self.file, out, 16 << 20)
