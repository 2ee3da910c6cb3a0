"""``bioscan-clip convert-clibd``: a published CLIBD checkpoint into a ``from_pretrained`` folder
(:mod:`bioscan_clip.apps.convert_clibd` does the conversion)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bioscan_clip.apps.convert_clibd import BARCODEBERT_TOKENIZERS, HEAD_RULE, VARIANTS, convert_clibd_checkpoint
from modeling_bioscanclip import (
    BioscanInputError,
)
from modeling_bioscanclip.configuration_bioscanclip import MODALITIES


# ---- command line ---------------------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``bioscan-clip convert-clibd``."""
    parser.add_argument("checkpoint", type=Path, help="a CLIBD best.pth (raw state dict)")
    parser.add_argument(
        "--variant",
        required=True,
        choices=[*VARIANTS, "auto"],
        help="which towers the checkpoint holds (auto: read from its keys)",
    )
    parser.add_argument("--out", required=True, type=Path, help="output folder (save_pretrained format)")
    parser.add_argument(
        "--barcodebert-tokenizer",
        choices=BARCODEBERT_TOKENIZERS,
        default="original",
        help="DNA tokenizer the checkpoint was trained with (default: original; hub is not bundled)",
    )
    parser.add_argument(
        "--text-tokenizer",
        type=Path,
        default=None,
        help="local folder with prajjwal1/bert-small's tokenizer, saved with the processor",
    )
    for tower in MODALITIES:
        parser.add_argument(
            f"--{tower}-num-heads",
            type=int,
            default=None,
            help=f"attention heads of the {tower} tower (default: {HEAD_RULE})",
        )
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty --out folder")


def run(args: argparse.Namespace) -> int:
    """Runs ``bioscan-clip convert-clibd``; returns the exit status (1 on a refused checkpoint)."""
    heads = {tower: getattr(args, f"{tower}_num_heads") for tower in MODALITIES}
    try:
        report = convert_clibd_checkpoint(
            args.checkpoint,
            args.variant,
            args.out,
            args.barcodebert_tokenizer,
            text_tokenizer=args.text_tokenizer,
            num_attention_heads={k: v for k, v in heads.items() if v is not None},
            overwrite=args.overwrite,
        )
    except BioscanInputError as error:
        print(f"bioscan-clip convert-clibd: error: {error}", file=sys.stderr)
        return 1
    print(f"converted {args.checkpoint} (sha256 {report.source_sha256}) -> {args.out}")
    print(f"variant {report.variant}; towers {json.dumps(report.towers)}")
    if report.lora_merged:
        print(f"merged LoRA adapters: {json.dumps(report.lora_merged)}")
    print(f"dropped {len(report.dropped_keys)} keys (listed in {args.out / 'conversion_report.json'})")
    if args.text_tokenizer is None:
        print("note: no --text-tokenizer given, so the folder has no complete processor (see its README.md)")
    return 0
