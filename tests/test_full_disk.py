"""A full disk during ``bioscan-clip index``, on a real small filesystem: a tmpfs of a few MB mounted for each test,
filled with a real file to the free space a case needs (mounting needs root, which CI has; elsewhere these tests
are skipped, saying so).

``index`` runs as a real subprocess, so that a SIGBUS (a store into a memory-mapped page the disk cannot back) is
seen as a signal, not as a crash of the test run. "The disk filled meanwhile" is the child filling the disk itself
at one moment of the build (just after the space check passed, before the first faiss index file, before the first
Arrow table): every write after it meets a really full filesystem.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import datasets
import numpy as np
import pytest
from conftest import REPO_ROOT, tiny_config_kwargs
from reliability_fixtures import key_records

from bioscan_clip.apps.cli import main
from bioscan_clip.features import FeatureFile
from bioscan_clip.identification.build import build_key_folder
from bioscan_clip.identification.key_folder import verify_key_folder
from bioscan_clip.retrieval.storage import write_index_file
from bioscan_clip.safe_io import file_checksums
from modeling_bioscanclip import BioscanClipConfig, BioscanClipModel, BioscanClipProcessor

DISK_SIZE = 8 << 20

# The child: argv = MOMENT FREE_BYTES_TO_LEAVE INDEX_ARGV...; "after-check" fills the disk just after the space check.
CHILD = """
import os, shutil, sys

def fill(folder, leave):
    free = shutil.disk_usage(folder).free
    if free > leave:
        with open(os.path.join(folder, "filled-meanwhile"), "ab") as handle:
            os.posix_fallocate(handle.fileno(), 0, free - leave)

moment, leave, argv = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
disk = os.path.dirname(argv[argv.index("--out") + 1])

if moment == "after-check":
    import bioscan_clip.identification.build as build
    real_check = build.check_free_space
    def check_then_fill(*args, **kwargs):
        real_check(*args, **kwargs)
        fill(disk, leave)
    build.check_free_space = check_then_fill

from bioscan_clip.apps.cli import main
sys.exit(main(argv))
"""


def _mount_error(folder: Path) -> str | None:
    if os.geteuid() != 0:
        return "mounting a small tmpfs needs root (CI runs as root); not root here"
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={DISK_SIZE}", "tmpfs", str(folder)], capture_output=True, text=True
    )
    return None if result.returncode == 0 else f"mount -t tmpfs failed: {result.stderr.strip()}"


@pytest.fixture
def disk(tmp_path):
    """A real DISK_SIZE tmpfs, unmounted afterwards."""
    folder = tmp_path / "disk"
    folder.mkdir()
    problem = _mount_error(folder)
    if problem:
        pytest.skip(problem)
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def leave_free(folder: Path, free: int) -> None:
    """Fills ``folder``'s filesystem with a real file until ``free`` bytes are left."""
    with (folder / f"filler-{uuid.uuid4().hex}").open("ab") as handle:
        os.posix_fallocate(handle.fileno(), 0, shutil.disk_usage(folder).free - free)
    assert abs(shutil.disk_usage(folder).free - free) <= 4096


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_processor):
    """A tiny image+DNA+text model (128-d embeddings: one feature file spans several pages), 24 key records as a
    BOLD library (every record a key), and a key folder built from them (the user's previous ``--out``)."""
    root = tmp_path_factory.mktemp("full-disk")
    config = BioscanClipConfig(**tiny_config_kwargs(text_vocab_size=len(tiny_processor.tokenizer), projection_dim=128))
    model = BioscanClipModel(config).eval()
    model.save_pretrained(root / "model")
    tiny_processor.save_pretrained(root / "model")
    records = key_records(24)
    datasets.DatasetDict({"train": records}).save_to_disk(str(root / "library"))
    previous = build_key_folder(
        model, BioscanClipProcessor.from_pretrained(root / "model"), records, root / "previous", show_progress=False
    )
    return {"model": root / "model", "library": root / "library", "previous": previous}


def index_argv(world, out: Path) -> list[str]:
    return ["index", "--model", str(world["model"]), "--source", "bold", "--dataset_path", str(world["library"]),
            "--out", str(out)]  # fmt: skip


def run_index_process(world, out: Path, moment: str = "never", leave: int = 0) -> subprocess.CompletedProcess:
    """``bioscan-clip index`` in a child process that fills the disk at ``moment`` (see CHILD)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, "-c", CHILD, moment, str(leave), *index_argv(world, out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def run_index(world, out: Path, capsys) -> subprocess.CompletedProcess:
    """``bioscan-clip index`` in this process (faster: the libraries are imported already)."""
    code = main(index_argv(world, out))
    captured = capsys.readouterr()
    return subprocess.CompletedProcess([], code, captured.out, captured.err)


def fill_at_first_call(monkeypatch, owner, name: str, disk: Path, leave: int) -> None:
    """The first call of ``owner.name`` fills ``disk`` to ``leave`` free bytes, then runs as itself."""
    real = getattr(owner, name)

    def first_call_fills(*args, **kwargs):
        monkeypatch.setattr(owner, name, real)
        leave_free(disk, leave)
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, first_call_fills)


def the_error_line(result: subprocess.CompletedProcess) -> str:
    """The one error line of a failed run: exit 2, no signal, no traceback."""
    assert result.returncode == 2, f"exit {result.returncode}: {result.stderr[-3000:]}"
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert len(lines) == 1 and lines[0].startswith("bioscan-clip index: error: "), result.stderr[-3000:]
    return lines[0]


def previous_out(world, disk: Path) -> tuple[Path, dict]:
    out = disk / "keys"
    shutil.copytree(world["previous"], out)
    return out, file_checksums(out)


def assert_nothing_left(disk: Path, out: Path, before: dict) -> None:
    """Only the previous key folder (whole, byte for byte) and the test's filler files are on the disk."""
    left = sorted(p.name for p in disk.iterdir() if not p.name.startswith(("filler-", "filled-meanwhile")))
    assert left == [out.name], left
    assert file_checksums(out) == before
    verify_key_folder(out)


def asked_for(line: str) -> int:
    """The bytes a refusal says the build needs ("it needs about 1.4 MiB")."""
    number, unit = line.split("it needs about ")[1].split(" (")[0].split()
    return int(float(number) * {"bytes": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}[unit])


def test_index_refuses_a_disk_too_small_before_embedding(world, disk, capsys):
    """Refused in one line with the shortfall, before the first batch, nothing left; with the space it asked for
    free, the same build replaces ``--out`` (the estimate is not a refusal of everything)."""
    out, before = previous_out(world, disk)
    leave_free(disk, 300 << 10)
    result = run_index(world, out, capsys)
    line = the_error_line(result)
    assert f"{disk}: not enough free space to build the key folder keys: it needs about " in line, line
    assert ", 300.0 KiB is free, short by " in line, line
    assert "embedding keys" not in result.stderr  # refused before the first batch
    assert_nothing_left(disk, out, before)
    for filler in disk.glob("filler-*"):
        filler.unlink()
    leave_free(disk, asked_for(line) + (16 << 10))
    previous_inode = out.stat().st_ino
    result = run_index(world, out, capsys)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"wrote key folder {out}" in result.stdout
    assert sorted(p.name for p in disk.iterdir() if not p.name.startswith("filler-")) == ["keys"]
    assert out.stat().st_ino != previous_inode  # the new build, swapped in
    verify_key_folder(out)


def test_index_on_a_disk_that_fills_after_the_check_is_one_line_not_a_bus_error(world, disk):
    """The space check passes, then the disk fills before the first batch, two pages left: the embeddings' first
    file (four pages) cannot be written. Before, numpy's memory map wrote its first and last page and a store into
    the middle killed the process with SIGBUS, no message, staging folders left (checked: exit -7 on the old code);
    a real child process, so that a signal is seen as one."""
    out, before = previous_out(world, disk)
    result = run_index_process(world, out, "after-check", leave=8192)
    line = the_error_line(result)
    assert f"{disk}: could not write the key folder keys (No space left on device)" in line, line
    assert f"the partial build was removed and {out} is as it was" in line, line
    assert_nothing_left(disk, out, before)


@pytest.mark.parametrize("write", ["faiss.write_index", "datasets.Dataset.save_to_disk"])
def test_index_on_a_disk_that_fills_while_staging_is_one_line(world, disk, capsys, monkeypatch, write):
    """The disk fills after the embedding, just before the first faiss index file (before: faiss's RuntimeError
    traceback) or the first Arrow table is written."""
    import faiss

    owner, name = (faiss, "write_index") if write.startswith("faiss") else (datasets.Dataset, "save_to_disk")
    out, before = previous_out(world, disk)
    fill_at_first_call(monkeypatch, owner, name, disk, 4096)
    result = run_index(world, out, capsys)
    line = the_error_line(result)
    assert f"{disk}: could not write the key folder keys (No space left on device)" in line, line
    assert f"the partial build was removed and {out} is as it was" in line, line
    assert_nothing_left(disk, out, before)


def test_embedding_file_on_a_full_disk_is_an_oserror_naming_it(disk):
    leave_free(disk, 4096)
    with pytest.raises(OSError, match="No space left on device") as raised:
        FeatureFile(disk / "image.npy", 1000, 128)  # 500 KiB reserved at once: refused at creation
    assert raised.value.errno == errno.ENOSPC and raised.value.filename == str(disk / "image.npy")


def test_faiss_index_file_on_a_full_disk_is_an_oserror_naming_it(disk):
    import faiss

    index = faiss.IndexFlatIP(64)
    index.add(np.random.default_rng(0).random((2000, 64), dtype=np.float32))
    leave_free(disk, 4096)
    with pytest.raises(OSError, match="No space left on device") as raised:
        write_index_file(index, disk / "index.faiss")
    assert raised.value.errno == errno.ENOSPC and raised.value.filename == str(disk / "index.faiss")
