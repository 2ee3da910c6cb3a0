"""The built wheel, installed alone in a fresh venv, runs the main job and serves the demo (no source checkout).

Isolation: the wheel is built from a copy of the tree and installed with ``--no-deps --no-index`` into a new venv.
The test venv's dependencies (torch, transformers, gradio, ...) are made visible to it by one ``.pth`` line naming
the test venv's site-packages. A directory added by a ``.pth`` line is appended to ``sys.path`` but its own ``.pth``
files are not processed, so the editable install's finder (``__editable__.bioscan_clip-*.pth`` there) never
activates: our packages come from the wheel or not at all. Every command runs from a temporary folder outside the
repository with ``PYTHONPATH`` unset, and the first check asserts where each of our modules was imported from.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import load_script
from wheel_build import REPO_ROOT, build_wheel, expose_test_dependencies, isolated_env, make_venv, pip_install
from wheel_build import check as _check

pytestmark = pytest.mark.slow

OUR_MODULES = ("bioscan_clip", "modeling_bioscanclip", "dataset_scripts")
DEMO_START_TIMEOUT_S = 120


@dataclass
class FreshInstall:
    venv: Path
    python: Path
    bin_dir: Path
    site_packages: Path
    dependency_dirs: set[str]  # the test venv's site-packages, listed in the fresh venv's .pth
    work_dir: Path  # the working directory of every command: outside the repository
    env: dict[str, str]

    def run(self, *args: str, timeout: float = 600, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(
            args, cwd=self.work_dir, env={**self.env, **(env or {})}, capture_output=True, text=True, timeout=timeout,
            check=False,
        )  # fmt: skip


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def fresh_install(tmp_path_factory) -> FreshInstall:
    root = tmp_path_factory.mktemp("wheel")
    wheel = build_wheel(root)  # 1. from a copy of the tree (tests/wheel_build.py)
    # 2. A fresh venv holding the wheel alone, installed before the .pth below exists, so pip never sees, nor tries
    # to uninstall, the editable install.
    venv = root / "venv"
    python = make_venv(venv)
    pip_install(python, wheel)
    # 3. The test venv's dependencies, visible without their .pth files (see the module docstring).
    site_packages, dependency_dirs = expose_test_dependencies(python)
    work_dir = root / "cwd"
    work_dir.mkdir()
    env = isolated_env(venv, root)
    return FreshInstall(venv, python, venv / "bin", site_packages, dependency_dirs, work_dir, env)


_WHERE_FROM = """
import importlib, json, os, sys
from bioscan_clip.evaluation.metric import METRIC_DIR, metric_module
print(json.dumps({
    "files": {name: importlib.import_module(name).__file__ for name in sys.argv[1:]},
    "metric_dir": str(METRIC_DIR),
    "metric_module": metric_module().__file__,
    "meta_path": [repr(finder) for finder in sys.meta_path],
    "sys_path": [os.path.abspath(entry) for entry in sys.path],  # "" is the working directory
}))
"""

_EVALUATE_LOAD = """
import json
import evaluate
from bioscan_clip.evaluation.metric import METRIC_DIR
row = {"order": ["O", "O"], "family": ["F", "F"], "genus": ["G", "H"], "species": ["G a", "H b"]}
truth = {"order": "O", "family": "F", "genus": "H", "species": "H b"}
metric = evaluate.load(str(METRIC_DIR))
print(json.dumps(metric.compute(predictions=[row], references=[truth], is_unseen=[False], k_list=[1, 2])))
"""


def test_our_modules_come_from_the_wheel(fresh_install):
    completed = fresh_install.run(str(fresh_install.python), "-c", _WHERE_FROM, *OUR_MODULES)
    report = json.loads(_check(completed).splitlines()[-1])
    for name, file in report["files"].items():
        assert Path(file).is_relative_to(fresh_install.site_packages), (name, file)
    metric_dir = Path(report["metric_dir"])
    assert metric_dir == fresh_install.site_packages / "bioscan_clip" / "taxonomic_retrieval"
    assert (metric_dir / "README.md").is_file() and Path(report["metric_module"]).parent == metric_dir
    assert not any("editable" in finder.lower() for finder in report["meta_path"]), report["meta_path"]
    # Nothing of the checkout on sys.path but the test venv's site-packages (for the dependencies).
    in_checkout = {entry for entry in report["sys_path"] if Path(entry).resolve().is_relative_to(REPO_ROOT)}
    assert in_checkout <= fresh_install.dependency_dirs, in_checkout
    # Negative control: without the wheel's site-packages, nothing else on the path (the test venv's site-packages
    # with its editable finder included) provides our packages.
    for name in OUR_MODULES:
        hide_wheel = f"import sys; sys.path.remove({str(fresh_install.site_packages)!r}); import {name}"
        completed = fresh_install.run(str(fresh_install.python), "-c", hide_wheel)
        assert completed.returncode != 0 and f"No module named '{name}'" in completed.stderr, completed.stderr[-2000:]


def test_training_entry_point_runs_from_the_wheel(fresh_install):
    # What `accelerate launch -m bioscan_clip.apps.train` runs, without train_accelerate.py from a checkout.
    completed = fresh_install.run(
        str(fresh_install.python), "-m", "bioscan_clip.apps.train", "--preset", "clibd-5m", "--help"
    )
    help_text = " ".join(_check(completed).split())  # argparse wraps to the terminal's width
    assert "--resume_from_checkpoint" in help_text and "(default: 500)" in help_text


def test_evaluate_loads_the_installed_metric(fresh_install):
    result = json.loads(_check(fresh_install.run(str(fresh_install.python), "-c", _EVALUATE_LOAD)).splitlines()[-1])
    assert result["seen/genus/micro/top1"] == 0.0 and result["seen/genus/micro/top2"] == 1.0
    assert result["seen/order/micro/top1"] == 1.0 and result["unseen/species/micro/top1"] is None


@pytest.fixture(scope="module")
def quickstart_dir(fresh_install) -> Path:
    """The README's main job, run from the wheel exactly as documented (minutes on a 2-core CPU), with the CPU kernels
    pinned to AVX2 (``KERNELS``, as the README says), so that CI's CPU does not change the digits."""
    table = load_script("main_job_table")
    program, *args = table.COMMAND.split()
    _check(fresh_install.run(str(fresh_install.bin_dir / program), *args, timeout=1200, env=table.KERNELS))
    return fresh_install.work_dir / args[args.index("--out") + 1]


def test_quickstart_from_the_wheel(quickstart_dir):
    assert (quickstart_dir / "model").is_dir() and any((quickstart_dir / "model").glob("*.safetensors"))
    assert (quickstart_dir / "keys").is_dir()
    results = json.loads((quickstart_dir / "evaluation" / "results.json").read_text())
    assert results


def test_the_readme_main_job_table_is_what_the_documented_command_gives(quickstart_dir):
    """The only check that the README's figures are still what the code produces: the main job, installed from the
    wheel and run as the README documents it on its documented seed, renders exactly the README's table."""
    table = load_script("main_job_table")
    assert table.render(table.read_run(quickstart_dir)) == table.readme_block(table.README.read_text())


def test_demo_from_the_wheel_serves_its_page(fresh_install, quickstart_dir):
    port = _free_port()
    command = [
        str(fresh_install.bin_dir / "bioscan-clip"),
        "demo",
        "--model",
        str(quickstart_dir / "model"),
        "--keys",
        str(quickstart_dir / "keys"),
        "--port",
        str(port),
    ]
    log = fresh_install.work_dir / "demo.log"
    with open(log, "w") as log_handle:
        server = subprocess.Popen(
            command, cwd=fresh_install.work_dir, env=fresh_install.env, stdout=log_handle, stderr=subprocess.STDOUT
        )
        try:
            status = None
            deadline = time.monotonic() + DEMO_START_TIMEOUT_S
            while time.monotonic() < deadline and server.poll() is None:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:
                        status = response.status
                        page = response.read().decode("utf-8", "replace")
                    break
                except (urllib.error.URLError, ConnectionError, TimeoutError):
                    time.sleep(0.5)
            if status is None:
                what = f"exited with {server.returncode}" if server.poll() is not None else "still starting"
                pytest.fail(
                    f"no page at port {port} after {DEMO_START_TIMEOUT_S} s; the demo {what}:\n{log.read_text()}"
                )
            assert status == 200
            assert "gradio" in page.lower()
        finally:
            server.terminate()
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait(timeout=20)
