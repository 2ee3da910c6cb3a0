"""Test helper: a folder laid out in a ``huggingface_hub`` cache as ``snapshot_download`` leaves it."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from bioscan_clip.apps.publish import repo_files

logger = logging.getLogger(__name__)


def hub_cache_layout(cache: str | os.PathLike, repo_id: str, folder: str | os.PathLike, *, repo_type: str,
                     commit: str) -> Path:  # fmt: skip
    """Lays ``folder`` out in a ``huggingface_hub`` cache as ``snapshot_download`` leaves it (blobs, symlinked
    snapshot, ``refs/main``), for offline tests and air-gapped clusters; returns the snapshot folder."""
    import hashlib

    kind = {"model": "models", "dataset": "datasets", "space": "spaces"}[repo_type]
    repo = Path(cache) / f"{kind}--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    for name in repo_files(folder):
        data = (Path(folder) / name).read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        link = snapshot / name
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.relpath(blob, link.parent), link)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return snapshot
