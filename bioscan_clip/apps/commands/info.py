"""``bioscan-clip info``: what a key library or a model holds, in one screen (``--json`` for scripts).

Everything is read from the files' own metadata (manifests, configs, the safetensors header, Arrow column
statistics), never by loading a model or a faiss index, so it answers in a second for a library of millions of keys.
A name is resolved as ``predict --keys`` / ``--model`` resolve it (:func:`bioscan_clip.resolve.resolve_folder`: a
local folder, or a Hub repository found in the cache offline), and a key folder is verified against its manifest
first: what is described is what ``predict`` would load.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bioscan_clip.identification.calibration import (
    METHOD_CHECKLIST,
    METHOD_HELD_OUT,
    METHOD_NONE,
    METHOD_PRESENT_ONLY,
)
from bioscan_clip.identification.key_folder import (
    CALIBRATION_FILE,
    KEY_MANIFEST,
    key_records,
    verify_key_folder,
)
from bioscan_clip.identification.library import KEY_LIBRARY_FILE, resolve_key_folder
from bioscan_clip.resolve import resolve_folder
from bioscan_clip.retrieval.storage import MANIFEST_NAME
from bioscan_clip.safe_io import SEAL_KEY, format_bytes, read_json
from modeling_bioscanclip import BioscanInputError
from modeling_bioscanclip.constants_bioscanclip import TAXONOMIC_RANKS

TRAINING_FILES = ("train_config.json", "train_summary.json")  # written by training beside its final_model/
NOT_RECORDED = "not recorded"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Say what a key library or a model holds, in one screen. --keys: the model (id, revision, config hash) the "
        "keys were embedded with, or model-free; how many records, with images and with barcodes, and how many "
        "distinct taxa at each rank; each feature's faiss index (type, dimension, vectors); the calibration (how it "
        "was made, the confidence threshold of every rank and pair, warnings); when and by which bioscan-clip it "
        "was built, and its size on disk. --model: the towers and their architecture, parameters per tower, the "
        "embedding dimension, the tokenisation (DNA k-mers, reading frames, image size, text vocabulary) and the "
        "training run, where recorded. Names resolve as `predict` resolves them: a folder, or a Hub repository "
        "(from the cache when offline). --json prints the same as one JSON object."
    )
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--keys", help="a key folder or key library (folder, or Hub dataset repository id)")
    what.add_argument("--model", help="a saved model folder or a Hub model repository id")
    parser.add_argument("--revision", help="Hub revision (branch, tag or commit sha) of the repository")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")


def run(args: argparse.Namespace) -> int:
    if args.keys is not None:
        described = describe_keys(args.keys, revision=args.revision)
        text = format_keys(described)
    else:
        described = describe_model(args.model, revision=args.revision)
        text = format_model(described)
    print(json.dumps(described, indent=2, default=_json_value) if args.json else text)
    return 0


# ---- key libraries --------------------------------------------------------------------------------------------------
def describe_keys(spec: str | os.PathLike, *, revision: str | None = None) -> dict[str, Any]:
    """What the key folder (or key library) ``spec`` holds, as a JSON-ready dict; refuses, in one line, a folder that
    is not a whole key folder (:func:`verify_key_folder`)."""
    root = resolve_folder(spec, repo_type="dataset", revision=revision)
    key_dir = resolve_key_folder(root)  # a local folder now: the library's keys/, or the key folder itself
    manifest = verify_key_folder(key_dir)
    library = None
    if (root / KEY_LIBRARY_FILE).is_file() and key_dir != root:
        library = read_json(root / KEY_LIBRARY_FILE, "the key library")
    model = manifest.get("model")
    described: dict[str, Any] = {
        "kind": "keys",
        "name": str(spec),
        "folder": str(key_dir),
        "library": None
        if library is None
        else {
            "model_repo": (library.get("model") or {}).get("repo_id"),
            "model_revision": (library.get("model") or {}).get("revision"),
        },  # fmt: skip
        "model": None
        if model is None
        else {
            "name_or_path": model.get("name_or_path") or None,
            "revision": model.get("revision"),
            "config_sha256": model.get("config_sha256"),
        },
        "built_at": manifest.get("built_at", NOT_RECORDED),
        "bioscan_clip_version": manifest.get("bioscan_clip_version", NOT_RECORDED),
        "format_version": manifest.get("format_version"),
        "manifest_sha256": manifest.get(SEAL_KEY),
        "size_bytes": sum(int(size) for size, _ in manifest["files"].values()) + _size(key_dir / KEY_MANIFEST),
        "files": len(manifest["files"]) + 1,
        "records": _record_counts(key_dir),
        "features": {name: _index_summary(key_dir / name) for name in manifest.get("features", [])},
        "calibration": _calibration_summary(key_dir / CALIBRATION_FILE),
    }
    return described


def _size(path: Path) -> int:
    return path.stat().st_size if path.is_file() else 0


def _record_counts(key_dir: Path) -> dict[str, Any] | None:
    """Counts from the key records' Arrow columns: records, with an image, with a barcode, and per rank the records
    labelled there and their distinct labels."""
    import pyarrow.compute as pc

    records = key_records(key_dir)
    if records is None:
        return None
    table = records.data
    columns = set(records.column_names)

    def present(name: str) -> int:
        if name not in columns:
            return 0
        column = table.column(name)
        if name == "dna_barcode":  # an empty string is no barcode
            return int(pc.sum(pc.greater(pc.utf8_length(column), 0)).as_py() or 0)
        return len(column) - column.null_count

    ranks = {}
    for rank in TAXONOMIC_RANKS:
        if rank in columns:
            column = table.column(rank)
            ranks[rank] = {
                "distinct": int(pc.count_distinct(column, mode="only_valid").as_py()),
                "labelled": len(column) - column.null_count,
            }
        else:
            ranks[rank] = {"distinct": 0, "labelled": 0}
    return {
        "count": len(records),
        "with_image": present("image"),
        "with_barcode": present("dna_barcode"),
        "ranks": ranks,
    }


def _index_summary(folder: Path) -> dict[str, Any]:
    """A feature's key index, from its manifest (verified with the key folder; its ``count`` is the faiss index's
    ``ntotal``, which loading checks again)."""
    manifest = read_json(folder / MANIFEST_NAME, "the key index manifest")
    return {
        "index_type": manifest.get("index_type"),
        "dim": manifest.get("dim"),
        "ntotal": manifest.get("count"),
        "index_params": manifest.get("index_params") or {},
        "metric": manifest.get("metric"),
        "faiss_version": manifest.get("faiss_version"),
    }


def _calibration_summary(path: Path) -> dict[str, Any]:
    calibration = read_json(path, "the calibration")
    report = calibration.get("report") or {}
    pairs = {}
    for pair, thresholds in (calibration.get("thresholds") or {}).items():
        ranks = (report.get(pair) or {}).get("ranks") or {}
        pairs[pair] = {
            rank: {"threshold": thresholds.get(rank), "method": (ranks.get(rank) or {}).get("method")}
            for rank in TAXONOMIC_RANKS
        }
    return {
        "method": calibration.get("method"),
        "precision": calibration.get("precision"),
        "calibration_queries": calibration.get("calibration_queries"),
        "pairs": pairs,
        "warnings": list(calibration.get("warnings") or []),
    }


def format_keys(described: Mapping[str, Any]) -> str:
    """The one-screen table of :func:`describe_keys`."""
    lines = [f"key folder   {described['folder']}"]
    if described["library"] is not None:
        library = described["library"]
        pinned = f" at {library['model_revision']}" if library.get("model_revision") else ""
        lines.append(f"key library  {described['name']}: queries are embedded with {library['model_repo']}{pinned}")
    model = described["model"]
    if model is None:
        lines.append("model        none: model-free (barcodes only: 5-mer candidates re-ranked by alignment identity)")
    else:
        lines.append(
            f"model        {model['name_or_path'] or NOT_RECORDED}  revision {model['revision'] or NOT_RECORDED}  "
            f"config sha256 {str(model['config_sha256'])[:12]}"
        )
    lines.append(
        f"built        {described['built_at']} by bioscan-clip {described['bioscan_clip_version']} "
        f"(format {described['format_version']}); {format_bytes(described['size_bytes'])} in {described['files']} files"
    )
    records = described["records"]
    if records is None:
        lines.append("records      none stored")
    else:
        lines.append(
            f"records      {records['count']} keys, {records['with_image']} with an image, "
            f"{records['with_barcode']} with a barcode"
        )
        ranks = records["ranks"]
        lines.append(
            "             distinct: " + ", ".join(f"{r['distinct']} {rank}" for rank, r in ranks.items())
            + "; labelled: " + "/".join(str(r["labelled"]) for r in ranks.values())
        )  # fmt: skip
    features = described["features"]
    width = max([len("feature"), *(len(name) for name in features)])
    lines.append(
        f"features     {'feature':<{width}}  {'index':<6} {'dim':>5} {'ntotal':>9}  settings"
        if features
        else "features     none"
    )
    for name, index in features.items():
        params = ", ".join(f"{k}={v}" for k, v in index["index_params"].items())
        lines.append(
            f"             {name:<{width}}  {index['index_type']:<6} {index['dim']:>5} {index['ntotal']:>9}  {params}"
        )
    calibration = described["calibration"]
    queries = calibration.get("calibration_queries")
    lines.append(
        f"calibration  {calibration['method']}; target precision {calibration['precision']}"
        + (f", {queries} calibration queries" if queries is not None else "")
    )
    if calibration["pairs"]:
        width = max(len(pair) for pair in calibration["pairs"])
        lines.append(f"             {'thresholds':<{width}}" + "".join(f"{rank:>10}" for rank in TAXONOMIC_RANKS))
        methods = set()
        for pair, ranks in calibration["pairs"].items():
            cells = []
            for rank in TAXONOMIC_RANKS:
                entry = ranks[rank]
                methods.add(entry["method"])
                cells.append(f"{_threshold(entry['threshold']):>9}{_method_mark(entry['method'])}")
            lines.append(f"             {pair:<{width}}" + "".join(cells))
        lines.append(
            "             set by: "
            + "; ".join(f"{_method_mark(m).strip() or 'unmarked'}: {m}" for m in sorted(methods, key=str) if m)
        )
    for warning in calibration["warnings"]:
        lines.append(f"  warning: {warning}")
    return "\n".join(lines)


# Marks beside a threshold: how it was set (calibration.py's methods; the barcode identifier's BOLD fall-back).
_METHOD_MARKS = {METHOD_HELD_OUT: " ", METHOD_PRESENT_ONLY: "*", METHOD_NONE: "-", METHOD_CHECKLIST: "-"}


def _method_mark(method: str | None) -> str:
    if method is None:
        return " "
    return _METHOD_MARKS.get(method, "b" if "BOLD" in method else "?")


def _threshold(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, (int, float)) and math.isinf(value):
        return "never"
    return f"{float(value):.3f}"


def _json_value(value: Any) -> Any:
    return str(value)


# ---- models ---------------------------------------------------------------------------------------------------------
def describe_model(spec: str | os.PathLike, *, revision: str | None = None) -> dict[str, Any]:
    """What the saved model ``spec`` names, from its config, tokenizer and processor files and the safetensors header
    (nothing is loaded); refuses, in one line, a folder that is not a saved bioscan-clip model."""
    folder = resolve_folder(spec, repo_type="model", revision=revision)
    if not (folder / "config.json").is_file():
        raise BioscanInputError(f"{spec}: not a saved model folder (no config.json)")
    config = read_json(folder / "config.json", "the model configuration")
    if not isinstance(config, dict) or config.get("model_type") != "bioscan_clip":
        found = config.get("model_type") if isinstance(config, dict) else None
        raise BioscanInputError(f"{folder / 'config.json'}: not a bioscan-clip model (model_type {found!r})")
    parameters = _parameters(folder / "model.safetensors")
    modalities = list(config.get("modalities") or [])
    towers = {}
    for modality in modalities:
        sub = config.get(f"{modality}_config") or {}
        towers[modality] = {
            "architecture": sub.get("model_type"),
            **_tower_shape(sub),
            "pooling": config.get(f"{modality}_pooling"),
            "parameters": parameters.get(f"{modality}_model", 0) + parameters.get(f"{modality}_projection", 0)
            if parameters
            else None,
        }
    training = _training(folder)
    return {
        "kind": "model",
        "name": str(spec),
        "folder": str(folder),
        "architecture": (config.get("architectures") or [None])[0],
        "preset": (training.get("train_config.json") or {}).get("preset", NOT_RECORDED),
        "modalities": modalities,
        "projection_dim": config.get("projection_dim"),
        "towers": towers,
        "parameters": sum(parameters.values()) if parameters else None,
        "tokenisation": _tokenisation(folder, config),
        "remote_code": sorted(str(v) for v in (config.get("auto_map") or {}).values()),
        "transformers_version": config.get("transformers_version"),
        "training": _training_summary(training),
        "size_bytes": sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()),
    }


def _parameters(weights: Path) -> dict[str, int]:
    """Parameters per top-level module (``image_model``, ``dna_projection``, ...) from the safetensors header."""
    if not weights.is_file():
        return {}
    from safetensors import safe_open

    counts: dict[str, int] = {}
    try:
        with safe_open(str(weights), framework="np") as handle:
            for name in handle.keys():  # noqa: SIM118 (a safetensors handle is not iterable)
                module = name.split(".")[0]
                counts[module] = counts.get(module, 0) + math.prod(handle.get_slice(name).get_shape())
    except Exception as error:  # safetensors raises its own error types for a damaged header
        raise BioscanInputError(f"{weights}: not a readable safetensors file ({error})") from None
    return counts


def _tower_shape(sub: Mapping[str, Any]) -> dict[str, Any]:
    """Width and depth of a tower from its transformers sub-configuration (BERT/ViT-like, or ResNet-like stages)."""
    if "hidden_sizes" in sub:  # convolutional: one width per stage
        return {"widths": sub.get("hidden_sizes"), "layers": sum(sub.get("depths") or [])}
    shape = {"hidden_size": sub.get("hidden_size"), "layers": sub.get("num_hidden_layers")}
    for key in ("image_size", "patch_size", "vocab_size", "max_position_embeddings"):
        if key in sub:
            shape[key] = sub[key]
    return shape


def _tokenisation(folder: Path, config: Mapping[str, Any]) -> dict[str, Any]:
    tokenisation: dict[str, Any] = {}
    dna = folder / "dna_tokenizer" / "tokenizer_config.json"
    if dna.is_file():
        dna_config = read_json(dna, "the DNA tokenizer configuration")
        tokenisation["dna"] = {
            "kmer_size": dna_config.get("kmer_size"),
            "stride": dna_config.get("stride"),
            "max_nucleotides": dna_config.get("max_nucleotides"),
            "tokens": dna_config.get("model_max_length"),
            "reference_mode": dna_config.get("reference_mode"),
            "reading_frames": config.get("dna_frames", 1),
        }
    processor = folder / "processor_config.json"
    if processor.is_file():
        processor_config = read_json(processor, "the processor configuration")
        image = processor_config.get("image_processor") or {}
        if image:
            tokenisation["image"] = {
                "resize_shortest_edge": image.get("resize_shortest_edge"),
                "crop_size": image.get("crop_size"),
            }
        if "text_max_length" in processor_config:
            tokenisation.setdefault("text", {})["max_length"] = processor_config["text_max_length"]
    text_config = folder / "tokenizer_config.json"
    if text_config.is_file():
        text = tokenisation.setdefault("text", {})
        text["tokenizer"] = read_json(text_config, "the text tokenizer configuration").get("tokenizer_class")
        if (folder / "tokenizer.json").is_file():
            model = read_json(folder / "tokenizer.json", "the text tokenizer").get("model") or {}
            text["vocabulary"] = len(model.get("vocab") or {})
    return tokenisation


def _training(folder: Path) -> dict[str, Any]:
    """Training's records of the run, in the model folder or, as training lays its output out (``<output_dir>/
    final_model`` beside ``<output_dir>/train_config.json``), the folder above it."""
    found: dict[str, Any] = {}
    for where in (folder, folder.parent):
        for name in TRAINING_FILES:
            if name not in found and (where / name).is_file():
                found[name] = read_json(where / name, f"the training record {name}")
    return found


def _training_summary(training: Mapping[str, Any]) -> dict[str, Any] | None:
    if not training:
        return None
    config = training.get("train_config.json") or {}
    summary = training.get("train_summary.json") or {}
    kept = {key: config.get(key) for key in ("preset", "source", "modalities", "epochs", "batch_size", "seed")}
    kept.update(
        {key: summary.get(key) for key in ("global_step", "training_records", "best_step", "best_score", "seconds")}
    )
    return {key: value for key, value in kept.items() if value is not None}


def format_model(described: Mapping[str, Any]) -> str:
    """The one-screen table of :func:`describe_model`."""
    parameters = described["parameters"]
    lines = [
        f"model        {described['folder']}",
        f"architecture {described['architecture']} (preset {described['preset']}), towers "
        f"{', '.join(described['modalities'])}, embeddings of {described['projection_dim']} dimensions",
        f"parameters   {NOT_RECORDED if parameters is None else f'{parameters:,}'}; "
        f"{format_bytes(described['size_bytes'])} on disk; transformers {described['transformers_version']}",
    ]
    for modality, tower in described["towers"].items():
        shape = ", ".join(
            f"{key} {value}" for key, value in tower.items() if key not in ("architecture", "parameters") and value
        )
        count = "" if tower["parameters"] is None else f"{tower['parameters']:,} parameters; "
        lines.append(f"  {modality:<6} {tower['architecture']}: {count}{shape}")
    tokenisation = described["tokenisation"]
    if "dna" in tokenisation:
        dna = tokenisation["dna"]
        lines.append(
            f"DNA          {dna['kmer_size']}-mers, stride {dna['stride']}, up to {dna['max_nucleotides']} nt "
            f"({dna['tokens']} tokens), {dna['reading_frames']} reading frame(s) averaged"
            + (", reference mode" if dna["reference_mode"] else "")
        )
    if "image" in tokenisation:
        image = tokenisation["image"]
        lines.append(f"image        resized to {image['resize_shortest_edge']} px, cropped to {image['crop_size']} px")
    if "text" in tokenisation:
        text = tokenisation["text"]
        lines.append(
            f"text         {text.get('tokenizer')}, {text.get('vocabulary', '?')} tokens, "
            f"up to {text.get('max_length', '?')} per name"
        )
    lines.append(f"remote code  {', '.join(described['remote_code']) or 'none'}")
    training = described["training"]
    lines.append(
        "training     "
        + (NOT_RECORDED if training is None else ", ".join(f"{key} {value}" for key, value in training.items()))
    )
    return "\n".join(lines)
