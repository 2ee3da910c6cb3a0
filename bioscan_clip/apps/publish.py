"""Publishing on the Hugging Face Hub: the model, the key library, the metric and the Space, each written as the
repository it becomes (``export_*``) and uploaded in one commit (:func:`publish`).

What each repository holds (README "Publish your model and library"):

- **model** (model repo): ``model.safetensors``, ``config.json``, the processor (``processor_config.json``, the text
  tokenizer at the root, the DNA tokenizer in ``dna_tokenizer/``), the remote code (``*_bioscanclip.py``,
  ``tokenization_dna.py``) and a model card whose ``model-index`` comes from ``evaluate`` (:mod:`bioscan_clip.evaluation.reports`);
  loads with ``AutoModel``/``AutoProcessor.from_pretrained(repo_id, trust_remote_code=True)``.
- **keys** (dataset repo): the key folder verbatim under ``keys/`` (its manifest verifies every file), the key records
  as Parquet under ``data/`` (``datasets.load_dataset(repo_id)``), :data:`KEY_LIBRARY_FILE` naming the model repo and
  revision the keys were embedded with, and a dataset card (source, licence, counts); loads with
  :meth:`bioscan_clip.identification.Identifier.from_pretrained`.
- **metric** (Space repo, as evaluate keeps metrics): ``taxonomic_retrieval.py`` (imports nothing of ours) and its card.
- **space** (Space repo): ``app.py``, ``requirements.txt`` installing this package (pinned version, or the wheel
  shipped beside it) and a README whose front matter names the model and key repositories.

Publishing sits above the library: it reads key folders (:mod:`bioscan_clip.identification.key_folder`)
and resolves nothing itself. Only :func:`publish` talks to the network (``HfApi.create_repo`` and ``create_commit``); everything else is local.
"""

from __future__ import annotations

import ast
import importlib.metadata
import json
import logging
import os
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bioscan_clip.evaluation.metric import METRIC_DIR
from bioscan_clip.evaluation.reports import ensure_card_metadata, update_model_card
from bioscan_clip.identification.key_folder import KEY_MANIFEST, key_folder_snapshot, key_records, verify_key_folder
from bioscan_clip.identification.library import KEY_LIBRARY_FILE, KEY_LIBRARY_FORMAT, KEYS_SUBFOLDER
from bioscan_clip.resolve import check_repo_id
from modeling_bioscanclip import BioscanInputError
from modeling_bioscanclip.constants_bioscanclip import TAXONOMIC_RANKS

logger = logging.getLogger(__name__)

ARTEFACTS = ("model", "keys", "metric", "space")
REPO_TYPE_OF = {"model": "model", "keys": "dataset", "metric": "space", "space": "space"}
PACKAGE = "bioscan-clip"
RECORDS_PARQUET = "data/keys-00000-of-00001.parquet"
METRIC_NAME = "taxonomic_retrieval"
OUR_PACKAGES = ("bioscan_clip", "modeling_bioscanclip", "dataset_scripts")
# Weight formats that unpickle (run code) when loaded: never published.
PICKLED_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")


def package_version() -> str:
    return importlib.metadata.version(PACKAGE)


def _fresh_out(out: str | os.PathLike) -> Path:
    """The export folder: created, or reused when empty; anything else is refused (nothing is half-replaced)."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise BioscanInputError(f"{out}: exists and is not an empty folder; choose another export folder")
    out.mkdir(parents=True, exist_ok=True)
    return out


def repo_files(folder: str | os.PathLike) -> list[str]:
    """Every file of an exported folder, as its path in the repository (POSIX, sorted)."""
    folder = Path(folder)
    return sorted(path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file())


# ---- model ----------------------------------------------------------------------------------------------------------
def export_model(
    model_dir: str | os.PathLike,
    out: str | os.PathLike,
    *,
    repo_id: str,
    evaluation: Mapping[str, Any] | None = None,
    card: str | os.PathLike | None = None,
) -> Path:
    """The model repository: the saved folder's files (safetensors only) plus a model card.

    The card starts from ``card`` (a template such as the repository's ``model_card.md``), else the folder's
    ``README.md``, else a new one; ``evaluation`` (``evaluate``'s ``results.json``, :func:`read_results`) goes into
    its ``model-index`` and results table through the same :func:`update_model_card` that
    ``bioscan-clip evaluate --model_card`` uses, so no figure on the card is typed by hand.
    """
    check_repo_id(repo_id)
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise BioscanInputError(f"{model_dir}: not a saved model folder (no config.json)")
    if not (model_dir / "model.safetensors").is_file():
        raise BioscanInputError(f"{model_dir}: no model.safetensors; only safetensors weights are published")
    pickled = sorted(p.name for p in model_dir.rglob("*") if p.suffix in PICKLED_SUFFIXES)
    if pickled:
        raise BioscanInputError(f"{model_dir}: holds pickled files ({', '.join(pickled)}); refusing to publish them")
    config = json.loads((model_dir / "config.json").read_text())
    named = [("auto_map", entry) for entry in (config.get("auto_map") or {}).values()]
    named += [("custom_pipelines", entry.get("impl")) for entry in (config.get("custom_pipelines") or {}).values()]
    for field, entry in named:
        module = str(entry).split(".")[0]
        if not (model_dir / f"{module}.py").is_file():
            raise BioscanInputError(f"{model_dir}: config.json's {field} names {module}.py, which is missing")
    if not (model_dir / "dna_tokenizer" / "tokenizer_config.json").is_file():
        raise BioscanInputError(f"{model_dir}: no dna_tokenizer/tokenizer_config.json; save the processor with it")
    if card is not None and not Path(card).is_file():
        raise BioscanInputError(f"--card {card}: no such file")
    out = _fresh_out(out)
    for name in repo_files(model_dir):
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(model_dir / name, out / name)
    readme = out / "README.md"
    if card is not None:
        shutil.copyfile(card, readme)
    if evaluation:
        update_model_card(readme, evaluation, model_name=repo_id.split("/")[1])
    ensure_card_metadata(readme, model_name=repo_id.split("/")[1])
    return out


def read_results(path: str | os.PathLike) -> dict[str, Any]:
    """An ``evaluate`` ``results.json`` (dataset, split, query and key counts, ``results`` per pair)."""
    from bioscan_clip.safe_io import read_json

    summary = read_json(Path(path), "the evaluation results")
    if not isinstance(summary, dict) or not isinstance(summary.get("results"), dict):
        raise BioscanInputError(f"{path}: not a results.json written by `bioscan-clip evaluate` (no 'results')")
    return summary


# ---- keys -----------------------------------------------------------------------------------------------------------
def export_keys(
    key_dir: str | os.PathLike,
    out: str | os.PathLike,
    *,
    repo_id: str,
    model_repo: str,
    model_revision: str | None = None,
    source: str = "",
    license: str = "other",
) -> Path:
    """The key-library dataset repository: ``keys/`` (the key folder, byte for byte), ``data/`` (records as
    Parquet), :data:`KEY_LIBRARY_FILE` (the model to embed queries with) and the dataset card."""
    check_repo_id(repo_id)
    check_repo_id(model_repo)
    key_dir = Path(key_dir)
    with key_folder_snapshot(key_dir) as manifest:  # the build verified is the one copied, even during a rebuild
        records = key_records(key_dir)
        if records is None:
            raise BioscanInputError(f"{key_dir}: has no key records; rebuild it with `bioscan-clip index`")
        out = _fresh_out(out)
        for name in repo_files(key_dir):
            target = out / KEYS_SUBFOLDER / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(key_dir / name, target)
    verify_key_folder(out / KEYS_SUBFOLDER)  # the copy is what was built
    import datasets

    if "image" in records.column_names:  # the encoded bytes, stored in the Parquet file itself
        records = records.cast_column("image", datasets.Image())
    (out / "data").mkdir()
    records.to_parquet(str(out / RECORDS_PARQUET))
    library = {
        "format": KEY_LIBRARY_FORMAT,
        "format_version": 1,
        "keys": KEYS_SUBFOLDER,
        "model": {"repo_id": model_repo, "revision": model_revision},
        "count": len(records),
        "features": manifest.get("features", []),
    }
    (out / KEY_LIBRARY_FILE).write_text(json.dumps(library, indent=2) + "\n")
    (out / "README.md").write_text(
        _dataset_card(records, manifest, repo_id, model_repo, model_revision, source, license)
    )
    return out


def _dataset_card(
    records: Any, manifest: Mapping[str, Any], repo_id: str, model_repo: str, revision: str | None, source: str,
    license: str,
) -> str:  # fmt: skip
    count = len(records)
    species = len({s for s in records["species"] if s}) if "species" in records.column_names else 0
    processids = records["processid"] if "processid" in records.column_names else []
    synthetic = bool(processids) and all(str(p).startswith("MINI") for p in processids)
    source = source or ("the SYNTHETIC mini-BIOSCAN generated by `bioscan-clip synth`" if synthetic else "unstated")
    per_rank = ", ".join(
        f"{len({v for v in records[rank] if v})} {rank}" for rank in TAXONOMIC_RANKS if rank in records.column_names
    )
    licences = ""
    if "copyright_license" in records.column_names:
        licences = "; image licences in the records: " + ", ".join(
            sorted({str(v) for v in records["copyright_license"]})
        )
    pinned = f" at revision `{revision}`" if revision else ""
    size = "n<1K" if count < 1000 else "1K<n<10K" if count < 10_000 else "10K<n<100K" if count < 100_000 else "n>100K"
    return f"""---
license: {license}
pretty_name: BIOSCAN-CLIP key library {repo_id.split("/")[1]}
size_categories:
- {size}
tags:
- biodiversity
- dna-barcoding
- bioscan
- bioscan-clip
configs:
- config_name: default
  data_files:
  - split: keys
    path: data/keys-*.parquet
---

# BIOSCAN-CLIP key library `{repo_id}`

The labelled key specimens that [`{model_repo}`](https://huggingface.co/{model_repo}){pinned} identifies queries
against: {count} keys of {species} species ({per_rank}), indexed by {", ".join(manifest.get("features", []))}
embeddings ({manifest.get("index_type", "flat")} faiss indexes).

- **Source**: {source}.
- **Licence**: `{license}`{licences}.
- **Counts**: {count} key records, {species} species.

## Files

- `data/keys-00000-of-00001.parquet`: the key records (processid, image bytes, barcode, taxonomy);
  `datasets.load_dataset("{repo_id}", split="keys")`.
- `keys/`: the key folder as `bioscan-clip index` built it (one faiss index per feature, the records, the
  calibration of the confidence thresholds, `{KEY_MANIFEST}` with every file's sha256).
- `{KEY_LIBRARY_FILE}`: the model repository (and revision) the keys were embedded with.

## Use

```python
from bioscan_clip.identification import Identifier

identifier = Identifier.from_pretrained("{repo_id}")  # pin with revision="<commit sha>"
[answer] = identifier.identify(images=["specimen.jpg"], barcodes=["AACATTATATTTTATTTTTGG..."])
```
"""


# ---- metric ---------------------------------------------------------------------------------------------------------
def imported_packages(script: Path) -> set[str]:
    """Top-level names of the absolute imports of a Python file."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(script.read_text(), filename=str(script))):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


def export_metric(out: str | os.PathLike, *, repo_id: str) -> Path:
    """The metric repository (a Space, where evaluate keeps metrics): the script, its card and a small app."""
    check_repo_id(repo_id)
    script = METRIC_DIR / f"{METRIC_NAME}.py"
    ours = imported_packages(script) & set(OUR_PACKAGES)
    if ours:
        raise BioscanInputError(f"{script}: imports {sorted(ours)}; a published metric must be self-contained")
    out = _fresh_out(out)
    # evaluate.load("owner/name") fetches <name>.py from the repository.
    shutil.copyfile(script, out / f"{repo_id.split('/')[1]}.py")
    card = (METRIC_DIR / "README.md").read_text()
    front = re.match(r"^---\n(.*?)\n---\n", card, flags=re.S)
    body = card[front.end() :] if front else card
    yaml = front.group(1) if front else "title: Taxonomic Retrieval"
    for key, value in (("sdk", "gradio"), ("sdk_version", _gradio_version()), ("app_file", "app.py")):
        if not re.search(rf"(?m)^{key}:", yaml):
            yaml += f"\n{key}: {value}"
    (out / "README.md").write_text(f"---\n{yaml}\n---\n{body}")
    (out / "app.py").write_text(
        '"""The metric\'s Space page: its card (the metric itself is loaded with evaluate.load)."""\n\n'
        "from pathlib import Path\n\nimport gradio as gr\n\n"
        'card = Path(__file__).with_name("README.md").read_text().split("---", 2)[-1]\n'
        "with gr.Blocks() as demo:\n    gr.Markdown(card)\n\n"
        'if __name__ == "__main__":\n    demo.launch()\n'
    )
    (out / "requirements.txt").write_text(f"evaluate=={importlib.metadata.version('evaluate')}\ndatasets\nnumpy\n")
    return out


def _gradio_version() -> str:
    return importlib.metadata.version("gradio")


# ---- space ----------------------------------------------------------------------------------------------------------
def export_space(
    out: str | os.PathLike,
    *,
    repo_id: str,
    keys_repo: str | None = None,
    model_repo: str | None = None,
    wheel: str | os.PathLike | None = None,
) -> Path:
    """The Space repository: ``app.py``, ``requirements.txt`` and a README naming the model and key repositories.

    ``requirements.txt`` pins this package's version, or, with ``wheel``, installs the wheel shipped in the repo
    (for a version not on the package index). Without ``keys_repo`` the Space shows how to set it, not a crash.
    """
    check_repo_id(repo_id)
    for repo in (keys_repo, model_repo):
        if repo is not None:
            check_repo_id(repo)
    version = package_version()
    requirement = f"{PACKAGE}=={version}"
    if wheel is not None:
        wheel = Path(wheel)
        expected = f"bioscan_clip-{version}-"
        if not (wheel.is_file() and wheel.name.startswith(expected) and wheel.suffix == ".whl"):
            raise BioscanInputError(f"--wheel {wheel}: expected this version's wheel file ({expected}*.whl)")
    out = _fresh_out(out)
    if wheel is not None:
        shutil.copyfile(wheel, out / wheel.name)
        requirement = f"./{wheel.name}"
    source = space_source_dir()
    for name in ("app.py", "screenshot.png"):
        if (source / name).is_file():
            shutil.copyfile(source / name, out / name)
    lines = (source / "requirements.txt").read_text().splitlines()
    pins = [i for i, line in enumerate(lines) if re.match(r"^bioscan[-_]clip\b|^\./bioscan_clip-", line.strip())]
    if len(pins) != 1:
        raise BioscanInputError(f"{source / 'requirements.txt'}: expected one line installing {PACKAGE}")
    lines[pins[0]] = requirement
    (out / "requirements.txt").write_text("\n".join(lines) + "\n")
    (out / "README.md").write_text(
        space_readme((source / "README.md").read_text(), model_repo=model_repo, keys_repo=keys_repo)
    )
    return out


def space_source_dir() -> Path:
    """The Space's files: ``space/`` of a checkout, installed as ``bioscan_clip.space`` (nothing is imported)."""
    import importlib.util

    spec = importlib.util.find_spec("bioscan_clip.space")
    if spec is None or spec.origin is None:
        raise OSError("the bioscan_clip.space package (the Space's files) is not installed")
    return Path(spec.origin).resolve().parent


def space_readme(readme: str, *, model_repo: str | None, keys_repo: str | None) -> str:
    """The Space README with ``sdk_version`` set to the installed gradio and ``models:``/``datasets:`` naming the
    repositories the app serves (app.py reads them when the variables are unset)."""
    front = re.match(r"^---\n(.*?)\n---\n", readme, flags=re.S)
    if not front:
        raise BioscanInputError("the Space README has no front matter")
    yaml = re.sub(r"(?ms)^(models|datasets):\n(?:- .*?\n)*", "", front.group(1) + "\n").rstrip()
    yaml = re.sub(r"(?m)^sdk_version:.*$", f"sdk_version: {_gradio_version()}", yaml)
    if model_repo:
        yaml += f"\nmodels:\n- {model_repo}"
    if keys_repo:
        yaml += f"\ndatasets:\n- {keys_repo}"
    return f"---\n{yaml}\n---\n" + readme[front.end() :]


# ---- upload ---------------------------------------------------------------------------------------------------------
def commit_operations(folder: str | os.PathLike) -> list[Any]:
    """One ``CommitOperationAdd`` per file of an exported folder."""
    from huggingface_hub import CommitOperationAdd

    folder = Path(folder)
    return [CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(folder / name)) for name in repo_files(folder)]


def publish(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    repo_type: str = "model",
    revision: str | None = None,
    private: bool | None = None,
    commit_message: str = "Upload with bioscan-clip push",
    api: Any = None,
) -> Any:
    """Uploads an exported folder as one commit (creating the repository if needed); returns the ``CommitInfo``.

    Files removed from the folder since an earlier push stay in the repository (push to a new revision or delete
    them on the Hub).
    """
    from huggingface_hub import HfApi

    check_repo_id(repo_id)
    api = api if api is not None else HfApi()
    operations = commit_operations(folder)
    if not operations:
        raise BioscanInputError(f"{folder}: nothing to upload")
    api.create_repo(
        repo_id,
        repo_type=repo_type,
        private=private,
        exist_ok=True,
        **({"space_sdk": "gradio"} if repo_type == "space" else {}),
    )
    info = api.create_commit(repo_id, operations, commit_message=commit_message, repo_type=repo_type, revision=revision)
    logger.info("pushed %d files to %s (%s): %s", len(operations), repo_id, repo_type, getattr(info, "oid", info))
    return info


def push_model_folder(model_dir: str | os.PathLike, repo_id: str, *, api: Any = None, **card: Any) -> Any:
    """Exports a model folder into a temporary folder and publishes it (``train_accelerate.py --push_to_hub``)."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="bioscan-clip-push-") as staging:
        folder = export_model(model_dir, Path(staging) / "model", repo_id=repo_id, **card)
        return publish(folder, repo_id, repo_type="model", api=api)


def export(kind: str, out: str | os.PathLike, *, repo_id: str, **options: Any) -> Path:
    """``bioscan-clip push KIND``'s export step."""
    if kind == "model":
        return export_model(options.pop("model_dir"), out, repo_id=repo_id, **options)
    if kind == "keys":
        return export_keys(options.pop("key_dir"), out, repo_id=repo_id, **options)
    if kind == "metric":
        return export_metric(out, repo_id=repo_id)
    if kind == "space":
        return export_space(out, repo_id=repo_id, **options)
    raise ValueError(f"expected one of {ARTEFACTS}, got {kind!r}")
