"""Constants shared by the tokenizer, image processor, data builders, metric and demo.

One place for the numbers that pin fidelity to the original BIOSCAN-CLIP / CLIBD code
(see ``shared/reference/CLIBD_REFERENCE.md`` §1).
"""

from __future__ import annotations

import itertools

NUCLEOTIDES = "ACGT"
# IUPAC ambiguity codes (two-, three- and four-fold) and `?` for "missing": valid in a barcode,
# but a k-mer that contains one is mapped to the unknown token.
AMBIGUITY_CODES = "NRYSWKMBDHV?"
# Alignment gaps, removed during normalisation.
GAP_CHARACTERS = "-."

KMER_SIZE = 5
KMER_STRIDE = 5
MAX_NUCLEOTIDES = 660  # BIOSCAN pads with N / truncates to 660 nt -> 132 5-mers
DNA_PAD_NUCLEOTIDE = "N"
# Raw inputs longer than this are refused before any work (a whole genome pasted in a text box).
MAX_RAW_DNA_CHARACTERS = 20_000

# The original vocabulary: torchtext specials first, then the ACGT k-mers in lexicographic order.
DNA_SPECIAL_TOKENS = ("<MASK>", "<CLS>", "<UNK>")
DNA_PAD_TOKEN = "<PAD>"


def kmer_vocabulary(k: int = KMER_SIZE, specials: tuple[str, ...] = DNA_SPECIAL_TOKENS) -> dict[str, int]:
    """Returns ``{token: id}``: the special tokens, then every ACGT k-mer in lexicographic order."""
    tokens = list(specials) + ["".join(p) for p in itertools.product(NUCLEOTIDES, repeat=k)]
    return {token: index for index, token in enumerate(tokens)}


TAXONOMIC_RANKS = ("order", "family", "genus", "species")
ALL_RANKS = ("order", "family", "subfamily", "tribe", "genus", "species")
NOT_CLASSIFIED = "not_classified"
# Literal strings the sources use for "unknown"; read as missing.
MISSING_TAXON_STRINGS = frozenset({"", "not_classified", "None", "NA", "N/A", "nan", "NaN"})

TEXT_MAX_LENGTH = 20  # the original pads/truncates taxonomy strings to 20 tokens

IMAGE_RESIZE = 256
IMAGE_CROP = 224
# Safe-loader caps: read from the header before decoding.
MAX_IMAGE_PIXELS = 40_000_000
MAX_IMAGE_ASPECT_RATIO = 20.0
MAX_IMAGE_BYTES = 50 * 1024 * 1024
IMAGE_FORMATS = ("JPEG", "PNG", "WEBP", "TIFF", "BMP")
