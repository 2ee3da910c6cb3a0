"""mini-BIOSCAN: a small SYNTHETIC dataset in the BIOSCAN-5M on-disk layout, generated from a seed.

Purpose: the embedded default for tests, demos and a CPU smoke training run, read by the real 5M builder. It is
synthetic everywhere it appears (card, description, names, ids); no real specimen is depicted.

What is simulated, and why it is shaped so:

* **Taxonomy.** orders -> families (``-idae``) -> genera -> binomial species ("Genus epithet"), with Latin-like
  names from syllables; some families have subfamilies (``-inae``).
* **Barcodes.** A COI-like root sequence (AT-rich codons, no stop codon of the invertebrate mitochondrial code)
  is evolved down the tree. Each branch changes a site with probability ``1 - exp(-rate * t)``, rates set by
  codon position (third positions fastest) times a gamma factor per site; a change is a transition 3 times out
  of 4 (transitions more frequent than transversions) and changes creating a stop codon are reverted. Branch
  lengths are calibrated so the median p-distances match those measured on real BOLD COI of insects: within
  species ~0.5 % (p90 ~3 %, from specimen noise plus a second, cryptic lineage in some species), congeneric
  ~15 %, confamilial ~18 %, across families ~23 % (the "barcode gap"). Records are the 658-nt Folmer region,
  some truncated at either end and a few with ``N``.
* **Images.** Specimens drawn with PIL on a BIOSCAN-like plate (light grey well, vignetting). Body plan (wings,
  segments, legs, antennae) is set per order/genus, colours and proportions vary per species, pose, scale,
  lighting and blur per image.
* **Splits.** BIOSCAN-5M's scheme: ``pretrain`` (species or genus label removed), ``train``/``val``/``test``
  over seen species, ``key_unseen``/``val_unseen``/``test_unseen`` over unseen species, ``other_heldout``.

Command line (wired by the ``bioscan-clip`` CLI): ``bioscan-clip synth --out DIR [--seed S] [--size small|medium]``.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFilter
from tqdm.auto import tqdm

__all__ = [
    "GENERATOR_VERSION",
    "SIZES",
    "SynthSize",
    "generate_mini_bioscan",
    "p_distance",
]

GENERATOR_VERSION = "1.0.0"
"""Bumped whenever the output for a given seed changes."""


@dataclass(frozen=True)
class SynthSize:
    """Shape of a generated dataset.

    Attributes:
        orders, families, genera (`int`): tree size.
        seen, unseen, heldout, dark (`int`): species counts per role; ``dark`` species appear in pretrain only.
        median_records (`float`): median records per labelled species (log-normal).
        pretrain_per_seen (`float`): extra unlabelled pretrain records per seen species.
        image_size (`int`): side of the square JPEG images.
    """

    orders: int
    families: int
    genera: int
    seen: int
    unseen: int
    heldout: int
    dark: int
    median_records: float
    pretrain_per_seen: float
    image_size: int = 96


SIZES: dict[str, SynthSize] = {
    "tiny": SynthSize(orders=2, families=4, genera=8, seen=12, unseen=6, heldout=2, dark=2,
                      median_records=10, pretrain_per_seen=3, image_size=64),
    "small": SynthSize(orders=3, families=8, genera=20, seen=40, unseen=14, heldout=6, dark=4,
                       median_records=24, pretrain_per_seen=9),
    "medium": SynthSize(orders=4, families=24, genera=70, seen=160, unseen=50, heldout=20, dark=12,
                        median_records=24, pretrain_per_seen=9),
}  # fmt: skip

CSV_COLUMNS = (
    "processid", "sampleid", "taxon", "phylum", "class", "order", "family", "subfamily", "genus", "species",
    "dna_bin", "dna_barcode", "country", "province_state", "coord-lat", "coord-lon", "image_measurement_value",
    "area_fraction", "scale_factor", "inferred_ranks", "split", "index_bioscan_1M_insect", "chunk",
)  # fmt: skip
"""The BIOSCAN-5M metadata columns, in the official order."""

# ---------------------------------------------------------------------------------------------------------------
# Names
# ---------------------------------------------------------------------------------------------------------------
_ONSETS = ("b", "c", "d", "g", "l", "m", "n", "p", "r", "s", "t", "v", "ph", "th", "ch", "tr", "cl", "gr", "st")
_VOWELS = ("a", "e", "i", "o", "u", "ae", "y")
_GENUS_ENDINGS = ("us", "a", "um", "ia", "ella", "omyia", "ops", "ides", "ax")
_EPITHET_ENDINGS = ("us", "a", "is", "ensis", "i", "ae", "ata", "ina", "ator")


class _NameMaker:
    """Draws unique Latin-like names from syllables (seeded by the caller's generator)."""

    def __init__(self, rng: np.random.Generator):
        self.rng = rng
        self.used: set[str] = set()

    def _stem(self, syllables: int) -> str:
        return "".join(self.rng.choice(_ONSETS) + self.rng.choice(_VOWELS) for _ in range(syllables))

    def make(self, suffixes: Sequence[str], syllables: tuple[int, int] = (2, 3), capital: bool = True) -> str:
        while True:
            stem = self._stem(int(self.rng.integers(syllables[0], syllables[1] + 1)))
            name = stem.rstrip("aeiouy") + str(self.rng.choice(list(suffixes)))
            name = name.capitalize() if capital else name
            if name not in self.used:
                self.used.add(name)
                return name


# ---------------------------------------------------------------------------------------------------------------
# Barcodes
# ---------------------------------------------------------------------------------------------------------------
_BASES = np.array(list("ACGT"))
_TRANSITION = np.array([2, 3, 0, 1])  # A<->G, C<->T
# Transversion targets (two per base) and the chance of the first: biased towards A/T as in insect mtDNA.
_TRANSVERSIONS = np.array([[3, 1], [0, 2], [3, 1], [0, 2]])
_WORK_LENGTH = 660  # 220 whole codons; the Folmer region is the 658 nt starting at offset 1
_FOLMER = slice(1, 659)
_STOP_CODONS = {(3, 0, 0), (3, 0, 2)}  # TAA, TAG (invertebrate mitochondrial code)

# Branch lengths (expected substitutions per site at rate 1), calibrated so that the median p-distances match
# the targets in the module docstring; see tests/test_synth.py::test_barcode_divergences.
_T_ORDER, _T_FAMILY, _T_GENUS, _T_SPECIES, _T_CRYPTIC = 0.10, 0.14, 0.10, 0.16, 0.035
_SPECIMEN_MUTATIONS = 1.7  # Poisson mean of private substitutions per specimen
_CRYPTIC_SPECIES_FRACTION = 0.35
_TS_FRACTION = 0.75


def _site_rates(rng: np.random.Generator) -> np.ndarray:
    codon = np.tile(np.array([0.35, 0.1, 2.55]), _WORK_LENGTH // 3)  # third codon positions fastest
    gamma = rng.gamma(shape=0.6, scale=1 / 0.6, size=_WORK_LENGTH)
    return codon * gamma


def _root_sequence(rng: np.random.Generator) -> np.ndarray:
    sequence = rng.choice(4, size=_WORK_LENGTH, p=[0.31, 0.15, 0.15, 0.39])  # AT-rich like insect COI
    codons = sequence.reshape(-1, 3)
    for row in range(len(codons)):
        while tuple(codons[row]) in _STOP_CODONS:
            codons[row] = rng.choice(4, size=3, p=[0.31, 0.15, 0.15, 0.39])
    return codons.reshape(-1)


def _mutate_sites(parent: np.ndarray, sites: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    child = parent.copy()
    if len(sites) == 0:
        return child
    old = parent[sites]
    is_transition = rng.random(len(sites)) < _TS_FRACTION
    transversion = _TRANSVERSIONS[old, (rng.random(len(sites)) > 0.7).astype(int)]
    child[sites] = np.where(is_transition, _TRANSITION[old], transversion)
    # Revert changes that made a stop codon: real COI barcodes are open reading frames.
    codons = child.reshape(-1, 3)
    for codon_index in np.unique(sites // 3):
        if tuple(codons[codon_index]) in _STOP_CODONS:
            codons[codon_index] = parent.reshape(-1, 3)[codon_index]
    return child


def _evolve(parent: np.ndarray, t: float, rates: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    changed = rng.random(len(parent)) < -np.expm1(-rates * t)
    return _mutate_sites(parent, np.flatnonzero(changed), rng)


def _specimen_sequence(haplotype: np.ndarray, rates: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    count = int(rng.poisson(_SPECIMEN_MUTATIONS))
    sites = rng.choice(len(haplotype), size=count, replace=False, p=rates / rates.sum()) if count else np.array([], int)
    return _mutate_sites(haplotype, sites, rng)


def _barcode_string(sequence: np.ndarray, rng: np.random.Generator) -> str:
    """The Folmer region with realistic read-length variation and occasional ambiguous bases."""
    bases = _BASES[sequence[_FOLMER]].copy()
    start, end = 0, len(bases)
    draw = rng.random()
    if draw < 0.25:  # 3' end not read
        end = int(rng.integers(480, len(bases)))
    elif draw < 0.35:  # 5' primer region trimmed
        start = int(rng.integers(1, 45))
    if rng.random() < 0.08:
        bases[rng.integers(start, end, size=int(rng.integers(1, 4)))] = "N"
    return "".join(bases[start:end])


def p_distance(a: str, b: str) -> float:
    """Uncorrected p-distance over the aligned positions where both barcodes have A/C/G/T.

    Barcodes are compared position by position from their first base (valid for full-length Folmer reads).
    """
    n = min(len(a), len(b))
    x = np.frombuffer(a[:n].encode(), dtype=np.uint8)
    y = np.frombuffer(b[:n].encode(), dtype=np.uint8)
    valid = np.isin(x, np.frombuffer(b"ACGT", np.uint8)) & np.isin(y, np.frombuffer(b"ACGT", np.uint8))
    return float((x[valid] != y[valid]).mean()) if valid.any() else float("nan")


# ---------------------------------------------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _BodyPlan:
    """Shared by a genus (wing type from its order)."""

    wing_type: int  # 0 none, 1 one narrow pair (fly-like), 2 two broad pairs (moth-like), 3 elytra (beetle-like)
    head: float
    thorax: tuple[float, float]
    abdomen: tuple[float, float]
    segments: int
    wing: tuple[float, float]
    leg: float
    antenna: float
    antenna_curl: float
    hue: float


@dataclass(frozen=True)
class _Colouring:
    """Varies by species within the genus plan."""

    body: tuple[int, int, int]
    pattern: tuple[int, int, int]
    wing: tuple[int, int, int, int]
    stripes: int
    size: float
    stretch: float


def _hsv(h: float, s: float, v: float) -> tuple[int, int, int]:
    r, g, b = np.array(
        Image.new("HSV", (1, 1), (int(h * 255) % 256, int(s * 255), int(v * 255))).convert("RGB").getpixel((0, 0))
    )
    return int(r), int(g), int(b)


def _body_plan(wing_type: int, rng: np.random.Generator) -> _BodyPlan:
    return _BodyPlan(
        wing_type=wing_type,
        head=float(rng.uniform(0.05, 0.08)),
        thorax=(float(rng.uniform(0.08, 0.13)), float(rng.uniform(0.09, 0.15))),
        abdomen=(float(rng.uniform(0.07, 0.14)), float(rng.uniform(0.16, 0.3))),
        segments=int(rng.integers(3, 8)),
        wing=(float(rng.uniform(0.2, 0.34)), float(rng.uniform(0.06, 0.14))),
        leg=float(rng.uniform(0.12, 0.26)),
        antenna=float(rng.uniform(0.06, 0.22)),
        antenna_curl=float(rng.uniform(-0.6, 0.6)),
        hue=float(rng.uniform(0, 1)),
    )


def _colouring(plan: _BodyPlan, rng: np.random.Generator) -> _Colouring:
    hue = (plan.hue + rng.normal(0, 0.06)) % 1.0
    value = float(rng.uniform(0.25, 0.75))
    return _Colouring(
        body=_hsv(hue, float(rng.uniform(0.35, 0.9)), value),
        pattern=_hsv((hue + rng.uniform(0.05, 0.5)) % 1.0, float(rng.uniform(0.3, 0.9)), float(rng.uniform(0.1, 0.9))),
        wing=(*_hsv((hue + 0.5) % 1.0, float(rng.uniform(0.0, 0.5)), float(rng.uniform(0.6, 0.95))), int(rng.integers(70, 160))),
        stripes=int(rng.integers(0, 5)),
        size=float(rng.uniform(0.8, 1.2)),
        stretch=float(rng.uniform(0.85, 1.2)),
    )  # fmt: skip


_PLATE_CACHE: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}


def _plate(size: int, rng: np.random.Generator) -> Image.Image:
    """A light grey well plate background with vignetting and directional light."""
    if size not in _PLATE_CACHE:
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size - 0.5
        _PLATE_CACHE[size] = (xx, yy, np.sqrt(xx**2 + yy**2))
    xx, yy, radius = _PLATE_CACHE[size]
    base = rng.uniform(205, 235)
    well = np.where(radius < rng.uniform(0.42, 0.5), rng.uniform(6, 16), 0.0)
    angle = rng.uniform(0, 2 * math.pi)
    light = rng.uniform(4, 14) * (np.cos(angle) * xx + np.sin(angle) * yy)
    grey = base + well + light - 40 * radius**2
    tint = rng.uniform(-4, 4, size=3)
    noise = rng.normal(0, 2.0, size=(size, size, 1))
    pixels = np.clip(grey[..., None] + tint + noise, 0, 255).astype(np.uint8)
    return Image.fromarray(pixels, "RGB")


class _Pen:
    """Draws shapes rotated by ``angle`` about the canvas centre and shifted (cheaper than rotating a bitmap)."""

    def __init__(
        self, draw: ImageDraw.ImageDraw, centre: tuple[float, float], angle: float, shift: tuple[float, float]
    ):
        self.draw, self.centre, self.shift = draw, centre, shift
        self.cos, self.sin = math.cos(angle), math.sin(angle)

    def _map(self, points: list[tuple[float, float]]) -> list[tuple[float, float]]:
        cx, cy = self.centre
        return [
            (cx + self.shift[0] + (x - cx) * self.cos - (y - cy) * self.sin, cy + self.shift[1] + (x - cx) * self.sin + (y - cy) * self.cos)
            for x, y in points
        ]  # fmt: skip

    def line(self, points: list[tuple[float, float]], fill: tuple, width: int) -> None:
        self.draw.line(self._map(points), fill=fill, width=width, joint="curve")

    def ellipse(self, x: float, y: float, rx: float, ry: float, fill: tuple, tilt: float = 0.0) -> None:
        steps = np.linspace(0, 2 * math.pi, 24, endpoint=False)
        ct, st = math.cos(tilt), math.sin(tilt)
        points = [
            (x + rx * math.cos(a) * ct - ry * math.sin(a) * st, y + rx * math.cos(a) * st + ry * math.sin(a) * ct)
            for a in steps
        ]
        self.draw.polygon(self._map(points), fill=fill)


def _draw_specimen(plan: _BodyPlan, colour: _Colouring, size: int, rng: np.random.Generator) -> Image.Image:
    scale = 2  # drawn at twice the size and box-reduced: cheap anti-aliasing
    side = size * scale
    layer = Image.new("RGBA", (side, side), (0, 0, 0, 0))
    shift = (float(rng.uniform(-0.1, 0.1) * side), float(rng.uniform(-0.1, 0.1) * side))
    pen = _Pen(ImageDraw.Draw(layer, "RGBA"), (side / 2, side / 2), float(rng.uniform(0, 2 * math.pi)), shift)
    s = side * colour.size * rng.uniform(0.85, 1.1)
    cx, cy = side / 2, side / 2
    head_r = plan.head * s
    tw, th = plan.thorax[0] * s, plan.thorax[1] * s
    aw, ah = plan.abdomen[0] * s, plan.abdomen[1] * s * colour.stretch
    head_y, thorax_y = cy - th / 2 - head_r * 0.8, cy
    abdomen_y = cy + th / 2 + ah / 2 - th * 0.15
    body = (*colour.body, 255)
    dark = tuple(int(c * 0.55) for c in colour.body) + (255,)
    width = max(1, int(s * 0.012))

    for side_sign in (-1, 1):  # legs: three pairs with a knee each
        for k, offset in enumerate((-0.3, 0.0, 0.3)):
            x0, y0 = cx + side_sign * tw * 0.4, thorax_y + offset * th
            knee = (x0 + side_sign * plan.leg * s * 0.6, y0 + (k - 1) * plan.leg * s * 0.35 - plan.leg * s * 0.1)
            foot = (knee[0] + side_sign * plan.leg * s * 0.3, knee[1] + (k - 0.7) * plan.leg * s * 0.5)
            pen.line([(x0, y0), knee, foot], fill=dark, width=width)
    for side_sign in (-1, 1):  # antennae: a curved polyline
        points = []
        for step in range(6):
            f = step / 5
            angle = -math.pi / 2 + side_sign * (0.45 + plan.antenna_curl * f)
            points.append((cx + side_sign * head_r * 0.4 + math.cos(angle) * plan.antenna * s * f,
                           head_y - head_r * 0.5 + math.sin(angle) * plan.antenna * s * f))  # fmt: skip
        pen.line(points, fill=dark, width=width)

    wl, ww = plan.wing[0] * s, plan.wing[1] * s
    if plan.wing_type in (1, 2):  # membranous wings under the body
        pairs = [(0.35, 1.0)] if plan.wing_type == 1 else [(0.25, 1.25), (0.55, 0.9)]
        for side_sign in (-1, 1):
            for tilt, factor in pairs:
                x = cx + side_sign * (tw * 0.3 + wl * 0.45 * factor * math.cos(tilt))
                y = thorax_y + wl * 0.45 * factor * math.sin(tilt)
                pen.ellipse(x, y, wl * 0.5 * factor, ww * factor, colour.wing, tilt=side_sign * tilt)
    pen.ellipse(cx, abdomen_y, aw, ah / 2, body)
    for i in range(1, plan.segments):  # segment lines and species-specific stripes
        y = abdomen_y - ah / 2 + ah * i / plan.segments
        striped = i <= colour.stripes
        pen.line([(cx - aw * 0.85, y), (cx + aw * 0.85, y)], fill=(*colour.pattern, 255) if striped else dark,
                 width=width * (2 if striped else 1))  # fmt: skip
    pen.ellipse(cx, thorax_y, tw, th / 2, body)
    pen.ellipse(cx, head_y, head_r, head_r, dark)
    if plan.wing_type == 3:  # elytra cover the abdomen
        for side_sign in (-1, 1):
            pen.ellipse(cx + side_sign * aw * 0.5, (thorax_y + abdomen_y + ah / 2) / 2 + th * 0.1, aw * 0.55,
                        (abdomen_y + ah / 2 - thorax_y) / 2, (*colour.pattern, 255))  # fmt: skip
        pen.line([(cx, thorax_y + th * 0.3), (cx, abdomen_y + ah * 0.5)], fill=dark, width=width)

    canvas = _plate(size, rng).convert("RGBA")
    canvas.alpha_composite(layer.reduce(scale))
    pixels = np.asarray(canvas.convert("RGB"), dtype=np.float32) * rng.uniform(0.85, 1.1)  # exposure
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    radius = rng.uniform(0.0, 0.7)
    return image.filter(ImageFilter.GaussianBlur(radius)) if radius > 0.2 else image


def _jpeg_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------------------------
# Dataset
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class _Species:
    order: str
    family: str
    subfamily: str | None
    genus: str
    name: str
    role: str  # seen, unseen, heldout, dark
    plan: _BodyPlan
    colour: _Colouring
    haplotypes: list[np.ndarray]
    bins: list[str]


def _build_tree(size: SynthSize, rng: np.random.Generator) -> tuple[list[_Species], np.ndarray]:
    """The taxonomy with each species' haplotypes, and the per-site rates used to evolve them."""
    names = _NameMaker(rng)
    rates = _site_rates(rng)
    root = _root_sequence(rng)
    n_species = size.seen + size.unseen + size.heldout + size.dark
    orders = [names.make(("ptera",), (2, 2)) for _ in range(size.orders)]
    wing_types = (
        [int(w) for w in rng.permutation(4)[: size.orders]]
        if size.orders <= 4
        else list(rng.integers(0, 4, size.orders))
    )
    family_order = np.sort(
        np.concatenate([np.arange(size.orders), rng.integers(0, size.orders, size.families - size.orders)])
    )
    genus_family = np.sort(
        np.concatenate([np.arange(size.families), rng.integers(0, size.families, size.genera - size.families)])
    )
    species_genus = np.sort(
        np.concatenate([np.arange(size.genera), rng.integers(0, size.genera, n_species - size.genera)])
    )

    order_seqs = [_evolve(root, _T_ORDER, rates, rng) for _ in orders]
    families, family_seqs, subfamilies = [], [], []
    for o in family_order:
        name = names.make(("idae",), (2, 3))
        families.append(name)
        family_seqs.append(_evolve(order_seqs[o], _T_FAMILY, rates, rng))
        stem = name[: -len("idae")]
        subfamilies.append([f"{stem}inae", names.make(("inae",), (2, 3))] if rng.random() < 0.5 else [None])
    genera, genus_seqs, genus_plans, genus_subfamily = [], [], [], []
    for f in genus_family:
        genera.append(names.make(_GENUS_ENDINGS))
        genus_seqs.append(_evolve(family_seqs[f], _T_GENUS, rates, rng))
        genus_plans.append(_body_plan(wing_types[family_order[f]], rng))
        genus_subfamily.append(subfamilies[f][int(rng.integers(len(subfamilies[f])))])

    roles = np.array(
        ["seen"] * size.seen + ["unseen"] * size.unseen + ["heldout"] * size.heldout + ["dark"] * size.dark
    )
    roles = roles[rng.permutation(len(roles))]
    species: list[_Species] = []
    bin_counter = 0
    for index, g in enumerate(species_genus):
        f = genus_family[g]
        base = _evolve(genus_seqs[g], _T_SPECIES, rates, rng)
        haplotypes = [base]
        if rng.random() < _CRYPTIC_SPECIES_FRACTION:  # a divergent lineage inside the species (p90 within ~3 %)
            haplotypes.append(_evolve(base, _T_CRYPTIC, rates, rng))
        bins = []
        for _ in haplotypes:
            bin_counter += 1
            bins.append(f"BOLD:SYN{bin_counter:04d}")
        species.append(
            _Species(
                order=orders[family_order[f]], family=families[f], subfamily=genus_subfamily[g], genus=genera[g],
                name=f"{genera[g]} {names.make(_EPITHET_ENDINGS, (1, 3), capital=False)}", role=str(roles[index]),
                plan=genus_plans[g], colour=_colouring(genus_plans[g], rng), haplotypes=haplotypes, bins=bins,
            )
        )  # fmt: skip
    return species, rates


def _per_species_splits(n: int, role: str, rng: np.random.Generator) -> list[str]:
    if role == "seen":  # at least one val and one test query per seen species
        n_val = max(1, int(round(0.13 * n)))
        n_test = max(1, int(round(0.17 * n)))
        labels = ["val"] * n_val + ["test"] * n_test + ["train"] * (n - n_val - n_test)
    elif role == "unseen":
        n_val = max(1, n // 4)
        n_test = max(1, n // 4)
        labels = ["val_unseen"] * n_val + ["test_unseen"] * n_test + ["key_unseen"] * (n - n_val - n_test)
    else:
        labels = ["other_heldout"] * n
    return [labels[i] for i in rng.permutation(n)]


def _plan_records(species: list[_Species], size: SynthSize, rng: np.random.Generator) -> list[dict]:
    records = []
    for index, sp in enumerate(species):
        if sp.role == "dark":
            count, splits = 0, []
        else:
            count = int(np.clip(round(rng.lognormal(math.log(size.median_records), 0.5)), 8, 4 * size.median_records))
            splits = _per_species_splits(count, sp.role, rng)
        n_pretrain = int(rng.poisson(size.pretrain_per_seen)) if sp.role in ("seen", "dark") else 0
        for split in splits + ["pretrain"] * n_pretrain:
            lineage = 1 if len(sp.haplotypes) > 1 and rng.random() < 0.3 else 0
            records.append({"species_index": index, "split": split, "lineage": lineage})
    return [records[i] for i in rng.permutation(len(records))]


def _row(index: int, record: dict, sp: _Species, barcode: str, rng: np.random.Generator, chunk: str) -> dict:
    genus, name = sp.genus, sp.name
    if record["split"] == "pretrain":  # 5M pretrain records lack a species label; some lack the genus too
        name = None
        genus = genus if rng.random() < 0.6 else None
    taxon = next(v for v in (name, genus, sp.subfamily, sp.family, sp.order) if v)
    area = float(rng.uniform(0.05, 0.4))
    return {
        "processid": f"MINI{index:06d}-24", "sampleid": f"MINI-S{index:06d}", "taxon": taxon,
        "phylum": "Arthropoda", "class": "Insecta", "order": sp.order, "family": sp.family,
        "subfamily": sp.subfamily or "", "genus": genus or "", "species": name or "",
        "dna_bin": sp.bins[record["lineage"]], "dna_barcode": barcode, "country": "SYNTHETIC",
        "province_state": "", "coord-lat": "", "coord-lon": "",
        "image_measurement_value": int(area * 5000), "area_fraction": round(area, 4),
        "scale_factor": round(float(rng.uniform(0.9, 1.1)), 4), "inferred_ranks": 0,
        "split": record["split"], "index_bioscan_1M_insect": "", "chunk": chunk,
    }  # fmt: skip


def _card(out_dir: Path, seed: int, size_name: str, frame: pd.DataFrame) -> str:
    counts = frame["split"].value_counts()
    rows = "\n".join(f"| {split} | {counts.get(split, 0)} | {frame.loc[frame.split == split, 'species'].replace('', np.nan).nunique()} |"
                     for split in ("pretrain", "train", "val", "test", "key_unseen", "val_unseen", "test_unseen", "other_heldout"))  # fmt: skip
    return f"""---
pretty_name: mini-BIOSCAN (SYNTHETIC)
license: cc0-1.0
tags: [synthetic, biodiversity, dna-barcode, bioscan]
---

# mini-BIOSCAN — SYNTHETIC DATA

**Every record here is SYNTHETIC.** Generated by `dataset_scripts.synth.generate_mini_bioscan` (generator version
{GENERATOR_VERSION}, seed {seed}, size `{size_name}`). No real specimen, sequence or taxon is depicted: taxon names
are random Latin-like strings, barcodes are simulated COI-like sequences, images are procedural drawings.

Layout: BIOSCAN-5M (`bioscan5m/metadata/csv/BIOSCAN_5M_Insect_Dataset_metadata.csv`,
`bioscan5m/images/cropped_256/{{split}}/[{{chunk}}/]{{processid}}.jpg`), read by `dataset_scripts.Bioscan5M` or
`dataset_scripts.MiniBioscan`. Use for tests, demos and smoke training only.

| split | records | species |
|---|---|---|
{rows}

Total: {len(frame)} records, {frame["order"].nunique()} orders, {frame["family"].nunique()} families,
{frame["genus"].replace("", np.nan).nunique()} genera, {frame["species"].replace("", np.nan).nunique()} labelled species.
"""


def generate_mini_bioscan(
    out_dir: str | Path,
    seed: int = 0,
    size: str = "small",
    *,
    progress: bool = True,
    image_package: str = "cropped_256",
    with_images: bool = True,
    chunked_splits: Sequence[str] = ("pretrain", "train"),
) -> Path:
    """Writes a SYNTHETIC mini-BIOSCAN in the BIOSCAN-5M on-disk layout.

    Args:
        out_dir (`str` or `Path`): the data root (gets ``bioscan5m/`` and a ``README.md`` card).
        seed (`int`, *optional*, defaults to 0): the same seed gives byte-identical files.
        size (`str`, *optional*, defaults to ``"small"``): ``"small"`` (~2,000 records, 60 species, seconds),
            ``"medium"`` (about four times larger) or ``"tiny"`` (~250 records, for unit tests).
        progress (`bool`, *optional*, defaults to `True`): show a tqdm bar while rendering.
        image_package (`str`, *optional*, defaults to ``"cropped_256"``): image folder name, as in BIOSCAN-5M.
        with_images (`bool`, *optional*, defaults to `True`): ``False`` writes the metadata only (same rows and
            barcodes for the seed; read it with ``image_package=None``).
        chunked_splits (`Sequence[str]`, *optional*, defaults to ``("pretrain", "train")``): splits whose images go
            into numbered ``{split}/{chunk}/`` folders of 500 (with the ``chunk`` column filled). The official
            BIOSCAN-5M release also chunks ``other_heldout``; pass every split to test a reader against chunks
            everywhere. The default keeps the files of earlier versions byte for byte.

    Returns:
        `Path`: ``out_dir``; read it with ``Bioscan5M(data_dir=out_dir)`` or ``MiniBioscan(data_dir=out_dir)``.
    """
    if size not in SIZES:
        raise ValueError(f"size must be one of {sorted(SIZES)}, got {size!r}")
    from modeling_bioscanclip.image_processing_bioscanclip import load_image_safely  # validates what we write

    out_dir = Path(out_dir)
    shape = SIZES[size]
    tree_seed, plan_seed, record_seed = np.random.SeedSequence([seed, 20240]).spawn(3)
    species, rates = _build_tree(shape, np.random.default_rng(tree_seed))
    plan_rng = np.random.default_rng(plan_seed)
    records = _plan_records(species, shape, plan_rng)

    root = out_dir / "bioscan5m"
    csv_path = root / "metadata" / "csv" / "BIOSCAN_5M_Insect_Dataset_metadata.csv"
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    per_split: dict[str, int] = {}
    record_rngs = [np.random.default_rng(s) for s in record_seed.spawn(len(records))]
    for index, record in enumerate(
        tqdm(records, desc="mini-BIOSCAN (synthetic)", unit=" specimen", disable=not progress)
    ):
        rng = record_rngs[index]
        sp = species[record["species_index"]]
        sequence = _specimen_sequence(sp.haplotypes[record["lineage"]], rates, rng)
        split = record["split"]
        position = per_split.get(split, 0)
        per_split[split] = position + 1
        chunk = str(1 + position // 500) if split in chunked_splits else ""
        row = _row(index, record, sp, _barcode_string(sequence, rng), rng, chunk)
        rows.append(row)
        if not with_images:
            continue
        data = _jpeg_bytes(_draw_specimen(sp.plan, sp.colour, shape.image_size, rng))
        load_image_safely(data, name=row["processid"])  # never write an image the builders would refuse
        folder = root / "images" / image_package / split / chunk if chunk else root / "images" / image_package / split
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{row['processid']}.jpg").write_bytes(data)

    frame = pd.DataFrame(rows, columns=list(CSV_COLUMNS)).sort_values("processid", kind="stable")
    frame.to_csv(csv_path, index=False, lineterminator="\n")
    (out_dir / "README.md").write_text(_card(out_dir, seed, size, frame))  # last: marks a complete dataset
    return out_dir
