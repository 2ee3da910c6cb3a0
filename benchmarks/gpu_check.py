"""GPU check: `clibd-1m` bf16 training throughput at 500 per device, and embedding throughput for images and
barcodes, each with its achieved FLOP/s against the chip's peak. One short run (well under 5 minutes on one
H100/H200-class GPU); prints one JSON object. Without CUDA it prints "no CUDA device: skipped" and exits 0.

    python benchmarks/gpu_check.py [--batch 500] [--steps 8] [--photos 2000] [--barcodes 20000]

Not part of `benchmarks/run.py` (which runs `bench_*.py` only): run it on its own where a GPU is lent.

What is measured (random-initialised `clibd-1m` model with image, DNA and text towers; throughput does not
depend on the weights):

- training, bare: forward with `return_loss=True`, backward, AdamW step, under `torch.autocast(bfloat16)`, on
  batches already on the GPU; and the project's step: `training_loss` (the gathered contrastive loss), the finite
  check, `accelerator.backward`, AdamW step and the logit-scale clamp, with `Accelerator(mixed_precision="bf16")`,
  on the same ready batches (data loading is measured by the CPU benchmarks, not here).
- embedding, bare: `model.embed` under `inference_mode` on ready GPU tensors, fp32 (what `bioscan-clip embed`
  runs: the model as saved) and bf16 autocast (the headroom); the project's `embed_dataset` from JPEG files
  (decode and resize in loader workers) and from barcode strings (tokenising included), fp32.

FLOPs are ESTIMATED from parameter counts, not counted: a tower with N matmul parameters (embedding tables
excluded: a lookup is not a matmul) over T tokens costs 2*N*T per sample forward (inference) and 6*N*T per sample
training step (forward and backward); the projection heads count once per sample. Attention's score and value
products (4*T^2*d per layer, forward) are not in that estimate; `attention_share` says how much they would add.
`counted_flops_per_sample` cross-checks the estimate with torch's FlopCounterMode on one small batch.
Peak FLOP/s: the vendors' datasheet peak for dense BF16 tensor-core math (no 2:4 sparsity), by device name (a
MIG slice or a power-capped board gets a fraction of it); fp32 runs are reported in FLOP/s only.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
REALDATA_CANDIDATES = [
    Path(os.environ.get("BIOSCAN_REALDATA", REPO_ROOT.parent / "shared" / "realdata")),
    REPO_ROOT / "shared" / "realdata",
]
SKIP_LINE = "no CUDA device: skipped"

# Datasheet peak dense BF16 tensor-core FLOP/s (without sparsity), matched in order as substrings of
# torch.cuda.get_device_name(): the more specific names first (e.g. "H100 PCIe" before "H100", "L40S" before "L4").
PEAK_BF16_DENSE_FLOPS: tuple[tuple[str, float], ...] = (
    ("GB200", 2.5e15),  # Blackwell datasheets quote sparse figures: halved here
    ("B200", 2.25e15),
    ("H200 NVL", 835e12),
    ("H200", 989.4e12),  # SXM
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H100", 989.4e12),  # SXM ("NVIDIA H100 80GB HBM3")
    ("H800", 989.4e12),
    ("GH200", 989.4e12),
    ("A100", 312e12),
    ("A800", 312e12),
    ("L40S", 362.05e12),
    ("L40", 181.05e12),
    ("L4", 121e12),
)


def peak_bf16_flops(device_name: str) -> float | None:
    """The datasheet dense BF16 peak of a device by name, or None when it is not in the table."""
    for key, flops in PEAK_BF16_DENSE_FLOPS:
        if key in device_name:
            return flops
    return None


def _matmul_parameters(module: torch.nn.Module) -> int:
    """Parameters that take part in matmuls/convolutions per token: all but embedding tables."""
    tables = {id(m.weight) for m in module.modules() if isinstance(m, torch.nn.Embedding)}
    return sum(p.numel() for p in module.parameters() if id(p) not in tables)


def flop_estimate(model: Any, tokens: dict[str, int]) -> dict[str, Any]:
    """Per-sample forward FLOPs of each tower (2 * N * T, heads once per sample) and what attention would add."""
    towers: dict[str, Any] = {}
    for modality, count in tokens.items():
        tower = getattr(model, f"{modality}_model")
        config = getattr(model.config, f"{modality}_config")
        heads = sum(p.numel() for name, p in model.named_parameters() if name.startswith(f"{modality}_projection"))
        heads += sum(p.numel() for name, p in model.named_parameters() if name.startswith(f"{modality}_head"))
        n = _matmul_parameters(tower)
        forward = 2 * n * count + 2 * heads
        attention = 4 * count * count * config.hidden_size * config.num_hidden_layers
        towers[modality] = {"matmul_parameters": n, "tokens": count, "forward_flops": forward,
                            "attention_share": round(attention / forward, 4)}  # fmt: skip
    return towers


def _synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _timed(function: Callable[[], Any], repeats: int) -> float:
    """Best seconds of ``repeats`` calls (after one warm-up call), synchronised with the GPU."""
    function()
    _synchronize()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        _synchronize()
        best = min(best, time.perf_counter() - start)
    return best


def _rate(samples: int, seconds: float, flops_per_sample: float, peak: float | None, bf16: bool) -> dict[str, Any]:
    achieved = samples * flops_per_sample / seconds
    result = {"samples_per_s": round(samples / seconds, 1), "achieved_tflops": round(achieved / 1e12, 1)}
    if bf16 and peak:
        result["fraction_of_bf16_peak"] = round(achieved / peak, 3)
    return result


def _guard(name: str, results: dict[str, Any], work: Callable[[], dict[str, Any]]) -> None:
    """Runs one measurement; an out-of-memory or other failure is recorded instead of ending the check."""
    try:
        results[name] = work()
    except torch.OutOfMemoryError as error:
        results[name] = {"error": f"out of memory: {str(error).splitlines()[0]}"}
    except Exception as error:  # recorded, not raised: the other figures still come out
        results[name] = {"error": f"{type(error).__name__}: {error}"}
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _realdata() -> Path | None:
    return next((path for path in REALDATA_CANDIDATES if path.is_dir()), None)


def _photos(count: int, folder: Path) -> tuple[list[str], str]:
    """JPEG paths: the real BIOSCAN-1M photos when present, else synthetic 1024x768 JPEGs (reused in turn)."""
    realdata = _realdata()
    if realdata is not None:
        found = sorted(str(p) for p in (realdata / "3dlg-hcvc__Bioscan-ImgFilter" / "images").glob("*.jpg"))
        if found:
            return [found[i % len(found)] for i in range(count)], f"real BIOSCAN-1M photos ({len(found)} distinct)"
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    made = []
    for i in range(64):
        base = np.linspace(0, 255, 1024)[None, :, None] * rng.random((1, 1, 3))
        pixels = np.clip(base + rng.normal(0, 24, (768, 1024, 3)), 0, 255).astype(np.uint8)
        made.append(str(folder / f"synthetic_{i}.jpg"))
        Image.fromarray(pixels).save(made[-1], quality=90)
    return [made[i % len(made)] for i in range(count)], "synthetic 1024x768 JPEGs (real data absent; 64 distinct)"


def _barcodes(count: int) -> tuple[list[str], str]:
    realdata = _realdata()
    sample = realdata / "coi_fulltax_sample.tsv" if realdata else None
    if sample is not None and sample.is_file():
        import csv

        with open(sample, newline="", encoding="utf-8") as handle:
            found = [row["nuc"] for row in csv.DictReader(handle, delimiter="\t") if row.get("nuc")]
        return [found[i % len(found)] for i in range(count)], f"real COI barcodes ({len(found)} distinct)"
    import random

    rng = random.Random(0)
    found = ["".join(rng.choice("ACGT") for _ in range(658)) for _ in range(256)]
    return [found[i % len(found)] for i in range(count)], "random 658-nt barcodes (real data absent)"


def run(args: argparse.Namespace) -> dict[str, Any]:
    import datasets

    from bioscan_clip.data.specimens import SpecimenDataset, image_file_records
    from bioscan_clip.features import DNA, IMAGE, embed_dataset, loader_workers
    from bioscan_clip.training import presets
    from bioscan_clip.training.loop import training_loss
    from bioscan_clip.training.text_tokenizer import train_taxonomy_tokenizer
    from modeling_bioscanclip import BioscanClipModel

    started = time.perf_counter()
    device = torch.device("cpu" if args.dry_run_cpu else "cuda")
    name = (
        "CPU (dry run: checks the script, the figures mean nothing)"
        if args.dry_run_cpu
        else torch.cuda.get_device_name()
    )
    kind = device.type  # autocast's device type
    peak = peak_bf16_flops(name)
    names = ["Diptera Sciaridae Bradysia impatiens", "Hymenoptera Formicidae Lasius niger"]
    tokenizer = train_taxonomy_tokenizer(names, 120)
    processor = presets.build_processor("clibd-1m", tokenizer)
    torch.manual_seed(0)
    with device:
        model = BioscanClipModel(presets.model_config("clibd-1m", ["image", "dna", "text"], len(tokenizer)))
    batch = args.batch
    barcodes, barcode_source = _barcodes(max(batch, args.barcodes))
    sample = processor(images=None, dna=barcodes[:batch], text=[names[i % 2] for i in range(batch)])
    size = model.config.image_config.image_size
    inputs = {
        "pixel_values": torch.randn(batch, 3, size, size, device=device),
        "dna_input_ids": sample["dna_input_ids"].to(device),
        "dna_attention_mask": sample["dna_attention_mask"].to(device),
        "input_ids": sample["input_ids"].to(device),
        "attention_mask": sample["attention_mask"].to(device),
    }
    tokens = {
        "image": (size // model.config.image_config.patch_size) ** 2 + 1,
        "dna": inputs["dna_input_ids"].shape[1],
        "text": inputs["input_ids"].shape[1],
    }
    estimate = flop_estimate(model, tokens)
    forward_all = sum(tower["forward_flops"] for tower in estimate.values())
    train_flops = 3 * forward_all  # 6*N*T: forward 2*N*T, backward twice that
    counted: dict[str, float] = {}
    try:  # cross-check of the estimate on 2 samples
        from torch.utils.flop_counter import FlopCounterMode

        small = {key: value[:2] for key, value in inputs.items()}
        with FlopCounterMode(display=False) as counter:
            model.embed(pixel_values=small["pixel_values"])
        counted["image_forward"] = counter.get_total_flops() / 2
        with FlopCounterMode(display=False) as counter:
            model.embed(dna_input_ids=small["dna_input_ids"], dna_attention_mask=small["dna_attention_mask"])
        counted["dna_forward"] = counter.get_total_flops() / 2
        with FlopCounterMode(display=False) as counter, torch.autocast(kind, dtype=torch.bfloat16):
            model(**small, return_loss=True).loss.backward()
        counted["training_step"] = counter.get_total_flops() / 2
        model.zero_grad(set_to_none=True)
    except Exception as error:  # the estimate stands on its own
        counted["error"] = f"{type(error).__name__}: {error}"
    results: dict[str, Any] = {}

    def bare_training() -> dict[str, Any]:
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6, weight_decay=0.01)

        def step() -> None:
            with torch.autocast(kind, dtype=torch.bfloat16):
                loss = model(**inputs, return_loss=True).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        seconds = _timed(lambda: [step() for _ in range(args.steps)], 1)  # the optimiser's state goes with it
        return {**_rate(batch * args.steps, seconds, train_flops, peak, True), "steps": args.steps}

    def project_training() -> dict[str, Any]:
        from accelerate import Accelerator

        accelerator = Accelerator(mixed_precision="bf16", cpu=args.dry_run_cpu)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6, weight_decay=0.01)
        prepared, optimizer = accelerator.prepare(model, optimizer)
        raw = accelerator.unwrap_model(prepared)
        prepared.train()
        item = {**inputs, "species_id": torch.arange(batch, device=device)}

        def step() -> None:  # the body of training.train's loop, on a ready batch
            loss = training_loss(prepared, item)
            finite = bool(accelerator.gather(torch.isfinite(loss.detach()).float().reshape(1)).min() > 0)
            if finite:
                accelerator.backward(loss * accelerator.num_processes)
                optimizer.step()
            optimizer.zero_grad()
            raw.clamp_logit_scale()

        seconds = _timed(lambda: [step() for _ in range(args.steps)], 1)
        return {**_rate(batch * args.steps, seconds, train_flops, peak, True), "steps": args.steps}

    _guard("training_bare_bf16", results, bare_training)
    _guard("training_project_step_bf16", results, project_training)
    model.eval()
    model.zero_grad(set_to_none=True)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()

    def bare_embedding(key: str, flops: float, bf16: bool) -> dict[str, Any]:
        def forward() -> None:
            with torch.inference_mode(), torch.autocast(kind, dtype=torch.bfloat16, enabled=bf16):
                if key == IMAGE:
                    model.embed(pixel_values=inputs["pixel_values"])
                else:
                    model.embed(dna_input_ids=inputs["dna_input_ids"], dna_attention_mask=inputs["dna_attention_mask"])

        return _rate(batch * 3, _timed(lambda: [forward() for _ in range(3)], 2), flops, peak, bf16)

    image_flops, dna_flops = estimate["image"]["forward_flops"], estimate["dna"]["forward_flops"]
    for precision, bf16 in (("fp32", False), ("bf16", True)):
        _guard(f"embed_images_bare_{precision}", results, lambda bf16=bf16: bare_embedding(IMAGE, image_flops, bf16))
        _guard(f"embed_barcodes_bare_{precision}", results, lambda bf16=bf16: bare_embedding(DNA, dna_flops, bf16))

    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        photos, photo_source = _photos(args.photos, Path(tmp))
        processor.image_processor.jpeg_draft = True  # as the CPU embedding benchmark measures the project's path

        def project_images() -> dict[str, Any]:
            records = image_file_records(photos, [f"P{i}" for i in range(len(photos))])
            dataset = SpecimenDataset(records, processor, [IMAGE])
            workers = loader_workers(dataset, batch)
            seconds = _timed(
                lambda: embed_dataset(model, dataset, batch_size=batch, show_progress=False, combined=False), 1
            )
            return {**_rate(len(photos), seconds, image_flops, peak, False), "loader_workers": workers,
                    "photos": photo_source, "jpeg_draft": True}  # fmt: skip

        _guard("embed_images_project_fp32", results, project_images)

    def project_barcodes() -> dict[str, Any]:
        records = datasets.Dataset.from_dict(
            {"processid": [f"B{i}" for i in range(args.barcodes)], "dna_barcode": barcodes[: args.barcodes]}
        )

        def work() -> None:  # tokenising included, as `embed` and `index` run it
            embed_dataset(model, SpecimenDataset(records, processor, [DNA]), batch_size=batch, show_progress=False)

        return {**_rate(args.barcodes, _timed(work, 1), dna_flops, peak, False), "barcodes": barcode_source}

    _guard("embed_barcodes_project_fp32", results, project_barcodes)
    return {
        "device": name,
        "device_count": torch.cuda.device_count(),
        "peak_bf16_dense_flops": peak,
        "peak_source": "vendor datasheet, dense BF16 tensor core (no sparsity), by device name; null: not in table",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "batch_per_device": batch,
        "tokens_per_sample": tokens,
        "flop_estimate": {
            "method": "parameter counts: 2*N*T per sample forward, 6*N*T per sample training step (embedding "
            "tables excluded, heads once per sample, attention score/value products not included)",
            "towers": estimate,
            "training_step_flops_per_sample": train_flops,
            "counted_flops_per_sample": counted,
        },
        "results": results,
        "seconds": round(time.perf_counter() - started, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=500, help="batch per device (default: 500, the paper's)")
    parser.add_argument("--steps", type=int, default=8, help="timed training steps per variant (default: 8)")
    parser.add_argument("--photos", type=int, default=2000, help="JPEG files embedded from disk (default: 2000)")
    parser.add_argument("--barcodes", type=int, default=20000, help="barcodes embedded (default: 20000)")
    parser.add_argument("--dry_run_cpu", action="store_true", help=argparse.SUPPRESS)  # runs every line on CPU
    args = parser.parse_args(argv)
    if not torch.cuda.is_available() and not args.dry_run_cpu:
        print(SKIP_LINE)
        return 0
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    print(json.dumps(run(args), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
