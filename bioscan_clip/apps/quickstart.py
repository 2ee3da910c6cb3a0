"""The main job: generate mini-BIOSCAN, train the tiny preset, evaluate, build the key index, point to the demo.

Everything runs on a 2-core CPU in minutes, on SYNTHETIC data generated here (no download). Each step is one call
of the library's API: ``train``, ``evaluate``, ``build_index``.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from bioscan_clip.data.spec import DataSpec
from bioscan_clip.evaluation.protocol import Evaluation, evaluate, format_table
from bioscan_clip.identification.build import build_index
from bioscan_clip.training.config import TrainConfig
from bioscan_clip.training.loop import train
from dataset_scripts.synth import generate_mini_bioscan


@dataclass
class QuickstartResult:
    model_dir: Path
    keys_dir: Path
    trained: Evaluation
    untrained: Evaluation


def _section(title: str) -> None:
    print(f"\n=== {title} ===", flush=True)


def quickstart(out: str | Path, *, seed: int = 0, size: str = "small", epochs: int | None = None) -> QuickstartResult:
    """Runs the main job into ``out`` and prints its tables (see the README)."""
    started = time.time()
    out = Path(out)
    data_dir = out / "mini-bioscan"
    data = DataSpec(source="mini", data_dir=str(data_dir), cache_dir=str(out / "cache"))
    _section("1/5 generating mini-BIOSCAN (synthetic)")
    if not (data_dir / "bioscan5m").exists():
        generate_mini_bioscan(data_dir, seed=seed, size=size)

    _section("2/5 training the tiny preset")
    overrides = {"epochs": epochs} if epochs else {}
    config = TrainConfig.from_preset(
        "tiny",
        output_dir=str(out / "train"),
        seed=seed,
        source=data.source,
        data_dir=data.data_dir,
        cache_dir=data.cache_dir,
        **overrides,
    )
    trained_dir = train(config).model_dir
    model_dir = out / "model"
    if model_dir.exists():
        shutil.rmtree(model_dir)
    trained_dir.rename(model_dir)

    _section("3/5 evaluating: test queries against all keys")
    trained = evaluate(model_dir, data, out=out / "evaluation", model_card=model_dir / "README.md")
    print(format_table(trained.results, average="macro"))

    _section("4/5 the same architecture untrained (what training bought)")
    untrained_dir = out / "untrained_model"
    _save_untrained(model_dir, untrained_dir, seed=seed)
    untrained = evaluate(untrained_dir, data, out=out / "evaluation-untrained", kmer_baseline=False, examples=0)
    print(format_table(untrained.results, average="macro"))

    _section("5/5 building the key index")
    keys_dir = build_index(model_dir, data, out / "keys")

    minutes = (time.time() - started) / 60
    print(f"\nDone in {minutes:.1f} min. Trained model: {model_dir}  key index: {keys_dir}")
    print(f"Results: {trained.out / 'results.json'} (plots beside it)")
    print(f"Open the demo:  bioscan-clip demo --model {model_dir} --keys {keys_dir}")
    return QuickstartResult(model_dir=model_dir, keys_dir=keys_dir, trained=trained, untrained=untrained)


def _save_untrained(trained: Path, folder: Path, seed: int) -> None:
    """A freshly initialised model with the trained one's configuration and processor."""
    import torch

    from bioscan_clip.resolve import load_pretrained
    from modeling_bioscanclip import BioscanClipModel

    trained_model, processor = load_pretrained(trained)
    torch.manual_seed(seed)
    model = BioscanClipModel(trained_model.config)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
