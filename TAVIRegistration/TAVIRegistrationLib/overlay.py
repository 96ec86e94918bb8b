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


def label_contour(labels):
    """Boundary pixels of every non-zero label region (4-neighbourhood) as a uint8 0/1 mask.

    A non-zero pixel is on the boundary when one of its 4 neighbours holds another label or lies
    outside the image, so touching regions of different labels each keep their outline.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError("label_contour needs a 2-D array, got shape %s" % (labels.shape,))
    if labels.size == 0:
        return np.zeros(labels.shape, np.uint8)
    padded = np.pad(labels, 1, mode="constant", constant_values=0)
    centre = padded[1:-1, 1:-1]
    differs = ((padded[:-2, 1:-1] != centre) | (padded[2:, 1:-1] != centre)
               | (padded[1:-1, :-2] != centre) | (padded[1:-1, 2:] != centre))
    return ((centre != 0) & differs).astype(np.uint8)


def mask_contour(mask, width=1):
    """Boundary pixels (uint8 0/1) of a mask: inside pixels within ``width`` 4-neighbour steps of
    the outside (the image border counts as outside)."""
    m = np.asarray(mask) != 0
    if width <= 1:
        return label_contour(m)
    inner = ndimage.binary_erosion(m, iterations=int(width), border_value=0)
    return (m & ~inner).astype(np.uint8)


def display_frame(image, low_percentile=1.0, high_percentile=99.0, window=None):
    """Map a grey image to uint8 for display.

    ``window=(low, high)`` gives the grey range explicitly; otherwise it is the
    ``low_percentile``..``high_percentile`` range of the finite pixels (falling back to min/max
    when that range is empty). NaN and inf pixels show black.
    """
    a = np.asarray(image, dtype=np.float32)
    if a.ndim != 2:
        raise ValueError("display_frame needs a 2-D image, got shape %s" % (a.shape,))
    finite = np.isfinite(a)
    if window is not None:
        low, high = float(window[0]), float(window[1])
    else:
        values = a[finite]
        if values.size == 0:
            return np.zeros(a.shape, np.uint8)
        if values.size > 2_000_000:  # percentiles of a regular subsample are as good and faster
            values = values[:: values.size // 1_000_000]
        low, high = (float(v) for v in np.percentile(values, [low_percentile, high_percentile]))
        if not high > low:
            low, high = float(values.min()), float(values.max())
    if not high > low:
        out = np.where(a > low, 255, 0) if low <= 0 else np.where(a >= low, 255, 0)
        out[~finite] = 0
        return out.astype(np.uint8)
    scaled = (a - low) * (255.0 / (high - low))
    scaled[~finite] = 0
    return np.clip(scaled + 0.5, 0, 255).astype(np.uint8)


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
        region = mask_contour(m, contour_width) > 0 if mode == "contour" else m
        blend(rgb, region, color, 1.0 if mode == "contour" else opacity)
        return rgb
    ref = np.asarray(reference) > 0
    if mode == "fill":
        blend(rgb, m & ref, TP_COLOR, opacity)
        blend(rgb, m & ~ref, FP_COLOR, opacity)
        blend(rgb, ~m & ref, FN_COLOR, opacity)
    else:
        blend(rgb, mask_contour(ref, contour_width) > 0, FN_COLOR, 1.0)
        blend(rgb, mask_contour(m, contour_width) > 0, TP_COLOR, 1.0)
    return rgb


#: the border around the overlay of a flagged (low-agreement) registration, in every front end
FLAG_COLOR = (255, 40, 40)
FLAG_BORDER_PX = 6


def mark_flagged(rgb: np.ndarray) -> np.ndarray:
    """A copy of an overlay picture with a red border: the registration is flagged (low agreement),
    and the picture alone must say so wherever it ends up."""
    out = np.array(rgb, dtype=np.uint8, copy=True)
    b = max(1, min(FLAG_BORDER_PX, min(out.shape[:2]) // 20))
    out[:b], out[-b:], out[:, :b], out[:, -b:] = FLAG_COLOR, FLAG_COLOR, FLAG_COLOR, FLAG_COLOR
    return out
