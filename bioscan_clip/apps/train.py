"""Train BIOSCAN-CLIP with Accelerate: from mini-BIOSCAN on two CPU cores to the paper's multi-GPU recipe.

    accelerate launch train_accelerate.py --preset tiny --output_dir runs/tiny
    accelerate launch --multi_gpu --num_processes 2 train_accelerate.py --preset tiny --expect_processes 2 ...
    accelerate launch --config_file configs/accelerate/gpu4_bf16.yaml train_accelerate.py --preset clibd-5m \\
        --source bioscan5m --data_dir /data

A preset fills the defaults of every option (see --preset); each option given on the command line overrides it.
On CPU, ``--multi_gpu --num_processes N`` with this script's ``Accelerator(cpu=True)`` gives N real processes
(gloo + DDP); ``accelerate launch --cpu --num_processes N`` silently runs one, which ``--expect_processes`` turns
into an error.

From Python: ``train(TrainConfig(...))``. Order of work (Accelerate's examples): Accelerator -> seed -> data ->
model -> optimizer -> prepare -> load_state -> loop. The loss is the model's ``contrastive_loss`` with embeddings
gathered from every process (global-batch negatives, gradients on the local slice).
"""

from __future__ import annotations
import argparse
import collections
import dataclasses
import json
import logging
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, DistributedDataParallelKwargs, set_seed
from tqdm.auto import tqdm
from transformers import AutoTokenizer, HfArgumentParser
from bioscan_clip.training import presets
from bioscan_clip.training.checkpoints import TrainState, load_checkpoint, resolve_resume, save_checkpoint, save_pretrained
from bioscan_clip.data.spec import DataSpec, has_role, role_records
from bioscan_clip.data.specimens import ImageAugmentation, SpecimenDataset, model_inputs, with_modalities
from bioscan_clip.data.augmentation import DnaAugmentation
from bioscan_clip.evaluation.protocol import evaluate_retrieval, format_table, selection_score
from bioscan_clip.features import VALIDATION_PAIRS, embed_dataset, labels_of
from bioscan_clip.safe_io import DEBUG_ENV, error_boundary
from bioscan_clip.sharding import usable_cores
from bioscan_clip.training.text_tokenizer import train_taxonomy_tokenizer
from dataset_scripts import RETRIEVAL_SPLITS
from modeling_bioscanclip import BioscanClipModel, BioscanClipProcessor, contrastive_loss, taxonomy_to_text
from modeling_bioscanclip.configuration_bioscanclip import DNA_POOLINGS, IMAGE_POOLINGS, MODALITIES, TEXT_POOLINGS
from modeling_bioscanclip.constants_bioscanclip import TAXONOMIC_RANKS

logger = logging.getLogger(__name__)


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    pass


def parse_args(argv: Sequence[str] | None = None) -> TrainConfig:
    """The preset's values, overridden by whatever the command line gives (``--help`` shows the preset's)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    head = argparse.ArgumentParser(add_help=False)
    head.add_argument("--preset", default=TrainConfig.preset)
    preset_name = head.parse_known_args(argv)[0].preset
    parser = HfArgumentParser(
        TrainConfig,
        prog="train_accelerate.py",
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=_HelpFormatter,
    )
    if preset_name in presets.PRESETS:  # a wrong name is refused by the option's choices below
        parser.set_defaults(**presets.PRESETS[preset_name].training)
    try:
        (config,) = parser.parse_args_into_dataclasses(args=argv)
    except ValueError as error:
        parser.error(str(error))
    return config


def main(argv: Sequence[str] | None = None) -> int:
    """``accelerate launch train_accelerate.py ...`` (or ``-m bioscan_clip.apps.train``): parse, then train."""
    config = parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    # The error boundary: bad data or a refused checkpoint is one line and exit 2 (--debug: BIOSCAN_CLIP_DEBUG=1).
    debug = os.environ.get(DEBUG_ENV, "") not in ("", "0")
    return error_boundary("train_accelerate.py", lambda: train(config) and None, debug=debug)


if __name__ == "__main__":
    sys.exit(main())
