"""Making a Figure: outside pyplot, yet shown as an image when it ends a Jupyter cell.

The draw functions build `matplotlib.figure.Figure` objects directly rather than through
pyplot, so nothing accumulates in pyplot's global figure list and a figure is shown exactly
once: when it is returned (or `display`ed). Jupyter only knows how to render such a Figure
once matplotlib's inline support has registered an image formatter for it, which happens when
pyplot is imported or `%matplotlib inline` runs; `new_figure` registers it if neither has.
"""

from __future__ import annotations

import sys

IMAGE_FORMATS = ("image/png", "image/svg+xml", "image/jpeg", "application/pdf")


def require(module: str) -> None:
    """Fail early, saying which extra to install, when a plotting/widget library is missing."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise ImportError(f"minillm.viz needs {module}: pip install 'minillm[notebooks]'")


def new_figure(width: float, height: float):
    """A constrained-layout Figure of `width` × `height` inches, displayable in Jupyter."""
    from matplotlib.figure import Figure

    _register_jupyter_display(Figure)
    return Figure(figsize=(width, height), layout="constrained")


def _register_jupyter_display(figure_type: type) -> None:
    """Do what `%matplotlib inline` does for display, if running in IPython and not done yet.

    Leaves any format the user chose (svg, retina png) alone: it only acts when no image
    formatter knows Figures.
    """
    ipython = sys.modules.get("IPython")  # never import IPython: only act if already running
    shell = ipython.get_ipython() if ipython is not None else None
    if shell is None or not hasattr(shell, "display_formatter"):
        return
    formatters = shell.display_formatter.formatters
    if any(f in formatters and formatters[f].for_type(figure_type) is not None
           for f in IMAGE_FORMATS):
        return
    from IPython.core.pylabtools import select_figure_formats

    select_figure_formats(shell, {"png"})
