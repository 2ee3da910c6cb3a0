"""The benchmark runner at its smallest size: every benchmark runs and RESULTS.md has every section.

This is what keeps the benchmarks runnable (the figures themselves are judged in RESULTS.md, never here).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_runner_smoke_size_writes_every_section(tmp_path, realdata):
    out = tmp_path / "RESULTS.md"
    run = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--size", "smoke", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    report = json.loads(out.with_suffix(".json").read_text())
    sections = {entry["section"] for entry in report["benchmarks"]}
    text = out.read_text()
    assert sections and all(f"## {section}" in text for section in sections)
    assert all(entry["figures"] for entry in report["benchmarks"])
    assert "threadpoolctl" in text and "| figure | value | baseline |" in text
