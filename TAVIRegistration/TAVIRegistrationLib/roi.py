"""Regions of interest on a frame: (x = col, y = row, width, height) in frame pixels.

The user draws the ROI on the model's projection; registration maps that part of the projection
onto the frame. One rule for what makes an ROI usable, shared by every step and front end.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np

from .errors import InputError

Roi = Tuple[int, int, int, int]

#: smallest part of an ROI that must lie inside the frame, pixels per side
MIN_ROI_SIDE = 8


def validate_roi(roi: Sequence[int], rows: int, cols: int) -> Roi:
    """Check an ROI against a frame of ``rows`` x ``cols``; raise InputError when unusable."""
    try:
        x, y, w, h = (int(round(float(v))) for v in roi)
    except (TypeError, ValueError):
        raise InputError(f"ROI must be four integers X,Y,W,H, got {roi!r}") from None
    if w <= 0 or h <= 0:
        raise InputError(f"ROI {x},{y},{w},{h} has zero or negative size")
    if x >= cols or y >= rows or x + w <= 0 or y + h <= 0:
        raise InputError(f"ROI {x},{y},{w},{h} lies outside the {cols}x{rows} frame")
    x0, y0 = max(0, x), max(0, y)
    x1, y1 = min(cols, x + w), min(rows, y + h)
    if x1 - x0 < MIN_ROI_SIDE or y1 - y0 < MIN_ROI_SIDE:
        raise InputError(f"ROI {x},{y},{w},{h} keeps less than {MIN_ROI_SIDE}x{MIN_ROI_SIDE} pixels inside the frame")
    return (x0, y0, x1 - x0, y1 - y0)


def bounding_roi(mask: np.ndarray, margin: float = 0.1, min_size: int = 32) -> Optional[Roi]:
    """Bounding box of a mask grown by ``margin`` of its size on each side, clipped to the frame."""
    rows_any = np.flatnonzero(mask.any(axis=1))
    cols_any = np.flatnonzero(mask.any(axis=0))
    if rows_any.size == 0:
        return None
    r0, r1 = rows_any[0], rows_any[-1] + 1
    c0, c1 = cols_any[0], cols_any[-1] + 1
    h, w = r1 - r0, c1 - c0
    grow_r = max(int(round(margin * h)), (min_size - h + 1) // 2, 0)
    grow_c = max(int(round(margin * w)), (min_size - w + 1) // 2, 0)
    rows, cols = mask.shape
    r0, r1 = max(0, r0 - grow_r), min(rows, r1 + grow_r)
    c0, c1 = max(0, c0 - grow_c), min(cols, c1 + grow_c)
    return (int(c0), int(r0), int(c1 - c0), int(r1 - r0))
