"""How an identification is worded for a person: the demo's page and ``predict --report``'s HTML page say the same
things in the same words, from here. Markdown (the demo renders it; the report converts this small subset)."""

from __future__ import annotations

from bioscan_clip.features import AVERAGED, DNA, IMAGE

QUERY_DESCRIPTIONS = {AVERAGED: "photo + barcode", IMAGE: "photo", DNA: "barcode"}  # by the feature searched
SYNTHETIC_PREFIX = "MINI"  # processids of the generated mini-BIOSCAN (dataset_scripts.synth)

NO_CONFIDENT_RANK = "none: no rank reaches its calibrated similarity threshold"
UNKNOWN_SPECIES = "**Yes**: the species rank is not confident; this may be a species absent from the keys."
KNOWN_SPECIES = "No: the species prediction is confident."


def synthetic_warning(subject: str) -> str:
    """The warning on anything that answers from mini-BIOSCAN keys; ``subject`` e.g. ``"This demo searches"``."""
    return (
        f"**SYNTHETIC keys.** {subject} the generated *mini-BIOSCAN* data set: the specimens, taxon names and "
        "barcodes are invented, and the model was trained on them only. Use it to try the interface, not to "
        "identify real insects."
    )


def identity_text(percent_identity: float | None, overlap: int | None) -> str:
    """``"99.2 % identity over 658 bp"`` for a barcode query's hit (what BOLD and BLAST users read), else ``""``."""
    if percent_identity is None:
        return ""
    return f"{percent_identity:.1f} % identity over {overlap} bp"


# One bullet per concept of the answer, by name: the demo lists them all, the report those it shows.
READING_NOTES = {
    "prediction": (
        "**Prediction at each rank**: for a barcode, the taxon of its best *hit*, the key barcode most identical to "
        "it once aligned (candidates from the 5-mer and the model's nearest keys; *Nearest similarity* is then that "
        "identity, *Confidence* the share of equally identical hits that agree); for a photo, the taxon of the "
        "nearest key specimen (1-nearest neighbour, as in the BIOSCAN-CLIP paper), *Confidence* the "
        "similarity-weighted share of the nearest keys that agree. A photo with its barcode takes each rank from "
        "the barcode where the barcode is confident."
    ),
    "confident": (
        "**Confident?** says whether the best hit (or nearest key) is close enough to trust that rank: the threshold "
        "of each rank was calibrated on the library so that confident answers were right about 90 % of the time."
    ),
    "deepest": (
        "**Deepest confident rank**: how far down (order → family → genus → species) the answer can be trusted."
    ),
    "unknown": (
        "**Unknown species?** raised when the species rank is not confident: the specimen may belong to a species "
        "that is not among the keys (its genus or family can still be right)."
    ),
    "cross_modal": (
        "**Cross-modal**: the photo alone, compared with the DNA barcodes of the keys: the image and DNA encoders "
        "share one embedding space, so a photo can be matched to sequences."
    ),
}

HOW_TO_READ = "\n### How to read the results\n" + "".join(f"- {note}\n" for note in READING_NOTES.values())
