"""What people look at after an evaluation: accuracy plots, the retrieval-examples figure, the model card."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; never a window
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image, ImageOps  # noqa: E402

from modeling_bioscanclip.constants_bioscanclip import TAXONOMIC_RANKS  # noqa: E402

CARD_RESULTS_START = "<!-- results:start -->"
CARD_RESULTS_END = "<!-- results:end -->"
MATCH_COLOURS = {"species": (46, 160, 67), "genus": (242, 160, 7), "none": (200, 40, 40)}


def plot_accuracy(
    results: Mapping[str, Mapping[str, Any]], path: str | Path, *, average: str = "macro", title: str = ""
) -> Path:
    """One panel per query -> key pair: top-1 accuracy per rank, seen (solid) and unseen (dashed)."""
    pairs = list(results)
    columns = min(3, len(pairs))
    rows = -(-len(pairs) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.2 * rows), squeeze=False, sharey=True)
    x = np.arange(len(TAXONOMIC_RANKS))
    for axis, pair in zip(axes.flat, pairs, strict=False):
        for group, style in (("seen", "-o"), ("unseen", "--s")):
            values = [results[pair].get(f"{group}/{rank}/{average}/top1") for rank in TAXONOMIC_RANKS]
            if any(v is not None for v in values):
                axis.plot(x, [np.nan if v is None else 100 * v for v in values], style, label=group)
        axis.set_title(pair)
        axis.set_xticks(x, TAXONOMIC_RANKS)
        axis.set_ylim(0, 102)
        axis.grid(alpha=0.3)
    for axis in axes.flat[len(pairs) :]:
        axis.axis("off")
    axes[0, 0].set_ylabel(f"top-1 {average} accuracy (%)")
    axes[0, 0].legend(loc="lower left")
    figure.suptitle(title or f"Retrieval accuracy per rank ({average} top-1)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return Path(path)


def _bordered(image: Image.Image, size: int, colour: tuple[int, int, int] | None, width: int = 6) -> Image.Image:
    image = ImageOps.fit(image.convert("RGB"), (size, size))
    return (
        ImageOps.expand(image, border=width, fill=colour)
        if colour
        else ImageOps.expand(image, border=width, fill="white")
    )


def plot_retrieval_examples(
    query_images: Sequence[Image.Image],
    query_taxa: Sequence[Mapping[str, Any]],
    neighbour_images: Sequence[Sequence[Image.Image]],
    neighbour_taxa: Sequence[Sequence[Mapping[str, Any]]],
    path: str | Path,
    *,
    title: str = "",
    tile: int = 110,
) -> Path:
    """The paper's figure: each query image beside its top-k retrieved keys, each key shown by its image, bordered
    green for a species match, orange for a genus-only match, red otherwise."""
    rows = len(query_images)
    k = max((len(n) for n in neighbour_images), default=0)
    figure, axes = plt.subplots(rows, k + 1, figsize=(1.7 * (k + 1), 1.9 * rows), squeeze=False)
    for r in range(rows):
        axes[r, 0].imshow(_bordered(query_images[r], tile, None))
        axes[r, 0].set_title(f"query\n{query_taxa[r].get('species') or '?'}", fontsize=7)
        for j in range(k):
            axis = axes[r, j + 1]
            if j < len(neighbour_images[r]):
                taxa = neighbour_taxa[r][j]
                if taxa.get("species") and taxa.get("species") == query_taxa[r].get("species"):
                    match = "species"
                elif taxa.get("genus") and taxa.get("genus") == query_taxa[r].get("genus"):
                    match = "genus"
                else:
                    match = "none"
                axis.imshow(_bordered(neighbour_images[r][j], tile, MATCH_COLOURS[match]))
                axis.set_title(f"{j + 1}. {taxa.get('species') or taxa.get('genus') or '?'}", fontsize=7)
        for axis in axes[r]:
            axis.axis("off")
    figure.suptitle(title or "Nearest keys (green: same species, orange: same genus only, red: other)", fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return Path(path)


def results_markdown(results: Mapping[str, Mapping[str, Any]], *, dataset: str, split: str) -> str:
    """A Markdown table of top-1 macro and micro accuracy (seen / unseen / harmonic mean) per pair and rank."""

    def cell(metrics: Mapping[str, Any], group: str, rank: str, average: str) -> str:
        value = metrics.get(f"{group}/{rank}/{average}/top1")
        return "–" if value is None else f"{100 * value:.1f}"

    lines = [
        f"Top-1 accuracy (%) on **{dataset}**, `{split}` queries against all keys (seen / unseen / harmonic mean).",
        "",
        "| query → key | rank | macro seen | macro unseen | macro HM | micro seen | micro unseen | micro HM |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for pair, metrics in results.items():
        for rank in TAXONOMIC_RANKS:
            cells = [cell(metrics, g, rank, a) for a in ("macro", "micro") for g in ("seen", "unseen", "hm")]
            lines.append(f"| {pair} | {rank} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def model_index(results: Mapping[str, Mapping[str, Any]], *, model_name: str, dataset: str, split: str) -> str:
    """The ``model-index`` YAML block of the Hub model card (species-level macro top-1 per pair)."""
    lines = ["model-index:", f"- name: {model_name}", "  results:"]
    for pair, metrics in results.items():
        lines += [
            "  - task:",
            "      type: zero-shot-classification",
            f"      name: taxonomic retrieval {pair}",
            "    dataset:",
            f"      name: {dataset}",
            f"      type: {dataset}",
            f"      split: {split}",
            "    metrics:",
        ]
        for group in ("seen", "unseen", "hm"):
            value = metrics.get(f"{group}/species/macro/top1")
            if value is not None:
                lines += [
                    "    - type: accuracy",
                    f"      name: species macro top-1 ({group})",
                    f"      value: {100 * value:.2f}",
                ]
    return "\n".join(lines)


def update_model_card(
    card: str | Path,
    results: Mapping[str, Mapping[str, Any]],
    *,
    model_name: str,
    dataset: str,
    split: str,
    notes: str = "",
) -> Path:
    """Writes the results into a model card: ``model-index`` in its YAML front matter, the table between markers.

    Other text of the card is kept; a card without front matter or markers gets them.
    """
    path = Path(card)
    text = path.read_text() if path.exists() else f"# {model_name}\n"
    index_block = model_index(results, model_name=model_name, dataset=dataset, split=split)
    front = re.match(r"^---\n(.*?)\n---\n", text, flags=re.S)
    if front:
        yaml = re.sub(r"(?ms)^model-index:.*?(?=^\S|\Z)", "", front.group(1)).rstrip()
        text = f"---\n{yaml}\n{index_block}\n---\n" + text[front.end() :]
    else:
        text = f"---\n{index_block}\n---\n" + text
    table = results_markdown(results, dataset=dataset, split=split)
    block = f"{CARD_RESULTS_START}\n{table}\n{notes}\n{CARD_RESULTS_END}"
    if CARD_RESULTS_START in text and CARD_RESULTS_END in text:
        start, end = text.index(CARD_RESULTS_START), text.index(CARD_RESULTS_END) + len(CARD_RESULTS_END)
        text = text[:start] + block + text[end:]
    else:
        text = text.rstrip() + "\n\n## Results\n\n" + block + "\n"
    path.write_text(text)
    return ensure_card_metadata(path, model_name=model_name)


# What the Hub needs to list and load the model (remote code through transformers); added only where missing.
CARD_METADATA = "library_name: transformers\ntags:\n- bioscan-clip\n- biodiversity\n- dna-barcoding\n- clip"


def ensure_card_metadata(card: str | Path, *, model_name: str) -> Path:
    """Adds the Hub metadata (:data:`CARD_METADATA`) a model card lacks, after what its front matter holds;
    ``bioscan-clip evaluate --model_card`` and ``bioscan-clip push model`` write cards through this."""
    path = Path(card)
    text = path.read_text() if path.exists() else f"# {model_name}\n"
    front = re.match(r"^---\n(.*?)\n---\n", text, flags=re.S)
    yaml, body = (front.group(1), text[front.end() :]) if front else ("", text)
    blocks = re.split(r"\n(?=\S)", CARD_METADATA)
    missing = [block for block in blocks if not re.search(rf"(?m)^{block.split(':')[0]}:", yaml)]
    if missing or not front:
        yaml = "\n".join(part for part in (yaml.rstrip(), *missing) if part)
        path.write_text(f"---\n{yaml}\n---\n" + body)
    return path
