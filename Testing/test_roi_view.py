"""Tests of the ROI view/editor widgets (PyQt5, offscreen) and their pure helpers.

Under the offscreen platform ``qtbot.mouseMove`` during a press delivers no drag, so mouse
interaction is simulated by sending QMouseEvent/QWheelEvent objects to the view's viewport with
``QApplication.sendEvent``, with sub-pixel positions computed from the view's own mapping.
"""

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import numpy as np
import pytest

pytest.importorskip("PyQt5")
pytest.importorskip("pytestqt")

from TAVIRegistrationLib.viewer import roi_view as rv  # noqa: E402
from TAVIRegistrationLib import overlay  # noqa: E402
from TAVIRegistrationLib.viewer.qt_compat import (  # noqa: E402
    QT_API, _qimage_via_ppm, inverted, qget, qimage_from_array, qt)

ROWS, COLS = 120, 160
Qt = qt.Qt


# ----------------------------------------------------------------------------------- fixtures
def _gradient():
    yy, xx = np.mgrid[0:ROWS, 0:COLS]
    return (xx + 0.5 * yy).astype(np.float32)


class Recorder:
    def __init__(self, signal):
        self.values = []
        signal.connect(self.values.append)


@pytest.fixture
def view(qtbot):
    v = rv.ImageRoiView()
    qtbot.addWidget(v)
    v.resize(400, 300)
    v.setImage(_gradient())
    v.show()
    qtbot.waitExposed(v)
    v.fit()
    return v


@pytest.fixture
def editor(qtbot):
    e = rv.RoiEditor()
    qtbot.addWidget(e)
    e.resize(480, 460)
    e.setImage(_gradient())
    e.show()
    qtbot.waitExposed(e)
    return e


# ------------------------------------------------------------------------------ event helpers
def _send_mouse(view, kind, pos, button, buttons, modifiers=Qt.NoModifier):
    event = qt.QMouseEvent(kind, qt.QPointF(*pos), button, buttons, modifiers)
    qt.QApplication.sendEvent(view.viewport(), event)


def drag_view(view, p0, p1, button=Qt.LeftButton, steps=5, modifiers=Qt.NoModifier):
    """Press at viewport point p0, move in steps to p1, release there."""
    _send_mouse(view, qt.QEvent.MouseButtonPress, p0, button, button, modifiers)
    for i in range(1, steps + 1):
        t = i / steps
        p = (p0[0] + t * (p1[0] - p0[0]), p0[1] + t * (p1[1] - p0[1]))
        _send_mouse(view, qt.QEvent.MouseMove, p, Qt.NoButton, button, modifiers)
    _send_mouse(view, qt.QEvent.MouseButtonRelease, p1, button, Qt.NoButton, modifiers)


def drag_image(view, a, b, **kw):
    """Drag between two continuous image points."""
    drag_view(view, view.imageToView(*a), view.imageToView(*b), **kw)


def wheel(view, pos, delta):
    event = qt.QWheelEvent(qt.QPointF(*pos), qt.QPointF(*pos), qt.QPoint(0, 0), qt.QPoint(0, delta),
                           Qt.NoButton, Qt.NoModifier, Qt.NoScrollPhase, False)
    qt.QApplication.sendEvent(view.viewport(), event)


def key(view, k, modifiers=Qt.NoModifier):
    qt.QApplication.sendEvent(view, qt.QKeyEvent(qt.QEvent.KeyPress, k, modifiers))
    qt.QApplication.sendEvent(view, qt.QKeyEvent(qt.QEvent.KeyRelease, k, modifiers))


def viewport_pixel(view, image_xy):
    """RGB of the grabbed viewport at the screen position of a continuous image point."""
    image = view.viewport().grab().toImage()
    x, y = view.imageToView(*image_xy)
    c = image.pixelColor(int(x), int(y))
    return (c.red(), c.green(), c.blue())


def roi_rect_on_screen(view):
    r = view._roiItem.rect()
    return (r.x(), r.y(), r.width(), r.height())


# ------------------------------------------------------------------------------- pure helpers
def test_normalize_and_clamp():
    assert rv.normalize_roi(None) is None
    assert rv.normalize_roi(()) is None
    assert rv.normalize_roi((10, 10, -4, 5)) == (6, 10, 4, 5)
    assert rv.normalize_roi(np.array([1.4, 2.6, 3, 4])) == (1, 3, 3, 4)
    with pytest.raises(ValueError):
        rv.normalize_roi((1, 2, 3))
    with pytest.raises(ValueError):
        rv.normalize_roi((1, 2, np.nan, 3))
    shape = (ROWS, COLS)
    assert rv.clamp_roi((-10, -10, 50, 50), shape) == (0, 0, 40, 40)
    assert rv.clamp_roi((150, 100, 50, 50), shape) == (150, 100, 10, 20)
    assert rv.clamp_roi((10, 10, 1, 0), shape) == (10, 10, 2, 2)          # minimum 2 px
    assert rv.clamp_roi((159, 119, 1, 1), shape) == (158, 118, 2, 2)       # grown inwards
    assert rv.clamp_roi((500, 500, 5, 5), shape) == (158, 118, 2, 2)
    assert rv.clamp_roi((0, 0, 5, 5), (1, 10)) is None                     # image too small
    assert all(isinstance(v, int) for v in rv.clamp_roi((1.0, 2.0, 3.0, 4.0), shape))


def test_roi_from_points_move_resize():
    shape = (ROWS, COLS)
    assert rv.roi_from_points((20.2, 30.4), (59.6, 70.1), shape) == (20, 30, 40, 40)
    assert rv.roi_from_points((59.6, 70.1), (20.2, 30.4), shape) == (20, 30, 40, 40)
    assert rv.roi_from_points((150, 100), (300, -20), shape) == (150, 0, 10, 100)
    assert rv.roi_from_points((10, 10), (10.3, 10.2), shape) == (10, 10, 2, 2)
    assert rv.roi_from_points((10, 10), (9.3, 9.4), shape) == (8, 8, 2, 2)
    assert rv.move_roi((40, 30, 50, 40), 10.4, -4.6, shape) == (50, 25, 50, 40)
    assert rv.move_roi((40, 30, 50, 40), 500, 500, shape) == (110, 80, 50, 40)
    assert rv.move_roi((40, 30, 50, 40), -500, -500, shape) == (0, 0, 50, 40)
    assert rv.resize_roi((40, 30, 50, 40), "br", 100.2, 79.9, shape) == (40, 30, 60, 50)
    assert rv.resize_roi((40, 30, 50, 40), "tl", 35, 20, shape) == (35, 20, 55, 50)
    assert rv.resize_roi((40, 30, 50, 40), "l", 200, 0, shape) == (88, 30, 2, 40)  # no flip
    assert rv.resize_roi((40, 30, 50, 40), "t", 0, -50, shape) == (40, 0, 50, 70)
    assert rv.resize_roi((40, 30, 50, 40), "r", 999, 0, shape) == (40, 30, 120, 40)
    with pytest.raises(ValueError):
        rv.resize_roi((40, 30, 50, 40), "middle", 0, 0, shape)


def test_hit_test():
    rect = (100, 100, 200, 180)
    assert rv.hit_test(rect, (100, 100)) == "tl"
    assert rv.hit_test(rect, (206, 186)) == "br"         # within half handle + tolerance
    assert rv.hit_test(rect, (150, 101)) == "t"          # the midpoint handle
    assert rv.hit_test(rect, (120, 178)) == "b"          # along the edge
    assert rv.hit_test(rect, (201, 130)) == "r"
    assert rv.hit_test(rect, (150, 140)) == "inside"
    assert rv.hit_test(rect, (20, 20)) is None
    assert rv.hit_test(rect, (250, 140)) is None
    pts = rv.handle_points(rect)
    assert pts["r"] == (200.0, 140.0) and pts["bl"] == (100.0, 180.0)


def test_mask_contour_and_label_contour():
    mask = np.zeros((9, 9), np.uint8)
    mask[2:7, 2:7] = 1
    contour = overlay.mask_contour(mask)
    assert contour.dtype == np.uint8
    assert contour.sum() == 16 and contour[4, 4] == 0 and contour[2, 4] == 1
    full = overlay.mask_contour(np.ones((4, 5), np.uint8))     # the image border counts as outside
    assert full.sum() == 4 * 5 - 2 * 3
    labels = np.zeros((6, 8), np.int32)
    labels[1:5, 1:4] = 1
    labels[1:5, 4:7] = 2                                  # touching regions keep their outlines
    lc = overlay.label_contour(labels)
    assert lc[2, 3] == 1 and lc[2, 4] == 1 and lc[2, 2] == 0


def test_window_to_uint8():
    img = np.linspace(0, 1, 10000, dtype=np.float64).reshape(100, 100)
    out = overlay.display_frame(img)
    assert out.dtype == np.uint8 and out.min() == 0 and out.max() == 255
    assert abs(int(out[50, 50]) - 128) <= 2
    img[0, 0] = np.nan
    assert overlay.display_frame(img)[0, 0] == 0
    assert overlay.display_frame(np.zeros((4, 4))).max() == 0
    assert overlay.display_frame(np.full((4, 4), 7.0)).min() == 255
    assert overlay.display_frame(img, window=(0, 2))[99, 99] == 128


def test_composite_overlay():
    base = np.full((10, 10), 100, np.uint8)
    mask = np.zeros((10, 10), np.uint8)
    mask[2:8, 2:8] = 1
    fill = rv.composite_overlay(base, mask, (255, 0, 0), opacity=1.0, mode="fill")
    assert tuple(fill[5, 5]) == (255, 0, 0) and tuple(fill[0, 0]) == (100, 100, 100)
    contour = rv.composite_overlay(base, mask, (255, 0, 0), opacity=1.0, mode="contour")
    assert tuple(contour[5, 5]) == (100, 100, 100) and tuple(contour[2, 5]) == (255, 0, 0)
    half = rv.composite_overlay(base, mask, (255, 0, 0), opacity=0.5)
    assert tuple(half[5, 5]) == (178, 50, 50)
    rgb = np.zeros((10, 10, 3), np.uint8)
    rgb[0:2, 0:2] = (0, 255, 0)
    out = rv.composite_overlay(base, None, rgb=rgb, opacity=1.0)
    assert tuple(out[0, 0]) == (0, 255, 0) and tuple(out[5, 5]) == (100, 100, 100)
    with pytest.raises(ValueError):
        rv.composite_overlay(base, mask, mode="outline")


# -------------------------------------------------------------------------------- qt_compat
def test_qt_compat_namespace(qtbot):
    assert QT_API == "pyqt5"
    for name in ("QWidget", "QGraphicsView", "QImage", "QPointF", "QTimer", "Signal"):
        assert hasattr(qt, name)
    assert qt.Qt.LeftButton == Qt.LeftButton
    spin = qt.QSpinBox()
    qtbot.addWidget(spin)
    spin.setValue(7)
    assert qget(spin, "value") == 7
    t = inverted(qt.QTransform.fromScale(2.0, 4.0))
    assert (t.m11(), t.m22()) == (0.5, 0.25)
    rgb = np.zeros((3, 4, 3), np.uint8)
    rgb[1, 2] = (10, 20, 30)
    for image in (qimage_from_array(rgb), _qimage_via_ppm(rgb)):   # both binding paths
        assert (image.width(), image.height()) == (4, 3)
        c = image.pixelColor(2, 1)
        assert (c.red(), c.green(), c.blue()) == (10, 20, 30)
    grey = qimage_from_array(np.array([[0, 200]], np.uint8))
    assert grey.pixelColor(1, 0).red() == 200


# ------------------------------------------------------------------------------ interaction
def test_drag_draws_roi_at_two_zoom_levels(view):
    changed = Recorder(view.roiChanged)
    finished = Recorder(view.roiEditingFinished)
    drag_image(view, (20.2, 30.3), (59.8, 70.1))
    assert view.roi() == (20, 30, 40, 40)
    assert changed.values[-1] == (20, 30, 40, 40)
    assert finished.values == [(20, 30, 40, 40)]
    assert roi_rect_on_screen(view) == (20, 30, 40, 40)

    view.zoomBy(3.0, (200, 150))
    assert view.zoom() == pytest.approx(3 * view._fitScale(), rel=1e-6)
    cx, cy = (int(v) for v in view.viewToImage(200, 150))
    # drawn right-to-left and bottom-to-top: same rectangle
    drag_image(view, (cx + 10.3, cy + 7.2), (cx - 9.6, cy - 7.9))
    assert view.roi() == (cx - 10, cy - 8, 20, 15)
    assert finished.values[-1] == (cx - 10, cy - 8, 20, 15)
    assert all(isinstance(v, int) for v in view.roi())


def test_click_without_drag_keeps_roi(view):
    view.setRoi((40, 30, 50, 40))
    changed = Recorder(view.roiChanged)
    p = view.imageToView(10, 10)
    drag_view(view, p, (p[0] + 1, p[1] + 1))
    assert view.roi() == (40, 30, 50, 40) and changed.values == []


def test_handles_resize_roi(view):
    view.setRoi((40, 30, 50, 40))
    finished = Recorder(view.roiEditingFinished)
    drag_image(view, (90, 70), (100.2, 79.8))                  # bottom-right corner
    assert view.roi() == (40, 30, 60, 50)
    drag_image(view, (40, 30), (35.1, 20.3))                   # top-left corner
    assert view.roi() == (35, 20, 65, 60)
    drag_image(view, (35, 50), (45.2, 58))                     # left edge midpoint: x only
    assert view.roi() == (45, 20, 55, 60)
    drag_image(view, (72.5, 80), (72.5, 60.4))                 # bottom edge midpoint: y only
    assert view.roi() == (45, 20, 55, 40)
    assert len(finished.values) == 4
    # grabbing an edge 3 screen px off does not make it jump: it moves by the drag only
    assert view.zoom() > 2.0                                   # 3 px > 1 image px here
    x, y = view.imageToView(100, 40)
    drag_view(view, (x + 3, y), (x + 3 + 10 * view.zoom(), y))
    assert view.roi() == (45, 20, 65, 40)


def test_handles_keep_screen_size_and_work_when_zoomed(view):
    view.setRoi((60, 40, 30, 20))

    def handle_screen_size():
        item = view._handleItems["br"]
        r = item.deviceTransform(view.viewportTransform()).mapRect(item.rect())
        return (r.width(), r.height())

    size_fit = handle_screen_size()
    view.zoomBy(4.0, view.imageToView(75, 50))
    assert size_fit == pytest.approx((8, 8))
    assert handle_screen_size() == pytest.approx((8, 8))
    drag_image(view, (90, 50), (93.4, 50))                     # right edge at high zoom
    assert view.roi() == (60, 40, 33, 20)


def test_move_inside_translates_and_clamps(view):
    view.setRoi((40, 30, 50, 40))
    drag_image(view, (60, 50), (70.3, 45.2))
    assert view.roi() == (50, 25, 50, 40)
    drag_image(view, (70, 45), (300, 300))                     # pushed past the corner
    assert view.roi() == (COLS - 50, ROWS - 40, 50, 40)


def test_roi_clamped_to_image(view):
    changed = Recorder(view.roiChanged)
    drag_image(view, (150.2, 100.1), (210, 170))               # released outside the image
    assert view.roi() == (150, 100, 10, 20)
    view.setRoi((-10, -10, 50, 50))
    assert view.roi() == (0, 0, 40, 40)
    view.setRoi((COLS - 1, 5, 1, 1))                            # minimum 2 px
    assert view.roi() == (COLS - 2, 5, 2, 2)
    assert changed.values[-1] == (COLS - 2, 5, 2, 2)
    view.setImage(np.zeros((50, 60), np.float32))              # a smaller image clamps the ROI
    assert view.roi() == (58, 5, 2, 2)


def test_clear_emits_none(view):
    changed = Recorder(view.roiChanged)
    finished = Recorder(view.roiEditingFinished)
    view.setRoi((10, 10, 20, 20))
    view.clearRoi()
    assert view.roi() is None and changed.values == [(10, 10, 20, 20), None]
    view.clearRoi()                                            # no change, no signal
    assert changed.values == [(10, 10, 20, 20), None]
    for k in (Qt.Key_Escape, Qt.Key_Delete):
        view.setRoi((10, 10, 20, 20))
        key(view, k)
        assert view.roi() is None and changed.values[-1] is None and finished.values[-1] is None
    view.setRoi(())
    assert view.roi() is None


def test_keyboard_nudge(view):
    view.setRoi((10, 10, 20, 20))
    key(view, Qt.Key_Right)
    key(view, Qt.Key_Down, Qt.ShiftModifier)
    assert view.roi() == (11, 20, 20, 20)


def test_wheel_zoom_keeps_point_under_cursor(view):
    for pos, delta in (((123.0, 77.0), 120), ((300.5, 210.25), 240), ((40.0, 250.0), -360)):
        before_zoom = view.zoom()
        image_point = view.viewToImage(*pos)
        wheel(view, pos, delta)
        assert view.zoom() == pytest.approx(before_zoom * 1.0015 ** delta, rel=1e-6)
        after = view.imageToView(*image_point)
        assert abs(after[0] - pos[0]) <= 1.0 and abs(after[1] - pos[1]) <= 1.0


def test_pan_with_middle_button_and_space(view):
    view.setRoi((10, 10, 20, 20))
    image_point = view.viewToImage(100, 100)
    drag_view(view, (100, 100), (160, 130), button=Qt.MiddleButton)
    after = view.imageToView(*image_point)
    assert after == pytest.approx((160, 130), abs=1.0)
    qt.QApplication.sendEvent(view, qt.QKeyEvent(qt.QEvent.KeyPress, Qt.Key_Space, Qt.NoModifier))
    image_point = view.viewToImage(200, 200)
    drag_view(view, (200, 200), (150, 180))
    qt.QApplication.sendEvent(view, qt.QKeyEvent(qt.QEvent.KeyRelease, Qt.Key_Space, Qt.NoModifier))
    assert view.imageToView(*image_point) == pytest.approx((150, 180), abs=1.0)
    assert view.roi() == (10, 10, 20, 20)                      # panning never edits the ROI


def test_fit_and_resize(view, qtbot):
    zoom_fit = view.zoom()
    cx, cy = view.imageToView(COLS / 2, ROWS / 2)
    assert (cx, cy) == pytest.approx((200, 150), abs=1.0)
    view.resize(800, 600)                                       # still auto-fitting
    qtbot.waitUntil(lambda: view.zoom() > 1.5 * zoom_fit, timeout=2000)
    view.zoomBy(2.0)
    z = view.zoom()
    view.resize(400, 300)                                       # user zoom is kept
    qtbot.wait(10)
    assert view.zoom() == z
    view.fit()
    assert view.zoom() == pytest.approx(zoom_fit)


# -------------------------------------------------------------------------------- rendering
def _overlay_view(view, mode, opacity):
    view.setImage(np.zeros((ROWS, COLS), np.float32))         # black background
    mask = np.zeros((ROWS, COLS), np.uint8)
    mask[40:80, 50:110] = 1
    view.setOverlay(mask, color=(255, 0, 0))
    view.setOverlayMode(mode)
    view.setOverlayOpacity(opacity)


def test_overlay_fill_vs_contour_pixels(view):
    _overlay_view(view, "fill", 1.0)
    assert view.zoom() > 1.0                                   # nearest-neighbour rendering
    inside, edge, outside = (80.5, 60.5), (50.5, 60.5), (20.5, 20.5)
    assert viewport_pixel(view, inside) == (255, 0, 0)
    assert viewport_pixel(view, edge) == (255, 0, 0)
    assert viewport_pixel(view, outside) == (0, 0, 0)
    view.setOverlayMode("contour")
    assert viewport_pixel(view, inside) == (0, 0, 0)
    assert viewport_pixel(view, edge) == (255, 0, 0)
    assert viewport_pixel(view, (109.5, 79.5)) == (255, 0, 0)  # bottom-right boundary pixel
    view.setOverlay(None)
    assert viewport_pixel(view, edge) == (0, 0, 0)


def test_opacity_changes_pixels(view):
    _overlay_view(view, "fill", 0.25)
    low = viewport_pixel(view, (80.5, 60.5))
    view.setOverlayOpacity(0.75)
    high = viewport_pixel(view, (80.5, 60.5))
    assert abs(low[0] - 64) <= 2 and abs(high[0] - 191) <= 2 and low[1] == high[1] == 0
    view.setOverlayOpacity(0.0)
    assert viewport_pixel(view, (80.5, 60.5)) == (0, 0, 0)


def test_rgb_overlay_colours(view):
    view.setImage(np.zeros((ROWS, COLS), np.float32))
    rgb = np.zeros((ROWS, COLS, 3), np.uint8)
    rgb[10:30, 10:30] = (0, 255, 0)      # TP
    rgb[10:30, 30:50] = (255, 0, 255)    # FP
    view.setOverlayRgb(rgb)
    view.setOverlayOpacity(1.0)
    assert viewport_pixel(view, (20.5, 20.5)) == (0, 255, 0)
    assert viewport_pixel(view, (40.5, 20.5)) == (255, 0, 255)
    view.setOverlayMode("contour")
    assert viewport_pixel(view, (20.5, 20.5)) == (0, 0, 0)
    assert viewport_pixel(view, (29.5, 20.5)) == (0, 255, 0)   # shared border keeps both colours
    assert viewport_pixel(view, (30.5, 20.5)) == (255, 0, 255)
    with pytest.raises(ValueError):
        view.setOverlayRgb(np.zeros((5, 5, 3), np.uint8))


def test_roi_shading_darkens_outside_only(view):
    view.setImage(np.full((ROWS, COLS), 1.0, np.float32))     # constant: all white
    assert viewport_pixel(view, (5.5, 5.5)) == (255, 255, 255)
    view.setRoi((40, 30, 50, 40))
    outside = viewport_pixel(view, (5.5, 5.5))
    assert outside[0] < 230
    assert viewport_pixel(view, (65.5, 50.5)) == (255, 255, 255)


# ----------------------------------------------------------------------------------- editor
def test_editor_numeric_fields_and_drawing_stay_in_sync(editor):
    view, spins = editor.view, editor.spinBoxes
    changed = Recorder(editor.roiChanged)
    finished = Recorder(editor.roiEditingFinished)
    assert editor.roi() is None and spins["w"].text() == "\u2013"

    spins["w"].setValue(30)                       # no ROI yet: wait for both sizes
    assert editor.roi() is None and changed.values == []
    spins["h"].setValue(20)
    assert editor.roi() == (0, 0, 30, 20)
    spins["x"].setValue(12)
    spins["y"].setValue(7)
    assert editor.roi() == (12, 7, 30, 20)
    assert roi_rect_on_screen(view) == (12, 7, 30, 20)        # the drawing follows
    assert changed.values == [(0, 0, 30, 20), (12, 0, 30, 20), (12, 7, 30, 20)]  # once per edit
    assert finished.values == changed.values

    drag_image(view, (20.2, 30.3), (59.8, 70.1))              # drawing updates the fields
    assert [spins[n].value() for n in "xywh"] == [20, 30, 40, 40]
    assert changed.values[-1] == (20, 30, 40, 40)
    assert finished.values[-1] == (20, 30, 40, 40)

    spins["x"].setValue(150)                                   # clamped by the image
    assert editor.roi() == (150, 30, 10, 40)
    assert spins["w"].value() == 10
    spins["w"].setValue(1)                                     # minimum size shown back
    assert editor.roi() == (150, 30, 2, 40) and spins["w"].value() == 2

    editor.clearButton.click()
    assert editor.roi() is None and changed.values[-1] is None and finished.values[-1] is None
    assert spins["w"].text() == "\u2013" and not editor.clearButton.isEnabled()


def test_editor_overlay_controls(editor):
    assert not editor.opacitySlider.isEnabled()               # no overlay yet
    mask = np.zeros((ROWS, COLS), np.uint8)
    mask[40:80, 50:110] = 1
    editor.setOverlay(mask)
    assert editor.opacitySlider.isEnabled()
    editor.opacitySlider.setValue(80)
    assert editor.overlayOpacity() == pytest.approx(0.8)
    assert editor.opacityValueLabel.text() == "80 %"
    editor.contourButton.click()
    assert editor.overlayMode() == "contour" and not editor.fillButton.isChecked()
    editor.setOverlayMode("fill")
    assert editor.fillButton.isChecked() and editor.overlayMode() == "fill"
    editor.setOverlayOpacity(0.3)
    assert editor.opacitySlider.value() == 30
    editor.view.zoomBy(3.0)
    editor.fitButton.click()
    assert editor.view.zoom() == pytest.approx(editor.view._fitScale())
    editor.view.cursorMoved.emit((3, 4))
    assert "x 3, y 4: 5" in editor.infoLabel.text()         # gradient value x + 0.5 y


def test_errors(view):
    with pytest.raises(ValueError):
        view.setOverlay(np.zeros((5, 5), np.uint8))
    with pytest.raises(ValueError):
        view.setOverlayMode("outline")
    with pytest.raises(ValueError):
        view.setImage(np.zeros((2, 3, 4, 5)))
    empty = rv.ImageRoiView()
    with pytest.raises(ValueError):
        empty.setOverlay(np.zeros((5, 5), np.uint8))
    empty.setRoi((1, 2, 3, 4))                                 # kept until an image arrives
    assert empty.roi() == (1, 2, 3, 4)
    empty.deleteLater()
