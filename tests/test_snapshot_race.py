"""Reading while rebuilding: real processes race a reader against writers swapping key folders in.

Two key folders that differ in every part (record count and ids, hence each index's size and key table; calibration
precision; the sealed manifest) are swapped, again and again, into one path by writer processes calling the
project's own :func:`~bioscan_clip.safe_io.staging_dir` and :func:`~bioscan_clip.safe_io.swap_in` (as ``index``
does), while a reader process loads that path with :meth:`Identifier.load` and identifies a barcode. The reader must
never fail and never get parts of two builds; the writers must all succeed and leave no aside copy behind.
RELIABILITY.md ("Reading while rebuilding") lists these tests.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import datasets
import pytest
from conftest import REPO_ROOT
from reliability_fixtures import key_records, save_tiny_model

from bioscan_clip.identification.build import build_key_folder
from bioscan_clip.identification.identifier import Identifier
from bioscan_clip.identification.key_folder import verify_key_folder
from bioscan_clip.safe_io import KILL_AT_ENV, atomic_output_file, staging_dir
from modeling_bioscanclip import BioscanClipModel, BioscanClipProcessor

SWAPS = 100  # swaps during the reads, as the issue asks (a swap waits for the load it would disturb: ~0.1 s each)

# Swaps prebuilt folders into argv[1], alternating between the folders argv[4:], argv[3] times, once the file argv[2]
# appears (it touches argv[2] + ".ready-PID" when imported), so that writers started together race from the start.
WRITER = """
import os, shutil, sys, time
from pathlib import Path
from bioscan_clip.safe_io import staging_dir, swap_in
target, go, swaps, sources = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]
Path(f"{go}.ready-{os.getpid()}").touch()
while not go.exists():
    time.sleep(0.01)
for i in range(swaps):
    staging = staging_dir(target)
    shutil.copytree(sources[i % len(sources)], staging, dirs_exist_ok=True)
    swap_in(staging, target)
"""

# Loads argv[1] and identifies a barcode until the file argv[2] appears (argv[2] + ".ready" once it has loaded
# once); prints one JSON report. A load is of one build when every part names the same one (argv[3]: build name ->
# what each part of it holds).
READER = """
import json, sys
from pathlib import Path
from bioscan_clip.identification.identifier import Identifier
target, stop, builds = sys.argv[1], Path(sys.argv[2]), json.loads(sys.argv[3])
ready = Path(f"{stop}.ready")
loads, seen, failures, mixed = 0, {}, [], []
def build_of(identifier, answer):
    names = set()
    for name, build in builds.items():
        if len(identifier.records) == build["count"]:
            names.add(name)
        if identifier.records[0]["processid"] == build["first_id"]:
            names.add(name)
        if identifier.calibration.get("precision") == build["precision"]:
            names.add(name)
        if identifier.keys_manifest_sha256 == build["seal"]:
            names.add(name)
        for index in identifier.indexes.values():
            if len(index) == build["count"] and index.keys["processid"][0] == build["first_id"]:
                names.add(name)
        if answer.neighbours and answer.neighbours[0].processid.startswith(build["id_prefix"]):
            names.add(name)
    return names
while not stop.exists() or loads == 0:
    loads += 1
    try:
        identifier = Identifier.load(None, target)
        [answer] = identifier.identify(barcodes=[identifier.records[3]["dna_barcode"]])
    except Exception as error:
        failures.append(f"{type(error).__name__}: {error}")
        continue
    names = build_of(identifier, answer)
    if len(names) != 1 or len(identifier.indexes) != 3:
        mixed.append(sorted(names))
    for name in names:
        seen[name] = seen.get(name, 0) + 1
    ready.touch()
print(json.dumps({"loads": loads, "seen": seen, "failures": failures[:5], "failed": len(failures),
                  "mixed": mixed[:5], "mixed_count": len(mixed)}))
"""


def subprocess_env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")])
    return {**env, **extra}


def records_named(count: int, prefix: str) -> datasets.Dataset:
    return key_records(count, images=False).map(lambda row, i: {"processid": f"{prefix}{i:03d}"}, with_indices=True)


@pytest.fixture(scope="module")
def two_builds(tmp_path_factory, tiny_processor):
    """Key folders A (12 keys ``A000``.., precision 0.9) and B (16 keys ``B000``.., precision 0.8) of one DNA+text
    model: dna, text and kmer indexes, records, calibration; and what each part of each holds."""
    root = tmp_path_factory.mktemp("two-builds")
    model_dir = save_tiny_model(root / "model", tiny_processor, seed=1, modalities=("dna", "text"))
    model = BioscanClipModel.from_pretrained(model_dir).eval()
    processor = BioscanClipProcessor.from_pretrained(model_dir)
    builds, folders = {}, {}
    for name, count, precision in (("A", 12, 0.9), ("B", 16, 0.8)):
        folder = build_key_folder(
            model, processor, records_named(count, name), root / name, precision=precision, show_progress=False
        )
        identifier = Identifier.load(None, folder)
        assert sorted(identifier.indexes) == ["dna", "kmer", "text"]
        folders[name] = folder
        builds[name] = {
            "count": count, "first_id": f"{name}000", "id_prefix": name, "precision": precision,
            "seal": identifier.keys_manifest_sha256,
        }  # fmt: skip
    return {"folders": folders, "builds": builds, "model": model_dir, "root": root}


def start(script: str, *args: object) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script), *map(str, args)],
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(files: Callable[[], int], count: int, processes: list[subprocess.Popen], what: str) -> None:
    deadline = time.monotonic() + 240
    while files() < count:
        for process in processes:
            assert process.poll() is None, process.communicate()[1][-3000:]
        assert time.monotonic() < deadline, f"the {what} never started"
        time.sleep(0.1)


def start_reader(target: Path, stop: Path, two_builds) -> subprocess.Popen:
    """The reader, once it has loaded ``target`` (its imports take longer than a writer's whole run)."""
    reader = start(READER, target, stop, json.dumps(two_builds["builds"]))
    wait_for(lambda: int(Path(f"{stop}.ready").exists()), 1, [reader], "reader")
    return reader


def start_writers(target: Path, *sources: list[Path]) -> list[subprocess.Popen]:
    """One writer per list of folders to alternate, all swapping from the same instant."""
    go = target.with_name(f"{target.name}.go")
    writers = [start(WRITER, target, go, SWAPS, *folders) for folders in sources]
    wait_for(lambda: len(list(target.parent.glob(f"{go.name}.ready-*"))), len(writers), writers, "writers")
    go.touch()
    return writers


def finish(process: subprocess.Popen, timeout: float = 240) -> str:
    out, err = process.communicate(timeout=timeout)
    assert process.returncode == 0, err[-3000:]
    return out


def asides(target: Path) -> list[str]:
    """What a write of ``target`` may leave beside it: staging (``.NAME.tmp-*``) and retired (``.NAME.old-*``)."""
    return sorted(p.name for p in target.parent.iterdir() if p.name.startswith((f".{target.name}.tmp-",
                                                                                f".{target.name}.old-")))  # fmt: skip


def assert_one_of_the_builds(target: Path, two_builds) -> None:
    manifest = verify_key_folder(target)
    assert manifest["count"] in (12, 16)
    identifier = Identifier.load(None, target)
    build = two_builds["builds"]["A" if manifest["count"] == 12 else "B"]
    assert identifier.keys_manifest_sha256 == build["seal"]


def test_reader_during_swaps_gets_one_whole_build_and_never_fails(two_builds, tmp_path):
    target, stop = tmp_path / "keys", tmp_path / "stop"
    shutil.copytree(two_builds["folders"]["A"], target)
    reader = start_reader(target, stop, two_builds)
    try:
        [writer] = start_writers(target, [two_builds["folders"]["B"], two_builds["folders"]["A"]])
        finish(writer)
    finally:
        stop.touch()
    report = json.loads(finish(reader).strip().splitlines()[-1])
    assert (report["failed"], report["mixed_count"]) == (0, 0), report["failures"] + report["mixed"]
    assert report["seen"].get("A", 0) >= 2 and report["seen"].get("B", 0) >= 2, report  # it read during the swaps
    assert_one_of_the_builds(target, two_builds)
    assert asides(target) == []


def test_two_writers_swapping_one_folder_take_turns_and_leave_nothing_aside(two_builds, tmp_path):
    target = tmp_path / "keys"
    shutil.copytree(two_builds["folders"]["B"], target)
    a, b = two_builds["folders"]["A"], two_builds["folders"]["B"]
    for writer in start_writers(target, [a, b], [b, a]):
        finish(writer)  # every swap of both succeeded
    assert_one_of_the_builds(target, two_builds)
    assert asides(target) == []


def bold_table(path: Path, prefix: str, count: int) -> Path:
    """A small BOLD export (barcodes and taxonomy) for a barcodes-only ``index`` run."""
    records = records_named(count, prefix)
    columns = ["processid", "sampleid", "order", "family", "genus", "species", "nuc"]
    lines = ["\t".join(columns)]
    for row in records:
        values = {**row, "nuc": row["dna_barcode"]}
        lines.append("\t".join(values[c] or "" for c in columns))
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.slow  # two whole `index` processes (~50 s on a loaded 2-core machine); the swap race itself is above
def test_two_index_runs_to_one_out_both_end_whole(tmp_path):
    """Two real ``bioscan-clip index --out SAME`` processes (barcodes only, no model) started together."""
    out = tmp_path / "keys"
    runs = []
    for prefix, count in (("A", 20), ("B", 24)):
        table = bold_table(tmp_path / f"{prefix}.tsv", prefix, count)
        command = ["index", "--source", "bold", "--partition", "none", "--data_dir", str(table),
                   "--cache_dir", str(tmp_path / f"cache_{prefix}"), "--out", str(out)]  # fmt: skip
        script = "import sys; from bioscan_clip.apps.cli import main; sys.exit(main(sys.argv[1:]))"
        runs.append(start(script, *command))
    for run in runs:
        finish(run, timeout=300)
    manifest = verify_key_folder(out)
    assert manifest["count"] in (20, 24) and manifest["features"] == ["kmer"]
    identifier = Identifier.load(None, out)
    assert len(identifier.indexes["kmer"]) == manifest["count"]
    assert asides(out) == []


# Swaps argv[2] into argv[1] with the test hook killing it between the two renames.
KILLED_SWAP = """
import shutil, sys
from pathlib import Path
from bioscan_clip.safe_io import staging_dir, swap_in
target = Path(sys.argv[1])
staging = staging_dir(target)
shutil.copytree(sys.argv[2], staging, dirs_exist_ok=True)
swap_in(staging, target)
"""


def test_swap_killed_between_its_renames_is_put_back_by_the_next_write(two_builds, tmp_path):
    target = tmp_path / "keys"
    shutil.copytree(two_builds["folders"]["A"], target)
    killed = subprocess.run(
        [sys.executable, "-c", KILLED_SWAP, str(target), str(two_builds["folders"]["B"])],
        env=subprocess_env(**{KILL_AT_ENV: "retired"}),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert not target.exists() and len(asides(target)) == 2  # the old folder aside, the new one staged
    staging = staging_dir(target)  # the next write of the folder (e.g. the next `index`) starts here
    assert verify_key_folder(target)["count"] == 12  # the old build, whole, back in place
    assert asides(target) == [staging.name]  # the dead run's staging and old folders are gone
    shutil.rmtree(staging)


# Writes argv[1] through atomic_output_file, killed after the write, before the rename.
KILLED_WRITE = """
import sys
from pathlib import Path
from bioscan_clip.safe_io import atomic_output_file
with atomic_output_file(Path(sys.argv[1])) as temporary:
    temporary.write_text("new")
"""


def test_temporary_output_of_a_killed_write_is_removed_by_the_next(tmp_path):
    out = tmp_path / "predictions.csv"
    out.write_text("old")
    killed = subprocess.run(
        [sys.executable, "-c", KILLED_WRITE, str(out)],
        env=subprocess_env(**{KILL_AT_ENV: "write:written"}),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert out.read_text() == "old" and len(asides(out)) == 1
    with atomic_output_file(out) as temporary:
        temporary.write_text("newer")
    assert out.read_text() == "newer" and asides(out) == []
