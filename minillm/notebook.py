"""Helpers for the notebooks: errors that say how to fix what went wrong.

Two slips are common when working through `notebooks/`: an optional package is missing (the
figures need matplotlib, notebook 09 the server extra), or a cell runs before the cells it
depends on (after a kernel restart, or when skipping ahead). Python's own errors for these,
`No module named 'matplotlib'` and `name 'runner' is not defined`, say what is wrong but not
what to do; `require` and `need` say both.

Only the standard library is imported here, so `require` can run before anything it checks,
and importing this module never pulls in matplotlib or torch.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Mapping
from typing import Any

# Import name -> what to `pip install` to get it: the extras of pyproject.toml.
INSTALL_HINTS: dict[str, str] = {
    "matplotlib": '"minillm[notebooks]"',
    "ipywidgets": '"minillm[notebooks]"',
    "fastapi": '"minillm[server]"',
    "uvicorn": '"minillm[server]"',
    "zmq": '"minillm[server]"',
    "msgpack": '"minillm[server]"',
    "httpx": '"minillm[server]"',
    "triton": '"minillm[gpu]"',
    "flash_attn": '"minillm[flash]"',
    "openai": "openai",
}


def install_hint(package: str) -> str:
    """What to `pip install` for `package` (an import name): its extra, else the name itself."""
    top = package.split(".")[0]
    return INSTALL_HINTS.get(top, top)


def is_installed(package: str) -> bool:
    """Whether `package` (an import name) can be imported, without importing it."""
    top = package.split(".")[0]
    if sys.modules.get(top) is not None:  # imported already (None there blocks an import)
        return True
    try:
        return importlib.util.find_spec(top) is not None
    except (ImportError, ValueError):
        return False


def require(*packages: str) -> None:
    """Raise `ModuleNotFoundError` naming the missing packages and the pip command for them.

    A notebook's first cell calls it for the optional packages the notebook uses, e.g.
    `require("matplotlib")`, so a missing one fails there, with the fix, rather than in the
    middle of a drawing function.
    """
    missing = [p for p in packages if not is_installed(p)]
    if not missing:
        return
    targets = " ".join(dict.fromkeys(install_hint(p) for p in missing))  # each once, in order
    names = ", ".join(missing)
    raise ModuleNotFoundError(
        f"this notebook needs {names}, not installed in this kernel's environment: "
        f"pip install {targets} (then restart the kernel)",
        name=missing[0],
    )


def need(scope: Mapping[str, Any], *names: str) -> None:
    """Raise `NameError` if any of `names` is not defined in `scope` (pass `globals()`).

    A cell that uses what cells far above it built (a model runner, a running server) calls
    `need(globals(), "runner")` first, so running it out of order says which cells to run.
    """
    missing = [n for n in names if n not in scope]
    if not missing:
        return
    listed = ", ".join(f"`{n}`" for n in missing)
    verb = "is" if len(missing) == 1 else "are"
    raise NameError(
        f"{listed} {verb} not defined yet: run the cells above first, in order, from the top "
        "(in Jupyter: Run > Run All Above Selected Cell)",
        name=missing[0],
    )
