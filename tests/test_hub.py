"""Publishing on the Hub (bioscan_clip.apps.publish, `bioscan-clip push`): the README walk-through, the four repositories
loaded by repo id from a real huggingface_hub cache layout in fresh offline processes, and the upload operations.

Nothing here reaches the network: loading goes through a Hub cache laid out as ``snapshot_download`` leaves it
(``models--owner--name/snapshots/<sha>/`` with ``refs/main``, the same for datasets and spaces) with
``HF_HUB_OFFLINE=1``, and uploading replaces only the transport (``HfApi.create_repo`` / ``create_commit``).
In the "Hub user" processes our packages are made unimportable, as for someone who only has transformers.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import REPO_ROOT
from hub_cache import hub_cache_layout

from bioscan_clip.apps import publish as hub
from bioscan_clip.apps.cli import main

MODEL_REPO, KEYS_REPO = "my-lab/bioscan-clip-tiny", "my-lab/bioscan-keys"
METRIC_REPO, SPACE_REPO = "my-lab/taxonomic_retrieval", "my-lab/bioscan-clip-demo"
COMMITS = {name: hashlib.sha1(name.encode()).hexdigest() for name in ("model", "keys", "metric", "space")}
HIDE_OUR_PACKAGES = 'import sys\nfor _name in ("modeling_bioscanclip", "bioscan_clip", "dataset_scripts"):\n' \
    "    sys.modules[_name] = None\n"  # fmt: skip
BARCODE_660 = ("ACGTTGCAAGTCCA" * 48)[:660]


def readme_walkthrough() -> tuple[list[list[str]], str]:
    """The `bioscan-clip push` commands and the Python block of README "Publish your model and library"."""
    text = (REPO_ROOT / "README.md").read_text()
    section = text.split("### Publish your model and library", 1)[1].split("\n### ", 1)[0]
    bash, python = re.findall(r"```(?:bash|python)\n(.*?)```", section, flags=re.S)[:2]
    commands = [shlex.split(line) for line in bash.replace("\\\n", " ").splitlines() if line.strip()]
    assert commands and all(command[:2] == ["bioscan-clip", "push"] for command in commands), commands
    return commands, python


def substitute(command: list[str]) -> list[str]:
    return [{"<model-commit-sha>": COMMITS["model"]}.get(word, word) for word in command[1:]]


def run_hub_user(script: str, env: dict, cwd: Path, *args: str) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", script, *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=300
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert "Falling back to loading from the root" not in result.stderr, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """The walk-through on untrained tiny folders: each `push` of the README with --dry_run, then each exported
    repository laid out in a Hub cache."""
    from demo_folders import write_untrained_demo_folders

    root = tmp_path_factory.mktemp("hub")
    model_dir, key_dir = write_untrained_demo_folders(root / "built", keys=20)
    work = root / "work"
    (work / "runs" / "quickstart").mkdir(parents=True)
    os.symlink(model_dir, work / "runs" / "quickstart" / "model")
    os.symlink(key_dir, work / "runs" / "quickstart" / "keys")
    commands, python = readme_walkthrough()
    exported = {}
    previous = os.getcwd()
    os.chdir(work)
    try:
        for command in commands:
            kind = command[2]
            assert main([*substitute(command), "--dry_run", f"hub/{kind}"]) == 0
            exported[kind] = work / "hub" / kind
    finally:
        os.chdir(previous)
    assert sorted(exported) == sorted(hub.ARTEFACTS)
    cache = root / "hf-cache"
    repos = {"model": MODEL_REPO, "keys": KEYS_REPO, "metric": METRIC_REPO, "space": SPACE_REPO}
    for kind, folder in exported.items():
        hub_cache_layout(cache, repos[kind], folder, repo_type=hub.REPO_TYPE_OF[kind], commit=COMMITS[kind])
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "HF_HUB_CACHE")}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", HF_HUB_CACHE=str(cache), HF_HOME=str(root / "hf-home"))
    return SimpleNamespace(
        root=root, work=work, model_dir=model_dir, key_dir=key_dir, exported=exported, cache=cache, env=env,
        commands=commands, python=python,
    )  # fmt: skip


HUB_USER = HIDE_OUR_PACKAGES + textwrap.dedent(
    """
    import json, sys
    import datasets, evaluate, torch
    from huggingface_hub import hf_hub_download, snapshot_download
    from transformers import AutoModel, AutoProcessor

    model_repo, keys_repo, metric_repo, model_sha, barcode, out = sys.argv[1:7]
    report = {}
    for revision in (None, model_sha):
        model = AutoModel.from_pretrained(model_repo, revision=revision, trust_remote_code=True).eval()
        processor = AutoProcessor.from_pretrained(model_repo, revision=revision, trust_remote_code=True)
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        inputs = processor(dna=[barcode], text=["Diptera Sciaridae Bradysia Bradysia impatiens"])
        report[str(revision)] = {
            "dna_tokenizer": type(processor.dna_tokenizer).__name__,
            "dna_ids": inputs["dna_input_ids"][0].tolist(),
        }
        with torch.no_grad():
            output = model(**inputs)
        torch.save({"dna": output.dna_embeds, "text": output.text_embeds}, f"{out}/hub-{revision}.pt")
    # Offline, datasets and evaluate look nothing up by repo id; they load the cached repository folder.
    records = datasets.load_dataset(snapshot_download(keys_repo, repo_type="dataset"), split="keys")
    report["records"] = {"count": len(records), "processids": list(records["processid"]), "features": sorted(records.features)}
    report["image_size"] = list(records[0]["image"].size)
    script = hf_hub_download(metric_repo, metric_repo.split("/")[1] + ".py", repo_type="space")
    metric = evaluate.load(script)
    row = {"order": ["O", "O"], "family": ["F", "F"], "genus": ["G", "H"], "species": ["G a", "H b"]}
    truth = {"order": "O", "family": "F", "genus": "H", "species": "H b"}
    report["metric"] = metric.compute(predictions=[row], references=[truth], is_unseen=[False], k_list=[1, 2])
    print(json.dumps(report))
    """
)


def test_hub_user_loads_model_processor_records_and_metric_by_repo_id(published):
    """The hub-cache bug: by repo id the processor used to load the TEXT tokenizer for DNA (3 ids, not 133)."""
    import torch

    from modeling_bioscanclip import BioscanClipModel, BioscanClipProcessor

    report = run_hub_user(
        HUB_USER, published.env, published.root, MODEL_REPO, KEYS_REPO, METRIC_REPO, COMMITS["model"],
        BARCODE_660, str(published.root),
    )  # fmt: skip
    processor = BioscanClipProcessor.from_pretrained(published.model_dir)
    model = BioscanClipModel.from_pretrained(published.model_dir).eval()
    inputs = processor(dna=[BARCODE_660], text=["Diptera Sciaridae Bradysia Bradysia impatiens"])
    with torch.no_grad():
        by_path = model(**inputs)
    for revision in ("None", COMMITS["model"]):
        assert report[revision]["dna_tokenizer"] == "BioscanDnaTokenizer"
        assert len(report[revision]["dna_ids"]) == 133  # 660 nt in 5-mers plus the prefix token
        assert report[revision]["dna_ids"] == inputs["dna_input_ids"][0].tolist()
        from_hub = torch.load(published.root / f"hub-{revision}.pt", weights_only=True)
        assert torch.equal(from_hub["dna"], by_path.dna_embeds) and torch.equal(from_hub["text"], by_path.text_embeds)
    from bioscan_clip.identification.key_folder import key_records

    records = key_records(published.key_dir)
    assert report["records"]["count"] == len(records) == 20
    assert report["records"]["processids"] == list(records["processid"])
    assert {"image", "dna_barcode", "species"} <= set(report["records"]["features"]) and report["image_size"][0] > 0
    assert report["metric"]["seen/genus/micro/top1"] == 0.0 and report["metric"]["seen/genus/micro/top2"] == 1.0


def test_the_readme_python_loads_a_colleagues_library_by_repo_id(published):
    """The README's Python block, in a fresh offline process: Identifier.from_pretrained by repo id and revision."""
    from bioscan_clip.identification.identifier import Identifier

    _, python = readme_walkthrough()
    assert "<keys-commit-sha>" in python
    script = python.replace("<keys-commit-sha>", COMMITS["keys"]) + textwrap.dedent(
        """
        import json
        print(json.dumps({"labels": [rank.label for rank in answer.ranks], "model": str(identifier.model.name_or_path),
                          "keys": len(identifier.records)}))
        """
    )
    report = run_hub_user(script, published.env, published.root)
    barcode = re.search(r'barcodes=\["([ACGT]+)"\]', python).group(1)
    [expected] = Identifier.load(published.model_dir, published.key_dir).identify(barcodes=[barcode])
    assert report["labels"] == [rank.label for rank in expected.ranks]
    assert report["keys"] == 20
    # The model named (and pinned) by the library, from the cache.
    assert f"models--{MODEL_REPO.replace('/', '--')}/snapshots/{COMMITS['model']}" in report["model"]


def test_key_library_repo_holds_the_key_folder_verbatim(published):
    from bioscan_clip.identification.key_folder import verify_key_folder

    keys = published.exported["keys"]
    for name in hub.repo_files(published.key_dir):
        assert (keys / "keys" / name).read_bytes() == (published.key_dir / name).read_bytes(), name
    verify_key_folder(keys / "keys")
    library = json.loads((keys / hub.KEY_LIBRARY_FILE).read_text())
    assert library["model"] == {"repo_id": MODEL_REPO, "revision": COMMITS["model"]} and library["count"] == 20
    card = (keys / "README.md").read_text()
    assert "license: mit" in card and "20 key records" in card and "mini-BIOSCAN, generated (synthetic)" in card
    assert "path: data/keys-*.parquet" in card


def test_model_repo_card_and_files(published, tmp_path):
    model = published.exported["model"]
    assert (model / "model.safetensors").is_file() and (model / "dna_tokenizer" / "vocab.json").is_file()
    assert (model / "processing_bioscanclip.py").is_file() and (model / "tokenization_dna.py").is_file()
    card = (model / "README.md").read_text()
    assert card.startswith("---\n") and "library_name: transformers" in card
    # --results: evaluate's results.json becomes the card's model-index, through the card code evaluate uses.
    results = {"image->image": {f"{g}/species/macro/top1": v for g, v in (("seen", 0.5), ("unseen", 0.25))}}
    (tmp_path / "results.json").write_text(json.dumps({"dataset": "mini", "split": "test", "results": results}))
    out = tmp_path / "model-repo"
    argv = ["push", "model", "--model", str(published.model_dir), "--results", str(tmp_path / "results.json")]
    assert main([*argv, "--repo_id", MODEL_REPO, "--dry_run", str(out)]) == 0
    card = (out / "README.md").read_text()
    assert "model-index:" in card and "value: 50.0\n" in card and "value: 25.0\n" in card
    assert card.count("library_name: transformers") == 1 and "| image->image | species | 50.0 | 25.0 |" in card


def test_metric_repo_is_self_contained(published):
    metric = published.exported["metric"]
    assert hub.imported_packages(metric / "taxonomic_retrieval.py") & set(hub.OUR_PACKAGES) == set()
    front = (metric / "README.md").read_text().split("---")[1]
    assert "sdk: gradio" in front and "app_file: app.py" in front and (metric / "app.py").is_file()


def test_exported_space_names_the_repos_and_pins_this_package(published):
    space = published.exported["space"]
    front = (space / "README.md").read_text().split("---")[1]
    assert f"datasets:\n- {KEYS_REPO}" in front and f"models:\n- {MODEL_REPO}" in front
    assert "app_file: app.py" in front
    lines = [line for line in (space / "requirements.txt").read_text().splitlines() if line and line[0] not in "#-"]
    assert lines == [f"bioscan-clip=={hub.package_version()}"]


def _load_app(folder: Path):
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"space_app_{folder.name}", folder / "app.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_space_without_repos_shows_a_setup_page(tmp_path, monkeypatch):
    for name in ("BIOSCAN_CLIP_KEYS", "BIOSCAN_CLIP_MODEL"):
        monkeypatch.delenv(name, raising=False)
    folder = hub.export_space(tmp_path / "space", repo_id=SPACE_REPO)
    app = _load_app(folder)
    assert app.space_repos()["keys"] is None
    page = app.build_space()
    text = json.dumps(page.config)
    assert "not set up yet" in text and "BIOSCAN_CLIP_KEYS" in text
    monkeypatch.setenv("BIOSCAN_CLIP_KEYS", KEYS_REPO)  # a variable wins over the (empty) front matter
    assert app.space_repos()["keys"] == KEYS_REPO


class RecordingTransport:
    """Stands in for the Hub's HTTP endpoints behind HfApi.create_repo / create_commit; records what they get."""

    def __init__(self) -> None:
        self.repos: list[dict] = []
        self.commits: list[dict] = []

    def install(self, monkeypatch) -> None:
        import huggingface_hub

        def create_repo(api, repo_id, **kwargs):
            self.repos.append({"repo_id": repo_id, **kwargs})
            return f"https://huggingface.co/{repo_id}"

        def create_commit(api, repo_id, operations, **kwargs):
            files = {}
            for operation in operations:
                assert isinstance(operation, huggingface_hub.CommitOperationAdd), operation
                files[operation.path_in_repo] = Path(operation.path_or_fileobj).read_bytes()
            self.commits.append({"repo_id": repo_id, "files": files, **kwargs})
            oid = hashlib.sha1(repr(sorted(files)).encode()).hexdigest()
            return SimpleNamespace(oid=oid, commit_url=f"https://huggingface.co/{repo_id}/commit/{oid}")

        monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
        monkeypatch.setattr(huggingface_hub.HfApi, "create_commit", create_commit)


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {name: (folder / name).read_bytes() for name in hub.repo_files(folder)}


def test_push_uploads_exactly_the_exported_files(published, monkeypatch, capsys):
    transport = RecordingTransport()
    transport.install(monkeypatch)
    monkeypatch.chdir(published.work)
    for command in published.commands:
        assert main([*substitute(command), "--revision", "main"]) == 0
    assert [commit["repo_id"] for commit in transport.commits] == [MODEL_REPO, KEYS_REPO, METRIC_REPO, SPACE_REPO]
    for commit, kind in zip(transport.commits, ("model", "keys", "metric", "space"), strict=True):
        assert commit["repo_type"] == hub.REPO_TYPE_OF[kind] and commit["revision"] == "main"
        assert commit["files"] == folder_bytes(published.exported[kind]), kind
    assert [repo.get("space_sdk") for repo in transport.repos] == [None, None, "gradio", "gradio"]
    assert "pushed space to space repository my-lab/bioscan-clip-demo: commit" in capsys.readouterr().out


def test_train_push_to_hub_uses_the_same_export(published, monkeypatch):
    """train_accelerate.py --push_to_hub calls hub.push_model_folder: the same files as `push model`."""
    transport = RecordingTransport()
    transport.install(monkeypatch)
    hub.push_model_folder(published.model_dir, MODEL_REPO)
    [commit] = transport.commits
    assert commit["repo_type"] == "model" and commit["files"] == folder_bytes(published.exported["model"])
    source = (REPO_ROOT / "bioscan_clip" / "apps" / "train.py").read_text()
    assert "push_model_folder(result.model_dir, config.hub_model_id)" in source


def test_processor_refuses_to_fall_back_when_the_dna_tokenizer_is_missing(published, tmp_path):
    from modeling_bioscanclip import BioscanClipProcessor

    cache = tmp_path / "cache"
    snapshot = hub_cache_layout(cache, "my-lab/broken", published.exported["model"], repo_type="model",
                                    commit=COMMITS["model"])  # fmt: skip
    (snapshot / "dna_tokenizer" / "vocab.json").unlink()
    with pytest.raises(OSError, match=r"cannot load the DNA tokenizer from dna_tokenizer/.*refusing to fall back"):
        BioscanClipProcessor.from_pretrained("my-lab/broken", cache_dir=str(cache))
    local = tmp_path / "local"
    local.mkdir()
    for name, data in folder_bytes(published.exported["model"]).items():
        if not name.startswith("dna_tokenizer/"):
            (local / name).parent.mkdir(parents=True, exist_ok=True)
            (local / name).write_bytes(data)
    with pytest.raises(OSError, match="refusing to fall back"):
        BioscanClipProcessor.from_pretrained(local)


def test_export_refusals(published, tmp_path, capsys):
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    for name, data in folder_bytes(published.model_dir).items():
        (pickled / name).parent.mkdir(parents=True, exist_ok=True)
        (pickled / name).write_bytes(data)
    (pickled / "pytorch_model.bin").write_bytes(b"\x80\x04")
    assert main(["push", "model", "--model", str(pickled), "--repo_id", MODEL_REPO, "--dry_run", "x"]) == 2
    assert "pytorch_model.bin" in capsys.readouterr().err
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "file").write_text("keep me")
    assert main(["push", "metric", "--repo_id", METRIC_REPO, "--dry_run", str(busy)]) == 2
    assert "not an empty folder" in capsys.readouterr().err and (busy / "file").read_text() == "keep me"
    assert main(["push", "metric", "--repo_id", "no-slash", "--dry_run", str(tmp_path / "m")]) == 2
    assert "owner/name" in capsys.readouterr().err
    assert main(["push", "keys", "--keys", str(published.key_dir), "--repo_id", KEYS_REPO]) == 2
    assert "needs --model_repo" in capsys.readouterr().err
