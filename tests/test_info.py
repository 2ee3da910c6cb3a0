"""`bioscan-clip info`: what a key library or a model holds, checked against the files and objects themselves."""

from __future__ import annotations

import importlib.metadata
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from hub_cache import hub_cache_layout

from bioscan_clip.apps.cli import main
from bioscan_clip.identification.key_folder import config_hash, key_records
from bioscan_clip.retrieval.key_index import KeyIndex
from modeling_bioscanclip import BioscanClipModel
from modeling_bioscanclip.constants_bioscanclip import TAXONOMIC_RANKS

KEYS_REPO = "my-lab/info-keys"
MODEL_REPO = "my-lab/info-model"
COMMIT = "c" * 40


def info(capsys, *argv: str) -> dict:
    capsys.readouterr()
    assert main(["info", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def refusal(capsys, *argv: str) -> str:
    capsys.readouterr()
    assert main(["info", *argv]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and len(captured.err.strip().splitlines()) == 1, captured.err
    return captured.err.strip()


@pytest.fixture(scope="module")
def key_folder(tmp_path_factory, trained_tiny, mini_dir, mini_cache):
    out = tmp_path_factory.mktemp("info-keys") / "keys"
    data = ["--source", "mini", "--data_dir", str(mini_dir), "--cache_dir", str(mini_cache)]
    assert main(["index", "--model", str(trained_tiny), *data, "--out", str(out)]) == 0
    return out


def expected_counts(key_dir: Path) -> dict:
    """The counts info must give, computed here from the decoded records, one Python value at a time."""
    records = key_records(key_dir)
    rows = records.to_list()
    ranks = {}
    for rank in TAXONOMIC_RANKS:
        labels = [row.get(rank) for row in rows]
        ranks[rank] = {
            "distinct": len({v for v in labels if v is not None}),
            "labelled": sum(v is not None for v in labels),
        }
    return {
        "count": len(rows),
        "with_image": sum(row.get("image") is not None for row in rows),
        "with_barcode": sum(bool(row.get("dna_barcode")) for row in rows),
        "ranks": ranks,
    }


def test_info_describes_a_key_folder(key_folder, trained_tiny, capsys):
    before = datetime.now(timezone.utc)
    described = info(capsys, "--keys", str(key_folder))
    model = BioscanClipModel.from_pretrained(trained_tiny)
    assert described["model"]["config_sha256"] == config_hash(model)
    assert described["model"]["name_or_path"] == str(trained_tiny)
    assert described["records"] == expected_counts(key_folder)
    assert described["records"]["with_image"] == described["records"]["count"] > 0
    manifest = json.loads((key_folder / "key_folder.json").read_text())
    assert sorted(described["features"]) == manifest["features"] and "image" in described["features"]
    for name, summary in described["features"].items():
        index = KeyIndex.load(key_folder / name)
        assert (summary["ntotal"], summary["dim"]) == (index.index.ntotal, index.index.d)
        assert summary["index_type"] == "flat"
    assert described["features"]["image"]["dim"] == model.config.projection_dim
    calibration = json.loads((key_folder / "calibration.json").read_text())
    assert described["calibration"]["method"] == calibration["method"]
    for pair, thresholds in calibration["thresholds"].items():
        assert {
            rank: entry["threshold"] for rank, entry in described["calibration"]["pairs"][pair].items()
        } == thresholds
    assert described["calibration"]["warnings"] == calibration["warnings"]
    assert described["bioscan_clip_version"] == importlib.metadata.version("bioscan-clip")
    built = datetime.fromisoformat(described["built_at"])
    assert before - timedelta(hours=1) < built <= datetime.now(timezone.utc)
    assert described["size_bytes"] == sum(p.stat().st_size for p in key_folder.rglob("*") if p.is_file())
    # The screen says the same in one table.
    capsys.readouterr()
    assert main(["info", "--keys", str(key_folder)]) == 0
    screen = capsys.readouterr().out
    counts = described["records"]
    assert f"{counts['count']} keys, {counts['with_image']} with an image" in screen
    assert f"{counts['ranks']['species']['distinct']} species" in screen
    assert f"config sha256 {config_hash(model)[:12]}" in screen and "image->image" in screen
    assert len(screen.splitlines()) < 40  # one screen


def test_info_of_a_model_free_library_built_from_a_real_bold_export(tmp_path, realdata, capsys):
    keys = tmp_path / "keys"
    data = ["--source", "bold", "--partition", "none", "--data_dir", str(realdata / "coi_fulltax_sample.tsv"),
            "--cache_dir", str(tmp_path / "cache")]  # fmt: skip
    assert main(["index", *data, "--out", str(keys)]) == 0
    described = info(capsys, "--keys", str(keys))
    assert described["model"] is None and list(described["features"]) == ["kmer"]
    assert described["records"] == expected_counts(keys)
    assert described["records"]["with_image"] == 0 and described["records"]["with_barcode"] > 0
    assert described["calibration"]["method"].startswith("leave-one-out over the keys")
    assert set(described["calibration"]["pairs"]) == {"dna->dna (alignment identity)"}
    assert main(["info", "--keys", str(keys)]) == 0
    assert "model-free" in capsys.readouterr().out


def test_info_resolves_a_key_library_and_a_model_from_the_hub_cache(
    key_folder, trained_tiny, tmp_path, monkeypatch, capsys
):
    """Names resolve as `predict --keys/--model` resolve them: a Hub repository found in the cache, offline."""
    import huggingface_hub.constants

    from bioscan_clip.apps.publish import export_keys, export_model

    exported_keys = export_keys(key_folder, tmp_path / "export-keys", repo_id=KEYS_REPO, model_repo=MODEL_REPO,
                                model_revision=COMMIT)  # fmt: skip
    exported_model = export_model(trained_tiny, tmp_path / "export-model", repo_id=MODEL_REPO)
    cache = tmp_path / "hf-cache"
    hub_cache_layout(cache, KEYS_REPO, exported_keys, repo_type="dataset", commit=COMMIT)
    hub_cache_layout(cache, MODEL_REPO, exported_model, repo_type="model", commit=COMMIT)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.chdir(tmp_path)  # no folder here is named like a repository
    described = info(capsys, "--keys", KEYS_REPO)
    assert described["library"] == {"model_repo": MODEL_REPO, "model_revision": COMMIT}
    assert described["records"] == expected_counts(key_folder)
    assert described["manifest_sha256"] == json.loads((key_folder / "key_folder.json").read_text())["manifest_sha256"]
    model = info(capsys, "--model", MODEL_REPO, "--revision", COMMIT)
    assert model["towers"].keys() == {"image", "dna", "text"} and "snapshots" in model["folder"]
    assert "no dataset repository my-lab/absent" in refusal(capsys, "--keys", "my-lab/absent")


def test_info_describes_a_model(trained_tiny, capsys):
    described = info(capsys, "--model", str(trained_tiny))
    model = BioscanClipModel.from_pretrained(trained_tiny)
    assert described["parameters"] == sum(p.numel() for p in model.state_dict().values())
    for modality, tower in described["towers"].items():
        owned = [f"{modality}_model.", f"{modality}_projection."]
        expected = sum(p.numel() for name, p in model.state_dict().items() if name.startswith(tuple(owned)))
        assert tower["parameters"] == expected > 0
    assert described["towers"]["image"]["architecture"] == model.config.image_config.model_type
    assert described["projection_dim"] == model.config.projection_dim
    dna = described["tokenisation"]["dna"]
    assert (dna["kmer_size"], dna["stride"], dna["max_nucleotides"]) == (5, 5, 660)
    assert dna["reading_frames"] == model.config.dna_frames
    # Training writes its configuration beside final_model/: the run is described from it.
    train_config = json.loads((trained_tiny.parent / "train_config.json").read_text())
    assert described["preset"] == train_config["preset"] == "tiny"
    assert described["training"]["epochs"] == train_config["epochs"] and described["training"]["global_step"] > 0
    assert main(["info", "--model", str(trained_tiny)]) == 0
    screen = capsys.readouterr().out
    assert f"{described['parameters']:,}" in screen and "5-mers" in screen and "preset tiny" in screen


def test_info_refuses_what_is_not_a_key_library_or_a_model_in_one_line(tmp_path, key_folder, trained_tiny, capsys):
    stray = tmp_path / "stray"
    stray.mkdir()
    (stray / "notes.txt").write_text("not a key folder")
    assert "not a key library" in refusal(capsys, "--keys", str(stray))
    assert "not a saved model folder (no config.json)" in refusal(capsys, "--model", str(key_folder))
    assert "not a key library" in refusal(capsys, "--keys", str(trained_tiny))
    damaged = tmp_path / "damaged"
    import shutil

    shutil.copytree(key_folder, damaged)
    (damaged / "calibration.json").write_text("{}")
    assert "calibration.json" in refusal(capsys, "--keys", str(damaged))
