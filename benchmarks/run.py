"""Runs every benchmark and writes benchmarks/RESULTS.md (and RESULTS.json): each figure beside its baseline and limit.

    python benchmarks/run.py                       # default sizes, <= 10 minutes in all on 2 cores
    python benchmarks/run.py --size smoke          # seconds per benchmark (what tests/test_benchmarks.py runs)
    python benchmarks/run.py --size large          # the scale claims (long)
    python benchmarks/run.py --only training       # the benchmarks whose file name contains "training"
    python benchmarks/run.py --only barcode --update   # re-run those sections only, keeping the report's others

A benchmark is a `benchmarks/bench_*.py` module with `SECTION` and `measure(size) -> list[Figure]` (common.py).
Each runs in a fresh Python process (its thread settings and memory cannot leak into the next, and a crash is
that benchmark's failure only). A failed benchmark is reported in RESULTS.md with its error and the run exits 1.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.metadata
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import SIZES, Figure, blas_kernels  # noqa: E402

# Per benchmark, at most (seconds); past it the benchmark is reported as failed.
TIMEOUTS = {"smoke": 120, "default": 600, "large": 6 * 3600}
VERSIONED = ("torch", "numpy", "faiss-cpu", "transformers", "datasets", "accelerate", "pillow", "threadpoolctl")


def load_module(path: Path) -> Any:
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # a benchmark's dataclasses look their module up while it loads
    spec.loader.exec_module(module)
    return module


def is_benchmark(path: Path) -> bool:
    """Whether a bench_*.py file implements the runner's interface (read from its text: importing it is work)."""
    text = path.read_text(encoding="utf-8")
    return "\nSECTION = " in text and "\ndef measure(" in text


def run_one(path: Path, size: str, out: Path) -> None:
    """In the worker process: measure one benchmark and write its figures as JSON to `out`."""
    module = load_module(path)
    started = time.perf_counter()
    figures = module.measure(size)
    if not figures or not all(isinstance(figure, Figure) or hasattr(figure, "as_dict") for figure in figures):
        raise TypeError(f"{path.name}: measure() returned {figures!r}, expected a non-empty list of Figure")
    record = {
        "section": module.SECTION,
        "seconds": round(time.perf_counter() - started, 1),
        "figures": [figure.as_dict() for figure in figures],
    }
    out.write_text(json.dumps(record, indent=2, default=float))


def measure_in_process(path: Path, size: str, timeout: float) -> dict[str, Any]:
    """Runs one benchmark in a fresh interpreter; its record, or one with `error` when it fails or times out."""
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        out = Path(tmp) / "figures.json"
        command = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--worker",
            str(path),
            "--size",
            size,
            "--json",
            str(out),
        ]
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
        started = time.perf_counter()
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
        except subprocess.TimeoutExpired:
            return {"module": path.name, "error": f"timed out after {timeout:.0f} s", "seconds": round(timeout, 1)}
        seconds = round(time.perf_counter() - started, 1)
        if result.returncode != 0 or not out.exists():
            tail = (result.stderr or result.stdout).strip().splitlines()[-12:]
            return {"module": path.name, "error": f"exit {result.returncode}: " + "\n".join(tail), "seconds": seconds}
        record = json.loads(out.read_text())
        return {"module": path.name, **record, "wall_seconds": seconds}


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = round(int(line.split()[1]) / 1024**2, 1)
    except OSError:
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu": cpu,
        "logical_cores": os.cpu_count(),
        "usable_cores": usable,
        "memory_gib": memory,
        "load_average": [round(value, 2) for value in os.getloadavg()] if hasattr(os, "getloadavg") else None,
        "env": {name: os.environ.get(name) for name in ("OPENBLAS_CORETYPE", "OMP_NUM_THREADS", "MKL_NUM_THREADS")},
    }


def versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {"python": platform.python_version()}
    for name in VERSIONED:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


def kernels() -> list[dict[str, Any]]:
    """The BLAS/OpenMP libraries that numpy, torch and faiss load here (each benchmark's process loads the same)."""
    import numpy  # noqa: F401
    import torch  # noqa: F401

    with contextlib.suppress(ImportError):
        import faiss  # noqa: F401
    return blas_kernels()


def _number(value: Any, digits: int = 3) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        if value != value:  # NaN
            return "nan"
        return f"{value:,.{digits}g}" if abs(value) < 1000 else f"{value:,.0f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render(report: dict[str, Any]) -> str:
    lines = [
        "# Benchmark results",
        "",
        f"Written by `python benchmarks/run.py --size {report['size']}` on {report['date']} "
        f"({report['seconds']:.0f} s in all). Each figure is beside its baseline (the straightforward code, "
        "measured in the same run) and, where one exists, its limit; ratio = figure / baseline, oriented so that "
        "> 1 is better. Other work on the machine disturbs timings: ratios come from interleaved runs, best of N."
        + (" Sections re-run since with `--update` say when." if report.get("updated") else ""),
        "",
        "## Machine",
        "",
    ]
    box = report["machine"]
    lines += [
        f"- CPU: {box['cpu']}; {box['usable_cores']} usable of {box['logical_cores']} logical cores; "
        f"{box['memory_gib']} GiB memory; load average at the start {box['load_average']}",
        "- environment: " + ", ".join(f"{k}={v}" for k, v in box["env"].items()),
        "- versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items()),
        "",
        "BLAS and OpenMP kernels (threadpoolctl):",
        "",
        "| library | API | version | kernel | threads |",
        "|---|---|---|---|---:|",
    ]
    for kernel in report["kernels"]:
        lines.append(
            f"| {Path(kernel.get('filepath') or '').name} | {kernel.get('internal_api')} | {kernel.get('version')} "
            f"| {kernel.get('architecture') or ''} | {kernel.get('num_threads')} |"
        )
    lines.append("")
    for record in report["benchmarks"]:
        title = record.get("section") or record["module"]
        when = f", re-run on {record['date']} at --size {record['size']}" if record.get("date") else ""
        lines += [f"## {title}", "", f"`{record['module']}`, {record.get('seconds', '?')} s{when}.", ""]
        if "error" in record:
            lines += ["**FAILED**:", "", "```", record["error"], "```", ""]
            continue
        lines += [
            "| figure | value | baseline | ratio | limit | of limit | target | met | note |",
            "|---|---:|---|---:|---|---:|---|---|---|",
        ]
        for figure in record["figures"]:
            unit = figure.get("unit", "")
            baseline = figure.get("baseline") or ""
            if figure.get("baseline_value") is not None:
                baseline += f": {_number(figure['baseline_value'])} {unit}"
            limit = figure.get("limit") or ""
            if figure.get("limit_value") is not None:
                limit += f": {_number(figure['limit_value'])} {unit}"
            met = {True: "yes", False: "**no**", None: ""}[figure.get("met")]
            ratio = f"{figure['ratio']:.2f}x" if figure.get("ratio") is not None else ""
            of_limit = f"{figure['of_limit']:.3f}" if figure.get("of_limit") is not None else ""
            cells = [
                figure["name"], f"{_number(figure['value'])} {unit}", baseline, ratio, limit, of_limit,
                figure.get("target", ""), met, figure.get("note", ""),
            ]  # fmt: skip
            lines.append("| " + " | ".join(_cell(cell) for cell in cells) + " |")
        lines.append("")
    skipped = report.get("not_benchmarks")
    if skipped:
        lines += ["Not run (no `SECTION`/`measure`; run on their own): " + ", ".join(f"`{n}`" for n in skipped), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=SIZES, default="default")
    parser.add_argument("--only", action="append", help="run the benchmarks whose file name contains this (repeatable)")
    parser.add_argument("--out", default=str(HERE / "RESULTS.md"), help="the Markdown report (JSON beside it)")
    parser.add_argument(
        "--update",
        action="store_true",
        help="replace only the sections run now in the existing report (each re-run section says its date and size)",
    )
    parser.add_argument("--bench_dir", default=str(HERE), help=argparse.SUPPRESS)
    parser.add_argument("--timeout", type=float, help="seconds per benchmark (default by size)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # internal: measure one module
    parser.add_argument("--json", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        run_one(Path(args.worker), args.size, Path(args.json))
        return 0

    paths = sorted(Path(args.bench_dir).glob("bench_*.py"))
    if args.only:
        paths = [path for path in paths if any(name in path.stem for name in args.only)]
        if not paths:
            parser.error(f"--only {args.only}: no benchmarks/bench_*.py matches")
    benchmarks = [path for path in paths if is_benchmark(path)]
    started = time.perf_counter()
    report: dict[str, Any] = {
        "size": args.size,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "versions": versions(),
        "kernels": kernels(),
        "benchmarks": [],
        "not_benchmarks": [path.name for path in paths if path not in benchmarks],
    }
    timeout = args.timeout or TIMEOUTS[args.size]
    for path in benchmarks:
        print(f"{path.name} ({args.size}) ...", file=sys.stderr, flush=True)
        record = measure_in_process(path, args.size, timeout)
        report["benchmarks"].append(record)
        state = (
            f"FAILED: {record['error'].splitlines()[-1]}" if "error" in record else f"{len(record['figures'])} figures"
        )
        print(f"  {record.get('seconds')} s, {state}", file=sys.stderr, flush=True)
    report["seconds"] = round(time.perf_counter() - started, 1)
    out = Path(args.out)
    if args.update and out.with_suffix(".json").is_file():
        for record in report["benchmarks"]:
            record.update(date=report["date"], size=args.size)
        fresh = {record["module"]: record for record in report["benchmarks"]}
        previous = json.loads(out.with_suffix(".json").read_text())
        kept = [fresh.pop(r["module"], r) for r in previous["benchmarks"]]  # in place, in the report's order
        ran = {record["module"] for record in report["benchmarks"]}
        not_benchmarks = [name for name in previous.get("not_benchmarks", []) if name not in ran]
        report = {**previous, "benchmarks": kept + list(fresh.values()), "updated": report["date"],
                  "not_benchmarks": not_benchmarks}  # fmt: skip
    out.parent.mkdir(parents=True, exist_ok=True)
    from bioscan_clip.safe_io import atomic_output_file

    for path, text in ((out, render(report)), (out.with_suffix(".json"), json.dumps(report, indent=2, default=str))):
        with atomic_output_file(path) as temporary:  # a kill leaves the previous report whole
            Path(temporary).write_text(text + "\n", encoding="utf-8")
    failed = [record["module"] for record in report["benchmarks"] if "error" in record]
    print(f"wrote {out} and {out.with_suffix('.json')}" + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
