"""Overlay pictures: a fluoroscopy frame with a mask drawn over it (contour or fill).

Colours follow the paper's Fig. 6 when a reference mask is known: true positives yellow, false
positives magenta, false negatives cyan.
"""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
from scipy import ndimage

TP_COLOR = (255, 230, 0)
FP_COLOR = (255, 0, 255)
FN_COLOR = (0, 230, 255)
DEFAULT_COLOR = (255, 140, 0)


def display_frame(frame: np.ndarray, low_pct: float = 1.0, high_pct: float = 99.0) -> np.ndarray:
    """uint8 grey picture of a float frame, windowed to its 1-99 percentiles."""
    f = np.asarray(frame, dtype=np.float64)
    finite = f[np.isfinite(f)]
    if finite.size == 0:
        return np.zeros(f.shape, np.uint8)
    lo, hi = np.percentile(finite, [low_pct, high_pct])
    if hi <= lo:
        hi = lo + 1.0
    return (np.clip((np.nan_to_num(f, nan=lo) - lo) / (hi - lo), 0, 1) * 255).round().astype(np.uint8)


def mask_contour(mask: np.ndarray, width: int = 1) -> np.ndarray:
    """Boolean boundary pixels of a binary mask (inside pixels that touch the outside)."""
    m = np.asarray(mask) > 0
    inner = ndimage.binary_erosion(m, iterations=max(1, int(width)), border_value=0)
    return m & ~inner


def blend(rgb: np.ndarray, where: np.ndarray, color: Tuple[int, int, int], opacity: float) -> None:
    """Blend ``color`` into ``rgb`` (in place) at the boolean pixels ``where``."""
    if not where.any():
        return
    c = np.asarray(color, dtype=np.float64)
    rgb[where] = np.round((1.0 - opacity) * rgb[where] + opacity * c).astype(np.uint8)


def overlay_rgb(frame: np.ndarray, mask: np.ndarray, *, reference: Optional[np.ndarray] = None,
                mode: str = "contour", opacity: float = 0.6, color=DEFAULT_COLOR,
                contour_width: Optional[int] = None) -> np.ndarray:
    """RGB uint8 picture of ``frame`` with ``mask`` drawn over it.

    With ``reference`` (a known fixed mask), pixels are coloured TP/FP/FN; without it, ``mask`` is
    drawn in ``color``. ``mode`` is 'contour' (a line along the mask border) or 'fill'.
    """
    if mode not in ("contour", "fill"):
        raise ValueError(f"mode must be 'contour' or 'fill', not {mode!r}")
    grey = frame if frame.dtype == np.uint8 else display_frame(frame)
    rgb = np.repeat(grey[..., None], 3, axis=2).copy()
    m = np.asarray(mask) > 0
    if contour_width is None:
        contour_width = max(1, round(max(m.shape) / 400))
    if reference is None:
        region = mask_contour(m, contour_width) if mode == "contour" else m
        blend(rgb, region, color, 1.0 if mode == "contour" else opacity)
        return rgb
    ref = np.asarray(reference) > 0
    if mode == "fill":
        blend(rgb, m & ref, TP_COLOR, opacity)
        blend(rgb, m & ~ref, FP_COLOR, opacity)
        blend(rgb, ~m & ref, FN_COLOR, opacity)
    else:
        blend(rgb, mask_contour(ref, contour_width), FN_COLOR, 1.0)
        blend(rgb, mask_contour(m, contour_width), TP_COLOR, 1.0)
    return rgb
