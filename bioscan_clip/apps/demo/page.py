"""BIOSCAN-CLIP insect identification: the Gradio demo (``bioscan-clip demo``, and the Space in ``space/``).

Upload a specimen photo and/or paste its COI DNA barcode; the demo shows the predicted taxon at each rank with its
confidence, the nearest key specimens, and which key *barcodes* the photo is closest to (the cross-modal view).

Run it on the folders the main job writes::

    bioscan-clip demo --model runs/quickstart/model --keys runs/quickstart/keys

``build_demo(model_dir, index_dir)`` builds the app without launching it (tests, notebooks); ``space/app.py`` is the
Space's entry point and only calls :func:`main`. The app lives in the package so that an installed wheel serves it.

Safe by default (``shared/reference/STYLE_AND_RELIABILITY.md`` §2d): binds 127.0.0.1, uploads capped at 10 MB, a
bounded queue running one job at a time, images decoded only by the package's safe loader (``gr.Image`` hands us a
file path, never a decoded image), no extra folders exposed (no ``allowed_paths``), cached files deleted after 30
minutes. As a public Space (:class:`DemoGuard`): every request body capped before it is read (413), at most 2
identifications of a client waiting or running and 30 a minute (429 with ``Retry-After`` and the cap), uploads
rate-limited per client, the upload cache capped in total (oldest uploads deleted first), ``Retry-After`` on
"queue full", no server paths in ``/config`` or the page.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import gradio as gr
from PIL import Image

from bioscan_clip.apps.wording import (
    HOW_TO_READ,
    KNOWN_SPECIES,
    NO_CONFIDENT_RANK,
    QUERY_DESCRIPTIONS,
    SYNTHETIC_PREFIX,
    UNKNOWN_SPECIES,
    identity_text,
    synthetic_warning,
)
from bioscan_clip.features import DNA
from bioscan_clip.identification.identifier import Identification, Identifier
from modeling_bioscanclip import BioscanInputError, load_image_safely, normalize_barcode
from modeling_bioscanclip.constants_bioscanclip import MAX_IMAGE_PIXELS, MAX_RAW_DNA_CHARACTERS, TAXONOMIC_RANKS

from .guard import MAX_UPLOAD_BYTES

logger = logging.getLogger(__name__)

# Example photos are written here, never beside the code (an installed package may be read-only, and a checkout
# should stay clean); gradio serves files from the system temp dir.
DEFAULT_EXAMPLES_DIR = Path(tempfile.gettempdir()) / "bioscan-clip-demo" / "examples"

DEFAULT_NEIGHBOURS = 5
MAX_NEIGHBOURS = 10
GALLERY_THUMBNAIL = 256  # pixels, longest side

RANK_HEADERS = ["Rank", "Predicted taxon", "Confidence", "Nearest similarity", "Confident?"]
NEIGHBOUR_HEADERS = ["#", "Key specimen", *[rank.capitalize() for rank in TAXONOMIC_RANKS], "Similarity"]


@dataclass
class KeySummary:
    """What the page says about the key set it searches."""

    n_keys: int
    n_species: int
    synthetic: bool


def summarise_keys(records: datasets.Dataset | None) -> KeySummary:
    if records is None or len(records) == 0:
        return KeySummary(0, 0, False)
    processids = records["processid"]
    species = {name for name in records["species"] if name} if "species" in records.column_names else set()
    synthetic = all(str(pid).startswith(SYNTHETIC_PREFIX) for pid in processids)
    return KeySummary(len(records), len(species), synthetic)


def key_image_source(records: datasets.Dataset, row: int) -> bytes | str | None:
    """The stored (still encoded) image of a key record, to be decoded by the safe loader."""
    image = records[int(row)]["image"]
    if not image:
        return None
    return image.get("bytes") or image.get("path")


def write_examples(records: datasets.Dataset | None, out_dir: Path, count: int = 3) -> list[tuple[list[Any], str]]:
    """Writes a few key specimens (photo as JPEG, barcode as text) to ``out_dir``; returns ``gr.Examples`` rows.

    One example per species (the first keys of distinct species), shown as: photo only, barcode only, both.
    """
    if records is None or "image" not in records.column_names or "dna_barcode" not in records.column_names:
        return []
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.glob("example_*"):  # ours only: a previous start on another key folder
        stale.unlink()
    chosen: list[int] = []
    seen_species: set[str] = set()
    for row, (species, barcode) in enumerate(zip(records["species"], records["dna_barcode"], strict=True)):
        if species and barcode and species not in seen_species:
            seen_species.add(species)
            chosen.append(row)
        if len(chosen) == count:
            break
    layouts = [("photo only", True, False), ("barcode only", False, True), ("photo + barcode", True, True)]
    examples = []
    for number, row in enumerate(chosen):
        record = records[row]
        source = key_image_source(records, row)
        if source is None:
            continue
        image_path = out_dir / f"example_{number}_{record['processid']}.jpg"
        load_image_safely(source, name=record["processid"]).save(image_path, format="JPEG", quality=92)
        what, with_photo, with_barcode = layouts[number % len(layouts)]
        examples.append(
            (
                [str(image_path) if with_photo else None, record["dna_barcode"] if with_barcode else ""],
                f"{record['species']} ({what}, {record['processid']})",
            )
        )
    return examples


def _format_rank_table(answer: Identification) -> list[list[Any]]:
    return [
        [
            prediction.rank,
            prediction.label or "—",
            f"{prediction.confidence:.0%}",
            round(prediction.similarity, 3),
            "yes" if prediction.confident else "no",
        ]
        for prediction in answer.ranks
    ]


def _format_neighbours(answer: Identification) -> list[list[Any]]:
    return [
        [
            position + 1,
            neighbour.processid,
            *[neighbour.taxonomy.get(rank) or "—" for rank in TAXONOMIC_RANKS],
            round(neighbour.similarity, 3),
        ]
        for position, neighbour in enumerate(answer.neighbours)
    ]


def _identity_text(neighbour: Any) -> str:
    """``"99.2 % identity over 658 bp · "`` for a barcode query's hit, else ``""``."""
    text = identity_text(neighbour.percent_identity, neighbour.overlap)
    return f"{text} · " if text else ""


def _summary_markdown(answer: Identification, query: str) -> str:
    deepest = answer.deepest_confident_rank
    if deepest is None:
        deepest_text = NO_CONFIDENT_RANK
    else:
        label = next(p.label for p in answer.ranks if p.rank == deepest)
        deepest_text = f"**{deepest}**: *{label}*"
    if answer.unknown_species:
        unknown = UNKNOWN_SPECIES
    else:
        unknown = KNOWN_SPECIES
    return (
        f"**Query:** {query}, searched against the {answer.key_feature} features of the keys.  \n"
        f"**Deepest confident rank:** {deepest_text}  \n"
        f"**Unknown species?** {unknown}"
    )


def upload_path_unopened(payload: Any) -> str | None:
    """Replaces ``gr.Image.preprocess``: the upload reaches the handler as a path that nothing has opened yet.

    ``gr.Image(type="filepath")`` still calls ``PIL.Image.open`` on the upload (and re-encodes it when its mode
    differs from ``image_mode``), so an undecodable or oversized file would fail inside gradio with a generic error.
    With this, gradio only moves the uploaded file (its own check that the path is an upload still applies) and
    :func:`load_image_safely` is the one decoder, with its clear messages. (Set on the instance rather than in a
    ``gr.Image`` subclass: gradio writes a ``.pyi`` stub beside the source of every component subclass.)
    """
    if payload is None:
        return None
    if payload.url and payload.url.startswith("data:"):
        raise gr.Error("Send the photo as an uploaded file, not inline data.", print_exception=False)
    if payload.path is None:
        raise gr.Error("The photo upload did not arrive; try again.", print_exception=False)
    return str(payload.path)


class DemoHandler:
    """The identification behind the page: validates the inputs, then asks the Identifier."""

    def __init__(self, identifier: Identifier) -> None:
        self.identifier = identifier
        self.records = identifier.records  # key images stay encoded until the safe loader decodes them

    def _thumbnail(self, row: int) -> Image.Image | None:
        image = self.identifier.key_image(row)
        if image is not None:
            image.thumbnail((GALLERY_THUMBNAIL, GALLERY_THUMBNAIL))
        return image

    def __call__(
        self, image_path: str | None, barcode: str | None, neighbours: float = DEFAULT_NEIGHBOURS
    ) -> tuple[str, list[list[Any]], list[tuple[Image.Image, str]], str, list[list[Any]]]:
        barcode = (barcode or "").strip()
        if not image_path and not barcode:
            raise gr.Error(
                "Nothing to identify: upload a specimen photo, paste a DNA barcode, or both.",
                title="Empty submission",
                print_exception=False,
            )
        try:
            k = int(neighbours)
        except (TypeError, ValueError):
            k = DEFAULT_NEIGHBOURS
        k = min(max(k, 1), MAX_NEIGHBOURS)
        image = None
        if image_path:
            try:
                image = load_image_safely(image_path, name="The uploaded image", max_bytes=MAX_UPLOAD_BYTES)
            except BioscanInputError as error:
                raise gr.Error(str(error), title="Unreadable image", print_exception=False) from None
            except OSError:  # a vanished or unreadable upload; its server-side path is not the user's business
                raise gr.Error(
                    "The uploaded image could not be read; upload it again.", title="Unreadable image",
                    print_exception=False,
                ) from None  # fmt: skip
        if barcode:
            if len(barcode) > MAX_RAW_DNA_CHARACTERS:
                raise gr.Error(
                    f"The barcode is {len(barcode):,} characters long; at most {MAX_RAW_DNA_CHARACTERS:,} are accepted"
                    " (a COI barcode is about 660 nucleotides).",
                    title="Barcode too long",
                    print_exception=False,
                )
            try:
                normalize_barcode(barcode, record="The barcode")
            except BioscanInputError as error:
                raise gr.Error(str(error), title="Invalid barcode", print_exception=False) from None
        images = [image] if image is not None else None
        barcodes = [barcode] if barcode else None
        try:
            [answer] = self.identifier.identify(images=images, barcodes=barcodes, k=k)
            cross = None
            if image is not None and DNA in self.identifier.indexes:
                [cross] = self.identifier.identify(images=images, k=k, key_feature=DNA)
        except BioscanInputError as error:
            raise gr.Error(str(error), title="Cannot identify", print_exception=False) from None

        query = QUERY_DESCRIPTIONS[answer.query_feature]
        gallery = []
        for position, neighbour in enumerate(answer.neighbours):
            thumbnail = self._thumbnail(neighbour.row)
            if thumbnail is None:
                continue
            taxonomy = neighbour.taxonomy
            caption = (
                f"{position + 1}. {taxonomy.get('species') or taxonomy.get('genus') or '?'} · "
                f"{taxonomy.get('family') or '?'} · {taxonomy.get('order') or '?'} · "
                f"similarity {neighbour.similarity:.3f} · {_identity_text(neighbour)}{neighbour.processid}"
            )
            gallery.append((thumbnail, caption))
        if cross is None:
            cross_text = "Upload a photo to see which key *barcodes* it is closest to."
            cross_rows: list[list[Any]] = []
        else:
            predicted = " › ".join(p.label or "—" for p in cross.ranks)
            cross_text = f"The photo alone, matched against the keys' DNA barcodes: **{predicted}**."
            cross_rows = _format_neighbours(cross)
        return _summary_markdown(answer, query), _format_rank_table(answer), gallery, cross_text, cross_rows


def build_demo(
    model_dir: str | os.PathLike,
    index_dir: str | os.PathLike,
    *,
    identifier: Identifier | None = None,
    examples_dir: str | os.PathLike | None = None,
    n_examples: int = 3,
) -> gr.Blocks:
    """Builds the demo on a saved model folder and a key folder, without launching it.

    Args:
        model_dir (`str` or `os.PathLike`): a folder written by ``save_pretrained`` (model and processor).
        index_dir (`str` or `os.PathLike`): a key folder written by ``bioscan-clip index`` / ``build_key_folder``.
        identifier ([`Identifier`], *optional*): an already loaded identifier (then the folders only label the page).
        examples_dir (`str` or `os.PathLike`, *optional*): where the example specimens are written, defaults to
            ``<system temp dir>/bioscan-clip-demo/examples/<hash of the key folder>``.
        n_examples (`int`, *optional*, defaults to 3): how many key specimens to offer as examples.

    Returns:
        `gr.Blocks`: call :func:`launch` (or ``.queue(...).launch(...)`` with limits) to serve it.
    """
    # Backstop only: every image is decoded by load_image_safely, which checks the size from the header first. Set by
    # the app when it is built, never on import (importing a library module must not change a process-wide setting).
    Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
    if identifier is None:
        identifier = Identifier.load(model_dir, index_dir)
    handler = DemoHandler(identifier)
    summary = summarise_keys(handler.records)
    if examples_dir is None:
        digest = hashlib.sha256(str(Path(index_dir).resolve()).encode()).hexdigest()[:12]
        examples_dir = DEFAULT_EXAMPLES_DIR / digest
    examples = write_examples(handler.records, Path(examples_dir), n_examples)

    with gr.Blocks(title="BIOSCAN-CLIP insect identification", delete_cache=(CACHE_SWEEP_S, CACHE_MAX_AGE_S)) as demo:
        gr.Markdown(
            "# BIOSCAN-CLIP: identify an insect from its photo and DNA barcode\n"
            "Upload a photo of the specimen, paste its COI barcode, or both. Each rank (order, family, genus, "
            "species) is predicted from the nearest labelled key specimens, with a calibrated confidence."
        )
        if summary.synthetic:
            gr.Markdown(
                "> ⚠️ " + synthetic_warning("This demo searches"),
                elem_id="synthetic-banner",
            )
        gr.Markdown(
            f"Key set: **{summary.n_keys:,} specimens** of **{summary.n_species:,} species** · "
            f"model `{Path(model_dir).name}` · keys `{Path(index_dir).name}`"
        )
        with gr.Row(equal_height=False):
            with gr.Column(scale=2):
                image = gr.Image(
                    type="filepath",  # decoding happens in our safe loader, not in gradio
                    image_mode=None,
                    label="Specimen photo (JPEG, PNG, WEBP, TIFF or BMP; at most 10 MB)",
                    sources=["upload", "clipboard"],
                    height=280,
                    elem_id="specimen-image",
                )
                image.preprocess = upload_path_unopened
                barcode = gr.Textbox(
                    label="COI DNA barcode (plain sequence or one FASTA record)",
                    placeholder=">specimen-1\nAACATTATATTTTATTTTTGGTATTTGATCAGGAATAGTAGGAACATCTTTAAG...",
                    lines=4,
                    max_length=MAX_RAW_DNA_CHARACTERS,
                    elem_id="barcode",
                )
                neighbours = gr.Slider(
                    1, MAX_NEIGHBOURS, value=DEFAULT_NEIGHBOURS, step=1, label="Nearest specimens to show"
                )
                with gr.Row():
                    submit = gr.Button("Identify", variant="primary", elem_id="identify")
                    clear = gr.ClearButton(value="Clear")
                if examples:
                    gr.Examples(
                        examples=[row for row, _ in examples],
                        example_labels=[label for _, label in examples],
                        inputs=[image, barcode],
                        label="Example specimens from the key set",
                        cache_examples=False,
                    )
            with gr.Column(scale=3):
                status = gr.Markdown("Results appear here.", elem_id="status")
                ranks = gr.Dataframe(
                    headers=RANK_HEADERS,
                    label="Prediction at each rank",
                    interactive=False,
                    elem_id="rank-table",
                )
                gallery = gr.Gallery(
                    label="Nearest key specimens (taxonomy · similarity · id)",
                    columns=5,
                    rows=1,
                    height=220,
                    object_fit="contain",
                    elem_id="neighbours",
                )
                gr.Markdown("### Cross-modal: photo → DNA keys")
                cross_text = gr.Markdown("", elem_id="cross-modal")
                cross_table = gr.Dataframe(
                    headers=NEIGHBOUR_HEADERS,
                    label="Nearest key barcodes to the photo",
                    interactive=False,
                    wrap=True,
                    column_widths=["5%", "18%", "13%", "13%", "14%", "23%", "14%"],
                )
        gr.Markdown(HOW_TO_READ)

        outputs = [status, ranks, gallery, cross_text, cross_table]
        clear.add([image, barcode, *outputs])
        submit.click(handler, inputs=[image, barcode, neighbours], outputs=outputs, api_name="identify")
    return demo


# --- the public-Space protections: per-client upload rate, a cap on the upload cache, no server paths in /config ---

CACHE_SWEEP_S, CACHE_MAX_AGE_S = 600, 1800  # gradio's own cleanup: every 10 min, files older than 30 min
