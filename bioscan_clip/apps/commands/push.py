"""``bioscan-clip push``: publish a model, key library, the metric or the Space (:mod:`bioscan_clip.apps.publish`)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from modeling_bioscanclip import BioscanInputError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Write a model, a key library, the metric or the Space as the Hub repository it becomes and upload it in one "
        "commit (huggingface_hub; log in with `hf auth login`). --dry_run DIR writes the repository's files into DIR "
        "and uploads nothing."
    )
    parser.add_argument("artefact", choices=("model", "keys", "metric", "space"), help="what to publish")
    parser.add_argument("--repo_id", required=True, help="the repository, owner/name")
    parser.add_argument("--revision", help="branch to commit to (default: main)")
    parser.add_argument("--private", action="store_true", help="create the repository private")
    parser.add_argument("--dry_run", metavar="DIR", help="write the repository's files into DIR (new or empty) only")
    parser.add_argument("--model", help="model: the saved model folder (e.g. runs/quickstart/model)")
    parser.add_argument(
        "--results", help="model: an `evaluate` results.json; the card's model-index and results table come from it"
    )
    parser.add_argument(
        "--card", help="model: start the card from this file (e.g. the repository's model_card.md template)"
    )
    parser.add_argument("--keys", help="keys: the key folder (bioscan-clip index)")
    parser.add_argument("--model_repo", help="keys: the model repository the keys were embedded with; space: shown")
    parser.add_argument("--model_revision", help="keys: the model's commit sha, so loads use that exact model")
    parser.add_argument("--source", default="", help="keys: where the records come from (dataset card)")
    parser.add_argument("--license", default="other", help="keys: licence id of the records (dataset card)")
    parser.add_argument("--keys_repo", help="space: the key-library dataset repository the Space serves")
    parser.add_argument("--wheel", help="space: ship this wheel of the package in the Space (version not on PyPI)")


def run(args: argparse.Namespace) -> int:
    import tempfile

    from bioscan_clip.apps import publish as hub

    needed = {"model": ["model"], "keys": ["keys", "model_repo"], "metric": [], "space": []}[args.artefact]
    for name in needed:
        if not getattr(args, name):
            raise BioscanInputError(f"push {args.artefact} needs --{name}")
    options: dict[str, Any] = {}
    if args.artefact == "model":
        options["model_dir"] = args.model
        options["card"] = args.card
        if args.results:
            options["evaluation"] = hub.read_results(args.results)
    elif args.artefact == "keys":
        options.update(key_dir=args.keys, model_repo=args.model_repo, model_revision=args.model_revision,
                       source=args.source, license=args.license)  # fmt: skip
    elif args.artefact == "space":
        options.update(keys_repo=args.keys_repo, model_repo=args.model_repo, wheel=args.wheel)
    repo_type = hub.REPO_TYPE_OF[args.artefact]
    if args.dry_run:
        folder = hub.export(args.artefact, args.dry_run, repo_id=args.repo_id, **options)
        files = hub.repo_files(folder)
        print(f"wrote the {repo_type} repository {args.repo_id} ({len(files)} files) to {folder}; nothing uploaded")
        for name in files:
            print(f"  {name}")
        return 0
    with tempfile.TemporaryDirectory(prefix="bioscan-clip-push-") as staging:
        folder = hub.export(args.artefact, Path(staging) / "repo", repo_id=args.repo_id, **options)
        info = hub.publish(
            folder, args.repo_id, repo_type=repo_type, revision=args.revision, private=args.private or None
        )
    print(f"pushed {args.artefact} to {repo_type} repository {args.repo_id}: commit {info.oid} ({info.commit_url})")
    return 0
