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
from types import ModuleType

# name -> one-line help; the command is the module bioscan_clip.apps.commands.<name, dashes as underscores>, with
# add_arguments(parser) and run(args). Adding a command is a module there and a line here.
SUBCOMMANDS: dict[str, str] = {
    "quickstart": "the main job: generate mini-BIOSCAN, train the tiny preset, evaluate, build the key index",
    "synth": "write the synthetic mini-BIOSCAN dataset in the BIOSCAN-5M on-disk layout",
    "evaluate": "the paper's retrieval accuracy tables for a trained model (JSON, PNG, model card)",
    "index": "embed the keys of a dataset once and save a faiss key index",
    "embed": "export embeddings of images, barcodes or dataset records to Parquet",
    "predict": "identify specimens (images, FASTA/CSV barcodes, or both) against a key index",
    "convert-clibd": "convert a published CLIBD .pth checkpoint into a from_pretrained folder",
    "push": "publish a model, key library, the metric or the Space on the Hugging Face Hub (or --dry_run DIR)",
    "demo": "open the Gradio demo on a trained model and its key index",
    "info": "say what a key library or a model holds: model, counts per rank, indexes, calibration, provenance",
}
COMMANDS_PACKAGE = "bioscan_clip.apps.commands"


def command_module(name: str) -> ModuleType:
    """The module of subcommand ``name`` (imported now: only the one that runs is ever imported)."""
    return importlib.import_module(f"{COMMANDS_PACKAGE}.{name.replace('-', '_')}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bioscan-clip",
        description="Identify insects from photos and DNA barcodes with BIOSCAN-CLIP (CLIBD) models.",
        epilog="Run `bioscan-clip COMMAND --help` for the options of a command.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, help_text in SUBCOMMANDS.items():
        commands.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not argv or argv[0] not in SUBCOMMANDS:
        parser.parse_args(argv)  # prints usage or the error and exits
        return 2
    name, rest = argv[0], argv[1:]
    help_text = SUBCOMMANDS[name]
    module = command_module(name)
    sub_parser = argparse.ArgumentParser(
        prog=f"bioscan-clip {name}", description=help_text[0].upper() + help_text[1:] + "."
    )
    module.add_arguments(sub_parser)
    sub_parser.add_argument("--debug", action="store_true", help="on an error, show the full traceback")
    args = sub_parser.parse_args(rest)
    from bioscan_clip.safe_io import error_boundary  # imports the model package (torch): not for --help

    return error_boundary(f"bioscan-clip {name}", lambda: module.run(args), debug=args.debug)


if __name__ == "__main__":
    raise SystemExit(main())
