"""What every benchmark shares: the sizes, best-of timing, the figure record and the machine's kernels.

Each `benchmarks/bench_*.py` that the runner (`benchmarks/run.py`) drives exposes

    SECTION = "DNA tokenisation"            # the heading its figures go under in RESULTS.md
    def measure(size: str) -> list[Figure]  # size is one of SIZES

and stays runnable on its own (`python benchmarks/bench_x.py --size default`). A figure is always reported beside
the baseline it is compared with (the straightforward code a user would otherwise write, measured in the same run)
and, where one exists, the physical limit (a memory copy, the sgemm rate under the same BLAS setting, ...).
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

# smoke: seconds, run as a test in CI; default: the runner's <= 10 minutes in all; large: by flag, the scale claims.
SIZES = ("smoke", "default", "large")


@dataclass
class Figure:
    """One measured figure beside its baseline (and limit): higher is better for `value` unless `lower_is_better`."""

    name: str
    value: float
    unit: str
    baseline: str = ""
    baseline_value: float | None = None
    limit: str = ""
    limit_value: float | None = None
    target: str = ""  # the target in words, e.g. ">= 10x baseline"
    met: bool | None = None  # None: no target for this figure
    note: str = ""  # the measured cause of a shortfall, or what the figure ran with
    lower_is_better: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        """value / baseline, oriented so that > 1 is better than the baseline."""
        if not self.baseline_value or self.value is None:
            return None
        return self.baseline_value / self.value if self.lower_is_better else self.value / self.baseline_value

    @property
    def of_limit(self) -> float | None:
        """The fraction of the limit reached (1 = at the limit)."""
        if not self.limit_value or self.value is None:
            return None
        return self.limit_value / self.value if self.lower_is_better else self.value / self.limit_value

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ratio": self.ratio, "of_limit": self.of_limit}


def best_of(function: Callable[[], Any], repeats: int = 3) -> float:
    """The best wall time of `repeats` calls (seconds): the least disturbed by the other work on a shared machine."""
    best = float("inf")
    for _ in range(repeats):
        gc.collect()
        start = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - start)
    return best


def interleaved_best(functions: dict[str, Callable[[], Any]], repeats: int = 3) -> dict[str, float]:
    """Best wall time of each function, the calls interleaved so that a slow spell hits all of them alike."""
    best = dict.fromkeys(functions, float("inf"))
    for _ in range(repeats):
        for name, function in functions.items():
            gc.collect()
            start = time.perf_counter()
            function()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def blas_kernels() -> list[dict[str, Any]]:
    """Which BLAS/OpenMP libraries are loaded, with their kernel (`architecture`) and thread count."""
    from threadpoolctl import threadpool_info

    keys = ("user_api", "internal_api", "version", "architecture", "num_threads", "filepath")
    return [{key: info.get(key) for key in keys} for info in threadpool_info()]


def standalone(measure: Callable[[str], list[Figure]], description: str) -> int:
    """`python benchmarks/bench_x.py [--size S]`: one benchmark on its own, its figures printed as JSON lines."""
    import argparse
    import json

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--size", choices=SIZES, default="default")
    args = parser.parse_args()
    for figure in measure(args.size):
        print(json.dumps(figure.as_dict()))
    return 0
