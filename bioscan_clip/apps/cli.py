"""The ``bioscan-clip`` command line: one subcommand per job, each in its own module.

Subcommand modules are imported only when used, so ``bioscan-clip --help`` stays fast. This is the error boundary of
every subcommand: what a user's input can cause (:data:`bioscan_clip.safe_io.USER_ERRORS`) ends as one line
``bioscan-clip COMMAND: error: ...`` and exit code 2; ``--debug`` adds the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# name -> (module, function adding the arguments, function running the command, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str, str, str]] = {
    "quickstart": (
        "bioscan_clip.apps.commands.quickstart",
        "add_arguments",
        "run",
        "the main job: generate mini-BIOSCAN, train the tiny preset, evaluate, build the key index",
    ),
    "synth": (
        "dataset_scripts.synth",
        "add_synth_arguments",
        "run_synth",
        "write the synthetic mini-BIOSCAN dataset in the BIOSCAN-5M on-disk layout",
    ),
    "evaluate": (
        "bioscan_clip.apps.commands.evaluate",
        "add_arguments",
        "run",
        "the paper's retrieval accuracy tables for a trained model (JSON, PNG, model card)",
    ),
    "index": (
        "bioscan_clip.apps.commands.index",
        "add_arguments",
        "run",
        "embed the keys of a dataset once and save a faiss key index",
    ),
    "embed": (
        "bioscan_clip.apps.commands.embed",
        "add_arguments",
        "run",
        "export embeddings of images, barcodes or dataset records to Parquet",
    ),
    "predict": (
        "bioscan_clip.apps.commands.predict",
        "add_arguments",
        "run",
        "identify specimens (images, FASTA/CSV barcodes, or both) against a key index",
    ),
    "convert-clibd": (
        "bioscan_clip.apps.convert_clibd",
        "add_arguments",
        "run",
        "convert a published CLIBD .pth checkpoint into a from_pretrained folder",
    ),
    "push": (
        "bioscan_clip.apps.commands.push",
        "add_arguments",
        "run",
        "publish a model, key library, the metric or the Space on the Hugging Face Hub (or --dry_run DIR)",
    ),
    "demo": (
        "bioscan_clip.apps.commands.demo",
        "add_arguments",
        "run",
        "open the Gradio demo on a trained model and its key index",
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bioscan-clip",
        description="Identify insects from photos and DNA barcodes with BIOSCAN-CLIP (CLIBD) models.",
        epilog="Run `bioscan-clip COMMAND --help` for the options of a command.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (_, _, _, help_text) in SUBCOMMANDS.items():
        commands.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not argv or argv[0] not in SUBCOMMANDS:
        parser.parse_args(argv)  # prints usage or the error and exits
        return 2
    name, rest = argv[0], argv[1:]
    module_name, add_name, run_name, help_text = SUBCOMMANDS[name]
    module = importlib.import_module(module_name)
    sub_parser = argparse.ArgumentParser(
        prog=f"bioscan-clip {name}", description=help_text[0].upper() + help_text[1:] + "."
    )
    getattr(module, add_name)(sub_parser)
    sub_parser.add_argument("--debug", action="store_true", help="on an error, show the full traceback")
    args = sub_parser.parse_args(rest)
    from bioscan_clip.safe_io import error_boundary  # imports the model package (torch): not for --help

    return error_boundary(f"bioscan-clip {name}", lambda: getattr(module, run_name)(args), debug=args.debug)


if __name__ == "__main__":
    raise SystemExit(main())
