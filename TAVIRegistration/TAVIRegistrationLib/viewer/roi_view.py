"""Image view with a rectangular region of interest (ROI) editor and a mask overlay.

Two widgets, usable in 3D Slicer (PythonQt) and under PyQt5 through :mod:`.qt_compat`:

* :class:`ImageRoiView` (a ``QGraphicsView``): a grey image auto-windowed to its 1-99 %
  percentiles, an optional binary mask overlay (fill or contour, one colour) and an optional
  RGB overlay (e.g. TP/FP/FN colours), both with one opacity; a rectangular ROI drawn, moved
  and resized with the mouse; zoom with the wheel around the cursor, pan with the middle or
  right button (or Space + left button).
* :class:`RoiEditor` (a ``QWidget``): the view plus numeric ROI fields, Clear and Fit buttons,
  an overlay opacity slider and a fill/contour switch. No QMainWindow: it fits a module panel.

Coordinates (the project's convention): images are numpy arrays indexed ``(row, col)`` with the
origin top-left; points are ``(x = col, y = row)``. An ROI is ``(x, y, w, h)`` in whole image
pixels: it covers columns ``x .. x+w-1`` and rows ``y .. y+h-1``, i.e. the half-open pixel
rectangle ``[x, x+w) x [y, y+h)``. Continuous image coordinates (:meth:`ImageRoiView.viewToImage`)
put pixel ``(col, row)`` on ``[col, col+1) x [row, row+1)``: its centre is ``(col+0.5, row+0.5)``
and ``floor`` gives the pixel index. ROI edges snap to the nearest pixel boundary.

Signal contract (both widgets):

* ``roiChanged(object)``: emitted whenever the ROI value changes, whatever the source (mouse,
  keyboard, numeric fields, :meth:`setRoi`, a new image that clamps it). The argument is a tuple
  of four Python ints ``(x, y, w, h)``, or ``None`` when the ROI is cleared. During a mouse drag
  it is emitted each time the integer ROI changes, not for every mouse move.
* ``roiEditingFinished(object)``: emitted once when a user edit ends (mouse release, key
  nudge or clear, numeric field edit, Clear button), same argument. Use it to start expensive
  work (registration) that should not run for every intermediate drag position.
"""

import math

import numpy as np

from .qt_compat import qt, Signal, qget, inverted, event_pos, enum_int, qimage_from_array
from ..overlay import display_frame, label_contour, mask_contour

__all__ = [
    "HANDLES", "OVERLAY_MODES",
    "normalize_roi", "clamp_roi", "roi_from_points", "move_roi", "resize_roi",
    "handle_points", "hit_test", "composite_overlay",
    "ImageRoiView", "RoiEditor",
]

#: Handle names: corners first (they win ties in :func:`hit_test`), then edge midpoints.
HANDLES = ("tl", "tr", "br", "bl", "t", "r", "b", "l")
OVERLAY_MODES = ("fill", "contour")
MIN_ROI_SIZE = 2


# ----------------------------------------------------------------------------------------------
# Pure helpers (no Qt)
# ----------------------------------------------------------------------------------------------

def _round(v):
    """Round half up (not to even) to an int: pixel boundaries must not depend on parity."""
    return int(math.floor(float(v) + 0.5))


def normalize_roi(roi):
    """``None`` or an empty sequence -> ``None``; otherwise ``(x, y, w, h)`` as ints.

    Negative sizes are flipped (``(10, 10, -4, 5)`` -> ``(6, 10, 4, 5)``). Raises ``ValueError``
    for a sequence that is not of length 4 or holds non-finite numbers.
    """
    if roi is None:
        return None
    values = tuple(roi)
    if len(values) == 0:
        return None
    if len(values) != 4:
        raise ValueError("an ROI is (x, y, w, h), got %r" % (roi,))
    floats = [float(v) for v in values]
    if not all(math.isfinite(v) for v in floats):
        raise ValueError("ROI values must be finite, got %r" % (roi,))
    x, y, w, h = (_round(v) for v in floats)
    if w < 0:
        x, w = x + w, -w
    if h < 0:
        y, h = y + h, -h
    return (x, y, w, h)


def _clamp_span(a0, a1, n, min_size):
    a0 = min(max(a0, 0), n)
    a1 = min(max(a1, 0), n)
    if a1 - a0 < min_size:
        a1 = a0 + min_size
        if a1 > n:
            a1 = n
            a0 = n - min_size
    return a0, a1


def clamp_roi(roi, shape, min_size=MIN_ROI_SIZE):
    """Clamp an ROI to an image of ``shape`` ``(rows, cols, ...)``.

    The ROI is intersected with the image, then grown to ``min_size`` on each side (inwards at
    the image border). Returns ``None`` for ``None`` or when the image is smaller than
    ``min_size``.
    """
    roi = normalize_roi(roi)
    if roi is None:
        return None
    rows, cols = int(shape[0]), int(shape[1])
    if cols < min_size or rows < min_size:
        return None
    x, y, w, h = roi
    x0, x1 = _clamp_span(x, x + w, cols, min_size)
    y0, y1 = _clamp_span(y, y + h, rows, min_size)
    return (x0, y0, x1 - x0, y1 - y0)


def _span_from_drag(a, b, n, min_size):
    a = min(max(_round(a), 0), n)
    b = min(max(_round(b), 0), n)
    lo, hi = min(a, b), max(a, b)
    if hi - lo < min_size:
        if b >= a:  # dragging towards larger coordinates: grow that way
            hi = lo + min_size
            if hi > n:
                hi, lo = n, n - min_size
        else:
            lo = hi - min_size
            if lo < 0:
                lo, hi = 0, min_size
    return lo, hi


def roi_from_points(p0, p1, shape, min_size=MIN_ROI_SIZE):
    """ROI spanned by a drag from ``p0`` to ``p1`` (continuous image coordinates ``(x, y)``).

    Edges snap to the nearest pixel boundary and are clamped to the image; an ROI thinner than
    ``min_size`` grows in the drag direction. ``None`` when the image is smaller than ``min_size``.
    """
    rows, cols = int(shape[0]), int(shape[1])
    if cols < min_size or rows < min_size:
        return None
    x0, x1 = _span_from_drag(p0[0], p1[0], cols, min_size)
    y0, y1 = _span_from_drag(p0[1], p1[1], rows, min_size)
    return (x0, y0, x1 - x0, y1 - y0)


def move_roi(roi, dx, dy, shape):
    """Translate an ROI by whole pixels, keeping its size and keeping it inside the image."""
    roi = clamp_roi(roi, shape)
    if roi is None:
        return None
    rows, cols = int(shape[0]), int(shape[1])
    x, y, w, h = roi
    x = min(max(x + _round(dx), 0), cols - w)
    y = min(max(y + _round(dy), 0), rows - h)
    return (x, y, w, h)


def resize_roi(roi, handle, x, y, shape, min_size=MIN_ROI_SIZE):
    """Move the edge(s) that ``handle`` names to the continuous image point ``(x, y)``.

    ``handle`` is one of :data:`HANDLES`. The moved edges snap to the nearest pixel boundary,
    stay inside the image and stop ``min_size`` pixels before the opposite edge (no flipping).
    """
    if handle not in HANDLES:
        raise ValueError("unknown handle %r" % (handle,))
    roi = clamp_roi(roi, shape, min_size)
    if roi is None:
        return None
    rows, cols = int(shape[0]), int(shape[1])
    x0, y0, w, h = roi
    x1, y1 = x0 + w, y0 + h
    if "l" in handle:
        x0 = min(max(_round(x), 0), x1 - min_size)
    if "r" in handle:
        x1 = max(min(_round(x), cols), x0 + min_size)
    if "t" in handle:
        y0 = min(max(_round(y), 0), y1 - min_size)
    if "b" in handle:
        y1 = max(min(_round(y), rows), y0 + min_size)
    return (x0, y0, x1 - x0, y1 - y0)


def handle_points(rect):
    """Centres of the eight handles of ``rect = (left, top, right, bottom)``: ``{name: (x, y)}``."""
    x0, y0, x1, y1 = (float(v) for v in rect)
    xm, ym = 0.5 * (x0 + x1), 0.5 * (y0 + y1)
    return {
        "tl": (x0, y0), "tr": (x1, y0), "br": (x1, y1), "bl": (x0, y1),
        "t": (xm, y0), "r": (x1, ym), "b": (xm, y1), "l": (x0, ym),
    }


def hit_test(rect, point, handle_size=8.0, tolerance=3.0):
    """What a press at ``point`` grabs on the ROI ``rect = (left, top, right, bottom)``.

    Both are in the same (screen) units. Returns a handle name (the nearest handle whose square
    of side ``handle_size`` grown by ``tolerance`` contains the point; corners win ties), an
    edge name (``'l'``, ``'r'``, ``'t'``, ``'b'``) when the point is within ``tolerance`` of an
    edge, ``'inside'`` when strictly inside, else ``None``.
    """
    px, py = float(point[0]), float(point[1])
    x0, y0, x1, y1 = (float(v) for v in rect)
    reach = 0.5 * float(handle_size) + float(tolerance)
    best, best_d = None, None
    points = handle_points(rect)
    for name in HANDLES:
        hx, hy = points[name]
        d = max(abs(px - hx), abs(py - hy))
        if d <= reach and (best_d is None or d < best_d):
            best, best_d = name, d
    if best is not None:
        return best
    tol = float(tolerance)
    within_x = x0 - tol <= px <= x1 + tol
    within_y = y0 - tol <= py <= y1 + tol
    if within_y and abs(px - x0) <= tol:
        return "l"
    if within_y and abs(px - x1) <= tol:
        return "r"
    if within_x and abs(py - y0) <= tol:
        return "t"
    if within_x and abs(py - y1) <= tol:
        return "b"
    if x0 < px < x1 and y0 < py < y1:
        return "inside"
    return None


def _rgb_labels(rgb):
    rgb = rgb.astype(np.uint32)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


def composite_overlay(base, mask=None, color=(255, 0, 0), rgb=None, opacity=0.5, mode="fill"):
    """Blend overlays onto a display image; returns (H, W, 3) uint8.

    ``base``: (H, W) uint8 grey or (H, W, 3) uint8 RGB. ``rgb``: (H, W, 3) uint8 overlay whose
    black pixels are transparent (drawn first). ``mask``: 0/1 mask drawn in ``color`` on top.
    ``mode`` ``'contour'`` draws only region boundaries (:func:`mask_contour`,
    :func:`label_contour` per colour). ``opacity`` in 0..1 applies to both overlays.
    """
    if mode not in OVERLAY_MODES:
        raise ValueError("overlay mode must be one of %s, got %r" % (OVERLAY_MODES, mode))
    base = np.asarray(base, dtype=np.uint8)
    rgb_base = np.repeat(base[:, :, None], 3, axis=2) if base.ndim == 2 else base[..., :3]
    opacity = float(min(max(opacity, 0.0), 1.0))
    if opacity <= 0.0 or (mask is None and rgb is None):
        return np.ascontiguousarray(rgb_base)
    out = rgb_base.astype(np.float32)
    # whole-array arithmetic: much faster than boolean indexing on large, scattered masks
    if rgb is not None:
        rgb = np.asarray(rgb, dtype=np.uint8)[..., :3]
        labels = _rgb_labels(rgb)
        sel = label_contour(labels) if mode == "contour" else (labels != 0)
        alpha = sel.astype(np.float32)[:, :, None] * opacity
        out += (rgb.astype(np.float32) - out) * alpha
    if mask is not None:
        m = np.asarray(mask) != 0
        sel = mask_contour(m) if mode == "contour" else m
        alpha = sel.astype(np.float32)[:, :, None] * opacity
        out += (np.asarray(color, dtype=np.float32)[:3] - out) * alpha
    out += 0.5
    np.clip(out, 0, 255, out=out)
    return out.astype(np.uint8)


# ----------------------------------------------------------------------------------------------
# Qt widgets
# ----------------------------------------------------------------------------------------------

_CURSORS = {
    "tl": "SizeFDiagCursor", "br": "SizeFDiagCursor", "tr": "SizeBDiagCursor",
    "bl": "SizeBDiagCursor", "l": "SizeHorCursor", "r": "SizeHorCursor",
    "t": "SizeVerCursor", "b": "SizeVerCursor", "inside": "SizeAllCursor",
}


def _has(flags, flag):
    return bool(enum_int(flags) & enum_int(flag))


class ImageRoiView(qt.QGraphicsView):
    """Grey image + overlays + rectangular ROI editor (see the module docstring).

    Mouse: left-drag outside the ROI draws a new one (a click without drag keeps the old ROI);
    left-drag inside moves it; the 8 handles or the edges resize it; wheel zooms around the
    cursor; middle/right drag, or Space + left drag, pans. Keys: Escape/Delete/Backspace clear
    the ROI, arrows move it by 1 pixel (10 with Shift), F fits the image to the window.

    Event handlers call their base as ``qt.QGraphicsView.xxxEvent(self, event)`` rather than
    ``super()``: the form PythonQt's wrapped classes are known to support.
    """

    roiChanged = Signal(object)
    roiEditingFinished = Signal(object)
    #: pixel ``(col, row)`` under the mouse, or ``None`` when it leaves the image
    cursorMoved = Signal(object)
    #: current zoom (screen pixels per image pixel)
    zoomChanged = Signal(float)

    HANDLE_SIZE = 8          # screen pixels, whatever the zoom
    HIT_TOLERANCE = 3        # screen pixels around handles and edges
    DRAG_THRESHOLD = 3       # screen pixels before a press becomes a drag
    MAX_ZOOM = 64.0
    ROI_COLOR = (255, 196, 0)

    def __init__(self, parent=None):
        super().__init__(parent)
        self._scene = qt.QGraphicsScene(self)
        self.setScene(self._scene)
        self._configureView()

        self._source = None       # the array given to setImage (for cursor values)
        self._display = None      # (H, W) uint8 or (H, W, 3) uint8 after windowing
        self._mask = None
        self._maskColor = (255, 0, 0)
        self._rgb = None
        self._opacity = 0.5
        self._mode = "fill"
        self._drawn = (None, None)
        self._drawnKey = None
        self._overlayVersion = 0
        self._roi = None
        self._autoFit = True
        self._drag = None
        self._spaceHeld = False

        self._buildItems()
        self._updateRoiItems()

    def _configureView(self):
        """Dark, frameless, no scroll bars, no automatic anchoring (zoom and pan are done here)."""
        self.setBackgroundBrush(qt.QBrush(qt.QColor(18, 18, 20)))
        self.setFrameShape(qt.QFrame.NoFrame)
        self.setHorizontalScrollBarPolicy(qt.Qt.ScrollBarAlwaysOff)
        self.setVerticalScrollBarPolicy(qt.Qt.ScrollBarAlwaysOff)
        self.setTransformationAnchor(qt.QGraphicsView.NoAnchor)
        self.setResizeAnchor(qt.QGraphicsView.NoAnchor)
        self.setDragMode(qt.QGraphicsView.NoDrag)
        self.setViewportUpdateMode(qt.QGraphicsView.FullViewportUpdate)
        self.setFocusPolicy(qt.Qt.StrongFocus)
        self.setMouseTracking(True)
        self.viewport().setMouseTracking(True)
        self.setMinimumSize(160, 120)
        self.setSizePolicy(qt.QSizePolicy.Expanding, qt.QSizePolicy.Expanding)

    def _addItem(self, item, z):
        item.setZValue(z)
        self._scene.addItem(item)
        return item

    def _buildItems(self):
        """The scene's items, bottom to top: the picture, the shade outside the ROI, the ROI's
        shadow and outline, its 8 handles (a constant size on screen)."""
        self._pixItem = self._addItem(qt.QGraphicsPixmapItem(), 0)

        self._shadeItem = qt.QGraphicsPathItem()
        self._shadeItem.setBrush(qt.QBrush(qt.QColor(0, 0, 0, 90)))
        self._shadeItem.setPen(qt.QPen(qt.Qt.NoPen))
        self._addItem(self._shadeItem, 1)

        under = qt.QPen(qt.QColor(0, 0, 0, 200))
        under.setWidthF(3.0)
        under.setCosmetic(True)
        self._roiShadow = qt.QGraphicsRectItem()
        self._roiShadow.setPen(under)
        self._addItem(self._roiShadow, 2)

        pen = qt.QPen(qt.QColor(*self.ROI_COLOR))
        pen.setWidthF(1.5)
        pen.setCosmetic(True)
        self._roiItem = qt.QGraphicsRectItem()
        self._roiItem.setPen(pen)
        self._addItem(self._roiItem, 3)

        s = float(self.HANDLE_SIZE)
        handlePen = qt.QPen(qt.QColor(40, 40, 40))
        handlePen.setCosmetic(True)
        self._handleItems = {}
        for name in HANDLES:
            item = qt.QGraphicsRectItem(-s / 2, -s / 2, s, s)
            item.setFlag(qt.QGraphicsItem.ItemIgnoresTransformations, True)
            item.setBrush(qt.QBrush(qt.QColor(255, 255, 255)))
            item.setPen(handlePen)
            self._handleItems[name] = self._addItem(item, 4)

    # ------------------------------------------------------------------ image and overlays
    def setImage(self, image, window=None):
        """Show ``image``: (H, W) grey (any numeric dtype) or (H, W, 3) uint8 RGB; ``None`` clears.

        Grey images are windowed to their 1-99 % percentiles unless ``window=(low, high)``.
        A new size refits the view, drops overlays of the old size and clamps the ROI; the same
        size keeps zoom, overlays and ROI (frame by frame browsing).
        """
        oldShape = self.imageShape()
        if image is None:
            self._source = self._display = None
            self._mask = self._rgb = None
            self._pixItem.setPixmap(qt.QPixmap())
            self._setRoi(None, emit=True)
            self._updateRoiItems()
            return
        array = np.asarray(image)
        if array.ndim == 2:
            display = display_frame(array, window=window)
        elif array.ndim == 3 and array.shape[2] in (3, 4) and array.dtype == np.uint8:
            display = np.ascontiguousarray(array[..., :3])
        else:
            raise ValueError("setImage needs (H, W) grey or (H, W, 3) uint8, got %s %s"
                             % (array.dtype, array.shape))
        if array.shape[0] == 0 or array.shape[1] == 0:
            raise ValueError("setImage got an empty image %s" % (array.shape,))
        self._source = array
        self._display = display
        shape = display.shape[:2]
        if oldShape != shape:
            self._mask = self._rgb = None
            rows, cols = shape
            margin = 20.0 * max(rows, cols) + 1000.0
            self._scene.setSceneRect(qt.QRectF(-margin, -margin, cols + 2 * margin, rows + 2 * margin))
        self._render(overlaysChanged=True)
        if oldShape != shape:
            self._autoFit = True
            self.fit()
        self._setRoi(self._roi, emit=True)
        self._updateRoiItems()  # an ROI set before any image existed becomes visible now

    def imageShape(self):
        """``(rows, cols)`` of the shown image, or ``None``."""
        return None if self._display is None else tuple(int(v) for v in self._display.shape[:2])

    def _checkOverlayShape(self, array, what):
        shape = self.imageShape()
        if shape is None:
            raise ValueError("set the image before the %s" % what)
        if tuple(array.shape[:2]) != shape:
            raise ValueError("%s shape %s does not match the image %s" % (what, array.shape[:2], shape))

    def setOverlay(self, mask, color=(255, 0, 0)):
        """Binary overlay (non-zero = inside) of the image's size drawn in ``color``; ``None`` removes it."""
        if mask is None:
            self._mask = None
        else:
            mask = np.asarray(mask)
            if mask.ndim != 2:
                raise ValueError("overlay mask must be 2-D, got %s" % (mask.shape,))
            self._checkOverlayShape(mask, "overlay mask")
            self._mask = (mask != 0).astype(np.uint8)
            self._maskColor = tuple(int(c) for c in color[:3])
        self._render(overlaysChanged=True)

    def setOverlayRgb(self, rgb):
        """RGB overlay (H, W, 3) uint8 of the image's size, black = transparent; ``None`` removes it."""
        if rgb is None:
            self._rgb = None
        else:
            rgb = np.asarray(rgb)
            if rgb.ndim != 3 or rgb.shape[2] < 3:
                raise ValueError("RGB overlay must be (H, W, 3), got %s" % (rgb.shape,))
            self._checkOverlayShape(rgb, "RGB overlay")
            self._rgb = np.ascontiguousarray(rgb[..., :3], dtype=np.uint8)
        self._render(overlaysChanged=True)

    def setOverlayOpacity(self, opacity):
        """Opacity of both overlays, clamped to 0..1."""
        opacity = float(min(max(float(opacity), 0.0), 1.0))
        if opacity != self._opacity:
            self._opacity = opacity
            self._render()

    def overlayOpacity(self):
        return self._opacity

    def setOverlayMode(self, mode):
        """``'fill'`` (every overlay pixel) or ``'contour'`` (boundary pixels only)."""
        if mode not in OVERLAY_MODES:
            raise ValueError("overlay mode must be one of %s, got %r" % (OVERLAY_MODES, mode))
        if mode != self._mode:
            self._mode = mode
            self._render()

    def overlayMode(self):
        return self._mode

    def hasOverlay(self):
        return self._mask is not None or self._rgb is not None

    def renderedImage(self):
        """The displayed image with its overlays, (H, W, 3) uint8 at image resolution (or None)."""
        if self._display is None:
            return None
        key = (self._mode, self._overlayVersion)
        if self._drawnKey != key:  # contours are computed once per overlay and mode
            mask, rgb = self._mask, self._rgb
            if self._mode == "contour":
                mask = None if mask is None else mask_contour(mask)
                if rgb is not None:
                    rgb = rgb * label_contour(_rgb_labels(rgb))[:, :, None]
            self._drawn = (mask, rgb)
            self._drawnKey = key
        mask, rgb = self._drawn
        return composite_overlay(self._display, mask, self._maskColor, rgb, self._opacity, "fill")

    def imageValue(self, col, row):
        """Value of the source image at pixel ``(col, row)`` or ``None`` outside."""
        if self._source is None:
            return None
        rows, cols = self._source.shape[:2]
        if 0 <= row < rows and 0 <= col < cols:
            return self._source[int(row), int(col)]
        return None

    def _render(self, overlaysChanged=False):
        if overlaysChanged:
            self._overlayVersion += 1
        rgb = self.renderedImage()
        if rgb is None:
            return
        self._pixItem.setPixmap(qt.QPixmap.fromImage(qimage_from_array(rgb)))
        self._scene.update()

    # ------------------------------------------------------------------ ROI
    def roi(self):
        """Current ROI ``(x, y, w, h)`` in image pixels, or ``None``."""
        return self._roi

    def setRoi(self, roi):
        """Set the ROI (clamped to the image, at least 2x2 pixels); ``None`` or ``()`` clears it.

        Emits ``roiChanged`` when the value changes.
        """
        self._setRoi(roi, emit=True)

    def clearRoi(self):
        self._setRoi(None, emit=True)

    def _setRoi(self, roi, emit):
        shape = self.imageShape()
        roi = normalize_roi(roi) if shape is None else clamp_roi(roi, shape)
        if roi == self._roi:
            return False
        self._roi = roi
        self._updateRoiItems()
        if emit:
            self.roiChanged.emit(roi)
        return True

    def _updateRoiItems(self):
        visible = self._roi is not None and self._display is not None
        for item in [self._roiItem, self._roiShadow, self._shadeItem] + list(self._handleItems.values()):
            item.setVisible(visible)
        if not visible:
            return
        x, y, w, h = self._roi
        rect = qt.QRectF(x, y, w, h)
        self._roiItem.setRect(rect)
        self._roiShadow.setRect(rect)
        rows, cols = self.imageShape()
        path = qt.QPainterPath()
        path.addRect(qt.QRectF(0, 0, cols, rows))
        path.addRect(rect)
        self._shadeItem.setPath(path)
        for name, (hx, hy) in handle_points((x, y, x + w, y + h)).items():
            self._handleItems[name].setPos(hx, hy)

    # ------------------------------------------------------------------ mapping and zoom
    def _toPointF(self, x, y):
        if y is None:
            if isinstance(x, (tuple, list)):
                return qt.QPointF(float(x[0]), float(x[1]))
            return qt.QPointF(x)
        return qt.QPointF(float(x), float(y))

    def imageToView(self, x, y=None):
        """Continuous image point ``(x, y)`` (or a QPointF) -> viewport pixel ``(x, y)`` floats."""
        p = self.viewportTransform().map(self._toPointF(x, y))
        return (p.x(), p.y())

    def viewToImage(self, x, y=None):
        """Viewport point ``(x, y)`` (or a QPointF) -> continuous image ``(x, y)`` floats."""
        p = inverted(self.viewportTransform()).map(self._toPointF(x, y))
        return (p.x(), p.y())

    def zoom(self):
        """Screen pixels per image pixel."""
        return float(self.transform().m11())

    def _fitScale(self):
        shape = self.imageShape()
        if shape is None:
            return 1.0
        rows, cols = shape
        pad = 8.0
        vw = max(float(qget(self.viewport(), "width")) - 2 * pad, 16.0)
        vh = max(float(qget(self.viewport(), "height")) - 2 * pad, 16.0)
        return min(vw / cols, vh / rows)

    def _setScale(self, scale):
        self.setTransform(qt.QTransform.fromScale(scale, scale))
        smooth = scale < 1.0
        self._pixItem.setTransformationMode(
            qt.Qt.SmoothTransformation if smooth else qt.Qt.FastTransformation)
        self.zoomChanged.emit(float(scale))

    def fit(self):
        """Zoom and centre so the whole image fits the window (done again on resize until the
        user zooms or pans)."""
        shape = self.imageShape()
        if shape is None:
            return
        rows, cols = shape
        self._setScale(self._fitScale())
        self.centerOn(cols / 2.0, rows / 2.0)
        self._autoFit = True

    def _scrollBy(self, dx, dy):
        h, v = self.horizontalScrollBar(), self.verticalScrollBar()
        h.setValue(int(qget(h, "value")) + _round(dx))
        v.setValue(int(qget(v, "value")) + _round(dy))

    def zoomBy(self, factor, anchor=None):
        """Multiply the zoom by ``factor`` keeping the image point under the viewport point
        ``anchor`` (``(x, y)`` or QPointF; default: viewport centre) fixed."""
        if self.imageShape() is None:
            return
        if anchor is None:
            anchor = (0.5 * float(qget(self.viewport(), "width")),
                      0.5 * float(qget(self.viewport(), "height")))
        anchor = self._toPointF(anchor, None)
        imagePoint = self.viewToImage(anchor)
        lo = min(self._fitScale() / 8.0, 1.0)
        scale = min(max(self.zoom() * float(factor), lo), self.MAX_ZOOM)
        self._setScale(scale)
        vx, vy = self.imageToView(imagePoint)
        self._scrollBy(vx - anchor.x(), vy - anchor.y())
        self._autoFit = False

    # ------------------------------------------------------------------ events
    def resizeEvent(self, event):
        qt.QGraphicsView.resizeEvent(self, event)
        if self._autoFit:
            self.fit()

    def wheelEvent(self, event):
        delta = event.angleDelta().y()
        if delta == 0 or self.imageShape() is None:
            event.ignore()
            return
        self.zoomBy(math.pow(1.0015, delta), event_pos(event))
        event.accept()

    def _roiViewRect(self):
        if self._roi is None:
            return None
        x, y, w, h = self._roi
        x0, y0 = self.imageToView(x, y)
        x1, y1 = self.imageToView(x + w, y + h)
        return (x0, y0, x1, y1)

    def _hitTest(self, viewPoint):
        rect = self._roiViewRect()
        if rect is None:
            return None
        return hit_test(rect, (viewPoint.x(), viewPoint.y()), self.HANDLE_SIZE, self.HIT_TOLERANCE)

    def _setCursorShape(self, name):
        self.viewport().setCursor(qt.QCursor(getattr(qt.Qt, name)))

    def mousePressEvent(self, event):
        self.setFocus()
        pos = event_pos(event)
        button = event.button()
        panButton = button in (qt.Qt.MiddleButton, qt.Qt.RightButton)
        if panButton or (button == qt.Qt.LeftButton and self._spaceHeld):
            self._drag = {"mode": "pan", "last": (pos.x(), pos.y()), "button": button}
            self._setCursorShape("ClosedHandCursor")
            event.accept()
            return
        if button != qt.Qt.LeftButton or self.imageShape() is None:
            qt.QGraphicsView.mousePressEvent(self, event)
            return
        hit = self._hitTest(pos)
        pressImage = self.viewToImage(pos)
        drag = {"mode": "draw", "press": (pos.x(), pos.y()), "pressImage": pressImage,
                "roiAtPress": self._roi, "moved": False, "button": button}
        if hit == "inside":
            drag["mode"] = "move"
        elif hit is not None:
            drag["mode"] = "resize"
            drag["handle"] = hit
            x, y, w, h = self._roi
            edgeX = x if "l" in hit else (x + w if "r" in hit else pressImage[0])
            edgeY = y if "t" in hit else (y + h if "b" in hit else pressImage[1])
            drag["offset"] = (pressImage[0] - edgeX, pressImage[1] - edgeY)
        self._drag = drag
        event.accept()

    def mouseMoveEvent(self, event):
        pos = event_pos(event)
        drag = self._drag
        if drag is None:
            self._hover(pos)
            event.accept()
            return
        if drag["mode"] == "pan":
            lx, ly = drag["last"]
            self._scrollBy(lx - pos.x(), ly - pos.y())
            drag["last"] = (pos.x(), pos.y())
            self._autoFit = False
            event.accept()
            return
        if not drag["moved"]:
            px, py = drag["press"]
            if max(abs(pos.x() - px), abs(pos.y() - py)) < self.DRAG_THRESHOLD:
                event.accept()
                return
            drag["moved"] = True
        shape = self.imageShape()
        cx, cy = self.viewToImage(pos)
        ix, iy = drag["pressImage"]
        if drag["mode"] == "draw":
            roi = roi_from_points((ix, iy), (cx, cy), shape)
        elif drag["mode"] == "move":
            roi = move_roi(drag["roiAtPress"], cx - ix, cy - iy, shape)
        else:
            ox, oy = drag["offset"]
            roi = resize_roi(drag["roiAtPress"], drag["handle"], cx - ox, cy - oy, shape)
        self._setRoi(roi, emit=True)
        self._emitCursor(cx, cy)
        event.accept()

    def mouseReleaseEvent(self, event):
        drag = self._drag
        if drag is None or event.button() != drag["button"]:
            qt.QGraphicsView.mouseReleaseEvent(self, event)
            return
        self._drag = None
        if drag["mode"] != "pan" and self._roi != drag["roiAtPress"]:
            self.roiEditingFinished.emit(self._roi)
        self._hover(event_pos(event))
        event.accept()

    def mouseDoubleClickEvent(self, event):
        # a double click is a press for us (keeps drawing responsive); no default handling
        self.mousePressEvent(event)

    def _emitCursor(self, x, y):
        shape = self.imageShape()
        col, row = int(math.floor(x)), int(math.floor(y))
        if shape is not None and 0 <= row < shape[0] and 0 <= col < shape[1]:
            self.cursorMoved.emit((col, row))
        else:
            self.cursorMoved.emit(None)

    def _hover(self, pos):
        if self._spaceHeld:
            self._setCursorShape("OpenHandCursor")
        else:
            hit = self._hitTest(pos)
            self._setCursorShape(_CURSORS.get(hit, "CrossCursor"))
        if self.imageShape() is not None:
            self._emitCursor(*self.viewToImage(pos))

    def leaveEvent(self, event):
        self.cursorMoved.emit(None)
        qt.QGraphicsView.leaveEvent(self, event)

    def keyPressEvent(self, event):
        key = event.key()
        if key in (qt.Qt.Key_Escape, qt.Qt.Key_Delete, qt.Qt.Key_Backspace):
            self._drag = None
            if self._roi is not None:
                self._setRoi(None, emit=True)
                self.roiEditingFinished.emit(None)
            event.accept()
            return
        if key == qt.Qt.Key_Space:
            if not event.isAutoRepeat():
                self._spaceHeld = True
                if self._drag is None:
                    self._setCursorShape("OpenHandCursor")
            event.accept()
            return
        arrows = {qt.Qt.Key_Left: (-1, 0), qt.Qt.Key_Right: (1, 0),
                  qt.Qt.Key_Up: (0, -1), qt.Qt.Key_Down: (0, 1)}
        if key in arrows and self._roi is not None and self._drag is None:
            step = 10 if _has(event.modifiers(), qt.Qt.ShiftModifier) else 1
            dx, dy = arrows[key]
            if self._setRoi(move_roi(self._roi, dx * step, dy * step, self.imageShape()), emit=True):
                self.roiEditingFinished.emit(self._roi)
            event.accept()
            return
        if key == qt.Qt.Key_F:
            self.fit()
            event.accept()
            return
        qt.QGraphicsView.keyPressEvent(self, event)

    def keyReleaseEvent(self, event):
        if event.key() == qt.Qt.Key_Space and not event.isAutoRepeat():
            self._spaceHeld = False
            if self._drag is None:
                self._setCursorShape("CrossCursor")
            event.accept()
            return
        qt.QGraphicsView.keyReleaseEvent(self, event)

    def focusOutEvent(self, event):
        self._spaceHeld = False
        qt.QGraphicsView.focusOutEvent(self, event)


class RoiEditor(qt.QWidget):
    """:class:`ImageRoiView` with numeric ROI fields, Clear/Fit buttons and overlay controls.

    Re-emits the view's ``roiChanged`` and ``roiEditingFinished`` (same contract, see the module
    docstring). The numeric fields and the drawing stay in sync both ways; programmatic updates
    of the fields block their signals, so no loop can start.
    """

    roiChanged = Signal(object)
    roiEditingFinished = Signal(object)

    def __init__(self, parent=None):
        super().__init__(parent)
        self._syncing = False
        self.view = ImageRoiView(self)

        layout = qt.QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(6)
        layout.addWidget(self.view, 1)

        # Controls in a grid narrow enough for a Slicer module panel (about 330 px):
        #   ROI origin  x [  ]  y [  ]  [Clear]
        #   ROI size    w [  ]  h [  ]
        #   Overlay     [Fill|Contour] ----o---- 60 %
        controls = qt.QGridLayout()
        controls.setContentsMargins(6, 0, 6, 0)
        controls.setHorizontalSpacing(4)
        controls.setVerticalSpacing(6)
        controls.setColumnMinimumWidth(1, 4)
        controls.setColumnStretch(3, 1)
        controls.setColumnStretch(5, 1)
        layout.addLayout(controls)
        self._buildRoiFields(controls)
        self._buildOverlayControls(controls)
        layout.addLayout(self._buildStatusRow())

        self.view.roiChanged.connect(self._onViewRoiChanged)
        self.view.roiEditingFinished.connect(self._onViewEditingFinished)
        self.view.cursorMoved.connect(self._onCursorMoved)
        self.view.zoomChanged.connect(lambda *args: self._updateInfo())
        self._cursor = None
        self._updateOpacityLabel()
        self._updateEnabled()
        self._syncSpinBoxes()
        self._updateInfo()

    def _buildRoiFields(self, controls):
        """Rows 0 and 1 of the grid: the ROI's x, y, w, h spin boxes and Clear."""
        self.spinBoxes = {}
        fields = (("x", 0, 2, "Left column of the ROI (image pixels)"),
                  ("y", 0, 4, "Top row of the ROI (image pixels)"),
                  ("w", 1, 2, "ROI width (pixels)"),
                  ("h", 1, 4, "ROI height (pixels)"))
        for row, text in ((0, "ROI origin"), (1, "ROI size")):
            label = qt.QLabel(text)
            label.setToolTip("Region of interest in image pixels: drag on the image to draw it")
            controls.addWidget(label, row, 0)
        for name, row, column, tip in fields:
            label = qt.QLabel(name)
            label.setAlignment(qt.Qt.AlignRight | qt.Qt.AlignVCenter)
            label.setMinimumWidth(14)
            spin = qt.QSpinBox()
            spin.setKeyboardTracking(False)   # apply typed numbers on Enter / focus out
            spin.setAccelerated(True)
            spin.setToolTip(tip)
            spin.setAlignment(qt.Qt.AlignRight)
            spin.setSizePolicy(qt.QSizePolicy.Expanding, qt.QSizePolicy.Fixed)
            if name in ("w", "h"):
                spin.setSpecialValueText("\u2013")  # shown while there is no ROI
            label.setBuddy(spin)
            controls.addWidget(label, row, column)
            controls.addWidget(spin, row, column + 1)
            spin.valueChanged.connect(self._onSpinEdited)
            self.spinBoxes[name] = spin
        self.clearButton = qt.QToolButton()
        self.clearButton.setText("Clear")
        self.clearButton.setToolTip("Remove the ROI (Esc or Delete in the image)")
        self.clearButton.setSizePolicy(qt.QSizePolicy.Preferred, qt.QSizePolicy.Fixed)
        self.clearButton.clicked.connect(self._onClearClicked)
        controls.setColumnMinimumWidth(6, 6)
        controls.addWidget(self.clearButton, 0, 7)

    def _buildOverlayControls(self, controls):
        """Row 2 of the grid: Fill/Contour and the opacity slider."""
        self.overlayLabel = qt.QLabel("Overlay")
        controls.addWidget(self.overlayLabel, 2, 0)
        overlayRow = qt.QHBoxLayout()
        overlayRow.setSpacing(0)
        self.fillButton = qt.QToolButton()
        self.fillButton.setText("Fill")
        self.contourButton = qt.QToolButton()
        self.contourButton.setText("Contour")
        self.modeGroup = qt.QButtonGroup(self)
        self.modeGroup.setExclusive(True)
        for button, tip in ((self.fillButton, "Draw the overlay as filled regions"),
                            (self.contourButton, "Draw only the overlay outlines")):
            button.setCheckable(True)
            button.setToolTip(tip)
            self.modeGroup.addButton(button)
            overlayRow.addWidget(button)
        self.fillButton.setChecked(True)
        self.fillButton.toggled.connect(self._onModeToggled)
        overlayRow.addSpacing(10)
        self.opacitySlider = qt.QSlider(qt.Qt.Horizontal)
        self.opacitySlider.setRange(0, 100)
        self.opacitySlider.setSingleStep(5)
        self.opacitySlider.setPageStep(10)
        self.opacitySlider.setMinimumWidth(60)
        self.opacitySlider.setToolTip("Overlay opacity")
        self.opacitySlider.setValue(_round(self.view.overlayOpacity() * 100))
        self.opacitySlider.valueChanged.connect(self._onOpacitySlider)
        overlayRow.addWidget(self.opacitySlider, 1)
        overlayRow.addSpacing(6)
        self.opacityValueLabel = qt.QLabel("100 %")
        self.opacityValueLabel.setMinimumWidth(qget(self.opacityValueLabel, "sizeHint").width())
        self.opacityValueLabel.setAlignment(qt.Qt.AlignRight | qt.Qt.AlignVCenter)
        overlayRow.addWidget(self.opacityValueLabel)
        controls.addLayout(overlayRow, 2, 2, 1, 6)

    def _buildStatusRow(self):
        """The status line: image size, zoom, pixel under the cursor; Fit."""
        statusRow = qt.QHBoxLayout()
        statusRow.setContentsMargins(6, 0, 6, 6)
        self.infoLabel = qt.QLabel()
        self.infoLabel.setTextInteractionFlags(qt.Qt.TextSelectableByMouse)
        self.infoLabel.setSizePolicy(qt.QSizePolicy.Ignored, qt.QSizePolicy.Preferred)
        statusRow.addWidget(self.infoLabel, 1)
        self.fitButton = qt.QToolButton()
        self.fitButton.setText("Fit")
        self.fitButton.setToolTip("Fit the whole image to the view (F)")
        self.fitButton.clicked.connect(lambda *args: self.view.fit())
        statusRow.addWidget(self.fitButton)
        return statusRow

    # ---------------------------------------------------------------- public API (delegates)
    def setImage(self, image, window=None):
        self.view.setImage(image, window=window)
        shape = self.view.imageShape()
        rows, cols = shape if shape is not None else (0, 0)
        self._syncing = True
        try:
            for name, limit in (("x", cols - MIN_ROI_SIZE), ("y", rows - MIN_ROI_SIZE),
                                ("w", cols), ("h", rows)):
                spin = self.spinBoxes[name]
                spin.blockSignals(True)
                spin.setRange(0, max(limit, 0))
                spin.blockSignals(False)
        finally:
            self._syncing = False
        self._syncSpinBoxes()
        self._updateEnabled()
        self._updateInfo()

    def setOverlay(self, mask, color=(255, 0, 0)):
        self.view.setOverlay(mask, color)
        self._updateEnabled()

    def setOverlayRgb(self, rgb):
        self.view.setOverlayRgb(rgb)
        self._updateEnabled()

    def setOverlayOpacity(self, opacity):
        self.view.setOverlayOpacity(opacity)
        self.opacitySlider.blockSignals(True)
        self.opacitySlider.setValue(_round(self.view.overlayOpacity() * 100))
        self.opacitySlider.blockSignals(False)
        self._updateOpacityLabel()

    def overlayOpacity(self):
        return self.view.overlayOpacity()

    def setOverlayMode(self, mode):
        self.view.setOverlayMode(mode)
        button = self.contourButton if mode == "contour" else self.fillButton
        self.fillButton.blockSignals(True)
        button.setChecked(True)
        self.fillButton.blockSignals(False)

    def overlayMode(self):
        return self.view.overlayMode()

    def setRoi(self, roi):
        self.view.setRoi(roi)

    def roi(self):
        return self.view.roi()

    def clearRoi(self):
        self.view.clearRoi()

    def fit(self):
        self.view.fit()

    # ---------------------------------------------------------------- internals
    def _syncSpinBoxes(self):
        roi = self.view.roi()
        values = roi if roi is not None else (0, 0, 0, 0)
        self._syncing = True
        try:
            for name, value in zip(("x", "y", "w", "h"), values):
                spin = self.spinBoxes[name]
                if int(qget(spin, "value")) != value:
                    spin.blockSignals(True)
                    spin.setValue(int(value))
                    spin.blockSignals(False)
        finally:
            self._syncing = False

    def _onViewRoiChanged(self, roi):
        self._syncSpinBoxes()
        self._updateEnabled()
        self.roiChanged.emit(roi)

    def _onViewEditingFinished(self, roi):
        self.roiEditingFinished.emit(roi)

    def _onSpinEdited(self, *args):
        if self._syncing or self.view.imageShape() is None:
            return
        x, y, w, h = (int(qget(self.spinBoxes[n], "value")) for n in ("x", "y", "w", "h"))
        before = self.view.roi()
        if before is None and (w < MIN_ROI_SIZE or h < MIN_ROI_SIZE):
            return  # wait until both sizes are given
        self.view.setRoi((x, y, max(w, MIN_ROI_SIZE), max(h, MIN_ROI_SIZE)))
        self._syncSpinBoxes()  # show the clamped value even when the ROI did not change
        if self.view.roi() != before:
            self.roiEditingFinished.emit(self.view.roi())

    def _onClearClicked(self, *args):
        if self.view.roi() is not None:
            self.view.clearRoi()
            self.roiEditingFinished.emit(None)

    def _onModeToggled(self, *args):
        self.view.setOverlayMode("fill" if self.fillButton.isChecked() else "contour")

    def _onOpacitySlider(self, *args):
        self.view.setOverlayOpacity(int(qget(self.opacitySlider, "value")) / 100.0)
        self._updateOpacityLabel()

    def _updateOpacityLabel(self):
        self.opacityValueLabel.setText("%d %%" % _round(self.view.overlayOpacity() * 100))

    def _updateEnabled(self):
        hasImage = self.view.imageShape() is not None
        for spin in self.spinBoxes.values():
            spin.setEnabled(hasImage)
        self.clearButton.setEnabled(hasImage and self.view.roi() is not None)
        self.fitButton.setEnabled(hasImage)
        hasOverlay = self.view.hasOverlay()
        for widget in (self.overlayLabel, self.fillButton, self.contourButton,
                       self.opacitySlider, self.opacityValueLabel):
            widget.setEnabled(hasOverlay)

    def _onCursorMoved(self, pixel):
        self._cursor = pixel
        self._updateInfo()

    def _updateInfo(self):
        shape = self.view.imageShape()
        if shape is None:
            self.infoLabel.setText("No image")
            self.infoLabel.setToolTip("")
            return
        parts = ["%d\u00d7%d px" % (shape[1], shape[0]), "%d%%" % _round(self.view.zoom() * 100)]
        if self._cursor is not None:
            col, row = self._cursor
            value = self.view.imageValue(col, row)
            text = "x %d, y %d" % (col, row)
            if value is not None:
                if np.ndim(value) == 0:
                    v = float(value)
                    text += ": %s" % (("%d" % v) if v.is_integer() and abs(v) < 1e9 else ("%.4g" % v))
                else:
                    text += ": (%s)" % ", ".join(str(int(c)) for c in np.asarray(value).ravel())
            parts.append(text)
        text = "  \u00b7  ".join(parts)
        self.infoLabel.setText(text)
        # the label may be clipped in a narrow panel: the tooltip keeps the whole line
        self.infoLabel.setToolTip("Image size  \u00b7  zoom  \u00b7  pixel under the cursor: value\n" + text)
