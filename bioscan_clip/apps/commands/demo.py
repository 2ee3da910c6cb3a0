"""``bioscan-clip demo`` (and ``python space/app.py``): resolve the model and the key folder or key library (local
folders or Hub repositories, through :mod:`bioscan_clip.resolve`), build the page and serve it behind its guard."""

from __future__ import annotations

import argparse
import functools
import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

from bioscan_clip.apps.commands.options import add_option
from bioscan_clip.apps.demo.guard import (
    CALLS_PER_MINUTE,
    MAX_UPLOAD_MB,
    PENDING_PER_CLIENT,
    QUEUE_MAX_SIZE,
    UPLOAD_CACHE_CAP_MB,
    UPLOADS_PER_MINUTE,
    launch,
)
from bioscan_clip.apps.demo.page import DEFAULT_EXAMPLES_DIR, build_demo
from bioscan_clip.identification.library import resolve_key_folder
from bioscan_clip.resolve import resolve_folder

logger = logging.getLogger(__name__)


# Relative to the working directory, where `bioscan-clip quickstart` writes by default.
DEFAULT_MODEL = os.environ.get("BIOSCAN_CLIP_MODEL", os.path.join("runs", "quickstart", "model"))


DEFAULT_KEYS = os.environ.get("BIOSCAN_CLIP_KEYS", os.path.join("runs", "quickstart", "keys"))


DEFAULT_UPLOAD_DIR = Path(tempfile.gettempdir()) / "bioscan-clip-demo" / "cache"  # gradio's uploads, when not set


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options of ``bioscan-clip demo`` (and of ``python space/app.py``); underscores as in every command, the
    dashed spellings of earlier versions kept as hidden aliases."""
    option = functools.partial(add_option, parser)
    option(
        "--model",
        default=DEFAULT_MODEL,
        help="model folder (save_pretrained) or Hub repo id owner/name[/subfolder] (default: %(default)s; "
        "env BIOSCAN_CLIP_MODEL)",
    )
    option(
        "--keys",
        default=DEFAULT_KEYS,
        help="key folder (bioscan-clip index), or a key library: its folder or Hub dataset repo id "
        "(bioscan-clip push keys), owner/name[/subfolder] (default: %(default)s; env BIOSCAN_CLIP_KEYS)",
    )
    option(
        "--revision",
        default=os.environ.get("BIOSCAN_CLIP_REVISION"),
        help="Hub revision (commit sha) for --model and --keys repo ids (env BIOSCAN_CLIP_REVISION)",
    )
    option(
        "--keys_repo_type",
        default=os.environ.get("BIOSCAN_CLIP_KEYS_REPO_TYPE", "dataset"),
        choices=["model", "dataset"],
        help="Hub repo type of --keys: dataset (default), as push keys publishes (env BIOSCAN_CLIP_KEYS_REPO_TYPE)",
    )
    option(
        "--host",
        default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
        help="address to bind (default %(default)s, this machine only; 0.0.0.0 exposes the demo to the network)",
    )
    option("--port", type=int, default=None, help="port (default: 7860 or the next free one)")
    option("--max_file_size_mb", type=int, default=MAX_UPLOAD_MB, help="upload cap per file")
    option("--queue_size", type=int, default=QUEUE_MAX_SIZE, help="waiting requests before 'queue full'")
    option(
        "--upload_cache_mb",
        type=int,
        default=UPLOAD_CACHE_CAP_MB,
        help="total size of the upload cache (oldest deleted)",
    )
    option("--uploads_per_minute", type=float, default=UPLOADS_PER_MINUTE, help="uploads per client per minute")
    option(
        "--calls_per_minute",
        type=float,
        default=CALLS_PER_MINUTE,
        help="identifications per client per minute (429 with Retry-After beyond)",
    )
    option(
        "--pending_per_client",
        type=int,
        default=PENDING_PER_CLIENT,
        help="identifications of one client waiting or running at once (429 beyond: the queue stays open to others)",
    )
    option(
        "--trust_forwarded_for",
        action=argparse.BooleanOptionalAction,
        default=bool(os.environ.get("SPACE_ID")),
        help="count clients by the X-Forwarded-For address the proxy appended, its last entry (default: on a Space; "
        "never otherwise: a client can send any X-Forwarded-For it likes)",
    )
    option(
        "--upload_dir",
        alias="--cache-dir",
        default=None,
        help=f"where gradio keeps uploads (sets GRADIO_TEMP_DIR; default: $GRADIO_TEMP_DIR or {DEFAULT_UPLOAD_DIR})",
    )
    option(
        "--examples_dir",
        default=None,
        help=f"where example specimens are written (default: under {DEFAULT_EXAMPLES_DIR})",
    )
    return parser


def resolve_demo_folders(args: argparse.Namespace) -> tuple[Path, Path]:
    """``(model_dir, key_dir)`` of the parsed ``--model``, ``--keys`` (a key folder, or a key library's ``keys/``),
    ``--revision`` and ``--keys_repo_type``: local folders, or Hub repositories downloaded or found in the cache."""
    model_dir = resolve_folder(args.model, repo_type="model", revision=args.revision)
    key_dir = resolve_key_folder(args.keys, repo_type=args.keys_repo_type, revision=args.revision)
    return model_dir, key_dir


def run(args: argparse.Namespace) -> int:
    """Loads the model and keys (local folders or Hub repo ids) and serves the demo until interrupted."""
    upload_dir = args.upload_dir or os.environ.get("GRADIO_TEMP_DIR") or DEFAULT_UPLOAD_DIR
    Path(upload_dir).mkdir(parents=True, exist_ok=True)  # our own folder: the cap never deletes another app's files
    os.environ["GRADIO_TEMP_DIR"] = str(Path(upload_dir).resolve())
    model_dir, key_dir = resolve_demo_folders(args)
    demo = build_demo(model_dir, key_dir, examples_dir=args.examples_dir)
    launch(
        demo,
        host=args.host,
        port=args.port,
        max_file_size_mb=args.max_file_size_mb,
        queue_size=args.queue_size,
        upload_cache_mb=args.upload_cache_mb,
        uploads_per_minute=args.uploads_per_minute,
        calls_per_minute=args.calls_per_minute,
        pending_per_client=args.pending_per_client,
        trust_forwarded_for=args.trust_forwarded_for,
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python space/app.py [options]``: parses the options and serves the demo."""
    parser = argparse.ArgumentParser(description="BIOSCAN-CLIP identification demo (Gradio).")
    return run(add_arguments(parser).parse_args(argv))
