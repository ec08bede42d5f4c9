"""Every test that docs/guarantees.md and docs/regressions.md name exists, so their links to
the tests cannot rot: `tests/…py::name` (or `test_x.py::name` in regressions.md, which
lives beside tests/regressions/), and bare `tests/…py` files."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = {"guarantees.md": ROOT, "regressions.md": ROOT / "tests" / "regressions"}


def _links() -> list[tuple[str, str, str | None]]:
    found = []
    for doc in DOCS:
        text = (ROOT / "docs" / doc).read_text()
        for path, name in re.findall(r"`((?:tests/)?[\w/]*test_\w+\.py)(?:::(\w+))?", text):
            found.append((doc, path, name or None))
    return found


LINKS = _links()


def test_the_docs_link_tests() -> None:
    assert sum(doc == "guarantees.md" and name is not None for doc, _, name in LINKS) >= 20
    assert sum(doc == "regressions.md" for doc, _, _ in LINKS) >= 10


@pytest.mark.parametrize(("doc", "path", "name"), LINKS)
def test_every_linked_test_exists(doc: str, path: str, name: str | None) -> None:
    file = (ROOT if path.startswith("tests/") else DOCS[doc]) / path
    assert file.is_file(), f"{doc}: no file {path}"
    if name is not None:
        tree = ast.parse(file.read_text())
        names = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
        assert name in names, f"{doc}: no test {name} in {path}"
