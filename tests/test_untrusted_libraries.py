"""A key library from anyone is data, never a crash (issue 26, part 1 and 5).

An attacker publishes a key folder whose parts are crafted and then *re-sealed*: every per-feature checksum, the
file list and the sealed manifests are valid, so only the checks of the parts themselves stand between the file and
faiss / Arrow. Each case is loaded and searched by the real ``bioscan-clip predict`` (barcodes, no model) in its own
child process, forked from a runner that has imported everything once, with its address
space capped (``RLIMIT_AS``, :data:`MEMORY_BOUND` above the runner's) and an alarm: a native crash is seen as the
signal it is, a memory blow-up as the error it causes, a hang as SIGALRM. Every case must end in exit 2 and one line
naming the folder and the part, with no traceback.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import faiss
import numpy as np
import pytest
from reliability_fixtures import key_records

from bioscan_clip.identification.build import build_key_folder
from bioscan_clip.identification.key_folder import CALIBRATION_FILE, KEY_MANIFEST, RECORDS_DIRNAME
from bioscan_clip.retrieval import INDEX_TYPES, KeyIndex
from bioscan_clip.retrieval.index_types import MAX_SEARCH_WIDTH
from bioscan_clip.safe_io import SEAL_KEY, file_checksums, sealed_json
from modeling_bioscanclip import BioscanInputError

KEY_COUNT = 40
MEMORY_BOUND = 2 << 30  # bytes of address space a child may add to the runner's before an allocation fails
CHILD_SECONDS = 90  # a child still running after this is killed by SIGALRM (a hang is a failure too)
INDEX = "kmer"  # the index a barcode query searches (and each crafted case corrupts)

# The runner: imports everything once (nothing runs faiss or OpenMP in it), then forks one child per case.
RUNNER = textwrap.dedent(
    """
    import json, os, resource, signal, sys, traceback
    import bioscan_clip.apps.cli as cli
    cli.command_module("predict")
    import bioscan_clip.identification.identifier, edlib, pandas  # noqa: F401
    def vm_bytes():
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmSize:"))
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        case = json.loads(line)
        pid = os.fork()
        if pid == 0:
            try:
                limit = vm_bytes() + case["memory_bound"]
                resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
                signal.alarm(case["seconds"])
                for fd, name in ((1, "stdout"), (2, "stderr")):
                    os.dup2(os.open(case[name], os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
                code = cli.main(case["argv"])
            except BaseException:
                traceback.print_exc()
                code = 1
            sys.stdout.flush(); sys.stderr.flush()
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        signalled = os.WIFSIGNALED(status)
        print(json.dumps({"signal": os.WTERMSIG(status) if signalled else None,
                          "code": None if signalled else os.WEXITSTATUS(status)}), flush=True)
    """
)


class Runner:
    """One ``predict`` per case, each in a forked child; returns (signal, exit code, stderr)."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", RUNNER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=os.environ
        )
        assert json.loads(self.process.stdout.readline()) == {"ready": True}

    def predict(
        self, key_dir: Path, fasta: Path, work: Path, *, restrict: bool = False
    ) -> tuple[int | None, int | None, str]:
        work.mkdir(parents=True, exist_ok=True)
        argv = ["predict", "--keys", str(key_dir), "--fasta", str(fasta), "--out", str(work / "out.csv")]
        argv += ["--restrict", "order=Diptera,Coleoptera"] if restrict else []  # every key, through a selector
        case = {"argv": argv, "stdout": str(work / "stdout"), "stderr": str(work / "stderr"),
                "memory_bound": MEMORY_BOUND, "seconds": CHILD_SECONDS}  # fmt: skip
        self.process.stdin.write(json.dumps(case) + "\n")
        self.process.stdin.flush()
        result = json.loads(self.process.stdout.readline())
        return result["signal"], result["code"], (work / "stderr").read_text(errors="replace")

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=60)


@pytest.fixture(scope="module")
def runner():
    started = Runner()
    yield started
    started.close()


# ---------------------------------------------------------------------------------------------------- key folders


BUILDS = {
    "flat": ("flat", {}),
    "ivf_rerank": ("ivf", {"nlist": 2, "nprobe": 2, "rerank": 8}),
    "ivf": ("ivf", {"nlist": 2, "nprobe": 2}),
    "ivfpq": ("ivfpq", {"nlist": 1, "nprobe": 1, "pq_fast_scan": True}),
    "ivfpq_plain": ("ivfpq", {"nlist": 1, "nprobe": 1, "pq_m": 64, "pq_nbits": 4}),
    "hnsw": ("hnsw", {}),
}


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    """A barcode key folder per index type (no model: the 5-mer index is the one searched) and a FASTA query; only the
    flat one is calibrated (the calibration cases start from it; calibrating is most of a build's time)."""
    root = tmp_path_factory.mktemp("untrusted")
    records = key_records(KEY_COUNT, images=False)
    folders = {}
    for name, (index_type, options) in BUILDS.items():
        folders[name] = build_key_folder(
            None, None, records, root / "built" / name, index_type=index_type, index_options=options,
            show_progress=False, calibrate=name == "flat",
        )  # fmt: skip
    fasta = root / "queries.fasta"
    fasta.write_text("".join(f">Q{i}\n{records[i]['dna_barcode']}\n" for i in range(2)))
    return root, folders, fasta


def reseal(key_dir: Path) -> None:
    """What a malicious publisher does after changing parts: every checksum and both seals made valid again."""
    for manifest_path in key_dir.glob("*/manifest.json"):
        try:
            manifest = json.loads(manifest_path.read_text())
        except ValueError:  # a mutated manifest stays as the attacker's bytes; only the file list covers it
            continue
        manifest.pop(SEAL_KEY, None)
        manifest["checksums"] = file_checksums(manifest_path.parent, exclude=("manifest.json",))
        manifest_path.write_text(sealed_json(manifest))
    manifest = json.loads((key_dir / KEY_MANIFEST).read_text())
    manifest.pop(SEAL_KEY, None)
    manifest["files"] = file_checksums(key_dir, exclude=(KEY_MANIFEST,))
    (key_dir / KEY_MANIFEST).write_text(sealed_json(manifest))


def copy_of(library, name: str, case: str) -> Path:
    root, folders, _ = library
    target = root / "cases" / case
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(folders[name], target)
    return target


def edit_index(key_dir: Path, change) -> None:
    """Reads the searched index with faiss, lets ``change`` alter it, writes it back."""
    path = key_dir / INDEX / "index.faiss"
    index = faiss.read_index(str(path))
    change(index)
    faiss.write_index(index, str(path))


def edit_json(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def first_list(index: faiss.Index) -> tuple[faiss.InvertedLists, int]:
    lists = faiss.extract_index_ivf(index).invlists
    return lists, next(number for number in range(lists.nlist) if lists.list_size(number))


def set_ivf_id(index: faiss.Index, value: int) -> None:
    lists, number = first_list(index)
    ids = faiss.rev_swig_ptr(lists.get_ids(number), lists.list_size(number))
    ids[0] = value


def patch_offsets(folder: Path, value: int) -> None:
    """Sets one string offset of the processid column (``KEY000``, ``KEY001``, ...: offsets 0, 6, 12, ...) in the
    Arrow file of ``folder``: found by its bytes, as an attacker would."""
    offsets = np.arange(0, 6 * KEY_COUNT + 1, 6, dtype="<i4")
    [arrow] = folder.glob("data-*.arrow")
    data = bytearray(arrow.read_bytes())
    at = data.find(offsets.tobytes())
    assert at >= 0, "the processid offsets are not in the Arrow file"
    data[at + 4 * 5 : at + 4 * 6] = np.array([value], dtype="<i4").tobytes()
    arrow.write_bytes(bytes(data))


def set_index_params(key_dir: Path, **params) -> None:
    edit_json(key_dir / INDEX / "manifest.json", lambda manifest: manifest["index_params"].update(params))


def alignment_thresholds(calibration: dict) -> dict:
    return calibration["thresholds"]["dna->dna (alignment identity)"]


# name -> (key folder to start from, what to change, words the one line must hold to name the part)
CRAFTED = {
    # the issue's cases
    "ivf_id_1e12_rerank_on": ("ivf_rerank", lambda d: edit_index(d, lambda i: set_ivf_id(i, 10**12)), "index.faiss"),
    "ivf_id_1e12_rerank_off": ("ivf", lambda d: edit_index(d, lambda i: set_ivf_id(i, 10**12)), "index.faiss"),
    "ivfpq_file_nprobe_3.4e11": (
        "ivfpq",
        lambda d: edit_index(d, lambda i: setattr(faiss.extract_index_ivf(i), "nprobe", 340_000_000_000)),
        "index.faiss",
    ),
    "hnsw_file_efsearch_2**31-1": (
        "hnsw",
        lambda d: edit_index(d, lambda i: setattr(i.hnsw, "efSearch", 2**31 - 1)),
        "index.faiss",
    ),
    "key_table_offset_2**31-1": ("flat", lambda d: patch_offsets(d / INDEX / "keys", 2**31 - 1), "key table"),
    "key_table_offset_5e6": ("flat", lambda d: patch_offsets(d / INDEX / "keys", 5_000_000), "key table"),
    "manifest_hnsw_over_flat_file": (
        "flat",
        lambda d: edit_json(
            d / INDEX / "manifest.json",
            lambda m: m.update(
                index_type="hnsw", index_params={"ef_construction": 80, "ef_search": 64, "hnsw_m": 32, "rerank": 0}
            ),
        ),
        "index.faiss",
    ),  # fmt: skip
    "calibration_threshold_a_string": (
        "flat",
        lambda d: edit_json(d / CALIBRATION_FILE, lambda c: alignment_thresholds(c).update(species="0.9")),
        CALIBRATION_FILE,
    ),
    "calibration_thresholds_not_a_dict": (
        "flat",
        lambda d: edit_json(d / CALIBRATION_FILE, lambda c: c.update(thresholds=[0.9, 0.8])),
        CALIBRATION_FILE,
    ),
    "calibration_vote_temperature_0": (
        "flat",
        lambda d: edit_json(d / CALIBRATION_FILE, lambda c: c.update(vote_temperature=0)),
        CALIBRATION_FILE,
    ),
    "calibration_thresholds_-1e9": (
        "flat",
        lambda d: edit_json(
            d / CALIBRATION_FILE, lambda c: alignment_thresholds(c).update(dict.fromkeys(alignment_thresholds(c), -1e9))
        ),
        CALIBRATION_FILE,
    ),  # fmt: skip
    # the same attacks carried into the manifest too, and neighbours of them
    "ivfpq_nprobe_3.4e11_in_file_and_manifest": (
        "ivfpq",
        lambda d: (
            edit_index(d, lambda i: setattr(faiss.extract_index_ivf(i), "nprobe", 340_000_000_000)),
            set_index_params(d, nprobe=340_000_000_000),
        ),
        "index_params",
    ),  # fmt: skip
    "hnsw_efsearch_2**31-1_in_file_and_manifest": (
        "hnsw",
        lambda d: (
            edit_index(d, lambda i: setattr(i.hnsw, "efSearch", 2**31 - 1)),
            set_index_params(d, ef_search=2**31 - 1),
        ),
        "index_params",
    ),  # fmt: skip
    "ivf_id_negative": ("ivf_rerank", lambda d: edit_index(d, lambda i: set_ivf_id(i, -7)), "index.faiss"),
    "ivfpq_plain_id_1e12": ("ivfpq_plain", lambda d: edit_index(d, lambda i: set_ivf_id(i, 10**12)), "index.faiss"),
    "hnsw_link_past_the_end": (
        "hnsw",
        lambda d: edit_index(d, lambda i: faiss.rev_swig_ptr(i.hnsw.neighbors.data(), 1).__setitem__(0, 10**9)),
        "index.faiss",
    ),
    "records_offset_2**31-1": ("flat", lambda d: patch_offsets(d / RECORDS_DIRNAME, 2**31 - 1), "key records"),
    "manifest_count_lies": (
        "flat",
        lambda d: edit_json(d / INDEX / "manifest.json", lambda m: m.update(count=10**12)),
        "index.faiss",
    ),  # fmt: skip
    "manifest_dim_huge": (
        "flat",
        lambda d: edit_json(d / INDEX / "manifest.json", lambda m: m.update(dim=2**40)),
        "dim",
    ),  # fmt: skip
}


# Searched with --restrict (the issue's AttributeError was on the restricted path); the others search every key, as
# a restriction's selector would drop a crafted id before the re-rank step could read it.
RESTRICTED = {"manifest_hnsw_over_flat_file"}


def assert_one_line_exit_2(outcome: tuple, key_dir: Path, part: str) -> None:
    signal_number, code, stderr = outcome
    assert signal_number is None, f"killed by signal {signal_number}: {stderr[-2000:]}"
    assert "Traceback" not in stderr, stderr[-3000:]
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code == 2, f"exit {code}: {stderr[-2000:]}"
    assert len(lines) == 1 and lines[0].startswith("bioscan-clip predict: error: "), stderr
    assert str(key_dir) in lines[0] and part in lines[0], lines[0]


@pytest.mark.parametrize("name", sorted(BUILDS))
def test_each_library_before_any_change_answers(library, runner, name):
    """The pipeline the cases break: every index type is loaded, searched and answered (exit 0), with and without
    --restrict."""
    root, folders, fasta = library
    for restrict in (False, True):
        outcome = runner.predict(folders[name], fasta, root / "runs" / f"pristine-{name}-{restrict}", restrict=restrict)
        assert outcome[:2] == (None, 0), outcome[2][-2000:]


@pytest.mark.parametrize("case", list(CRAFTED))
def test_a_crafted_resealed_library_is_one_line_and_exit_2_never_a_crash(library, runner, case):
    start, change, part = CRAFTED[case]
    key_dir = copy_of(library, start, case)
    change(key_dir)
    reseal(key_dir)
    root, _, fasta = library
    outcome = runner.predict(key_dir, fasta, root / "runs" / case, restrict=case in RESTRICTED)
    assert_one_line_exit_2(outcome, key_dir, part)


MUTATED_PARTS = {  # part -> (key folder, file inside it)
    "flat index": ("flat", f"{INDEX}/index.faiss"),
    "ivf index": ("ivf_rerank", f"{INDEX}/index.faiss"),
    "ivfpq index": ("ivfpq", f"{INDEX}/index.faiss"),
    "hnsw index": ("hnsw", f"{INDEX}/index.faiss"),
    "key table": ("flat", f"{INDEX}/keys/data-00000-of-00001.arrow"),
    "records": ("flat", f"{RECORDS_DIRNAME}/data-00000-of-00001.arrow"),
    "calibration": ("flat", CALIBRATION_FILE),
    "index manifest": ("flat", f"{INDEX}/manifest.json"),
}
MUTATIONS_PER_PART = 5


def mutate(path: Path, rng: np.random.Generator) -> None:
    """1-8 bytes changed: in the first 512 bytes (headers, lengths) or anywhere, to random or extreme values."""
    data = bytearray(path.read_bytes())
    for _ in range(int(rng.integers(1, 9))):
        span = min(len(data), 512) if rng.random() < 0.6 else len(data)
        at = int(rng.integers(0, span))
        data[at] = int(rng.choice([0x00, 0x7F, 0x80, 0xFF, int(rng.integers(0, 256))]))
    path.write_bytes(bytes(data))


def test_randomly_mutated_resealed_parts_never_crash(library, runner):
    """Seeded byte mutations of index files, Arrow tables, the calibration and the index manifest, re-sealed: a
    change in vector or code bytes may still answer (exit 0, it is data); anything else is one line, exit 2."""
    root, folders, fasta = library
    rng = np.random.default_rng(26)
    outcomes = {"answered": 0, "refused": 0}
    for part, (start, relative) in MUTATED_PARTS.items():
        for trial in range(MUTATIONS_PER_PART):
            case = f"mutated-{part.replace(' ', '_')}-{trial}"
            key_dir = copy_of(library, start, case)
            mutate(key_dir / relative, rng)
            reseal(key_dir)
            signal_number, code, stderr = runner.predict(key_dir, fasta, root / "runs" / case)
            assert signal_number is None, f"{case}: killed by signal {signal_number}: {stderr[-2000:]}"
            assert "Traceback" not in stderr and code in (0, 2), f"{case}: exit {code}: {stderr[-3000:]}"
            if code == 2:
                lines = [line for line in stderr.splitlines() if line.strip()]
                assert len(lines) == 1 and str(key_dir) in lines[0], f"{case}: {stderr}"
            outcomes["answered" if code == 0 else "refused"] += 1
    print(f"mutations: {outcomes}")
    assert outcomes["refused"] >= len(MUTATED_PARTS), outcomes  # the mutations reach the checks, not only payload


# ---------------------------------------------------------------------------------------------------- in process


@pytest.mark.parametrize("index_type", list(INDEX_TYPES))
def test_every_index_type_as_built_passes_its_file_check_and_search_settings_are_bounded(tmp_path, index_type):
    """No false alarm on what `index` writes (also after set_search_params), and no setting above the ceiling."""
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((300, 16)).astype(np.float32)
    options = {"nlist": 4} if index_type in ("ivf", "ivfpq") else {}
    options.update({"pq_m": 4} if index_type == "ivfpq" else {})
    built = KeyIndex.build(vectors, {"processid": [str(i) for i in range(300)]}, index_type=index_type,
                           required_columns=(), **options)  # fmt: skip
    setting = {"flat": {"rerank": 0}, "hnsw": {"ef_search": 100}}.get(index_type, {"nprobe": 3, "rerank": 5})
    built.set_search_params(**setting)
    loaded = KeyIndex.load(built.save(tmp_path / "keys"))
    assert loaded.search(vectors[:3], 2)[1][:, 0].tolist() == [0, 1, 2] or not loaded.exact
    name = {"flat": None, "hnsw": "ef_search"}.get(index_type, "rerank")  # nprobe's ceiling is nlist, lower
    if name is not None:
        with pytest.raises(BioscanInputError, match=f"{name} must be at most {MAX_SEARCH_WIDTH}"):
            loaded.set_search_params(**{name: MAX_SEARCH_WIDTH + 1})


def test_a_library_naming_a_local_model_path_is_refused(tmp_path):
    from bioscan_clip.identification.library import KEY_LIBRARY_FILE, KEY_LIBRARY_FORMAT, resolve_key_library

    (tmp_path / "keys").mkdir()
    for named in ("/etc", "../../elsewhere/model", "~/model"):
        library = {"format": KEY_LIBRARY_FORMAT, "keys": "keys", "model": {"repo_id": named, "revision": None}}
        (tmp_path / KEY_LIBRARY_FILE).write_text(json.dumps(library))
        with pytest.raises(BioscanInputError, match="'model' repo_id") as caught:
            resolve_key_library(tmp_path)
        assert "\n" not in str(caught.value) and KEY_LIBRARY_FILE in str(caught.value)


def test_pickled_model_weights_are_refused_in_one_line(tmp_path):
    """torch's weights_only refusal (nothing ran) said in one line that does not suggest weights_only=False."""
    import torch
    from conftest import tiny_config_kwargs

    from modeling_bioscanclip import BioscanClipConfig, BioscanClipModel

    BioscanClipModel(BioscanClipConfig(**tiny_config_kwargs(modalities=("image", "dna")))).save_pretrained(tmp_path)
    state = BioscanClipModel.from_pretrained(tmp_path).state_dict()
    state["planted"] = os.system  # a pickled global: unpickling it would hand the file a callable
    (tmp_path / "model.safetensors").unlink()
    torch.save(state, tmp_path / "pytorch_model.bin")
    with pytest.raises(BioscanInputError) as caught:
        BioscanClipModel.from_pretrained(tmp_path)
    message = str(caught.value)
    assert "\n" not in message and str(tmp_path) in message and "pickled" in message
    assert "weights_only` set to `False" not in message and "weights_only=False" not in message
