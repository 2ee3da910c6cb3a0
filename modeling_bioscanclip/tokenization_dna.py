"""K-mer tokenizer for DNA barcodes (COI), with a vectorised batch path.

In its reference mode it gives exactly the ids of the original BIOSCAN-CLIP / CLIBD pipeline
(``shared/reference/CLIBD_REFERENCE.md`` §1.2): non-overlapping 5-mers of the barcode truncated or right-padded
with ``N`` to 660 nt, vocabulary ``<MASK>``=0, ``<CLS>``=1, ``<UNK>``=2, then the 1024 ACGT 5-mers in
lexicographic order, and id 0 prepended: 133 ids. Any k-mer holding something other than A/C/G/T is ``<UNK>``.

Normalisation, applied in every mode because it is safe and documented: whitespace (also inside the
sequence) removed, one optional FASTA header dropped, upper-case, ``U``->``T``, alignment gaps ``-``/``.``
removed. IUPAC ambiguity codes are kept (their k-mers become ``<UNK>`` and are counted). Anything else raises
:class:`BioscanInputError` naming the record, the character and its position.
"""

from __future__ import annotations

import functools
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from transformers import BatchEncoding, PreTrainedTokenizer

from .constants_bioscanclip import (
    AMBIGUITY_CODES,
    DNA_PAD_NUCLEOTIDE,
    DNA_SPECIAL_TOKENS,
    GAP_CHARACTERS,
    KMER_SIZE,
    KMER_STRIDE,
    MAX_NUCLEOTIDES,
    MAX_RAW_DNA_CHARACTERS,
    NUCLEOTIDES,
    kmer_vocabulary,
)
from .errors_bioscanclip import BioscanInputError, check_names, record_label

VOCAB_FILES_NAMES = {"vocab_file": "vocab.json"}

_ALLOWED = set(NUCLEOTIDES + AMBIGUITY_CODES)
_WHITESPACE = re.compile(r"\s+")
_DELETE_GAPS = str.maketrans("", "", GAP_CHARACTERS)

# The batch path cleans a barcode with one C-level `bytes.translate`: upper case and U->T, whitespace and gaps
# removed. A second translation of the whole batch gives each byte's base code: A=0, C=1, G=2, T=3, an IUPAC code 4
# (its k-mer is unknown), anything else 5. A barcode with a 5 (a FASTA header, a character to refuse) goes through
# `normalize_barcode`, which handles or names it.
_UPPER_T = bytes.maketrans(b"acgtuU" + AMBIGUITY_CODES.lower().encode(), b"ACGTTT" + AMBIGUITY_CODES.upper().encode())
_REMOVED = bytes(byte for byte in range(128) if chr(byte).isspace() or chr(byte) in GAP_CHARACTERS)
_UNKNOWN, _NOT_A_BASE = 4, 5
_CODE = bytes(
    NUCLEOTIDES.index(chr(byte))
    if chr(byte) in NUCLEOTIDES
    else _UNKNOWN
    if chr(byte) in AMBIGUITY_CODES
    else _NOT_A_BASE
    for byte in range(256)
)
_BATCH_CHUNK = 4096  # barcodes cleaned at once: bounded memory, throughput flat in the batch size


@dataclass
class EncodedBarcodes:
    """What :meth:`BioscanDnaTokenizer.encode_batch` returns.

    Attributes:
        input_ids, attention_mask (`np.ndarray` of int64, shape `(kept, sequence_length)`): the kept barcodes.
        kept (`np.ndarray` of int64): indices, into the input, of the barcodes encoded (all of them unless dropped).
        truncated_bases, ambiguous_bases (`np.ndarray` of int64, shape `(kept,)`): per kept barcode.
        errors (`dict[int, str]`): input index -> why that barcode was refused (``on_error="drop"``).
    """

    input_ids: np.ndarray
    attention_mask: np.ndarray
    kept: np.ndarray
    truncated_bases: np.ndarray
    ambiguous_bases: np.ndarray
    errors: dict[int, str]


@dataclass(frozen=True)
class NormalizedBarcode:
    """A cleaned barcode and what cleaning and length fitting found.

    Attributes:
        sequence (`str`): upper-case nucleotides, gaps and whitespace removed, not yet truncated or padded.
        ambiguous_bases (`int`): IUPAC ambiguity codes (N included) in ``sequence``.
        truncated_bases (`int`): bases beyond the tokenizer's ``max_nucleotides`` that were dropped.
    """

    sequence: str
    ambiguous_bases: int
    truncated_bases: int

    @property
    def ambiguous_fraction(self) -> float:
        return self.ambiguous_bases / max(1, len(self.sequence))


def normalize_barcode(text: str, *, record: str = "barcode", max_nucleotides: int | None = None) -> NormalizedBarcode:
    """Cleans one barcode given as plain text or a single FASTA record.

    Args:
        text (`str`): the barcode, possibly with whitespace, a ``>header`` line, lower case, ``U`` or gaps.
        record (`str`, *optional*): how to name this input in error messages (e.g. ``"barcode 3"``).
        max_nucleotides (`int`, *optional*): length kept; the number of bases cut is reported.

    Raises:
        `BioscanInputError`: not a string, over the raw size cap, several FASTA records, empty after cleaning,
        or a character that is neither a nucleotide, an IUPAC code nor a gap.

    Example:

    ```python
    >>> normalize_barcode(">seq1\\nacgu-\\nNNtA\\n")
    NormalizedBarcode(sequence='ACGTNNTA', ambiguous_bases=2, truncated_bases=0)

    ```
    """
    if not isinstance(text, str):
        raise BioscanInputError(f"{record}: expected a string of nucleotides, got {type(text).__name__}")
    if len(text) > MAX_RAW_DNA_CHARACTERS:
        raise BioscanInputError(
            f"{record}: {len(text):,} characters is over the limit of {MAX_RAW_DNA_CHARACTERS:,} for one barcode"
        )
    if ">" in text or ";" in text:
        lines = text.splitlines()
        headers = [line for line in lines if line.lstrip().startswith(">")]
        if len(headers) > 1:
            raise BioscanInputError(f"{record}: expected one FASTA record, got {len(headers)} headers")
        body = [line for line in lines if not line.lstrip().startswith((">", ";"))]
        text = "".join(body)
    sequence = _WHITESPACE.sub("", text).upper().replace("U", "T").translate(_DELETE_GAPS)
    if not sequence:
        raise BioscanInputError(f"{record}: no nucleotides after removing whitespace, headers and gaps")
    bad = set(sequence) - _ALLOWED
    if bad:
        position = min(sequence.index(character) for character in bad)
        raise BioscanInputError(
            f"{record}: invalid character {sequence[position]!r} at position {position} (after cleaning); "
            f"expected A, C, G, T, U, IUPAC codes {AMBIGUITY_CODES!r} or gaps; found {''.join(sorted(bad))!r}"
        )
    truncated = 0
    if max_nucleotides is not None and len(sequence) > max_nucleotides:
        truncated = len(sequence) - max_nucleotides
        sequence = sequence[:max_nucleotides]
    ambiguous = len(sequence) - sum(sequence.count(base) for base in NUCLEOTIDES)
    return NormalizedBarcode(sequence, ambiguous, truncated)


class BioscanDnaTokenizer(PreTrainedTokenizer):
    r"""K-mer tokenizer for DNA barcodes; ``AutoTokenizer``-loadable.

    Args:
        vocab_file (`str`, *optional*):
            ``vocab.json`` mapping tokens to ids; built from ``kmer_size`` when omitted.
        kmer_size (`int`, *optional*, defaults to 5): length of a k-mer.
        stride (`int`, *optional*, defaults to 5): step between k-mers (``stride == kmer_size``: non-overlapping).
        max_nucleotides (`int`, *optional*, defaults to 660): barcodes are truncated or padded with ``N`` to this.
        prefix_token (`str` or `None`, *optional*, defaults to ``"<CLS>"``):
            Token prepended to every sequence. The original prepends ``<MASK>`` (id 0); ``None`` prepends none.
        reference_mode (`bool`, *optional*, defaults to `False`):
            Shortcut for the original's settings (k=5, stride 5, 660 nt, ``<MASK>`` prefix).

    The attention mask is 0 on k-mers made only of padding. (The original model attends to them: that is a
    model option, ``dna_use_attention_mask=False``, not a tokenizer one.)

    Example:

    ```python
    >>> tokenizer = BioscanDnaTokenizer(reference_mode=True)
    >>> encoded = tokenizer(["ACGTA" * 132, "acgta"], return_tensors="np")
    >>> encoded["input_ids"].shape, int(encoded["input_ids"][0, 0]), int(encoded["attention_mask"][1].sum())
    ((2, 133), 0, 2)
    >>> tokenizer.convert_ids_to_tokens([3, 1026])
    ['AAAAA', 'TTTTT']

    ```
    """

    vocab_files_names = VOCAB_FILES_NAMES
    model_input_names = ["input_ids", "attention_mask"]

    def __init__(
        self,
        vocab_file: str | None = None,
        kmer_size: int = KMER_SIZE,
        stride: int = KMER_STRIDE,
        max_nucleotides: int = MAX_NUCLEOTIDES,
        prefix_token: str | None = "<CLS>",
        reference_mode: bool = False,
        mask_token: str = "<MASK>",
        cls_token: str = "<CLS>",
        unk_token: str = "<UNK>",
        **kwargs: Any,
    ) -> None:
        if reference_mode:
            kmer_size, stride, max_nucleotides, prefix_token = KMER_SIZE, KMER_STRIDE, MAX_NUCLEOTIDES, "<MASK>"
        if not 1 <= kmer_size <= 8:
            raise ValueError(f"expected 1 <= kmer_size <= 8, got {kmer_size}")
        if not 1 <= stride <= kmer_size:
            raise ValueError(f"expected 1 <= stride <= kmer_size ({kmer_size}), got {stride}")
        if max_nucleotides < kmer_size:
            raise ValueError(f"expected max_nucleotides >= kmer_size ({kmer_size}), got {max_nucleotides}")
        # The vocabulary must exist before the base __init__, which asks for it.
        if vocab_file is not None:
            with open(vocab_file, encoding="utf-8") as handle:
                self.vocab: dict[str, int] = json.load(handle)
        else:
            self.vocab = kmer_vocabulary(kmer_size, DNA_SPECIAL_TOKENS)
        expected = kmer_vocabulary(kmer_size, DNA_SPECIAL_TOKENS)
        if self.vocab != expected:
            raise ValueError(
                f"vocab_file does not hold the {len(expected)}-token vocabulary of {kmer_size}-mers "
                f"(specials {DNA_SPECIAL_TOKENS} then ACGT k-mers in lexicographic order); got {len(self.vocab)} tokens"
            )
        if prefix_token is not None and prefix_token not in self.vocab:
            raise ValueError(f"prefix_token must be one of {DNA_SPECIAL_TOKENS} or None, got {prefix_token!r}")
        self.ids_to_tokens = {index: token for token, index in self.vocab.items()}
        self.kmer_size = int(kmer_size)
        self.stride = int(stride)
        self.max_nucleotides = int(max_nucleotides)
        self.prefix_token = prefix_token
        self.reference_mode = bool(reference_mode)
        kwargs.setdefault("model_max_length", self.sequence_length)
        super().__init__(
            mask_token=mask_token,
            cls_token=cls_token,
            unk_token=unk_token,
            kmer_size=self.kmer_size,
            stride=self.stride,
            max_nucleotides=self.max_nucleotides,
            prefix_token=prefix_token,
            reference_mode=self.reference_mode,
            **kwargs,
        )

    # ---- vocabulary -------------------------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    @property
    def num_kmers(self) -> int:
        """K-mers per sequence after padding/truncation (132 in reference mode)."""
        return (self.max_nucleotides - self.kmer_size) // self.stride + 1

    @property
    def sequence_length(self) -> int:
        """Ids per sequence, prefix included (133 in reference mode)."""
        return self.num_kmers + (self.prefix_token is not None)

    def get_vocab(self) -> dict[str, int]:
        return dict(self.vocab)

    def _convert_token_to_id(self, token: str) -> int:
        return self.vocab.get(token, self.vocab[self.unk_token])

    def _convert_id_to_token(self, index: int) -> str:
        return self.ids_to_tokens.get(index, self.unk_token)

    def _tokenize(self, text: str, **kwargs: Any) -> list[str]:
        sequence = self._fit_length(normalize_barcode(text, max_nucleotides=self.max_nucleotides).sequence)
        return [sequence[i : i + self.kmer_size] for i in range(0, self.num_kmers * self.stride, self.stride)]

    def build_inputs_with_special_tokens(
        self, token_ids_0: list[int], token_ids_1: list[int] | None = None
    ) -> list[int]:
        if token_ids_1 is not None:
            raise BioscanInputError("DNA barcodes are encoded one at a time, not as sequence pairs")
        prefix = [self.vocab[self.prefix_token]] if self.prefix_token is not None else []
        return prefix + token_ids_0

    def save_vocabulary(self, save_directory: str, filename_prefix: str | None = None) -> tuple[str]:
        name = (filename_prefix + "-" if filename_prefix else "") + VOCAB_FILES_NAMES["vocab_file"]
        path = os.path.join(save_directory, name)
        with open(path, "w", encoding="utf-8") as handle:
            json.dump(self.vocab, handle)
        return (path,)

    # ---- the vectorised batch path ----------------------------------------------------------------------------
    def _fit_length(self, sequence: str) -> str:
        return sequence[: self.max_nucleotides].ljust(self.max_nucleotides, DNA_PAD_NUCLEOTIDE)

    def normalize_one(self, text: str, record: str = "barcode") -> NormalizedBarcode:
        """Cleans one barcode and cuts it to ``max_nucleotides`` (see :func:`normalize_barcode`)."""
        return normalize_barcode(text, record=record, max_nucleotides=self.max_nucleotides)

    def normalize(self, barcodes: Sequence[str], *, names: Sequence[Any] | None = None) -> list[NormalizedBarcode]:
        """Cleans every barcode (see :func:`normalize_barcode`), naming a failing one by ``names`` or its index.

        Args:
            barcodes (`Sequence[str]`): the barcodes.
            names (`Sequence`, *optional*): one name per barcode (e.g. the processids) for error messages:
                ``record BIOUG123-45 (barcode): invalid character ...`` instead of ``barcode 8: ...``.
        """
        check_names(names, len(barcodes), "barcode")
        return [
            self.normalize_one(text, f"barcode {index}" if names is None else record_label(names[index], "barcode"))
            for index, text in enumerate(barcodes)
        ]

    def encode_normalized(self, barcodes: Sequence[NormalizedBarcode]) -> tuple[np.ndarray, np.ndarray]:
        """Ids and attention mask, both int64 of shape (batch, sequence_length), from cleaned barcodes."""
        if not barcodes:
            raise BioscanInputError("expected at least one barcode, got an empty batch")
        joined = "".join(self._fit_length(barcode.sequence) for barcode in barcodes).encode("ascii")
        codes = np.frombuffer(joined.translate(_CODE), dtype=np.uint8).reshape(len(barcodes), self.max_nucleotides)
        lengths = np.array([min(len(barcode.sequence), self.max_nucleotides) for barcode in barcodes])
        return self._encode_codes(codes, lengths)

    @functools.cached_property
    def _kmer_lookup(self) -> np.ndarray:
        """Token id of every k-mer written in base 5 (digit 4 = not A/C/G/T, whose k-mer is ``<UNK>``)."""
        digits = np.indices((5,) * self.kmer_size).reshape(self.kmer_size, -1)  # most significant first
        weights = 4 ** np.arange(self.kmer_size - 1, -1, -1)
        ids = (digits * weights[:, None]).sum(0) + len(DNA_SPECIAL_TOKENS)
        ids[(digits == 4).any(0)] = self.vocab[self.unk_token]
        return ids.astype(np.int64)

    def _encode_codes(
        self, codes: np.ndarray, lengths: np.ndarray, out: tuple[np.ndarray, np.ndarray] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Ids and mask from base codes (uint8, (batch, max_nucleotides), 4 = not A/C/G/T, N padding included):
        each k-mer's base-5 number, built one offset at a time on strided views, then one table look-up."""
        starts = np.arange(self.num_kmers) * self.stride
        if self.stride == self.kmer_size:  # non-overlapping: a (batch, kmers, k) view, no copy
            windows = codes[:, : self.num_kmers * self.kmer_size].reshape(len(codes), self.num_kmers, self.kmer_size)
            columns = [windows[:, :, offset] for offset in range(self.kmer_size)]
        else:
            columns = [codes[:, starts + offset] for offset in range(self.kmer_size)]
        number = np.zeros((len(codes), self.num_kmers), dtype=np.int16 if 5**self.kmer_size < 2**15 else np.int32)
        for column in columns:
            number *= 5
            number += column
        prefix = self.prefix_token is not None
        if out is None:
            out = (
                np.empty((len(codes), self.sequence_length), dtype=np.int64),
                np.empty((len(codes), self.sequence_length), dtype=np.int64),
            )
        ids, mask = out
        if prefix:
            mask[:, 0] = 1
            ids[:, 0] = self.vocab[self.prefix_token]
        np.take(self._kmer_lookup, number, out=ids[:, int(prefix) :])
        # A k-mer is padding when it starts at or after the end of the real sequence.
        np.less(starts[None, :], lengths[:, None], out=mask[:, int(prefix) :], casting="unsafe")
        return ids, mask

    def encode_batch(
        self, barcodes: Sequence[Any], *, names: Sequence[Any] | None = None, on_error: str = "raise"
    ) -> EncodedBarcodes:
        """Cleans and encodes a batch, vectorised: the same ids and errors as :meth:`normalize` then
        :meth:`encode_normalized`, at numpy speed for the common barcode (ASCII letters, gaps, whitespace).

        A barcode with anything else (a FASTA header, a character to refuse) goes through
        :func:`normalize_barcode`, which names it. With ``on_error="drop"`` refused barcodes are left out and
        reported in ``errors``; with ``"raise"`` the first one raises.
        """
        if on_error not in ("raise", "drop"):
            raise ValueError(f"on_error: expected 'raise' or 'drop', got {on_error!r}")
        barcodes = list(barcodes)
        if not barcodes:
            raise BioscanInputError("expected at least one barcode, got an empty batch")
        check_names(names, len(barcodes), "barcode")
        # Chunks write their rows straight into the result (no concatenation of large arrays).
        ids = np.empty((len(barcodes), self.sequence_length), dtype=np.int64)
        mask = np.empty_like(ids)
        kept, truncated, ambiguous = (np.empty(len(barcodes), dtype=np.int64) for _ in range(3))
        errors: dict[int, str] = {}
        count = 0
        for start in range(0, len(barcodes), _BATCH_CHUNK):
            chunk = barcodes[start : start + _BATCH_CHUNK]
            count += self._encode_chunk(
                chunk, start, names, on_error, errors, count, (ids, mask, kept, truncated, ambiguous)
            )
        if not count:
            first = errors[min(errors)]
            raise BioscanInputError(f"every one of the {len(barcodes)} records was refused; the first: {first}")
        return EncodedBarcodes(ids[:count], mask[:count], kept[:count], truncated[:count], ambiguous[:count], errors)

    def _label(self, index: int, names: Sequence[Any] | None) -> str:
        return f"barcode {index}" if names is None else record_label(names[index], "barcode")

    def _encode_chunk(
        self,
        chunk: list[Any],
        offset: int,
        names: Sequence[Any] | None,
        on_error: str,
        errors: dict[int, str],
        row_out: int,
        out: tuple[np.ndarray, ...],
    ) -> int:
        """Encodes ``chunk`` (input rows from ``offset``) into the rows of ``out`` from ``row_out``; returns the
        number of barcodes kept and adds the refused ones to ``errors``."""
        width = self.max_nucleotides
        # Every barcode cleaned by one C-level translation (comprehensions: no Python function call per barcode).
        cleaned = [
            text.encode("ascii").translate(_UPPER_T, _REMOVED)
            if isinstance(text, str) and text.isascii() and len(text) <= MAX_RAW_DNA_CHARACTERS
            else None
            for text in chunk
        ]
        window = slice(row_out, row_out + len(chunk))
        ids, mask, kept_out, truncated_out, ambiguous_out = (array[window] for array in out)
        full_lengths = np.fromiter((len(c) if c else 0 for c in cleaned), dtype=np.int64, count=len(chunk))
        padded = b"".join([clean[:width].ljust(width, b"N") if clean else b"N" * width for clean in cleaned])
        codes = np.frombuffer(padded.translate(_CODE), dtype=np.uint8).reshape(len(chunk), width).copy()
        truncated = np.maximum(full_lengths - width, 0)
        per_record = (full_lengths == 0) | (codes == _NOT_A_BASE).any(axis=1)
        long_rows = np.flatnonzero(full_lengths > width)
        if len(long_rows):  # a character past the cut still makes the barcode invalid: check the tails at once
            tails = np.frombuffer(b"".join([cleaned[row][width:] for row in long_rows]).translate(_CODE), np.uint8)
            ends = np.cumsum(full_lengths[long_rows] - width)
            per_record[long_rows[np.searchsorted(ends, np.flatnonzero(tails == _NOT_A_BASE), side="right")]] = True
        keep = np.ones(len(chunk), dtype=bool)
        for row in np.flatnonzero(per_record):
            # Empty, a FASTA header, a non-string or a character to name: the per-record path says which.
            try:
                barcode = self.normalize_one(chunk[row], self._label(offset + row, names))
            except BioscanInputError as error:
                if on_error == "raise":
                    raise
                errors[offset + int(row)] = str(error)
                keep[row] = False
                continue
            sequence = barcode.sequence.encode("ascii").ljust(width, b"N").translate(_CODE)
            codes[row] = np.frombuffer(sequence, dtype=np.uint8)
            full_lengths[row], truncated[row] = len(barcode.sequence), barcode.truncated_bases
        lengths = np.minimum(full_lengths, width)
        if not keep.all():
            codes, lengths, truncated = codes[keep], lengths[keep], truncated[keep]
        count = len(codes)
        if not count:
            return 0
        self._encode_codes(codes, lengths, out=(ids[:count], mask[:count]))
        # Non-ACGT bases within the kept length: every one in the row, less the N padding after it.
        ambiguous_out[:count] = np.count_nonzero(codes == _UNKNOWN, axis=1) - (width - lengths)
        kept_out[:count] = np.flatnonzero(keep) + offset
        truncated_out[:count] = truncated
        return count

    def __call__(
        self,
        text: str | Sequence[str],
        return_tensors: str | None = None,
        return_quality: bool = False,
        *,
        names: Sequence[Any] | None = None,
        **kwargs: Any,
    ) -> BatchEncoding:
        """Tokenises one barcode or a batch; every sequence has ``sequence_length`` ids (fixed-length padding).

        Args:
            text (`str` or `list[str]`): barcodes (plain or one FASTA record each).
            return_tensors (`str`, *optional*): ``"pt"``, ``"np"`` or `None` for lists.
            return_quality (`bool`, *optional*, defaults to `False`):
                Also return ``truncated_bases`` and ``ambiguous_bases`` per barcode, so callers can report
                truncation and ambiguous content.
            names (`Sequence`, *optional*): one name per barcode, used by error messages (see :meth:`normalize`).

        Padding/truncation arguments of the generic tokenizer API (``padding``, ``truncation``,
        ``max_length``) are accepted only with their fixed-length meaning.
        """
        max_length = kwargs.pop("max_length", None)
        if max_length is not None and max_length != self.sequence_length:
            raise ValueError(f"this tokenizer always produces {self.sequence_length} ids, got max_length={max_length}")
        for name in ("padding", "truncation", "add_special_tokens"):
            kwargs.pop(name, None)
        if kwargs:
            raise TypeError(f"unexpected arguments for the DNA tokenizer: {sorted(kwargs)}")
        single = isinstance(text, str)
        if single and isinstance(names, str):
            names = [names]
        encoded = self.encode_batch([text] if single else list(text), names=names)
        data: dict[str, Any] = {"input_ids": encoded.input_ids, "attention_mask": encoded.attention_mask}
        if return_quality:
            data["truncated_bases"] = encoded.truncated_bases
            data["ambiguous_bases"] = encoded.ambiguous_bases
        if return_tensors is None:
            data = {key: value.tolist() for key, value in data.items()}
            if single:
                data = {key: value[0] for key, value in data.items()}
            return BatchEncoding(data)
        return BatchEncoding(data, tensor_type=return_tensors)
