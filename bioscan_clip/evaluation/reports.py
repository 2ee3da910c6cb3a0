"""What people look at after an evaluation: accuracy plots, the retrieval-examples figure, the model card."""

from __future__ import annotations

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


# The caveat every card and table on mini-BIOSCAN carries (its dataset name is "mini").
SYNTHETIC_NOTE = "*mini-BIOSCAN is SYNTHETIC: these figures test the pipeline, not insect identification.*"
CARD_TASK = "zero-shot-classification"  # model-index task: retrieval against labelled keys, no fine-tuning
CARD_GROUPS = ("seen", "unseen", "hm")
# The Hub groups model-index metrics by task and dataset, so one task holds every pair, each metric named by its pair.
CARD_TASK_NAME = "taxonomic retrieval"


def is_synthetic(summary: Mapping[str, Any]) -> bool:
    """Whether an evaluation ran on the generated mini-BIOSCAN (``results.json``'s ``dataset``)."""
    return "mini" in str(summary.get("dataset", ""))


def _percent(value: Any) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def results_caption(summary: Mapping[str, Any]) -> str:
    """What was scored, from ``results.json``: dataset, split, query and key counts."""
    queries = summary.get("queries") or {}
    counted = ", ".join(f"{n:,} {group}" for group, n in queries.items())
    keys = summary.get("keys")
    return (
        f"**{summary.get('dataset', '')}**, `{summary.get('split', '')}` queries"
        + (f" ({counted})" if counted else "")
        + (f" against all {keys:,} keys" if keys is not None else " against all keys")
    )


def results_markdown(summary: Mapping[str, Any]) -> str:
    """The card's table, from ``results.json``: top-1 macro and micro accuracy (seen / unseen / harmonic mean) per
    pair and rank."""
    lines = [
        f"Top-1 accuracy (%) on {results_caption(summary)} (seen / unseen / harmonic mean), as "
        "`bioscan-clip evaluate` wrote them in `results.json`.",
        "",
        "| query → key | rank | macro seen | macro unseen | macro HM | micro seen | micro unseen | micro HM |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for pair, metrics in summary["results"].items():
        for rank in TAXONOMIC_RANKS:
            cells = [_percent(metrics.get(f"{g}/{rank}/{a}/top1")) for a in ("macro", "micro") for g in CARD_GROUPS]
            lines.append(f"| {pair} | {rank} | " + " | ".join(cells) + " |")
    if is_synthetic(summary):
        lines += ["", SYNTHETIC_NOTE]
    return "\n".join(lines)


def eval_results(summary: Mapping[str, Any]) -> list[Any]:
    """The card's ``model-index`` entries (``huggingface_hub.EvalResult``), from ``results.json``: species-level macro
    top-1 accuracy (%) of seen and unseen queries and their harmonic mean, per query -> key pair (one task and
    dataset, a metric ``"<pair>: species macro top-1 (<group>)"`` each)."""
    from huggingface_hub import EvalResult

    found = []
    for pair, metrics in summary["results"].items():
        for group in CARD_GROUPS:
            value = metrics.get(f"{group}/species/macro/top1")
            if value is None:
                continue
            found.append(
                EvalResult(
                    task_type=CARD_TASK,
                    task_name=CARD_TASK_NAME,
                    dataset_type=str(summary.get("dataset", "")),
                    dataset_name=str(summary.get("dataset", "")),
                    dataset_split=str(summary.get("split", "")) or None,
                    metric_type="accuracy",
                    metric_name=f"{pair}: species macro top-1 ({group})",
                    metric_value=round(100 * float(value), 2),
                )
            )
    return found


def _card(path: Path, model_name: str) -> Any:
    """The card at ``path`` (a new one when missing), as ``huggingface_hub.ModelCard``."""
    from huggingface_hub import ModelCard

    text = path.read_text() if path.exists() else f"# {model_name}\n"
    # A model-index the Hub could not read is replaced below, not a reason to refuse the card.
    return ModelCard(text, ignore_metadata_errors=True)


def update_model_card(card: str | Path, summary: Mapping[str, Any], *, model_name: str) -> Path:
    """Writes an evaluation (``results.json``, what :func:`~bioscan_clip.evaluation.protocol.evaluate` writes) into a
    model card: the ``model-index`` of its metadata (:func:`eval_results`, through ``huggingface_hub.ModelCard``) and
    the table between :data:`CARD_RESULTS_START` and :data:`CARD_RESULTS_END` (:func:`results_markdown`).

    Other text and metadata of the card are kept; a card without markers gets a Results section. Used by
    ``bioscan-clip evaluate --model_card`` and ``bioscan-clip push model --results``, so both write the same card.
    """
    path = Path(card)
    model_card = _card(path, model_name)
    model_card.data.model_name = model_name
    model_card.data.eval_results = eval_results(summary)
    block = f"{CARD_RESULTS_START}\n{results_markdown(summary)}\n{CARD_RESULTS_END}"
    text = model_card.text
    if CARD_RESULTS_START in text and CARD_RESULTS_END in text:
        start, end = text.index(CARD_RESULTS_START), text.index(CARD_RESULTS_END) + len(CARD_RESULTS_END)
        text = text[:start] + block + text[end:]
    else:
        text = text.rstrip() + "\n\n## Results\n\n" + block + "\n"
    model_card.text = text
    path.write_text(str(model_card))
    return ensure_card_metadata(path, model_name=model_name)


# What the Hub needs to list and load the model (remote code through transformers); added only where missing.
CARD_METADATA = {
    "library_name": "transformers",
    "tags": ["bioscan-clip", "biodiversity", "dna-barcoding", "clip"],
}


def ensure_card_metadata(card: str | Path, *, model_name: str) -> Path:
    """Adds the Hub metadata (:data:`CARD_METADATA`) a model card lacks, after what its metadata holds;
    ``bioscan-clip evaluate --model_card`` and ``bioscan-clip push model`` write cards through this."""
    path = Path(card)
    model_card = _card(path, model_name)
    missing = {key: value for key, value in CARD_METADATA.items() if getattr(model_card.data, key, None) is None}
    if missing or not path.exists():
        for key, value in missing.items():
            setattr(model_card.data, key, value)
        path.write_text(str(model_card))
    return path
