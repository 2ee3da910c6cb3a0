"""The one resolver (bioscan_clip.resolve): a local folder or a Hub repository, and every loader that goes through it.

A local folder never reaches the Hub; a name that is neither is refused in one line. The Hub side runs offline
against a real ``huggingface_hub`` cache layout (``models--lab--model`` and ``datasets--lab--keys``, as
``snapshot_download`` leaves them) of a model and a key library exported by :mod:`bioscan_clip.apps.publish`:
:meth:`Identifier.from_pretrained`, :meth:`Identifier.load`, :func:`resolve_key_folder` and the demo all find the
published key library by repository id.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
from hub_cache import hub_cache_layout

from bioscan_clip.resolve import load_pretrained, resolve_folder
from modeling_bioscanclip import BioscanInputError

MODEL_REPO, KEYS_REPO, TAMPERED_REPO = "lab/model", "lab/keys", "lab/tampered-keys"
COMMITS = {name: hashlib.sha1(name.encode()).hexdigest() for name in (MODEL_REPO, KEYS_REPO, TAMPERED_REPO)}
BARCODE = ("ACGTTGCAAGTCCA" * 48)[:658]


def same(found: str | Path, expected: Path) -> bool:
    """The same folder (the cache may sit behind a link, e.g. /tmp)."""
    return Path(found).resolve() == expected.resolve()


def one_line_refusal(excinfo: pytest.ExceptionInfo) -> str:
    message = str(excinfo.value)
    assert message and "\n" not in message, message
    return message


@pytest.fixture
def no_hub(monkeypatch):
    """Any attempt to reach the Hub (or its cache) fails the test."""
    import huggingface_hub

    def refuse(*args, **kwargs):
        raise AssertionError(f"the Hub was asked for {args} {kwargs}")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", refuse)


# ---- (a) local folders and refusals ----------------------------------------------------------------------------------
def test_a_local_folder_never_touches_the_hub(no_hub, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (tmp_path / "owner" / "name" / "sub").mkdir(parents=True)
    assert resolve_folder(tmp_path) == tmp_path
    assert resolve_folder(str(tmp_path), repo_type="dataset", revision="main") == tmp_path  # revision ignored
    assert resolve_folder(tmp_path / "owner" / "name", subfolder="sub") == tmp_path / "owner" / "name" / "sub"
    monkeypatch.chdir(tmp_path)  # a relative folder that reads like a repository id is still the folder
    assert resolve_folder("owner/name") == Path("owner/name")
    with pytest.raises(BioscanInputError) as excinfo:
        resolve_folder(tmp_path, subfolder="missing")
    assert "has no folder 'missing'" in one_line_refusal(excinfo)


@pytest.mark.parametrize("name", ["just-a-name", "./not/here", "/not/here/either", "~/nowhere-at-all", "two words/x"])
def test_a_name_neither_a_folder_nor_a_repo_id_is_refused_in_one_line(name, no_hub, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(BioscanInputError) as excinfo:
        resolve_folder(name)
    assert "no such folder, and not a Hub repository id" in one_line_refusal(excinfo)


@pytest.mark.parametrize("name", ["owner/name/../x", "owner/name/sub/../../x", "owner/name/./x", "owner/../x"])
def test_a_repo_id_that_climbs_out_is_refused(name, no_hub, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(BioscanInputError) as excinfo:
        resolve_folder(name, repo_type="dataset")
    assert name in one_line_refusal(excinfo)


def test_an_unknown_repo_type_is_refused(no_hub, tmp_path):
    with pytest.raises(BioscanInputError) as excinfo:
        resolve_folder(tmp_path, repo_type="bucket")
    assert "repo_type must be one of" in one_line_refusal(excinfo)


# ---- (b) a model and a key library in a Hub cache ------------------------------------------------------------------
@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """An untrained tiny model and its key library, exported as `bioscan-clip push` does and laid out in a fresh
    Hub cache (with a tampered copy of the library whose ``keys`` points out of its repository)."""
    from demo_folders import write_untrained_demo_folders

    from bioscan_clip.apps.publish import KEY_LIBRARY_FILE, export_keys, export_model

    root = tmp_path_factory.mktemp("resolve")
    model_dir, key_dir = write_untrained_demo_folders(root / "built", keys=20)
    exported_model = export_model(model_dir, root / "export" / "model", repo_id=MODEL_REPO)
    exported_keys = export_keys(
        key_dir, root / "export" / "keys", repo_id=KEYS_REPO, model_repo=MODEL_REPO, model_revision=COMMITS[MODEL_REPO]
    )
    tampered = root / "export" / "tampered"
    shutil.copytree(exported_keys, tampered)
    library = json.loads((tampered / KEY_LIBRARY_FILE).read_text())
    (tampered / KEY_LIBRARY_FILE).write_text(json.dumps({**library, "keys": "../../elsewhere"}))
    cache = root / "hf-cache"
    snapshots = {
        MODEL_REPO: hub_cache_layout(cache, MODEL_REPO, exported_model, repo_type="model", commit=COMMITS[MODEL_REPO]),
        KEYS_REPO: hub_cache_layout(cache, KEYS_REPO, exported_keys, repo_type="dataset", commit=COMMITS[KEYS_REPO]),
        TAMPERED_REPO: hub_cache_layout(
            cache, TAMPERED_REPO, tampered, repo_type="dataset", commit=COMMITS[TAMPERED_REPO]
        ),
    }
    (root / "elsewhere").mkdir()  # what the tampered library points at, outside its repository
    return SimpleNamespace(root=root, model_dir=model_dir, key_dir=key_dir, cache=cache, snapshots=snapshots)


@pytest.fixture
def offline_cache(published, monkeypatch, tmp_path):
    """The published cache as this process's Hub cache, offline (huggingface_hub reads its constants at import)."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(published.cache))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(published.cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.chdir(tmp_path)  # no folder here is named like a repository
    return published


def expected_answer(published):
    from bioscan_clip.identification.identifier import Identifier

    [answer] = Identifier.load(published.model_dir, published.key_dir).identify(barcodes=[BARCODE])
    return answer


def test_identifier_from_pretrained_finds_the_published_library(offline_cache):
    from bioscan_clip.identification.identifier import Identifier

    identifier = Identifier.from_pretrained(KEYS_REPO)
    assert len(identifier.records) == 20
    # The model the library names, at the revision it pins, from the cache.
    assert same(identifier.model.name_or_path, offline_cache.snapshots[MODEL_REPO])
    [answer] = identifier.identify(barcodes=[BARCODE])
    assert answer.ranks == expected_answer(offline_cache).ranks


def test_identifier_load_takes_a_model_id_and_a_key_library_id(offline_cache):
    from bioscan_clip.identification.identifier import Identifier

    identifier = Identifier.load(MODEL_REPO, KEYS_REPO)
    assert len(identifier.records) == 20 and not identifier.model.training
    assert same(identifier.model.name_or_path, offline_cache.snapshots[MODEL_REPO])
    [answer] = identifier.identify(barcodes=[BARCODE])
    assert answer.ranks == expected_answer(offline_cache).ranks
    pinned = Identifier.load(
        MODEL_REPO, KEYS_REPO, model_revision=COMMITS[MODEL_REPO], keys_revision=COMMITS[KEYS_REPO]
    )
    assert len(pinned.records) == 20


def test_resolve_key_folder_finds_the_library_keys(offline_cache):
    from bioscan_clip.identification.key_folder import verify_key_folder
    from bioscan_clip.identification.library import resolve_key_folder

    key_dir = resolve_key_folder(KEYS_REPO)
    assert same(key_dir, offline_cache.snapshots[KEYS_REPO] / "keys")
    assert verify_key_folder(key_dir)["count"] == 20
    assert resolve_key_folder(f"{KEYS_REPO}/keys") == key_dir  # the key folder inside it, by subfolder
    assert resolve_key_folder(KEYS_REPO, revision=COMMITS[KEYS_REPO]) == key_dir


def test_the_demo_resolves_the_published_model_and_library(offline_cache, monkeypatch):
    from bioscan_clip.apps.commands import demo

    for name in ("BIOSCAN_CLIP_REVISION", "BIOSCAN_CLIP_KEYS_REPO_TYPE"):
        monkeypatch.delenv(name, raising=False)
    args = demo.add_arguments(argparse.ArgumentParser()).parse_args(["--model", MODEL_REPO, "--keys", KEYS_REPO])
    model_dir, key_dir = demo.resolve_demo_folders(args)
    assert same(model_dir, offline_cache.snapshots[MODEL_REPO])
    assert same(key_dir, offline_cache.snapshots[KEYS_REPO] / "keys")


def test_load_pretrained_by_repo_id_is_the_saved_model(offline_cache):
    import torch

    model, processor = load_pretrained(MODEL_REPO)
    reference, _ = load_pretrained(offline_cache.model_dir)
    assert not model.training and type(processor).__name__ == "BioscanClipProcessor"
    for (name, value), (_, expected) in zip(model.state_dict().items(), reference.state_dict().items(), strict=True):
        assert torch.equal(value, expected), name


def test_a_repository_missing_from_the_offline_cache_is_one_line(offline_cache):
    from bioscan_clip.identification.identifier import Identifier

    with pytest.raises(BioscanInputError) as excinfo:
        Identifier.load("lab/absent-model", KEYS_REPO)
    assert "lab/absent-model: no such folder, and no model repository lab/absent-model" in one_line_refusal(excinfo)
    with pytest.raises(BioscanInputError) as excinfo:
        resolve_folder(KEYS_REPO, repo_type="dataset", revision="f" * 40)
    assert f"at revision {'f' * 40}" in one_line_refusal(excinfo)


# ---- (c) a key library that points out of its repository ----------------------------------------------------------
def test_a_library_whose_keys_leave_the_repository_is_refused(offline_cache):
    from bioscan_clip.identification.identifier import Identifier
    from bioscan_clip.identification.library import resolve_key_folder, resolve_key_library

    for load in (
        lambda: resolve_key_folder(TAMPERED_REPO),
        lambda: resolve_key_library(TAMPERED_REPO),
        lambda: Identifier.from_pretrained(TAMPERED_REPO),
        lambda: Identifier.load(MODEL_REPO, TAMPERED_REPO),
        lambda: resolve_key_folder(offline_cache.snapshots[TAMPERED_REPO]),  # the same library as a local folder
    ):
        with pytest.raises(BioscanInputError) as excinfo:
            load()
        message = one_line_refusal(excinfo)
        assert "'../../elsewhere' points outside" in message and "bioscan_clip_keys.json" in message
