"""The import rules of the layout (README, Architecture), read from the source: arrows point down only.

- the library (``bioscan_clip`` outside ``bioscan_clip.apps``, ``dataset_scripts``, ``modeling_bioscanclip``) never
  imports an application (``bioscan_clip.apps``, ``train_accelerate``, ``space``);
- a subcommand imports the shared options and the library, never another subcommand;
- no import circle anywhere among our modules, lazy (in-function) imports included.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from conftest import REPO_ROOT

OUR_PACKAGES = ("bioscan_clip", "modeling_bioscanclip", "dataset_scripts")
APPLICATIONS = ("bioscan_clip.apps", "train_accelerate", "space")
COMMANDS = "bioscan_clip.apps.commands"
SHARED_COMMAND_MODULES = (f"{COMMANDS}.options", COMMANDS)


def module_name(path: Path, root: Path = REPO_ROOT) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, root: Path = REPO_ROOT) -> set[str]:
    """Every module a file imports, absolute names (relative imports resolved against its package)."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
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


def source_files(root: Path = REPO_ROOT) -> list[Path]:
    files = [path for name in OUR_PACKAGES for path in (root / name).rglob("*.py")]
    return sorted([*files, root / "train_accelerate.py", *(root / "space").glob("*.py")])


def library_files() -> list[Path]:
    return [path for path in source_files() if not reaches({module_name(path)}, APPLICATIONS)]


def reaches(names: set[str], targets: tuple[str, ...]) -> set[str]:
    return {name for name in names if any(name == t or name.startswith(f"{t}.") for t in targets)}


def import_graph(root: Path = REPO_ROOT) -> dict[str, set[str]]:
    """Module -> the modules of ours it imports (``from pkg import name`` counts as ``pkg.name`` when that is a
    module, else as ``pkg``). A package's ``__init__`` is its own node."""
    files = source_files(root)
    modules = {module_name(path, root) for path in files}
    graph = {}
    for path in files:
        edges = set()
        for name in imported_modules(path, root):
            target = name
            while target and target not in modules:  # `pkg.module.attribute` -> `pkg.module`
                target = target.rpartition(".")[0]
            if target and target != module_name(path, root):
                edges.add(target)
        graph[module_name(path, root)] = edges
    # `from pkg import name` also names `pkg`, which a submodule of `pkg` importing its own package would be: keep
    # only the most specific module of each import.
    return {m: {e for e in edges if not any(o.startswith(f"{e}.") for o in edges)} for m, edges in graph.items()}


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index, low, on_stack, stack, found = {}, {}, set(), [], []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


@pytest.mark.parametrize("path", library_files(), ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_no_library_module_imports_an_application(path):
    assert not reaches(imported_modules(path), APPLICATIONS), path


@pytest.mark.parametrize(
    "path", sorted((REPO_ROOT / "bioscan_clip" / "apps" / "commands").glob("*.py")), ids=lambda p: p.name
)
def test_a_subcommand_never_reaches_into_another(path):
    own = module_name(path)
    others = {name for name in reaches(imported_modules(path), (COMMANDS,)) if name not in SHARED_COMMAND_MODULES}
    others = {name for name in others if not name.startswith(f"{COMMANDS}.options.")}
    assert others <= {own}, f"{own} imports {sorted(others - {own})}"


def test_no_import_circle():
    assert circles(import_graph()) == []


def test_the_circle_rule_fails_when_a_circle_is_added(tmp_path):
    """The rule bites: a copy of the package where the resolver imports the identifier back has a circle."""
    import shutil

    for name in (*OUR_PACKAGES, "space"):
        shutil.copytree(REPO_ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO_ROOT / "train_accelerate.py", tmp_path)
    resolver = tmp_path / "bioscan_clip" / "resolve.py"
    resolver.write_text(
        resolver.read_text() + "\n\ndef _late():\n    from bioscan_clip.identification import identifier\n"
    )
    assert circles(import_graph(tmp_path))


def test_the_hub_code_and_the_metric_import_nothing_above_them():
    for path in (REPO_ROOT / "modeling_bioscanclip").glob("*.py"):
        names = imported_modules(path)
        assert not reaches(names, ("bioscan_clip", "dataset_scripts", "datasets", "accelerate", "gradio", "faiss"))
    for path in (REPO_ROOT / "metrics" / "taxonomic_retrieval").glob("*.py"):
        assert not reaches(imported_modules(path), OUR_PACKAGES), path


def test_test_helpers_are_not_installed():
    installed = "\n".join(path.read_text() for path in (REPO_ROOT / "bioscan_clip").rglob("*.py"))
    for helper in ("def write_untrained_demo_folders", "def hub_cache_layout"):
        assert helper not in installed


def test_train_accelerate_holds_no_logic():
    tree = ast.parse((REPO_ROOT / "train_accelerate.py").read_text())
    kinds = {type(node).__name__ for node in tree.body}
    assert kinds <= {"Expr", "Import", "ImportFrom", "If"}, kinds  # docstring, imports, the __main__ guard
    assert not any(isinstance(node, (ast.FunctionDef, ast.ClassDef)) for node in ast.walk(tree))


def test_every_package_of_ours_is_in_the_distribution():
    """pyproject lists packages by name: a new subpackage left out would be missing from the wheel."""
    tomllib = pytest.importorskip("tomllib")
    listed = set(tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {module_name(init) for name in OUR_PACKAGES for init in (REPO_ROOT / name).rglob("__init__.py")}
    assert found <= listed, sorted(found - listed)
