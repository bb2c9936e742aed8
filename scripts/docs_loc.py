"""Count minillm's lines of Python, by area: all lines, and code lines (no blank lines, comments
or docstrings). The "How it compares" page shows this table, made at build time by
scripts/docs_hooks.py, so the figures always match the code the site was built from.

    python scripts/docs_loc.py          # prints the markdown table
"""

from __future__ import annotations

import ast
import io
import sys
import tokenize
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# area -> the modules and packages of minillm/ it holds (first match wins; the rest: "tools")
AREAS = {
    "engine core": ["config", "sequence", "kvcache", "scheduler", "runner", "sampling",
                    "engine", "llm", "tokenizer", "loader", "hub", "__init__", "__main__"],
    "model: layers, models, attention": ["layers", "models", "attention"],
    "Triton kernels": ["kernels"],
    "CUDA graphs": ["cuda_graph"],
    "tensor parallelism": ["distributed", "worker"],
    "server and client": ["server", "client"],
    "visualization (notebooks)": ["viz", "notebook"],
}
TOOLS = "tools: cli, bench, simulate, …"


def code_lines(source: str) -> int:
    """Lines that hold code: not blank, not only a comment, not part of a docstring."""
    tree = ast.parse(source)
    doc_lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                doc_lines.update(range(body[0].lineno, body[0].end_lineno + 1))
    lines: set[int] = set()
    skip = (tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT,
            tokenize.ENDMARKER, tokenize.ENCODING)
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type not in skip:
            lines.update(range(tok.start[0], tok.end[0] + 1))
    return len(lines - doc_lines)


def area_of(path: Path, package: Path) -> str:
    top = path.relative_to(package).parts[0].removesuffix(".py")
    for area, names in AREAS.items():
        if top in names:
            return area
    return TOOLS


def count(package: Path = ROOT / "minillm") -> dict[str, tuple[int, int, int]]:
    """area -> (files, all lines, code lines), in AREAS order, tools last, plus "total"."""
    table: dict[str, list[int]] = {a: [0, 0, 0] for a in [*AREAS, TOOLS]}
    for path in sorted(package.rglob("*.py")):
        source = path.read_text(encoding="utf-8")
        row = table[area_of(path, package)]
        row[0] += 1
        row[1] += len(source.splitlines())
        row[2] += code_lines(source)
    out = {a: tuple(r) for a, r in table.items() if r[0]}
    out["total"] = tuple(sum(r[i] for r in table.values()) for i in range(3))
    return out


def markdown_table(package: Path = ROOT / "minillm") -> str:
    rows = ["| part of `minillm/` | files | lines | code lines |", "|---|--:|--:|--:|"]
    for area, (files, total, code) in count(package).items():
        cells = [area, str(files), f"{total:,}", f"{code:,}"]
        if area == "total":
            cells = [f"**{c}**" for c in cells]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(markdown_table(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "minillm"))
