"""The import rules of the layout (README, Architecture), read from the source: arrows point down only."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from conftest import REPO_ROOT

LIBRARY_PACKAGES = ("bioscan_clip", "modeling_bioscanclip", "dataset_scripts")
ENTRY_POINTS = ("train_accelerate", "space")
COMMAND_MODULES = ("bioscan_clip.cli", "bioscan_clip.commands")


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, absolute names (relative imports resolved against its package)."""
    package = ".".join(path.relative_to(REPO_ROOT).with_suffix("").parts[:-1])
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def library_files() -> list[Path]:
    return sorted(path for name in LIBRARY_PACKAGES for path in (REPO_ROOT / name).rglob("*.py"))


def reaches(names: set[str], targets: tuple[str, ...]) -> set[str]:
    return {name for name in names if any(name == t or name.startswith(f"{t}.") for t in targets)}


@pytest.mark.parametrize("path", library_files(), ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_no_library_module_imports_an_entry_point_or_a_command(path):
    names = imported_modules(path)
    assert not reaches(names, ENTRY_POINTS), path
    if path.parent.name == "bioscan_clip" and path.stem in ("cli", "commands"):
        return  # the command layer itself
    assert not reaches(names, COMMAND_MODULES), path


def test_the_hub_code_and_the_metric_import_nothing_above_them():
    for path in (REPO_ROOT / "modeling_bioscanclip").glob("*.py"):
        names = imported_modules(path)
        assert not reaches(names, ("bioscan_clip", "dataset_scripts", "datasets", "accelerate", "gradio", "faiss"))
    for path in (REPO_ROOT / "metrics" / "taxonomic_retrieval").glob("*.py"):
        assert not reaches(imported_modules(path), LIBRARY_PACKAGES), path


def test_train_accelerate_holds_no_logic():
    tree = ast.parse((REPO_ROOT / "train_accelerate.py").read_text())
    kinds = {type(node).__name__ for node in tree.body}
    assert kinds <= {"Expr", "Import", "ImportFrom", "If"}, kinds  # docstring, imports, the __main__ guard
    assert not any(isinstance(node, (ast.FunctionDef, ast.ClassDef)) for node in ast.walk(tree))
