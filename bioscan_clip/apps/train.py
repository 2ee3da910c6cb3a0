"""Train BIOSCAN-CLIP with Accelerate: from mini-BIOSCAN on two CPU cores to the paper's multi-GPU recipe.

    accelerate launch train_accelerate.py --preset tiny --output_dir runs/tiny
    accelerate launch train_accelerate.py --preset bold --data_dir my_library.tsv --output_dir runs/my-library
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
import logging
import os
import sys
from collections.abc import Sequence

from accelerate import PartialState
from transformers import HfArgumentParser

from bioscan_clip.apps.publish import push_model_folder
from bioscan_clip.safe_io import DEBUG_ENV, error_boundary
from bioscan_clip.training import presets
from bioscan_clip.training.config import TrainConfig
from bioscan_clip.training.loop import train

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
    return error_boundary("train_accelerate.py", lambda: train_and_publish(config), debug=debug)


def train_and_publish(config: TrainConfig) -> None:
    """Trains, then (``--push_to_hub``) publishes the chosen model from the main process: the same export and single
    commit as ``bioscan-clip push model``, its card what ``evaluate --model_card`` wrote, if any."""
    result = train(config)
    if config.push_to_hub and PartialState().is_main_process:
        push_model_folder(result.model_dir, config.hub_model_id)


if __name__ == "__main__":
    sys.exit(main())
