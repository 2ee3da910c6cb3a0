"""Building this package's wheel from a copy of the tree and making a fresh venv that sees only what it installs
plus the test venv's dependencies (shared by tests/test_wheel.py and tests/test_space_boot.py).

A directory added by a ``.pth`` line is appended to ``sys.path`` but its own ``.pth`` files are not processed, so the
editable install's finder in the test venv's site-packages never activates in the fresh venv.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
# Not part of a distribution; everything else in the tree is copied, as a fresh clone would have it.
NOT_COPIED = shutil.ignore_patterns(
    ".git", ".venv", "runs", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache", ".ruff_cache", ".hypothesis"
)
TEXT = {"capture_output": True, "text": True, "timeout": 300, "check": False}


def check(completed: subprocess.CompletedProcess) -> str:
    assert completed.returncode == 0, (
        f"{completed.args} exited {completed.returncode}\n"
        f"--- stdout (end) ---\n{completed.stdout[-4000:]}\n--- stderr (end) ---\n{completed.stderr[-4000:]}"
    )
    return completed.stdout


def build_wheel(root: Path) -> Path:
    """The wheel, built from a copy of the tree under ``root`` (so the build leaves nothing in the checkout) without
    build isolation (setuptools from the test venv: offline); returns its path in ``root / "dist"``."""
    source = root / "source"
    shutil.copytree(REPO_ROOT, source, ignore=NOT_COPIED)
    dist = root / "dist"
    pip_wheel = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", dist]
    check(subprocess.run([*pip_wheel, "."], cwd=source, **TEXT))
    [wheel] = dist.glob("bioscan_clip-*.whl")
    return wheel


def make_venv(venv: Path) -> Path:
    """A venv without pip or setuptools of its own (the test venv's pip installs into it); returns its python."""
    check(subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], **TEXT))
    return venv / "bin" / "python"


def pip_install(python: Path, *args: str | os.PathLike, cwd: Path | None = None) -> str:
    """``pip install --no-deps --no-index ARGS`` into the venv of ``python``, by the test venv's pip."""
    command = [sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", "-q", *args]
    return check(subprocess.run(command, cwd=cwd, **TEXT))


def expose_test_dependencies(python: Path) -> tuple[Path, set[str]]:
    """Lists the test venv's site-packages in a ``.pth`` of the fresh venv (call it after installing our wheel, so
    pip never sees the editable install); returns the fresh venv's site-packages and the listed folders."""
    site_packages = Path(
        check(
            subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], **TEXT)
        ).strip()
    )
    dependency_dirs = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (site_packages / "_bioscan_clip_test_dependencies.pth").write_text("\n".join(sorted(dependency_dirs)) + "\n")
    return site_packages, dependency_dirs


def isolated_env(venv: Path, root: Path) -> dict[str, str]:
    """The environment of every command in the fresh venv: offline, no PYTHONPATH, private HF_HOME and TMPDIR."""
    (root / "tmp").mkdir(exist_ok=True)
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env.update(
        PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}",
        HF_HOME=str(root / "hf-home"),  # evaluate's module cache and datasets' cache, private to this install
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        GRADIO_ANALYTICS_ENABLED="False",
        TMPDIR=str(root / "tmp"),  # the demo's examples and gradio's cache land here
    )
    return env
