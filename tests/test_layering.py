"""Imports point down the data flow: a walk over the source keeps the layers honest."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("app", "backends", "cli", "lessons", "plugins", "quiz", "settings", "storage", "trainer")
HEAVY = {"torch", "transformers", "peft"}


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def sources():
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            yield package, path


def test_only_bot_py_and_plugins_import_plugins():
    offenders = [str(p.relative_to(REPO)) for pkg, p in sources() if pkg != "plugins" and "plugins" in imports_of(p)]
    assert offenders == []


def test_only_backends_and_trainer_import_torch():
    offenders = [str(p.relative_to(REPO)) for pkg, p in sources()
                 if pkg not in ("backends", "trainer") and imports_of(p) & HEAVY]
    assert offenders == []


def test_the_lesson_engine_knows_neither_discord_nor_torch():
    offenders = [str(p.relative_to(REPO)) for pkg, p in sources()
                 if pkg in ("lessons", "storage", "settings", "quiz") and imports_of(p) & (HEAVY | {"discord"})]
    assert offenders == []
