"""BIOSCAN-CLIP insect identification: the Hugging Face Space entry point.

The app is ``bioscan_clip.apps.demo`` (installed with the package, see requirements.txt); this file only chooses what to
serve and launches it, so ``python space/app.py --model DIR --keys DIR`` and ``bioscan-clip demo --model DIR --keys
DIR`` are the same. On a Space (no arguments), the key library comes from the ``BIOSCAN_CLIP_KEYS`` variable or else
the first ``datasets:`` entry of this folder's README front matter (a repository written by ``bioscan-clip push
keys``, which names its model); ``BIOSCAN_CLIP_MODEL`` (or the first ``models:`` entry) overrides that model, and
``BIOSCAN_CLIP_KEYS_REVISION`` / ``BIOSCAN_CLIP_MODEL_REVISION`` pin commits. When no key library is named, the
Space shows a page saying how to set one, instead of crashing.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from pathlib import Path

# Re-exported: the Space and tests build the app from here without launching it.
from bioscan_clip.apps.commands.demo import add_arguments, main, run
from bioscan_clip.apps.demo.guard import launch
from bioscan_clip.apps.demo.page import build_demo

__all__ = ["add_arguments", "build_demo", "launch", "main", "run", "space_repos", "build_space", "unset_page"]

HERE = Path(__file__).absolute().parent  # not resolved: in a Hub cache, files are symlinks to blobs
SETUP_HELP = """
# BIOSCAN-CLIP insect identification: not set up yet

This Space has no key library to identify against. In the Space settings (*Variables and secrets*), set

- `BIOSCAN_CLIP_KEYS` = the key-library dataset repository (`owner/name`, written by `bioscan-clip push keys`),
  which names the model it was embedded with;
- optionally `BIOSCAN_CLIP_MODEL` (another model repository), `BIOSCAN_CLIP_KEYS_REVISION` and
  `BIOSCAN_CLIP_MODEL_REVISION` (commit shas to pin),

or name them in this Space's README front matter (`datasets:` and `models:`), then restart the Space.
"""


def _front_matter_list(key: str) -> list[str]:
    readme = HERE / "README.md"
    text = readme.read_text(encoding="utf-8") if readme.is_file() else ""
    front = re.match(r"^---\n(.*?)\n---\n", text, flags=re.S)
    block = re.search(rf"(?m)^{key}:\n((?:- .*\n?)+)", front.group(1) + "\n") if front else None
    return [line[2:].strip() for line in block.group(1).splitlines()] if block else []


def space_repos() -> dict[str, str | None]:
    """The key library and model the Space serves: variables first, then the README front matter."""
    keys = os.environ.get("BIOSCAN_CLIP_KEYS") or next(iter(_front_matter_list("datasets")), None)
    model = os.environ.get("BIOSCAN_CLIP_MODEL") or next(iter(_front_matter_list("models")), None)
    return {
        "keys": keys,
        "model": model,
        "keys_revision": os.environ.get("BIOSCAN_CLIP_KEYS_REVISION"),
        "model_revision": os.environ.get("BIOSCAN_CLIP_MODEL_REVISION"),
    }


def unset_page():
    """The page served when no key library is named: what to set, no traceback."""
    import gradio as gr

    with gr.Blocks(title="BIOSCAN-CLIP (not set up)") as page:
        gr.Markdown(SETUP_HELP)
    return page


def build_space():
    """The Space's app: the demo on the named key library and model, or :func:`unset_page`."""
    repos = space_repos()
    if not repos["keys"]:
        return unset_page()
    from bioscan_clip.identification.library import resolve_key_library

    model_dir, key_dir = resolve_key_library(
        repos["keys"], revision=repos["keys_revision"], model=repos["model"], model_revision=repos["model_revision"]
    )
    return build_demo(model_dir, key_dir)


def serve_space() -> int:
    """``python app.py`` with no arguments, as a Space runs it."""
    launch(
        build_space(),
        host=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
        port=int(os.environ["GRADIO_SERVER_PORT"]) if os.environ.get("GRADIO_SERVER_PORT") else None,
    )
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    raise SystemExit(main() if len(sys.argv) > 1 else serve_space())
