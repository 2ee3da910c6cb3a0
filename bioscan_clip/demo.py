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
minutes. As a public Space (:class:`DemoGuard`): uploads rate-limited per client (429 with ``Retry-After``), the
upload cache capped in total (oldest uploads deleted first), ``Retry-After`` on "queue full", no server paths in
``/config`` or the page.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import math
import os
import re
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import datasets
import gradio as gr
from PIL import Image

from bioscan_clip.features import AVERAGED, DNA, IMAGE
from bioscan_clip.identification import Identification, Identifier
from modeling_bioscanclip import BioscanInputError, load_image_safely, normalize_barcode
from modeling_bioscanclip.constants_bioscanclip import MAX_IMAGE_PIXELS, MAX_RAW_DNA_CHARACTERS, TAXONOMIC_RANKS

logger = logging.getLogger(__name__)

# Relative to the working directory, where `bioscan-clip quickstart` writes by default.
DEFAULT_MODEL = os.environ.get("BIOSCAN_CLIP_MODEL", os.path.join("runs", "quickstart", "model"))
DEFAULT_KEYS = os.environ.get("BIOSCAN_CLIP_KEYS", os.path.join("runs", "quickstart", "keys"))
# Example photos are written here, never beside the code (an installed package may be read-only, and a checkout
# should stay clean); gradio serves files from the system temp dir.
DEFAULT_EXAMPLES_DIR = Path(tempfile.gettempdir()) / "bioscan-clip-demo" / "examples"
DEFAULT_CACHE_DIR = Path(tempfile.gettempdir()) / "bioscan-clip-demo" / "cache"  # gradio's uploads, when not set

MAX_UPLOAD_MB = 10
MAX_UPLOAD_BYTES = MAX_UPLOAD_MB * 1024 * 1024
QUEUE_MAX_SIZE = 16  # waiting requests beyond this get "queue full" instead of piling up
DEFAULT_NEIGHBOURS = 5
MAX_NEIGHBOURS = 10
GALLERY_THUMBNAIL = 256  # pixels, longest side
QUERY_DESCRIPTIONS = {AVERAGED: "photo + barcode", IMAGE: "photo", DNA: "barcode"}  # by the feature searched
SYNTHETIC_PREFIX = "MINI"  # processids of the generated mini-BIOSCAN (dataset_scripts.synth)

RANK_HEADERS = ["Rank", "Predicted taxon", "Confidence", "Nearest similarity", "Confident?"]
NEIGHBOUR_HEADERS = ["#", "Key specimen", *[rank.capitalize() for rank in TAXONOMIC_RANKS], "Similarity"]

HOW_TO_READ = """
### How to read the results
- **Prediction at each rank**: the taxon of the nearest key specimen (1-nearest neighbour, as in the
  BIOSCAN-CLIP paper). *Confidence* is the similarity-weighted share of the nearest keys that agree with it.
- **Confident?** says whether the nearest key is similar enough to trust that rank: the threshold of each rank was
  calibrated on validation specimens so that confident answers were right about 90 % of the time.
- **Deepest confident rank**: how far down (order → family → genus → species) the answer can be trusted.
- **Unknown species?** raised when the species rank is not confident: the specimen may belong to a species that is
  not among the keys (its genus or family can still be right).
- **Cross-modal**: the photo alone, compared with the DNA barcodes of the keys: the image and DNA encoders share
  one embedding space, so a photo can be matched to sequences.
"""


@dataclass
class KeySummary:
    """What the page says about the key set it searches."""

    n_keys: int
    n_species: int
    synthetic: bool


def resolve_folder(spec: str | os.PathLike, *, repo_type: str = "model", revision: str | None = None) -> Path:
    """A local folder, or a Hub repository (``owner/name`` or ``owner/name/sub/folder``) downloaded once.

    ``huggingface_hub.snapshot_download`` is only called when ``spec`` is not an existing local folder, so tests and
    offline runs never touch the network.
    """
    path = Path(spec).expanduser()
    if path.is_dir():
        return path
    parts = str(spec).strip("/").split("/")
    looks_like_repo = len(parts) >= 2 and not str(spec).startswith((".", "/", "~")) and all(parts)
    if not looks_like_repo:
        raise FileNotFoundError(f"{spec}: no such folder, and not a Hub repository id (owner/name[/subfolder])")
    from huggingface_hub import snapshot_download

    repo_id, subfolder = "/".join(parts[:2]), "/".join(parts[2:])
    local = snapshot_download(
        repo_id,
        repo_type=repo_type,
        revision=revision,
        allow_patterns=[f"{subfolder}/**"] if subfolder else None,
    )
    folder = Path(local) / subfolder
    if not folder.is_dir():
        raise FileNotFoundError(f"{spec}: the Hub repository {repo_id} has no folder {subfolder!r}")
    return folder


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


def _summary_markdown(answer: Identification, query: str) -> str:
    deepest = answer.deepest_confident_rank
    if deepest is None:
        deepest_text = "none: no rank reaches its calibrated similarity threshold"
    else:
        label = next(p.label for p in answer.ranks if p.rank == deepest)
        deepest_text = f"**{deepest}**: *{label}*"
    if answer.unknown_species:
        unknown = "**Yes**: the species rank is not confident; this may be a species absent from the keys."
    else:
        unknown = "No: the species prediction is confident."
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
                f"similarity {neighbour.similarity:.3f} · {neighbour.processid}"
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
                "> ⚠️ **SYNTHETIC keys.** This demo searches the generated *mini-BIOSCAN* data set: the specimens, "
                "taxon names and barcodes are invented, and the model was trained on them only. Use it to try the "
                "interface, not to identify real insects.",
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

UPLOAD_CACHE_CAP_MB = 200  # total size of the upload cache folder; the oldest uploads are deleted to stay under it
UPLOADS_PER_MINUTE = 12  # per client, refilled continuously ...
UPLOAD_BURST = 6  # ... after a first burst of this many
UPLOAD_OVERHEAD_BYTES = 64 * 1024  # multipart framing allowed on top of the per-file cap (one file per request)
CACHE_SWEEP_S, CACHE_MAX_AGE_S = 600, 1800  # gradio's own cleanup: every 10 min, files older than 30 min
MAX_TRACKED_CLIENTS = 10_000
ALIAS_ROUTE = "/gradio_api/demo-file/"
_GRADIO_CACHE_SUBFOLDER = re.compile(r"[0-9a-f]{64}")
_REWRITTEN_PAGES = ("/", "/config", "/config/", "/gradio_api/info", "/gradio_api/info/")


class RateLimiter:
    """A token bucket per client: ``burst`` requests at once, then ``per_minute``; says how long to wait when empty."""

    def __init__(self, per_minute: float, burst: int, max_clients: int = MAX_TRACKED_CLIENTS) -> None:
        self.rate = per_minute / 60.0
        self.burst = float(burst)
        self.max_clients = max_clients
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()

    def acquire(self, client: str, now: float | None = None) -> float:
        """0 when ``client`` may go ahead (one token taken), else the seconds until its next token."""
        now = time.monotonic() if now is None else now
        with self._lock:
            tokens, last = self._buckets.pop(client, (self.burst, now))
            tokens = min(self.burst, tokens + (now - last) * self.rate)
            wait = 0.0
            if tokens >= 1.0:
                tokens -= 1.0
            else:
                wait = (1.0 - tokens) / self.rate if self.rate > 0 else 60.0
            self._buckets[client] = (tokens, now)
            while len(self._buckets) > self.max_clients:  # forget the least recently seen
                self._buckets.popitem(last=False)
            return wait


class UploadCache:
    """The size of gradio's upload folder, kept under ``cap_bytes`` by deleting the oldest files first.

    Only gradio's own subfolders (64 hex characters) are counted or touched; files named in the app's config (the
    example photos) are never deleted. Uploads in progress reserve their declared size so concurrent ones cannot
    overshoot together.
    """

    def __init__(self, folder: str | os.PathLike, cap_bytes: int, protected: set[str] | None = None) -> None:
        self.folder = Path(folder)
        self.cap_bytes = cap_bytes
        self.protected = set(protected or ())
        self.reserved = 0
        self._lock = threading.Lock()

    def _files(self) -> list[tuple[float, int, str]]:
        found = []
        try:
            subfolders = list(os.scandir(self.folder))
        except FileNotFoundError:
            return found
        for sub in subfolders:
            if not (_GRADIO_CACHE_SUBFOLDER.fullmatch(sub.name) and sub.is_dir(follow_symlinks=False)):
                continue
            try:
                for entry in os.scandir(sub.path):
                    if entry.is_file(follow_symlinks=False):
                        stat = entry.stat(follow_symlinks=False)
                        found.append((stat.st_mtime, stat.st_size, entry.path))
            except FileNotFoundError:
                continue
        return found

    def size(self) -> int:
        return sum(size for _, size, _ in self._files())

    def admit(self, incoming: int) -> bool:
        """Reserves room for ``incoming`` bytes, deleting the oldest unprotected files if needed; False if no room."""
        with self._lock:
            files = self._files()
            total = sum(size for _, size, _ in files) + self.reserved
            if total + incoming > self.cap_bytes:
                for _, size, path in sorted(files):
                    if path in self.protected:
                        continue
                    try:
                        os.unlink(path)
                    except FileNotFoundError:
                        pass
                    except OSError:
                        continue
                    with contextlib.suppress(OSError):
                        os.rmdir(os.path.dirname(path))  # only when empty
                    total -= size
                    if total + incoming <= self.cap_bytes:
                        break
            if total + incoming > self.cap_bytes:
                return False
            self.reserved += incoming
            return True

    def release(self, incoming: int) -> None:
        with self._lock:
            self.reserved -= incoming


def _header(scope: dict, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return value.decode("latin-1")
    return None


class DemoGuard:
    """ASGI middleware in front of the gradio app (passed as ``app_kwargs={"middleware": ...}``).

    - ``POST .../upload``: a per-client rate limit (``429`` with ``Retry-After``), one file per request with a
      declared length (``411``/``413``), and room in the capped upload cache (``503`` with ``Retry-After`` when even
      deleting old uploads cannot make room);
    - ``503`` from the queue ("queue full") gets a ``Retry-After`` estimated from the queue's average job time;
    - the page, ``/config`` and ``/gradio_api/info`` name cached files by an alias instead of their server path,
      served from ``/gradio_api/demo-file/`` for exactly those files.
    """

    def __init__(self, app: Any, *, blocks: gr.Blocks, limiter: RateLimiter, cache: UploadCache,
                 max_request_bytes: int, trust_forwarded_for: bool = False) -> None:  # fmt: skip
        self.app = app
        self.blocks = blocks
        self.limiter = limiter
        self.cache = cache
        self.max_request_bytes = max_request_bytes
        self.trust_forwarded_for = trust_forwarded_for
        self.aliases: dict[str, str] = {}  # alias -> server path
        self._path_pattern = re.compile(re.escape(str(cache.folder)) + r"/([0-9a-f]{64})/([^\"'\\?#<>\s]+)")

    def client_key(self, scope: dict) -> str:
        if self.trust_forwarded_for:  # behind one trusted proxy (a Space): the address it appended
            forwarded = _header(scope, b"x-forwarded-for")
            if forwarded and forwarded.split(",")[-1].strip():
                return forwarded.split(",")[-1].strip()
        client = scope.get("client")
        return client[0] if client else "unknown"

    def queue_retry_after(self) -> int:
        queue = getattr(self.blocks, "_queue", None)
        times = [t.avg_time for t in getattr(queue, "process_time_per_fn", {}).values() if t.count]
        waiting = getattr(queue, "max_size", None) or QUEUE_MAX_SIZE
        estimate = max(times, default=1.0) * waiting / max(getattr(queue, "default_concurrency_limit", 1) or 1, 1)
        return int(min(max(math.ceil(estimate), 1), 60))

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path, method = scope.get("path", ""), scope.get("method", "GET")
        if method == "POST" and path.rstrip("/").endswith("/upload"):
            return await self._upload(scope, receive, send)
        if method == "POST" and ("/queue/join" in path or "/call/" in path):
            return await self.app(scope, receive, self._with_retry_after(send))
        if method == "GET" and path.startswith(ALIAS_ROUTE):
            return await self._alias_file(scope, receive, send, path[len(ALIAS_ROUTE) :])
        if method == "GET" and path in _REWRITTEN_PAGES:
            return await self._rewritten(scope, receive, send)
        return await self.app(scope, receive, send)

    def _with_retry_after(self, send: Any) -> Any:
        async def sending(message: dict) -> None:
            if message["type"] == "http.response.start" and message["status"] in (429, 503):
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"retry-after"]
                headers.append((b"retry-after", str(self.queue_retry_after()).encode()))
                message = {**message, "headers": headers}
            await send(message)

        return sending

    async def _upload(self, scope: dict, receive: Any, send: Any) -> None:
        wait = self.limiter.acquire(self.client_key(scope))
        if wait > 0:
            seconds = max(1, math.ceil(wait))
            return await _plain(send, 429, f"Too many uploads; retry in {seconds} s.", retry_after=seconds)
        length = _header(scope, b"content-length")
        if length is None or not length.isdigit():
            return await _plain(send, 411, "An upload must declare its Content-Length.")
        incoming = int(length)
        if incoming > self.max_request_bytes:
            limit = (self.max_request_bytes - UPLOAD_OVERHEAD_BYTES) // (1024 * 1024)
            return await _plain(send, 413, f"Upload too large: one file of at most {limit} MB per request.")
        if not await anyio.to_thread.run_sync(self.cache.admit, incoming):
            return await _plain(send, 503, "The upload cache is full; retry shortly.", retry_after=5)
        try:
            await self.app(scope, receive, send)
        finally:
            self.cache.release(incoming)

    def _rewrite(self, text: str) -> str:
        def alias(match: re.Match) -> str:
            name = f"{match.group(1)[:16]}/{match.group(2)}"
            self.aliases[name] = match.group(0)
            return name

        text = re.sub(r"file=" + self._path_pattern.pattern, lambda m: "demo-file/" + alias(m), text)
        return self._path_pattern.sub(alias, text)

    async def _rewritten(self, scope: dict, receive: Any, send: Any) -> None:
        start: dict = {}
        body = bytearray()

        async def capture(message: dict) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                start = message
                return
            if message["type"] == "http.response.body":
                body.extend(message.get("body", b""))
                if not message.get("more_body", False):
                    content = bytes(body)
                    encoding = [v for k, v in start.get("headers", []) if k.lower() == b"content-encoding"]
                    if not encoding:
                        with contextlib.suppress(UnicodeDecodeError):
                            content = self._rewrite(content.decode("utf-8")).encode("utf-8")
                    headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
                    headers.append((b"content-length", str(len(content)).encode()))
                    await send({**start, "headers": headers})
                    await send({"type": "http.response.body", "body": content})
                return
            await send(message)

        await self.app(scope, receive, capture)

    async def _alias_file(self, scope: dict, receive: Any, send: Any, name: str) -> None:
        from starlette.responses import FileResponse

        target = self.aliases.get(name)
        if target is None or not os.path.isfile(target):
            return await _plain(send, 404, "Not found.")
        await FileResponse(target)(scope, receive, send)


async def _plain(send: Any, status: int, text: str, *, retry_after: int | None = None) -> None:
    body = text.encode()
    headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode())]
    if retry_after is not None:
        headers.append((b"retry-after", str(retry_after).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def launch(
    demo: gr.Blocks,
    *,
    host: str = "127.0.0.1",
    port: int | None = None,
    max_file_size_mb: int = MAX_UPLOAD_MB,
    queue_size: int = QUEUE_MAX_SIZE,
    upload_cache_mb: int = UPLOAD_CACHE_CAP_MB,
    uploads_per_minute: float = UPLOADS_PER_MINUTE,
    upload_burst: int = UPLOAD_BURST,
    trust_forwarded_for: bool | None = None,
    prevent_thread_lock: bool = False,
    quiet: bool = False,
) -> tuple[Any, str, str | None]:
    """Serves ``demo`` with the limits: bounded queue, one job at a time, upload cap, no share link, no extra paths.

    In front of gradio, :class:`DemoGuard` rate-limits uploads per client, keeps the upload cache under
    ``upload_cache_mb`` (oldest uploads deleted first), adds ``Retry-After`` to "queue full" and hides server paths
    from ``/config``. ``trust_forwarded_for`` (default: on a Space, where ``SPACE_ID`` is set) takes the client
    address from the ``X-Forwarded-For`` entry the proxy appended.
    """
    from starlette.middleware import Middleware

    if trust_forwarded_for is None:
        trust_forwarded_for = bool(os.environ.get("SPACE_ID"))
    from gradio.utils import get_upload_folder

    folder = Path(get_upload_folder())
    cache = UploadCache(folder, upload_cache_mb * 1024 * 1024)
    guard = Middleware(
        DemoGuard,
        blocks=demo,
        limiter=RateLimiter(uploads_per_minute, upload_burst),
        cache=cache,
        max_request_bytes=max_file_size_mb * 1024 * 1024 + UPLOAD_OVERHEAD_BYTES,
        trust_forwarded_for=trust_forwarded_for,
    )
    # The example photos gradio copied into the cache when the page was built are never evicted.
    config_text = json.dumps(demo.config, default=str)
    cache.protected = set(re.findall(re.escape(str(folder)) + r"/[0-9a-f]{64}/[^\"'\\?#<>\s]+", config_text))
    demo.queue(default_concurrency_limit=1, max_size=queue_size)
    return demo.launch(
        server_name=host,
        server_port=port,
        share=False,
        max_file_size=max_file_size_mb * gr.FileSize.MB,
        show_error=False,  # unexpected exceptions show a generic error; our gr.Error messages are always shown
        ssr_mode=False,  # no Node server
        mcp_server=False,
        app_kwargs={"middleware": [guard]},
        prevent_thread_lock=prevent_thread_lock,
        quiet=quiet,
    )


def write_untrained_demo_folders(root: str | Path, *, keys: int = 60, seed: int = 0) -> tuple[Path, Path]:
    """An untrained tiny model and a key folder of ``keys`` generated mini-BIOSCAN specimens (calibrated on its
    validation queries) under ``root``: the demo's whole path with no training, for its tests and load benchmark.
    Returns ``(model_dir, keys_dir)``. The answers are meaningless: the model has random weights."""
    import torch

    from bioscan_clip import presets
    from bioscan_clip.data import load_splits, role_records
    from bioscan_clip.identification import build_key_folder
    from bioscan_clip.text_tokenizer import train_taxonomy_tokenizer
    from dataset_scripts.synth import generate_mini_bioscan
    from modeling_bioscanclip import BioscanClipModel, taxonomy_to_text

    root = Path(root)
    generate_mini_bioscan(root / "data", seed=seed, size="tiny", progress=False)
    splits, roles = load_splits("mini", data_dir=str(root / "data"), cache_dir=str(root / "hf-cache"))
    key_records = role_records(splits, roles, "keys").select(range(keys))
    val = role_records(splits, roles, "val_queries_seen")
    tokenizer = train_taxonomy_tokenizer([taxonomy_to_text(record) for record in key_records], vocab_size=200)
    with torch.random.fork_rng():  # the caller's random state is left as it was
        torch.manual_seed(seed)
        model = BioscanClipModel(presets.model_config("tiny", ["image", "dna", "text"], tokenizer.vocab_size))
    processor = presets.build_processor("tiny", tokenizer)
    model.save_pretrained(root / "model")
    processor.save_pretrained(root / "model")
    build_key_folder(model, processor, key_records, root / "keys", calibration_queries=val, show_progress=False)
    return root / "model", root / "keys"


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options of ``bioscan-clip demo`` (and of ``python space/app.py``)."""
    parser.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help="model folder (save_pretrained) or Hub repo id owner/name[/subfolder] (default: %(default)s; "
        "env BIOSCAN_CLIP_MODEL)",
    )
    parser.add_argument(
        "--keys",
        default=DEFAULT_KEYS,
        help="key folder (bioscan-clip index) or Hub repo id owner/name[/subfolder] (default: %(default)s; "
        "env BIOSCAN_CLIP_KEYS)",
    )
    parser.add_argument(
        "--revision",
        default=os.environ.get("BIOSCAN_CLIP_REVISION"),
        help="Hub revision (commit sha) for --model and --keys repo ids (env BIOSCAN_CLIP_REVISION)",
    )
    parser.add_argument(
        "--keys-repo-type",
        default=os.environ.get("BIOSCAN_CLIP_KEYS_REPO_TYPE", "model"),
        choices=["model", "dataset"],
        help="Hub repo type of --keys (env BIOSCAN_CLIP_KEYS_REPO_TYPE)",
    )
    parser.add_argument(
        "--host",
        default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
        help="address to bind (default %(default)s, this machine only; 0.0.0.0 exposes the demo to the network)",
    )
    parser.add_argument("--port", type=int, default=None, help="port (default: 7860 or the next free one)")
    parser.add_argument("--max-file-size-mb", type=int, default=MAX_UPLOAD_MB, help="upload cap per file")
    parser.add_argument("--queue-size", type=int, default=QUEUE_MAX_SIZE, help="waiting requests before 'queue full'")
    parser.add_argument(
        "--upload-cache-mb",
        type=int,
        default=UPLOAD_CACHE_CAP_MB,
        help="total size of the upload cache (oldest deleted)",
    )
    parser.add_argument(
        "--uploads-per-minute", type=float, default=UPLOADS_PER_MINUTE, help="uploads per client per minute"
    )
    parser.add_argument(
        "--trust-forwarded-for",
        action=argparse.BooleanOptionalAction,
        default=bool(os.environ.get("SPACE_ID")),
        help="rate-limit by the X-Forwarded-For address the proxy appended (default: on a Space)",
    )
    parser.add_argument(
        "--cache-dir",
        default=None,
        help=f"where gradio keeps uploads (sets GRADIO_TEMP_DIR; default: $GRADIO_TEMP_DIR or {DEFAULT_CACHE_DIR})",
    )
    parser.add_argument(
        "--examples-dir",
        default=None,
        help=f"where example specimens are written (default: under {DEFAULT_EXAMPLES_DIR})",
    )
    return parser


def run(args: argparse.Namespace) -> int:
    """Loads the model and keys (local folders or Hub repo ids) and serves the demo until interrupted."""
    cache_dir = args.cache_dir or os.environ.get("GRADIO_TEMP_DIR") or DEFAULT_CACHE_DIR
    Path(cache_dir).mkdir(parents=True, exist_ok=True)  # our own folder: the cap never deletes another app's files
    os.environ["GRADIO_TEMP_DIR"] = str(Path(cache_dir).resolve())
    model_dir = resolve_folder(args.model, repo_type="model", revision=args.revision)
    key_dir = resolve_folder(args.keys, repo_type=args.keys_repo_type, revision=args.revision)
    demo = build_demo(model_dir, key_dir, examples_dir=args.examples_dir)
    launch(
        demo,
        host=args.host,
        port=args.port,
        max_file_size_mb=args.max_file_size_mb,
        queue_size=args.queue_size,
        upload_cache_mb=args.upload_cache_mb,
        uploads_per_minute=args.uploads_per_minute,
        trust_forwarded_for=args.trust_forwarded_for,
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python space/app.py [options]``: parses the options and serves the demo."""
    parser = argparse.ArgumentParser(description="BIOSCAN-CLIP identification demo (Gradio).")
    return run(add_arguments(parser).parse_args(argv))
