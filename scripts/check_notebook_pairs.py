"""Check that every notebooks/*.ipynb has a py:percent twin with the same cells, and back.

The twin (notebooks/NN_name.py) is what reviewers read in diffs; the .ipynb carries the outputs
that the docs show. This fails when one was edited without the other.

    python scripts/check_notebook_pairs.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import jupytext

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


def cells(path: Path) -> list[tuple[str, str]]:
    """(cell_type, source) for every cell, ignoring outputs and metadata."""
    nb = jupytext.read(path)
    return [(cell.cell_type, cell.source.strip()) for cell in nb.cells]


def check_pair(ipynb: Path) -> str | None:
    """A line saying what is wrong with this pair, or None if it is in sync."""
    twin = ipynb.with_suffix(".py")
    if not twin.exists():
        return f"{ipynb.name}: no paired {twin.name}"
    a, b = cells(ipynb), cells(twin)
    if a == b:
        return None
    if len(a) != len(b):
        return f"{ipynb.name} has {len(a)} cells, {twin.name} has {len(b)}"
    first = next(i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y)
    return f"{ipynb.name} and {twin.name} differ from cell {first}"


def main() -> int:
    notebooks = sorted(NOTEBOOKS.glob("*.ipynb"))
    if not notebooks:
        print(f"no notebooks found in {NOTEBOOKS}")
        return 1
    problems = [p for p in map(check_pair, notebooks) if p]
    problems += [
        f"{py.name}: no {py.stem}.ipynb (a twin left behind?)"
        for py in sorted(NOTEBOOKS.glob("*.py"))
        if not py.with_suffix(".ipynb").exists()
    ]
    for problem in problems:
        print(f"out of sync: {problem}")
    if problems:
        print("fix: jupytext --sync notebooks/*.ipynb, then re-run the notebook to refresh outputs")
        return 1
    print(f"{len(notebooks)} notebook pair(s) in sync")
    return 0


if __name__ == "__main__":
    sys.exit(main())
