"""RELIABILITY.md names tests; each must exist (and each bracketed case id must be a case of its table)."""

from __future__ import annotations

import ast
import re

from conftest import REPO_ROOT

REFERENCE = re.compile(r"`(tests/[\w/]+\.py)::(\w+)(?:\[([\w-]+)\])?`")


def test_every_test_named_in_reliability_md_exists():
    text = (REPO_ROOT / "RELIABILITY.md").read_text()
    references = REFERENCE.findall(text)
    assert len(references) >= 20
    missing = []
    for path, name, case in references:
        source = (REPO_ROOT / path).read_text()
        functions = {n.name for n in ast.walk(ast.parse(source)) if isinstance(n, ast.FunctionDef)}
        if name not in functions or (case and f'"{case}"' not in source):
            missing.append(f"{path}::{name}" + (f"[{case}]" if case else ""))
    assert not missing, f"RELIABILITY.md names tests that do not exist: {missing}"


def test_every_reliability_test_is_named_in_reliability_md():
    text = (REPO_ROOT / "RELIABILITY.md").read_text()
    for path in ("tests/test_reliability.py", "tests/test_reliability_inputs.py"):
        tree = ast.parse((REPO_ROOT / path).read_text())
        tests = [n.name for n in tree.body if isinstance(n, ast.FunctionDef) and n.name.startswith("test_")]
        unnamed = [name for name in tests if f"{path}::{name}" not in text]
        assert not unnamed, f"{path}: add these to RELIABILITY.md: {unnamed}"
