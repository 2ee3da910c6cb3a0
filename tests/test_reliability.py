"""Faults: a process killed at every stage of a write, corrupted or mixed key folders, untrusted pickles on resume.

Kills are real: a subprocess SIGKILLs itself at a named stage (``BIOSCAN_CLIP_TEST_KILL_AT``, see
``bioscan_clip.safe_io.kill_point``), so nothing of ours runs after it (no ``finally``, no cleanup), as with
``kill -9`` or the OOM killer. RELIABILITY.md lists these tests; tests/test_reliability_doc.py keeps it in step.
"""

from __future__ import annotations

import ast
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import pandas as pd
import pytest
from conftest import REPO_ROOT
from reliability_fixtures import BARCODE, key_records, save_tiny_model

from bioscan_clip.apps.cli import main
from bioscan_clip.identification.build import build_key_folder
from bioscan_clip.identification.identifier import Identifier
from bioscan_clip.identification.key_folder import KEY_MANIFEST, verify_key_folder
from bioscan_clip.retrieval.key_index import KeyIndex
from bioscan_clip.safe_io import KILL_AT_ENV
from modeling_bioscanclip import BioscanClipModel, BioscanClipProcessor, BioscanInputError

# Every stage of an index rebuild at which the test hook can kill it, in order (dna+text model: no image/averaged).
INDEX_STAGES = [
    "index:embedded",
    "index:dna",
    "index:text",
    "index:calibration",
    "index:records",
    "index:manifest",
    "index:retired",
    "index:swapped",
]
QUICK_STAGES = {"index:text", "index:retired"}  # one mid-build, one between the two renames; the rest are slow

BUILD_SCRIPT = """
import sys, datasets
from bioscan_clip.identification import build_key_folder
from modeling_bioscanclip import BioscanClipModel, BioscanClipProcessor
model = BioscanClipModel.from_pretrained(sys.argv[1]).eval()
processor = BioscanClipProcessor.from_pretrained(sys.argv[1])
build_key_folder(model, processor, datasets.load_from_disk(sys.argv[2]), sys.argv[3], show_progress=False)
"""


def subprocess_env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")])
    return {**env, **extra}


@pytest.fixture(scope="module")
def dna_models(tmp_path_factory, tiny_processor):
    """Two DNA+text models of one architecture but different weights, their key records and a key folder of A."""
    root = tmp_path_factory.mktemp("dna-models")
    a = save_tiny_model(root / "model_a", tiny_processor, seed=1, modalities=("dna", "text"))
    b = save_tiny_model(root / "model_b", tiny_processor, seed=2, modalities=("dna", "text"))
    records = key_records(12, images=False)
    records.save_to_disk(str(root / "records"))
    folders = {}
    for name, model_dir in (("a", a), ("b", b)):
        model = BioscanClipModel.from_pretrained(model_dir).eval()
        folders[name] = build_key_folder(
            model, BioscanClipProcessor.from_pretrained(model_dir), records, root / f"keys_{name}", show_progress=False
        )
    return {"a": a, "b": b, "records": root / "records", "keys_a": folders["a"], "keys_b": folders["b"]}


def embeddings_of(folder: Path) -> dict[str, np.ndarray]:
    return {name: KeyIndex.load(folder / name).embeddings() for name in ("dna", "text")}


def assert_whole(folder: Path, expected: dict[str, np.ndarray]) -> None:
    verify_key_folder(folder)
    found = embeddings_of(folder)
    for name in expected:
        np.testing.assert_array_equal(found[name], expected[name])


@pytest.mark.parametrize(
    "stage", [s if s in QUICK_STAGES else pytest.param(s, marks=pytest.mark.slow) for s in INDEX_STAGES]
)
def test_index_rebuild_killed_at_every_stage_is_old_or_new_never_mixed(stage, dna_models, tmp_path):
    out = tmp_path / "keys"
    shutil.copytree(dna_models["keys_a"], out)
    old, new = embeddings_of(dna_models["keys_a"]), embeddings_of(dna_models["keys_b"])
    result = subprocess.run(
        [sys.executable, "-c", BUILD_SCRIPT, str(dna_models["b"]), str(dna_models["records"]), str(out)],
        env=subprocess_env(**{KILL_AT_ENV: stage}),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]
    if stage == "index:retired":  # between the two renames: no folder, refused by name, old one kept aside
        with pytest.raises(BioscanInputError, match=f"{out}: no such key folder"):
            verify_key_folder(out)
        [aside] = tmp_path.glob(".keys.old-*/keys")
        assert_whole(aside, old)
    elif INDEX_STAGES.index(stage) < INDEX_STAGES.index("index:retired"):
        assert_whole(out, old)
    else:
        assert_whole(out, new)
    # The next run succeeds and removes the dead run's staging folder (in this process: only the kill needs another).
    model = BioscanClipModel.from_pretrained(dna_models["b"]).eval()
    processor = BioscanClipProcessor.from_pretrained(dna_models["b"])
    build_key_folder(model, processor, datasets.load_from_disk(str(dna_models["records"])), out, show_progress=False)
    assert_whole(out, new)
    assert not list(tmp_path.glob(".keys.tmp-*"))


def test_key_folder_with_parts_of_two_builds_is_refused_by_name(dna_models, tmp_path):
    mixed = tmp_path / "mixed"
    shutil.copytree(dna_models["keys_a"], mixed)
    shutil.rmtree(mixed / "dna")
    shutil.copytree(dna_models["keys_b"] / "dna", mixed / "dna")  # what the old in-place rebuild left
    with pytest.raises(BioscanInputError, match=f"{mixed}: the key folder is corrupted or mixed: dna/"):
        Identifier.load(dna_models["b"], mixed)


CORRUPTIONS = ["flip", "truncate", "delete", "append"]
TARGETS = ["dna/index.faiss", "dna/vectors.npy", "dna/manifest.json", "text/keys/data-00000-of-00001.arrow", "calibration.json",
           "records/data-00000-of-00001.arrow", "records/state.json", KEY_MANIFEST]  # fmt: skip


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("corruption", CORRUPTIONS)
def test_corrupted_key_folder_is_refused_by_name(dna_models, tmp_path, target, corruption):
    folder = tmp_path / "keys"
    shutil.copytree(dna_models["keys_a"], folder)
    path = folder / target
    data = bytearray(path.read_bytes())
    if corruption == "flip":
        data[len(data) // 2] ^= 0x10
        path.write_bytes(bytes(data))
    elif corruption == "truncate":
        path.write_bytes(bytes(data[: len(data) // 2]))
    elif corruption == "append":
        path.write_bytes(bytes(data) + b"\0junk")
    else:
        path.unlink()
    with pytest.raises(BioscanInputError) as caught:
        Identifier.load(dna_models["a"], folder)
    message = str(caught.value)
    assert str(folder) in message and "\n" not in message


def test_key_folder_of_another_architecture_is_refused(dna_models, tmp_path, tiny_processor):
    other = save_tiny_model(tmp_path / "other", tiny_processor, seed=3, modalities=("image", "dna", "text"))
    with pytest.raises(BioscanInputError, match="built with another model"):
        Identifier.load(other, dna_models["keys_a"])


def test_index_out_refuses_a_folder_that_is_not_a_key_folder(dna_models, tmp_path, capsys):
    precious = tmp_path / "mine"
    (precious / "records").mkdir(parents=True)
    (precious / "records" / "important.txt").write_text("years of work")
    code = main(["index", "--model", str(dna_models["a"]), "--source", "mini", "--out", str(precious)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "refusing to replace it" in err and str(precious) in err
    assert (precious / "records" / "important.txt").read_text() == "years of work"
    a_file = tmp_path / "file.txt"
    a_file.write_text("mine")
    with pytest.raises(BioscanInputError, match="is a file that is not a key folder"):
        build_key_folder(None, None, None, a_file)  # refused before anything is looked at
    records = datasets_from(dna_models)
    model = BioscanClipModel.from_pretrained(dna_models["a"]).eval()
    processor = BioscanClipProcessor.from_pretrained(dna_models["a"])
    build_key_folder(model, processor, records, precious, overwrite=True, show_progress=False)
    verify_key_folder(precious)
    assert not (precious / "records" / "important.txt").exists()


def datasets_from(dna_models):
    import datasets

    return datasets.load_from_disk(str(dna_models["records"]))


# ---- predict / embed: written to a temporary file and renamed --------------------------------------------------------
EMBED_SCRIPT = "import sys; from bioscan_clip.apps.cli import main; sys.exit(main(sys.argv[1:]))"


@pytest.mark.parametrize("suffix", [".parquet", pytest.param(".csv", marks=pytest.mark.slow)])
def test_embed_killed_during_the_write_leaves_the_previous_output(dna_models, tmp_path, suffix):
    fasta = tmp_path / "q.fasta"
    fasta.write_text("".join(f">Q{i}\n{BARCODE}\n" for i in range(40)))
    out = tmp_path / f"embeddings{suffix}"
    previous = b"the previous run's output, which the user kept"
    out.write_bytes(previous)
    args = ["embed", "--model", str(dna_models["a"]), "--fasta", str(fasta), "--out", str(out)]
    killed = subprocess.run(
        [sys.executable, "-c", EMBED_SCRIPT, *args],
        env=subprocess_env(**{KILL_AT_ENV: "write:written"}),  # the new file is fully written, not yet renamed
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert out.read_bytes() == previous
    [leftover] = tmp_path.glob(f".{out.name}.tmp-*")  # an obvious temporary name that no reader opens
    assert leftover.stat().st_size > 0
    assert main(args) == 0
    frame = pd.read_parquet(out) if suffix == ".parquet" else pd.read_csv(out)
    assert len(frame) == 40 and set(frame["feature"]) == {"dna"}


# ---- resume never unpickles what a user might have been handed -------------------------------------------------------
class _Exploit:
    """Unpickling this runs a shell command that leaves a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def train_args(mini_dir, mini_cache, out, *extra: str) -> list[str]:
    return [
        "--preset", "tiny", "--source", "mini", "--data_dir", str(mini_dir), "--cache_dir", str(mini_cache),
        "--output_dir", str(out), "--batch_size", "16", "--report_to", "none", "--eval_every_epochs", "0",
        "--cpu", "--epochs", "2", *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def checkpointed_run(tmp_path_factory, mini_dir, mini_cache):
    from bioscan_clip.apps import train as training
    from bioscan_clip.training.checkpoints import list_checkpoints

    out = tmp_path_factory.mktemp("pickled") / "run"
    assert training.main(train_args(mini_dir, mini_cache, out, "--max_steps", "2")) == 0
    [(_, checkpoint)] = list_checkpoints(out / "checkpoints")
    assert not list(checkpoint.glob("custom_checkpoint_*.pkl"))  # nothing of ours is pickled any more
    assert json.loads((checkpoint / "scheduler_state.json").read_text())["last_epoch"] == 2
    return out


def test_resume_never_unpickles_a_planted_custom_checkpoint(checkpointed_run, mini_dir, mini_cache, tmp_path, capsys):
    from bioscan_clip.apps import train as training

    run = tmp_path / "run"
    shutil.copytree(checkpointed_run, run)
    marker = tmp_path / "pwned"
    [checkpoint] = (run / "checkpoints").glob("checkpoint-*")
    for index in (0, 1):
        (checkpoint / f"custom_checkpoint_{index}.pkl").write_bytes(pickle.dumps(_Exploit(marker)))
    code = training.main(
        train_args(mini_dir, mini_cache, run, "--max_steps", "3", "--resume_from_checkpoint", "latest")
    )
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2 and not marker.exists()
    assert err.startswith("train_accelerate.py: error: ") and "custom_checkpoint_0.pkl" in err and "refusing" in err
    for index in (0, 1):  # without them the same checkpoint resumes (the run state is JSON)
        (checkpoint / f"custom_checkpoint_{index}.pkl").unlink()
    code = training.main(
        train_args(mini_dir, mini_cache, run, "--max_steps", "3", "--resume_from_checkpoint", "latest")
    )
    assert code == 0 and json.loads((run / "train_summary.json").read_text())["global_step"] == 3


@pytest.mark.parametrize("planted", ["random_states_0.pkl", "optimizer.bin"])
def test_resume_refuses_a_pickle_that_would_run_code(checkpointed_run, mini_dir, mini_cache, tmp_path, planted, capsys):
    import torch

    from bioscan_clip.apps import train as training

    run = tmp_path / "run"
    shutil.copytree(checkpointed_run, run)
    marker = tmp_path / "pwned"
    [checkpoint] = (run / "checkpoints").glob("checkpoint-*")
    torch.save({"state": _Exploit(marker)}, checkpoint / planted)
    args = train_args(mini_dir, mini_cache, run, "--max_steps", "3", "--resume_from_checkpoint", "latest")
    # optimizer.bin: accelerate's own torch.load(weights_only=True) refuses it; random_states: accelerate would
    # swallow the refusal silently (INFO log) and resume with the wrong RNG. Either way: one line, exit 2.
    assert training.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("train_accelerate.py: error: ") and "unpickler" in err
    if planted != "optimizer.bin":
        assert planted in err
    assert not marker.exists()


def test_no_pickle_loading_without_weights_only_in_the_package():
    """Static: no torch.load without weights_only=True, no pickle.load, nothing registered for checkpointing."""
    offenders = []
    for path in [*(REPO_ROOT / "bioscan_clip").rglob("*.py"), *(REPO_ROOT / "modeling_bioscanclip").rglob("*.py")]:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
                continue
            name = node.func.attr
            owner = node.func.value.id if isinstance(node.func.value, ast.Name) else None
            safe = any(k.arg == "weights_only" and getattr(k.value, "value", None) is True for k in node.keywords)
            if (owner == "torch" and name == "load" and not safe) or (owner == "pickle" and name in ("load", "loads")):
                offenders.append(f"{path.name}:{node.lineno} {owner}.{name}")
            if name == "register_for_checkpointing":
                offenders.append(f"{path.name}:{node.lineno} register_for_checkpointing")
    assert not offenders, offenders
