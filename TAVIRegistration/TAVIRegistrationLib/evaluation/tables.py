"""What the evaluations (``evaluation.seg`` and ``evaluation.reg``) report alike: markdown tables,
number cells, statistics over the finite values of a column, goal checks and box-plot figures.

Each evaluation keeps its own table layout; this module only renders and measures.
Matplotlib is imported by the functions that draw.
"""

from __future__ import annotations

import io
import math
from typing import Dict, Iterable, List, Optional, Sequence

import numpy as np


# ---------------------------------------------------------------------------------------------
# markdown
# ---------------------------------------------------------------------------------------------
def markdown_row(cells: Iterable[object]) -> str:
    """One markdown table row, ``| a | b |``; an empty cell is written ``| |``."""
    return "|" + "|".join(f" {c} " if str(c) else " " for c in cells) + "|"


def markdown_table(header: Sequence[object], align: str, rows: Iterable[Sequence[object]] = ()) -> List[str]:
    """The lines of a markdown table: ``header``, the alignment row (one letter per column of
    ``align``: ``l`` left, ``r`` right) and ``rows``."""
    rule = ["---:" if a == "r" else "---" for a in align]
    return [markdown_row(header), markdown_row(rule)] + [markdown_row(r) for r in rows]


def number_cell(value, spec: str, missing: str = "n/a") -> str:
    """``value`` formatted by ``spec``; ``missing`` for None or a non-finite float."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return missing
    return format(value, spec)


def percent_cell(value, digits: int = 1, missing: str = "n/a") -> str:
    """A fraction as a percentage with ``digits`` decimals (``"95.0 %"``); ``missing`` for None or
    a non-finite value."""
    if value is None or not np.isfinite(value):
        return missing
    return f"{100 * value:.{digits}f} %"


# ---------------------------------------------------------------------------------------------
# statistics over the finite values of a column
# ---------------------------------------------------------------------------------------------
def finite(values: Iterable) -> np.ndarray:
    """The finite values of ``values`` as a float array (None counts as missing)."""
    v = np.array([np.nan if x is None else float(x) for x in values], float)
    return v[np.isfinite(v)]


def median_of(values: Iterable) -> Optional[float]:
    """``np.median`` of the finite values; None when there are none."""
    v = finite(values)
    return float(np.median(v)) if v.size else None


def mean_of(values: Iterable) -> Optional[float]:
    """The mean of the finite values; None when there are none."""
    v = finite(values)
    return float(np.mean(v)) if v.size else None


def percentile_of(values: Iterable, q: float) -> Optional[float]:
    """``np.percentile(..., q)`` of the finite values; None when there are none."""
    v = finite(values)
    return float(np.percentile(v, q)) if v.size else None


# ---------------------------------------------------------------------------------------------
# goals
# ---------------------------------------------------------------------------------------------
def reaches(value: float, op: str, target: float) -> bool:
    """Whether ``value op target`` holds; ``op`` is ``>=``, ``>`` or ``<=``."""
    if op == ">=":
        return value >= target
    if op == ">":
        return value > target
    return value <= target


def goal_check(value: Optional[float], op: str, target: float) -> Dict[str, object]:
    """``{"value", "target" (e.g. ``">= 0.95"``), "met"}`` of one goal; ``met`` is None without a value."""
    met = None if value is None else reaches(value, op, target)
    return {"value": value, "target": f"{op} {target:g}", "met": met}


def goal_cell(text: str, met: Optional[bool]) -> str:
    """A goal's value as a table cell: ``text`` with ``(met)`` or ``(not met)`` when checked."""
    return text + ("" if met is None else (" (met)" if met else " (not met)"))


# ---------------------------------------------------------------------------------------------
# figures
# ---------------------------------------------------------------------------------------------
def figure_png(fig, dpi: Optional[float] = None) -> bytes:
    """PNG bytes of a matplotlib figure (``dpi``: None = matplotlib's default); a pyplot figure is
    closed afterwards."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    if fig.canvas.manager is not None:
        import matplotlib.pyplot as plt

        plt.close(fig)
    return buf.getvalue()


def filled_boxplot(ax, data: Sequence[np.ndarray], positions: Sequence[float], colours: Sequence[str],
                   width: float, alpha: float, **boxplot_options):
    """Box plots of ``data`` at ``positions`` on ``ax``, box ``i`` filled with ``colours[i]`` at
    ``alpha``, outliers shown, medians black; ``boxplot_options`` go to ``Axes.boxplot``. Returns
    its artists."""
    bp = ax.boxplot(data, positions=positions, widths=width, patch_artist=True, showfliers=True, **boxplot_options)
    for patch, c in zip(bp["boxes"], colours):
        patch.set_facecolor(c)
        patch.set_alpha(alpha)
    for med in bp["medians"]:
        med.set_color("black")
    return bp
