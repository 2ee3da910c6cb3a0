"""K-mer tokenizer for DNA barcodes (COI), with a vectorised batch path.

Both modes cut non-overlapping 5-mers (by default) from the barcode truncated or right-padded with ``N`` to 660 nt,
with the original BIOSCAN-CLIP / CLIBD vocabulary (``shared/reference/CLIBD_REFERENCE.md`` §1.2): ``<MASK>``=0,
``<CLS>``=1, ``<UNK>``=2, then the 1024 ACGT 5-mers in lexicographic order. A k-mer that is not exactly one of them
is ``<UNK>``, in place (no frame shift). The attention mask is 0 on k-mers that start in the padding.

**Default mode** (cleaning): whitespace (also inside the sequence) removed, one optional FASTA header dropped,
upper-case, ``U``->``T``, alignment gaps ``-``/``.`` removed; ``<CLS>`` prefix. IUPAC ambiguity codes are kept
(their k-mers become ``<UNK>`` and are counted). So ``acgu-ACGT`` and ``ACGTACGT`` give the same ids.

**Reference mode** (``reference_mode=True``): the original's ids for the original's inputs, bit for bit. The
original (``dna_encoder.get_sequence_pipeline``: ``[0, *vocab(KmerTokenizer(PadSequence(660)(x)))]``) takes the
barcode string as it is stored: no upper-casing, no gap removal, no ``U``->``T``; it cuts or pads that string
with ``N`` to 660 characters, so a lower-case base, a ``U`` or a gap makes its k-mer ``<UNK>`` in place and a gap
takes one of the 660 positions. The prefix is ``<MASK>`` (id 0), 133 ids. Two things are still done, since the
original's inputs (HDF5 strings) never hold them and they are text layout, not sequence: whitespace and one FASTA
header are removed.

Validation is the same in both modes, with the same messages: a barcode is refused with
:class:`BioscanInputError` naming the record, the character and its position (counted after the default
cleaning) when it holds anything but nucleotides (either case, ``U``), IUPAC codes or gaps, when it is empty after
the default cleaning (e.g. only gaps), over the raw size cap, or several FASTA records.
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
_IUPAC_ANY_CASE = AMBIGUITY_CODES.upper() + AMBIGUITY_CODES.lower()

# The batch path works on a whole chunk of barcodes joined into one bytes buffer: one C-level `bytes.translate`
# turns every character into a base code (A=0, C=1, G=2, T=3; 4 = an IUPAC code: its k-mer is <UNK> and it is
# counted as ambiguous), numpy finds each barcode's start and gathers its k-mers, and a table turns each k-mer's
# base-8 number into its id. Codes 5-7 are never a base either, so their k-mers are <UNK> too.
_AMBIGUOUS = 4
_SEPARATOR, _SEPARATOR_CODE = "\x00", 5  # default mode: between barcodes (a barcode holding it is looked at alone)
_GAP = 5  # reference mode: a gap, kept in place (its k-mer is <UNK>)
_NOT_A_BASE = 6  # a barcode holding one is looked at alone (refused, or a FASTA header / whitespace handled)
_KEPT = 7  # reference mode: lower-case acgt or U/u, kept in place (its k-mer is <UNK>)
_REMOVED = bytes(byte for byte in range(128) if chr(byte).isspace() or chr(byte) in GAP_CHARACTERS)


def _code_table(codes: dict[str, int], default: int) -> bytes:
    table = bytearray([default]) * 256
    for characters, code in codes.items():
        for character in characters:
            table[ord(character)] = code
    return bytes(table)


# Default mode: case, U and (deleted by the same translate) whitespace and gaps cleaned in one pass.
_CLEAN_CODES = _code_table(
    {"Aa": 0, "Cc": 1, "Gg": 2, "TtUu": 3, _IUPAC_ANY_CASE: _AMBIGUOUS, _SEPARATOR: _SEPARATOR_CODE}, _NOT_A_BASE
)
# Reference mode: only upper-case A/C/G/T are bases; lower case, U and gaps stay where they are.
_REFERENCE_CODES = _code_table(
    {"A": 0, "C": 1, "G": 2, "T": 3, _IUPAC_ANY_CASE: _AMBIGUOUS, GAP_CHARACTERS: _GAP, "acgtuU": _KEPT}, _NOT_A_BASE
)
# Already normalised sequences (`encode_normalized`): anything but A/C/G/T is not a base.
_SEQUENCE_CODES = _code_table({"A": 0, "C": 1, "G": 2, "T": 3}, _AMBIGUOUS)
_BATCH_CHUNK = 1024  # barcodes encoded at once: bounded memory, throughput flat in the batch size


@dataclass
class EncodedBarcodes:
    """What :meth:`BioscanDnaTokenizer.encode_batch` (and :meth:`~BioscanDnaTokenizer.encode_frames`) returns.

    Attributes:
        input_ids, attention_mask (`np.ndarray` of int64, shape `(kept, sequence_length)`, or
            `(kept, frames, sequence_length)` from ``encode_frames``): the kept barcodes.
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
        sequence (`str`): upper-case nucleotides, gaps and whitespace removed (with ``keep_case_and_gaps``: as
            given, only whitespace and a FASTA header removed), cut to ``max_nucleotides`` but not padded.
        ambiguous_bases (`int`): IUPAC ambiguity codes (N included, either case) in ``sequence``.
        truncated_bases (`int`): characters beyond the tokenizer's ``max_nucleotides`` that were dropped.
    """

    sequence: str
    ambiguous_bases: int
    truncated_bases: int

    @property
    def ambiguous_fraction(self) -> float:
        return self.ambiguous_bases / max(1, len(self.sequence))


def normalize_barcode(
    text: str, *, record: str = "barcode", max_nucleotides: int | None = None, keep_case_and_gaps: bool = False
) -> NormalizedBarcode:
    """Cleans one barcode given as plain text or a single FASTA record.

    Args:
        text (`str`): the barcode, possibly with whitespace, a ``>header`` line, lower case, ``U`` or gaps.
        record (`str`, *optional*): how to name this input in error messages (e.g. ``"barcode 3"``).
        max_nucleotides (`int`, *optional*): length kept; the number of characters cut is reported.
        keep_case_and_gaps (`bool`, *optional*, defaults to `False`): the reference mode's sequence: checked
            exactly as by default, then returned with its case, ``U`` and gaps as given (only whitespace and a
            FASTA header removed), as the original tokenises it.

    Raises:
        `BioscanInputError`: not a string, over the raw size cap, several FASTA records, empty after cleaning,
        or a character that is neither a nucleotide, an IUPAC code nor a gap.

    Example:

    ```python
    >>> normalize_barcode(">seq1\\nacgu-\\nNNtA\\n")
    NormalizedBarcode(sequence='ACGTNNTA', ambiguous_bases=2, truncated_bases=0)
    >>> normalize_barcode(">seq1\\nacgu-\\nNNtA\\n", keep_case_and_gaps=True)
    NormalizedBarcode(sequence='acgu-NNtA', ambiguous_bases=2, truncated_bases=0)

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
    as_given = _WHITESPACE.sub("", text)
    sequence = as_given.upper().replace("U", "T").translate(_DELETE_GAPS)
    if not sequence:
        raise BioscanInputError(f"{record}: no nucleotides after removing whitespace, headers and gaps")
    bad = set(sequence) - _ALLOWED
    if bad:
        position = min(sequence.index(character) for character in bad)
        raise BioscanInputError(
            f"{record}: invalid character {sequence[position]!r} at position {position} (after cleaning); "
            f"expected A, C, G, T, U, IUPAC codes {AMBIGUITY_CODES!r} or gaps; found {''.join(sorted(bad))!r}"
        )
    if keep_case_and_gaps:
        sequence = as_given
    truncated = 0
    if max_nucleotides is not None and len(sequence) > max_nucleotides:
        truncated = len(sequence) - max_nucleotides
        sequence = sequence[:max_nucleotides]
    if keep_case_and_gaps:
        upper = sequence.upper()  # what validation let through that is not a base nor a gap is an IUPAC code
        ambiguous = len(sequence) - sum(upper.count(kept) for kept in NUCLEOTIDES + "U" + GAP_CHARACTERS)
    else:
        ambiguous = len(sequence) - sum(sequence.count(base) for base in NUCLEOTIDES)
    return NormalizedBarcode(sequence, ambiguous, truncated)


def clean_barcodes(barcodes: Sequence[Any], names: Sequence[Any] | None = None) -> list[str]:
    """The cleaned barcodes (:func:`normalize_barcode`, default mode), whole length: not cut to a tokenizer's.

    Args:
        barcodes (`Sequence[str]`): plain or one FASTA record each.
        names (`Sequence`, *optional*): one name per barcode for error messages (``record X (barcode): ...``);
            without them a barcode is named by its position (``barcode 3: ...``).

    Raises:
        `BioscanInputError`: a barcode the tokenizer would refuse.

    Example:

    ```python
    >>> clean_barcodes(["--acgu-\\nNNtA"], names=["R1"])
    ['ACGTNNTA']

    ```
    """
    check_names(names, len(barcodes), "barcode")
    labels = (
        [f"barcode {i}" for i in range(len(barcodes))] if names is None else [record_label(n, "barcode") for n in names]
    )
    return [normalize_barcode(barcode, record=label).sequence for barcode, label in zip(barcodes, labels, strict=True)]


def frame_shifted_barcodes(sequences: Sequence[str], shift: int, kmer_size: int = KMER_SIZE) -> list[str]:
    """Each cleaned barcode (see :func:`clean_barcodes`) read from base ``shift`` on: reading frame ``shift``.

    A barcode too short to keep a ``kmer_size``-mer after the shift stays whole (its frame is then its own embedding again,
    which leaves it unchanged by the averaging).

    Example:

    ```python
    >>> frame_shifted_barcodes(["ACGTACGTAC", "ACGTAC"], 2)
    ['GTACGTAC', 'ACGTAC']

    ```
    """
    if shift < 0:
        raise ValueError(f"shift: expected >= 0, got {shift}")
    return [sequence[shift:] if len(sequence) - shift >= kmer_size else sequence for sequence in sequences]


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
            The original's ids, bit for bit: its settings (k=5, stride 5, 660 nt, ``<MASK>`` prefix) and its
            handling of the string: case, ``U`` and gaps kept where they are, each making its k-mer ``<UNK>``
            (see the module docstring). By default barcodes are cleaned first (upper case, ``U``->``T``, gaps
            removed) and prefixed with ``<CLS>``.

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
    >>> tokenizer("ACGTAacgtaAC-GTA")["input_ids"][:4]  # reference mode: lower case and gaps are <UNK> in place
    [0, 111, 2, 2]
    >>> BioscanDnaTokenizer()("ACGTAacgtaAC-GTA")["input_ids"][:4]  # default: cleaned first
    [1, 111, 111, 111]

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
        sequence = self._fit_length(self.normalize_one(text).sequence)
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
        """Cleans one barcode and cuts it to ``max_nucleotides`` (see :func:`normalize_barcode`); in reference mode
        its case, ``U`` and gaps are kept, as the original tokenises them."""
        return normalize_barcode(
            text, record=record, max_nucleotides=self.max_nucleotides, keep_case_and_gaps=self.reference_mode
        )

    def normalize(self, barcodes: Sequence[str], *, names: Sequence[Any] | None = None) -> list[NormalizedBarcode]:
        """Cleans every barcode (see :meth:`normalize_one`), naming a failing one by ``names`` or its index.

        Args:
            barcodes (`Sequence[str]`): the barcodes.
            names (`Sequence`, *optional*): one name per barcode (e.g. the processids) for error messages:
                ``record BIOUG123-45 (barcode): invalid character ...`` instead of ``barcode 8: ...``.
        """
        check_names(names, len(barcodes), "barcode")
        return [self.normalize_one(text, self._label(index, names)) for index, text in enumerate(barcodes)]

    def encode_normalized(self, barcodes: Sequence[NormalizedBarcode]) -> tuple[np.ndarray, np.ndarray]:
        """Ids and attention mask, both int64 of shape (batch, sequence_length), from cleaned barcodes."""
        if not barcodes:
            raise BioscanInputError("expected at least one barcode, got an empty batch")
        width, lead = self.max_nucleotides, self._lead
        joined = "".join("A" * lead + self._fit_length(barcode.sequence) for barcode in barcodes).encode("ascii")
        codes = np.frombuffer(joined.translate(_SEQUENCE_CODES), dtype=np.uint8).reshape(len(barcodes), lead + width)
        lengths = np.array([min(len(barcode.sequence), width) for barcode in barcodes], dtype=np.int64)
        ids = np.empty((len(barcodes), self.sequence_length), dtype=np.int64)
        mask = np.empty_like(ids)
        self._encode_codes(codes, lengths, ids, mask)
        return ids, mask

    @functools.cached_property
    def _digit_base(self) -> int:
        """Base of a k-mer's number: 8 takes every code (0-7) as it is; for k > 5 the table would be too large
        (8**k entries), so codes are clipped to 4 and written in base 5."""
        return 8 if self.kmer_size <= 5 else 5

    @functools.cached_property
    def _kmer_lookup(self) -> np.ndarray:
        """Token id of every k-mer written in base ``_digit_base`` (a digit >= 4 is not A/C/G/T: ``<UNK>``), then
        one more entry, the prefix's id, for the prefix column."""
        base, k = self._digit_base, self.kmer_size
        digits = np.indices((base,) * k).reshape(k, -1)  # most significant first
        weights = 4 ** np.arange(k - 1, -1, -1)
        ids = (np.minimum(digits, 3) * weights[:, None]).sum(0) + len(DNA_SPECIAL_TOKENS)
        ids[(digits >= 4).any(0)] = self.vocab[self.unk_token]
        prefix = self.vocab[self.prefix_token if self.prefix_token is not None else self.unk_token]
        return np.append(ids, prefix).astype(np.int64)

    @property
    def _lead(self) -> int:
        """Codes before a barcode's first in its row: the prefix column's (ignored) k-mer, one stride long, so that
        the row holds a k-mer per output column and numpy runs each step over the whole chunk as one loop."""
        return self.stride if self.prefix_token is not None else 0

    @functools.cached_property
    def _row_templates(self) -> tuple[np.ndarray, np.ndarray]:
        """Per number of k-mers: a row of first digits (0, or ``base - 1`` = not a base from the first k-mer that
        runs past the barcode's end, which holds N padding in the original too: ``<UNK>``), and an attention-mask
        row (1 up to the last k-mer that starts inside the barcode). A row each is gathered per barcode."""
        prefix, columns = int(self.prefix_token is not None), self.sequence_length
        count = np.arange(self.num_kmers + 1)[:, None]
        column = np.arange(columns)[None, :] - prefix  # the k-mer of each column (-1: the prefix)
        digits = np.where(column >= count, self._digit_base - 1, 0)
        digits[:, :prefix] = 0
        mask = (column < count).astype(np.int64)
        return digits.astype(np.uint16 if self._digit_base**self.kmer_size < 2**16 else np.int32), mask

    def _encode_codes(self, codes: np.ndarray, lengths: np.ndarray, ids: np.ndarray, mask: np.ndarray) -> None:
        """Writes ids and mask (int64, C-contiguous, (batch, sequence_length)) from base codes and the barcodes'
        lengths: codes are uint8, 0-3 = A/C/G/T and more = not a base, a row per barcode (unit column stride) of
        ``_lead`` ignored codes then the barcode's, at least up to its last k-mer's end; what follows the barcode
        in its row is ignored. Each k-mer's number is built one offset at a time on strided views, then one table
        look-up gives the ids."""
        k, base, stride, batch = self.kmer_size, self._digit_base, self.stride, len(codes)
        row_stride, column_stride = codes.strides
        windows = np.lib.stride_tricks.as_strided(
            codes,
            (batch, self.sequence_length, k),
            (row_stride, stride * column_stride, column_stride),
            writeable=False,
        )
        if base == 5:
            windows = np.minimum(windows, _AMBIGUOUS)
        digits, mask_rows = self._row_templates
        complete = np.clip((lengths - k) // stride + 1, 0, self.num_kmers)  # k-mers that end inside the barcode
        number = np.take(digits, complete, axis=0)
        np.maximum(number, windows[:, :, 0], out=number)
        for offset in range(1, k):
            if base == 8:
                number <<= 3
                number |= windows[:, :, offset]
            else:
                number *= base
                number += windows[:, :, offset]
        if self.prefix_token is not None:
            number[:, 0] = base**k  # the table's last entry
        np.take(self._kmer_lookup, number, out=ids, mode="clip")  # "clip": no bounds check, no buffering
        # A k-mer is padding when it starts at or after the end of the barcode.
        started = np.minimum(-(-lengths // stride), self.num_kmers)
        np.take(mask_rows, started, axis=0, out=mask, mode="clip")

    def encode_batch(
        self, barcodes: Sequence[Any], *, names: Sequence[Any] | None = None, on_error: str = "raise"
    ) -> EncodedBarcodes:
        """Cleans and encodes a batch, vectorised: the same ids and errors as :meth:`normalize` then
        :meth:`encode_normalized`, at numpy speed for the common barcode (ASCII letters, gaps, whitespace).

        A barcode with anything else (a FASTA header, a character to refuse) goes through
        :meth:`normalize_one`, which names it. With ``on_error="drop"`` refused barcodes are left out and
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

    def encode_frames(
        self, barcodes: Sequence[Any], frames: int, *, names: Sequence[Any] | None = None, on_error: str = "raise"
    ) -> EncodedBarcodes:
        """Every barcode in its first ``frames`` reading frames: ``input_ids`` and ``attention_mask`` of shape
        `(kept, frames, sequence_length)`, which the model averages into one embedding per barcode.

        Non-overlapping k-mers cut a barcode started one base later into entirely different tokens; a model that
        averages the embeddings of several frames depends much less on where the barcode starts (measured in
        ``bioscan_clip/data/augmentation.py``). Frame 0 is the barcode encoded as :meth:`encode_batch` encodes
        it; frame ``s`` is the cleaned barcode (:func:`clean_barcodes`, whole length) read from base ``s`` on
        (:func:`frame_shifted_barcodes`), then encoded likewise, so it can reach bases past the first
        ``max_nucleotides``. Errors, ``kept``, ``errors`` and the quality counts are those of :meth:`encode_batch`
        (frame 0). With ``frames=1`` the ids are ``encode_batch``'s with a frame axis of length 1.

        Example:

        ```python
        >>> encoded = BioscanDnaTokenizer().encode_frames(["ACGTACGTACGT"], frames=3)
        >>> encoded.input_ids.shape
        (1, 3, 133)
        >>> tokenizer = BioscanDnaTokenizer()
        >>> bool((encoded.input_ids[0, 2] == tokenizer.encode_batch(["GTACGTACGT"]).input_ids[0]).all())
        True

        ```
        """
        if not isinstance(frames, int) or isinstance(frames, bool) or frames < 1:
            raise ValueError(f"frames: expected a positive int, got {frames!r}")
        barcodes = list(barcodes)
        first = self.encode_batch(barcodes, names=names, on_error=on_error)
        kept, count = first.kept.tolist(), len(first.kept)
        ids = np.empty((count, frames, self.sequence_length), dtype=np.int64)
        mask = np.empty_like(ids)
        ids[:, 0], mask[:, 0] = first.input_ids, first.attention_mask
        if frames > 1:
            # Every kept barcode passed validation above, so cleaning raises nothing here.
            cleaned = clean_barcodes([barcodes[i] for i in kept])
            for shift in range(1, frames):
                shifted = self.encode_batch(frame_shifted_barcodes(cleaned, shift, self.kmer_size))
                ids[:, shift], mask[:, shift] = shifted.input_ids, shifted.attention_mask
        return EncodedBarcodes(ids, mask, first.kept, first.truncated_bases, first.ambiguous_bases, first.errors)

    def _label(self, index: int, names: Sequence[Any] | None) -> str:
        return f"barcode {index}" if names is None else record_label(names[index], "barcode")

    def _chunk_codes(
        self, chunk: list[Any], alone: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """A chunk joined into one buffer and translated at once, without a Python step per barcode.

        Returns the base codes (uint8; ``_lead`` codes readable before any barcode's start and ``max_nucleotides``
        after it), each barcode's start and length in them (default mode: after cleaning; reference mode: as
        given), the barcodes to look at alone (not ASCII text, over the size cap, empty, a character to refuse or
        to handle: FASTA, whitespace in reference mode) and the IUPAC codes in each barcode's first
        ``max_nucleotides``.
        """
        count, width = len(chunk), self.max_nucleotides
        strings = chunk if alone is None else ["" if odd else text for odd, text in zip(alone, chunk, strict=True)]
        separator = "" if self.reference_mode else _SEPARATOR
        try:
            # A head and a tail, so that a row can be read from `_lead` before any start to `width` after it.
            joined = separator.join(["A" * self._lead, *strings, "A" * width]).encode("ascii")
        except (TypeError, UnicodeEncodeError):
            joined = None
        if joined is not None:
            raw_lengths = np.fromiter(map(len, strings), dtype=np.int64, count=count)
            if self.reference_mode:
                translated = joined.translate(_REFERENCE_CODES)
                codes = np.frombuffer(translated, dtype=np.uint8)
                starts = np.full(count, self._lead, dtype=np.int64)
                np.cumsum(raw_lengths[:-1], out=starts[1:])
                starts[1:] += self._lead
                lengths = raw_lengths
                at = np.flatnonzero(codes == _NOT_A_BASE) if bytes([_NOT_A_BASE]) in translated else starts[:0]
                ambiguous_at = np.flatnonzero(codes == _AMBIGUOUS)
            else:
                # Upper case, U->T, and whitespace and gaps deleted, in the same pass.
                codes = np.frombuffer(joined.translate(_CLEAN_CODES, _REMOVED), dtype=np.uint8)
                special = np.flatnonzero(codes >= _AMBIGUOUS)  # separators, IUPAC codes, characters to look at
                kinds = codes[special]
                separators = special[kinds == _SEPARATOR_CODE]
                starts = separators[:-1] + 1
                lengths = separators[1:] - starts
                at = special[kinds == _NOT_A_BASE]
                ambiguous_at = special[kinds == _AMBIGUOUS]
        if joined is None or (separator and len(starts) != count):
            # Not ASCII text, or a barcode holds the separator: those are looked at alone (an empty string here).
            alone = np.fromiter(
                (not (isinstance(text, str) and text.isascii() and _SEPARATOR not in text) for text in chunk),
                dtype=bool,
                count=count,
            )
            return self._chunk_codes(chunk, alone)
        alone = np.zeros(count, dtype=bool) if alone is None else alone.copy()
        alone |= (raw_lengths > MAX_RAW_DNA_CHARACTERS) | (lengths == 0)
        if len(at):
            alone[np.searchsorted(starts, at, side="right") - 1] = True
        if self.reference_mode:
            # Only gaps is empty after the default cleaning, refused in both modes: a barcode that starts and ends
            # with a gap is looked at (a C-level strip) before it is encoded.
            ends = starts + np.maximum(lengths - 1, 0)
            for row in np.flatnonzero((codes[starts] == _GAP) & (codes[ends] == _GAP) & ~alone):
                alone[row] = not strings[row].strip(GAP_CHARACTERS)
        rows = np.searchsorted(starts, ambiguous_at, side="right") - 1
        within = ambiguous_at - starts[rows] < np.minimum(lengths[rows], width)
        ambiguous = np.bincount(rows[within], minlength=count)
        return codes, starts, lengths, alone, ambiguous

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
        width, lead = self.max_nucleotides, self._lead
        row_length = lead + (self.num_kmers - 1) * self.stride + self.kmer_size
        codes, starts, lengths, alone, ambiguous = self._chunk_codes(chunk)
        # Every barcode's row (its `lead` codes before, then its k-mers' span): a gather from a strided view.
        view = np.lib.stride_tricks.as_strided(
            codes, (len(codes) - row_length + 1, row_length), (1, 1), writeable=False
        )
        rows = view[starts - lead]
        truncated = np.maximum(lengths - width, 0)
        lengths = np.minimum(lengths, width)
        table = _REFERENCE_CODES if self.reference_mode else _CLEAN_CODES
        keep = np.ones(len(chunk), dtype=bool)
        for row in np.flatnonzero(alone):
            # Empty, a FASTA header, a non-string or a character to name: the per-record path says which.
            try:
                barcode = self.normalize_one(chunk[row], self._label(offset + row, names))
            except BioscanInputError as error:
                if on_error == "raise":
                    raise
                errors[offset + int(row)] = str(error)
                keep[row] = False
                continue
            sequence = (b"A" * lead + barcode.sequence.encode("ascii")).ljust(row_length, b"N")[:row_length]
            sequence = sequence.translate(table)
            rows[row] = np.frombuffer(sequence, dtype=np.uint8)
            lengths[row], truncated[row] = len(barcode.sequence), barcode.truncated_bases
            ambiguous[row] = barcode.ambiguous_bases
        if not keep.all():
            rows, lengths, truncated, ambiguous = rows[keep], lengths[keep], truncated[keep], ambiguous[keep]
        count = len(rows)
        if not count:
            return 0
        window = slice(row_out, row_out + count)
        ids, mask, kept_out, truncated_out, ambiguous_out = (array[window] for array in out)
        self._encode_codes(rows, lengths, ids, mask)
        kept_out[:] = np.flatnonzero(keep) + offset
        truncated_out[:] = truncated
        ambiguous_out[:] = ambiguous
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
        if return_tensors == "pt":  # shared memory: BatchEncoding would copy a numpy array into a new tensor
            import torch

            data = {key: torch.from_numpy(value) for key, value in data.items()}
        return BatchEncoding(data, tensor_type=return_tensors)
