"""``bioscan-clip quickstart``: the main job (:func:`bioscan_clip.apps.quickstart.quickstart`)."""

from __future__ import annotations
from bioscan_clip.apps.commands.options import (IMAGE_SUFFIXES, add_data_arguments, add_option, add_query_arguments, batches, collect_queries, data_spec, load_model, query_name, write_rows)
import argparse
import json
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
import numpy as np
import pandas as pd
from bioscan_clip.data.spec import DataSpec
from bioscan_clip.data.specimens import SpecimenDataset, available_modalities, image_file_records, with_modalities
from bioscan_clip.features import DNA, IMAGE, KEY_FEATURES, embed_dataset, embed_inputs, labels_of, loader_workers
from bioscan_clip.identification.identifier import DEFAULT_PRECISION, Identifier
from bioscan_clip.identification.build import build_index
from bioscan_clip.retrieval.key_index import AUTO_FLAT_MAX_KEYS, BUILD_INDEX_TYPES
from bioscan_clip.safe_io import atomic_output_file
from dataset_scripts import RETRIEVAL_SPLITS
from dataset_scripts.images import VERIFY_MODES
from dataset_scripts.integrity import IMAGE_POLICIES
from dataset_scripts.tables import BARCODE_COLUMNS, read_fasta, read_query_table
from modeling_bioscanclip import BioscanClipModel, BioscanClipProcessor, BioscanInputError
from modeling_bioscanclip.constants_bioscanclip import IMAGE_FORMATS

logger = logging.getLogger(__name__)


# ---- quickstart -----------------------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "The main job, end to end on a CPU: write the SYNTHETIC mini-BIOSCAN dataset, train the tiny preset with "
        "Accelerate, evaluate it with the paper's protocol against an untrained model of the same architecture, "
        "build the key index with calibrated confidence, and print how to open the demo."
    )
    parser.add_argument("--out", default="runs/quickstart", help="run folder (default: runs/quickstart)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated data and of training")
    parser.add_argument("--size", choices=("tiny", "small", "medium"), default="small", help="mini-BIOSCAN size")
    parser.add_argument("--epochs", type=int, help="override the tiny preset's epochs")


def run(args: argparse.Namespace) -> int:
    from bioscan_clip.apps.quickstart import quickstart

    quickstart(args.out, seed=args.seed, size=args.size, epochs=args.epochs)
    return 0
