"""Frame-robust barcodes: train-time barcode augmentation and reading-frame averaging at inference.

The DNA tokenizer cuts non-overlapping 5-mers from the first nucleotide, so the same barcode started one base later
is a completely different token sequence. Real BOLD barcodes start wherever the primers and the trimming left them
(307-1,602 nt; the COI-5P barcode region is about 658 nt), so two specimens of one species are often read in
different frames. Two remedies, used apart or together:

- :class:`DnaAugmentation` (training): each time a record is drawn, drop 0..k-1 leading nucleotides (a random
  reading frame), sometimes trim either end as real records are trimmed, and sometimes put a few ambiguous ``N``
  bases at random positions, all drawn from (seed, epoch, index) like the image augmentation.
- reading-frame averaging (inference, ``dna_frames`` in the model's config): the processor gives the barcode read
  from each of its first ``frames`` starting bases (:meth:`~modeling_bioscanclip.BioscanDnaTokenizer.encode_frames`)
  and the model averages their embeddings (``get_dna_features``/``embed`` on ids of shape (batch, frames, seq)),
  which makes the embedding depend much less on where the barcode happens to start. Training stays one frame per
  record: the random one drawn here.

Measured on the 8,949 real BOLD v3 records in ``../shared/realdata/matteodegobbi__InsectClassification`` (CLIBD
partition; 596 seen / 447 unseen test queries against 1,497 keys; DNA+text tiny preset, 8 epochs, seed 0), DNA->DNA
species top-1 micro, seen / unseen:

=====================================  =============  ==============  ===================================
model                                  all queries    real off-frame  queries trimmed by 1-4 nt
=====================================  =============  ==============  ===================================
no augmentation, 1 frame               74.3 / 90.8    28.9 / 40.0     19.4 / 31.9
no augmentation, 5 frames averaged     95.6 / 98.4    96.7 / 93.3     95.8 / 98.4
augmentation, 1 frame                  81.2 / 93.7    56.7 / 66.7     54.7 / 54.5
augmentation, 5 frames averaged        98.0 / 98.9    98.9 / 93.3     98.0 / 98.9
5-mer-profile 1-NN (no training)       98.0 / 99.3    98.9 / 100.0    98.0 / 99.3
=====================================  =============  ==============  ===================================

(Real off-frame: the 90 seen / 15 unseen queries whose same-species keys all start, in BOLD's alignment, a
non-multiple of 5 bases away.) Both together serve best, so the ``tiny`` preset trains with the augmentation and saves
``dna_frames=5`` in the model's config; the paper's recipe and converted CLIBD weights keep one frame and no
augmentation, so their embeddings stay exactly the original's.

Both work on the cleaned barcode (:func:`~modeling_bioscanclip.normalize_barcode`: gaps, whitespace and a FASTA
header removed, upper case), so a leading run of alignment gaps never counts as bases.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from modeling_bioscanclip.constants_bioscanclip import KMER_SIZE

# The random stream of the DNA augmentation is (seed, epoch, index, DNA_STREAM): apart from the image augmentation's
# (seed, epoch, index), so that turning images on or off leaves every barcode draw unchanged.
DNA_STREAM = 1
AMBIGUOUS_BASE = "N"


@dataclass(frozen=True)
class DnaAugmentation:
    """Train-time barcode augmentation: a random reading frame, realistic end trimming and a few ambiguous bases.

    Args:
        max_shift (`int`, defaults to 4): leading nucleotides dropped, drawn uniformly from 0..max_shift (k-1 = 4
            covers every frame of 5-mers).
        trim_probability (`float`, defaults to 0.5): chance that a record is also trimmed at its ends.
        max_trim_fraction (`float`, defaults to 0.25): at most this fraction of the record is trimmed, split at
            random between the two ends.
        min_length (`int`, defaults to 300): trimming never leaves fewer bases (BOLD's shortest barcodes are about
            300 nt); a record already shorter is only shifted.
        ambiguous_probability (`float`, defaults to 0.3): chance that a record gets ambiguous bases.
        max_ambiguous (`int`, defaults to 3): at most this many bases (1..max_ambiguous) become ``N``.

    Example:

    ```python
    >>> import numpy as np
    >>> augmentation = DnaAugmentation()
    >>> barcode = "ACGTA" * 130
    >>> augmented = augmentation(barcode, np.random.default_rng([0, 0, 7, 1]))
    >>> augmented == augmentation(barcode, np.random.default_rng([0, 0, 7, 1]))  # the same draw, the same barcode
    True
    >>> 300 <= len(augmented) <= len(barcode)
    True

    ```
    """

    max_shift: int = KMER_SIZE - 1
    trim_probability: float = 0.5
    max_trim_fraction: float = 0.25
    min_length: int = 300
    ambiguous_probability: float = 0.3
    max_ambiguous: int = 3

    def __post_init__(self) -> None:
        if self.max_shift < 0:
            raise ValueError(f"max_shift: expected >= 0, got {self.max_shift}")
        for name in ("trim_probability", "max_trim_fraction", "ambiguous_probability"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name}: expected a value in [0, 1], got {getattr(self, name)}")
        if self.min_length < KMER_SIZE:
            raise ValueError(f"min_length: expected >= {KMER_SIZE}, got {self.min_length}")
        if self.max_ambiguous < 0:
            raise ValueError(f"max_ambiguous: expected >= 0, got {self.max_ambiguous}")

    def draw(self, length: int, rng: np.random.Generator) -> tuple[int, int, np.ndarray]:
        """The bases kept (``start``, ``end``) of a cleaned barcode of ``length`` bases and the positions, within
        the kept part, that become ``N``. The shift is only applied while ``length - shift`` leaves a k-mer."""
        shift = int(rng.integers(0, self.max_shift + 1))
        start, end = (shift, length) if length - shift >= KMER_SIZE else (0, length)
        if rng.random() < self.trim_probability:
            room = min(int((end - start) * self.max_trim_fraction), end - start - self.min_length)
            if room > 0:
                trimmed = int(rng.integers(0, room + 1))
                head = int(rng.integers(0, trimmed + 1))
                start, end = start + head, end - (trimmed - head)
        positions = np.empty(0, dtype=np.int64)
        if self.max_ambiguous and rng.random() < self.ambiguous_probability:
            count = min(int(rng.integers(1, self.max_ambiguous + 1)), end - start)
            positions = np.sort(rng.choice(end - start, size=count, replace=False))
        return start, end, positions

    def __call__(self, sequence: str, rng: np.random.Generator) -> str:
        """The augmented version of a cleaned barcode (see :func:`~modeling_bioscanclip.normalize_barcode`)."""
        start, end, positions = self.draw(len(sequence), rng)
        kept = sequence[start:end]
        if not len(positions):
            return kept
        bases = bytearray(kept, "ascii")
        for position in positions:
            bases[position] = ord(AMBIGUOUS_BASE)
        return bases.decode("ascii")
