"""The standalone viewer (``tavireg gui``): PyQt5 offscreen, driven through its methods, its real
QActions and mouse events, and compared pixel for pixel with the library computing the same thing.

Under the offscreen platform a drag is simulated by sending QMouseEvents to the view's viewport
(``qtbot.mouseMove`` during a press delivers none), as in ``test_roi_view.py``.
"""

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import numpy as np
import pytest

pytest.importorskip("PyQt5")
pytest.importorskip("pytestqt")

from PIL import Image  # noqa: E402
from vtkmodules.vtkFiltersCore import vtkAppendPolyData, vtkTriangleFilter  # noqa: E402
from vtkmodules.vtkFiltersSources import vtkCylinderSource, vtkSphereSource  # noqa: E402

from TAVIRegistrationLib import outputs, overlay  # noqa: E402

from TAVIRegistrationLib.viewer import window as viewer  # noqa: E402
from TAVIRegistrationLib.fluoro import read_fluoro, write_fluoro_dicom  # noqa: E402
from TAVIRegistrationLib.geometry import CArmGeometry  # noqa: E402
from TAVIRegistrationLib.mesh import load_model, save_model  # noqa: E402
from TAVIRegistrationLib.pipeline import RegistrationPipeline  # noqa: E402
from TAVIRegistrationLib.viewer.qt_compat import qt  # noqa: E402

Qt = qt.Qt
ROWS, COLS = 200, 240          # non-square: a row/column swap would show
ANGLES = [(30.0, 10.0), (-20.0, -15.0), (45.0, 5.0)]
REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------------- the case
def _vessel_model():
    """A sphere (root) on a tilted tube: asymmetric, about 70 mm tall."""
    app = vtkAppendPolyData()
    s = vtkSphereSource()
    s.SetCenter(8, 0, 20)
    s.SetRadius(14)
    s.SetThetaResolution(32)
    s.SetPhiResolution(32)
    app.AddInputConnection(s.GetOutputPort())
    c = vtkCylinderSource()
    c.SetRadius(6)
    c.SetHeight(60)
    c.SetCenter(-6, 0, -10)
    c.SetResolution(32)
    app.AddInputConnection(c.GetOutputPort())
    tri = vtkTriangleFilter()
    tri.SetInputConnection(app.GetOutputPort())
    tri.Update()
    return tri.GetOutput()


@pytest.fixture(autouse=True)
def _no_installed_networks(tmp_path_factory, monkeypatch):
    """These tests do not depend on which trained networks are installed in Resources/Models."""
    monkeypatch.setenv("TAVIREG_MODELS_DIR", str(tmp_path_factory.mktemp("no-models")))


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    d = tmp_path_factory.mktemp("viewer_case")
    model = save_model(_vessel_model(), d / "vessel.vtk")           # SPACE=LPS, UNITS=mm header
    geom = CArmGeometry(ANGLES[0][0], ANGLES[0][1], 1000.0, 750.0, (0.8, 0.8), ROWS, COLS)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:ROWS, 0:COLS]
    frames = np.stack([(1500 + 4 * xx + 2 * yy + 300 * i + rng.normal(0, 40, (ROWS, COLS)))
                       for i in range(len(ANGLES))]).clip(0, 4095).astype(np.uint16)
    fluoro = d / "run.dcm"
    write_fluoro_dicom(fluoro, frames, geom, per_frame_geometry=ANGLES, frame_time_ms=66.7)
    single = d / "single.dcm"
    write_fluoro_dicom(single, frames[:1], geom)
    bad = d / "broken.dcm"
    bad.write_bytes(b"this is not a DICOM file" * 20)
    bad_model = d / "broken.stl"
    bad_model.write_bytes(b"solid nonsense\n not a facet\n")
    return SimpleNamespace(dir=d, model=model, fluoro=fluoro, single=single, bad=bad, bad_model=bad_model)


def library_mask(case, frame, isocenter=None):
    """The projection mask computed by the library directly, without the viewer."""
    series = read_fluoro(case.fluoro)
    with RegistrationPipeline(load_model(case.model), series, isocenter_lps=isocenter) as p:
        return series, p.project(frame).projection.mask.copy()


class MessageBoxes:
    """Captures QMessageBox.warning/critical instead of showing them."""

    def __init__(self, monkeypatch):
        self.shown = []
        for kind in ("warning", "critical", "information"):
            monkeypatch.setattr(qt.QMessageBox, kind, self._capture(kind))

    def _capture(self, kind):
        def show(parent, title, text, *args, **kwargs):
            self.shown.append((kind, title, text))
            return qt.QMessageBox.Ok
        return staticmethod(show)


@pytest.fixture
def boxes(monkeypatch):
    return MessageBoxes(monkeypatch)


@pytest.fixture
def window(qtbot, boxes):
    w = viewer.ViewerWindow()
    qtbot.addWidget(w)
    w.resize(1280, 780)
    w.show()
    qtbot.waitExposed(w)
    yield w
    w.shutdown()


def open_case(window, case, **kwargs):
    window.openCase(case.model, case.fluoro, **kwargs)
    assert window.waitIdle(60)
    assert window.frameProjection is not None, window.errors


def drag(view, p0, p1, steps=6):
    """Left-drag between two continuous image points, with real QMouseEvents."""
    a, b = view.imageToView(*p0), view.imageToView(*p1)

    def send(kind, pos, button, buttons):
        event = qt.QMouseEvent(kind, qt.QPointF(*pos), button, buttons, Qt.NoModifier)
        qt.QApplication.sendEvent(view.viewport(), event)

    send(qt.QEvent.MouseButtonPress, a, Qt.LeftButton, Qt.LeftButton)
    for i in range(1, steps + 1):
        t = i / steps
        send(qt.QEvent.MouseMove, (a[0] + t * (b[0] - a[0]), a[1] + t * (b[1] - a[1])),
             Qt.NoButton, Qt.LeftButton)
    send(qt.QEvent.MouseButtonRelease, b, Qt.LeftButton, Qt.NoButton)


# ----------------------------------------------------------------------------------- helpers
def test_view_angles_read_like_a_clinician_says_them():
    facts = dict(viewer.geometry_facts(CArmGeometry(30, -15.25, 1000, 800, (0.2, 0.3), 10, 20)))
    assert facts["View"] == "LAO 30.0\u00b0  CAU 15.2\u00b0"
    facts = dict(viewer.geometry_facts(CArmGeometry(0, 0, 1000, 800, (0.2, 0.3), 10, 20)))
    assert facts["Magnification"] == "1.250"
    assert facts["Detector pixel"] == "0.200 \u00d7 0.300 mm"
    assert facts["Pixel at isocentre"] == "0.160 \u00d7 0.240 mm"


def test_case_options_are_checked():
    assert viewer.CaseOptions(isocenter_lps=[1, 2, 3]).isocenter_lps == (1.0, 2.0, 3.0)
    for bad in ({"units": "inch"}, {"space": "RAI"}, {"isocenter_lps": (1, 2)},
                {"isocenter_lps": (1, 2, float("nan"))}):
        with pytest.raises(viewer.InputError):
            viewer.CaseOptions(**bad)


# ----------------------------------------------------------------------------------- opening
def test_open_model_then_fluoroscopy_through_methods(window, case, boxes):
    assert window.projectionPanel.placeholderShown() and window.framePanel.placeholderShown()
    assert not window.exportAction.isEnabled()
    window.openModel(case.model)
    assert window.waitIdle(60)
    assert window.model is not None and window.series is None
    assert "fluoroscopy" in window.projectionPanel.placeholder.text().lower()   # says what is next
    window.openFluoro(case.fluoro)
    assert window.waitIdle(60)
    assert boxes.shown == []
    assert not window.projectionPanel.placeholderShown() and not window.framePanel.placeholderShown()
    assert window.frameProjection.frame_index == 0
    assert window.geometryFacts()["View"] == "LAO 30.0\u00b0  CRA 10.0\u00b0"
    assert window.geometryFacts()["SID"] == "1000.0 mm"
    assert window.geometryFacts()["Isocentre from"] == "model centre (assumed)"
    assert "vessel.vtk" in window.windowTitle() and "run.dcm" in window.windowTitle()
    # every fallback is visible: the assumed isocentre is listed in the warnings panel
    shown = " ".join(label.text() for label in window.warningLabels)
    assert any("isocentre not given" in w for w in window.warnings())
    assert "isocentre not given" in shown
    assert window.warningsButton.isVisibleTo(window)
    assert window.exportAction.isEnabled()
    # the frame slider covers the run
    assert window.frameSlider.isEnabled() and window.frameSlider.maximum() == len(ANGLES) - 1


def test_open_through_real_actions(window, case, boxes, monkeypatch):
    answers = [str(case.model), str(case.fluoro)]
    asked = []

    def fake_dialog(parent, title, directory, filters, *args):
        asked.append((title, filters))
        return answers.pop(0), ""

    monkeypatch.setattr(qt.QFileDialog, "getOpenFileName", staticmethod(fake_dialog))
    window.openModelAction.trigger()
    assert window.waitIdle(60)
    window.openFluoroAction.trigger()
    assert window.waitIdle(60)
    assert [t for t, _ in asked] == ["Open vessel model", "Open fluoroscopy"]
    assert "*.stl" in asked[0][1] and "*.dcm" in asked[1][1]
    assert window.modelPath == case.model and window.fluoroPath == case.fluoro
    assert window.frameProjection is not None and boxes.shown == []
    # a cancelled file dialog changes nothing
    monkeypatch.setattr(qt.QFileDialog, "getOpenFileName", staticmethod(lambda *a: ("", "")))
    window.openFluoroAction.trigger()
    assert window.waitIdle(10) and window.fluoroPath == case.fluoro


def test_inline_mode_for_3d_slicer(qtbot, case, boxes):
    """threaded=False (PythonQt in 3D Slicer) runs every job in the GUI thread, same results."""
    w = viewer.ViewerWindow(threaded=False)
    qtbot.addWidget(w)
    w.openCase(case.model, case.fluoro, frame=2)
    assert not w.isBusy() and w.frameProjection.frame_index == 2     # done on return
    series, mask = library_mask(case, 2)
    np.testing.assert_array_equal(w.frameOverlay(), overlay.overlay_rgb(series.frame(2), mask))
    for index in (0, 1, 2):  # every frame change renders at once, not only the first
        w.setFrame(index)
        assert not w.isBusy() and w.frameProjection is not None and w.frameProjection.frame_index == index
    w.openFluoro(case.bad)
    assert len(boxes.shown) == 1 and w.fluoroPath == case.fluoro
    w.close()


def test_single_frame_run_disables_the_slider(window, case):
    window.openCase(case.model, case.single)
    assert window.waitIdle(60)
    assert not window.frameSlider.isEnabled() and not window.frameSpin.isEnabled()


# ----------------------------------------------------------------------------------- ROI
def test_drawing_an_roi_sets_the_moving_image(window, case):
    open_case(window, case)
    fp = window.frameProjection
    assert window.roiSource() == "default" and window.roi() == fp.default_roi
    assert window.movingImage()[1] == fp.default_roi
    mask = fp.projection.mask
    rows, cols = np.nonzero(mask)
    x0, y0 = int(cols.min()) + 4, int(rows.min()) + 4          # inside the projection's box
    x1, y1 = x0 + 40, y0 + 50
    window.roiEditor.clearButton.click()         # a drag inside the default box would move it
    drag(window.roiEditor.view, (x0 + 0.2, y0 + 0.3), (x1 - 0.1, y1 + 0.2))
    roi = (x0, y0, 40, 50)
    assert window.roi() == roi and window.roiSource() == "drawn"
    assert window.frameView.roi() == roi                               # shown on the frame too
    crop, used = window.movingImage()
    assert used == roi
    np.testing.assert_array_equal(crop, mask[y0:y1, x0:x1])
    assert "drawn" in " ".join(window.roiForm.itemAt(i).widget().text()
                               for i in range(window.roiForm.count()) if window.roiForm.itemAt(i).widget())
    # the drawn ROI stays when the frame changes; the spin boxes show it
    window.setFrame(1)
    assert window.waitIdle(60)
    assert window.roi() == roi and window.movingImage()[1] == roi
    assert window.roiEditor.spinBoxes["w"].value() == 40
    # cleared: registration falls back to the frame's default ROI, and says so
    window.roiEditor.clearButton.click()
    assert window.roi() is None and window.roiSource() == "cleared"
    assert window.movingRoi() == window.frameProjection.default_roi


def test_roi_drawn_on_the_frame_view_is_the_same_roi(window, case):
    open_case(window, case)
    window.frameView.clearRoi()
    drag(window.frameView, (20.4, 30.2), (120.3, 150.1))
    assert window.frameView.roi() == (20, 30, 100, 120)
    assert window.roi() == (20, 30, 100, 120) and window.roiSource() == "drawn"


# ----------------------------------------------------------------------------------- overlay
def test_frame_overlay_equals_the_library_overlay(window, case):
    open_case(window, case)
    series, mask = library_mask(case, 0)
    np.testing.assert_array_equal(window.frameProjection.projection.mask, mask)
    # default: the CLI's picture (contour, library defaults)
    np.testing.assert_array_equal(window.frameOverlay(), overlay.overlay_rgb(series.frame(0), mask))
    window.setOverlayMode("fill")
    window.setOverlayOpacity(0.35)
    expected = overlay.overlay_rgb(series.frame(0), mask, mode="fill", opacity=0.35)
    np.testing.assert_array_equal(window.frameOverlay(), expected)
    assert window.opacitySlider.isEnabled()
    window.setOverlayMode("contour")
    assert not window.opacitySlider.isEnabled()      # contours are drawn opaque by the library
    window.setProjectionVisible(False)
    grey = overlay.display_frame(series.frame(0))
    np.testing.assert_array_equal(window.frameOverlay(), np.repeat(grey[:, :, None], 3, axis=2))


def test_frame_slider_changes_geometry_and_projection(window, case):
    open_case(window, case)
    window.frameSlider.setValue(1)
    assert window.waitIdle(60)
    assert window.frameIndex == 1 and window.frameSpin.value() == 1
    assert window.geometryFacts()["View"] == "RAO 20.0\u00b0  CAU 15.0\u00b0"
    assert "RAO 20.0" in window.frameViewLabel.text()
    assert window.frameProjection.frame_index == 1
    series, mask1 = library_mask(case, 1)
    np.testing.assert_array_equal(window.frameProjection.projection.mask, mask1)
    np.testing.assert_array_equal(window.frameOverlay(), overlay.overlay_rgb(series.frame(1), mask1))
    window.frameSpin.setValue(2)
    assert window.waitIdle(60)
    assert window.frameSlider.value() == 2
    assert window.geometryFacts()["View"] == "LAO 45.0\u00b0  CRA 5.0\u00b0"


def test_most_contrast_button_shows_the_library_choice(window, case, qtbot):
    """A real click on 'Most contrast' moves the frame controls to the frame --frame auto takes (in
    this run the darkest frame: 0) and names it in the status bar and the warnings."""
    open_case(window, case, frame=2)
    assert window.frameIndex == 2 and window.frameAutoButton.isEnabled()
    want = read_fluoro(case.fluoro).most_opacified_frame()
    assert want == 0
    qtbot.mouseClick(window.frameAutoButton, Qt.LeftButton)
    assert window.waitIdle(60)
    assert window.frameIndex == want and window.frameSlider.value() == want and window.frameSpin.value() == want
    assert window.frameProjection.frame_index == want
    assert any(w.startswith(f"--frame auto: frame {want} of 3") for w in window.warnings())
    window.frameSpin.setValue(1)  # moving on by hand: the note no longer describes the frame shown
    assert window.waitIdle(60) and not any(w.startswith("--frame auto") for w in window.warnings())
    open_case(window, case, frame="auto")
    assert window.frameIndex == want and window.frameNote.startswith("--frame auto")
    window.setOptions(viewer.CaseOptions(orthographic=True))  # the case is rebuilt on the same frame
    assert window.waitIdle(60) and window.options.orthographic
    assert window.frameIndex == want and any(w.startswith("--frame auto") for w in window.warnings())


def test_options_isocentre_and_projection_error(window, case, boxes):
    open_case(window, case)
    iso = tuple(float(c) for c in window.model.center)
    window.setOptions(viewer.CaseOptions(isocenter_lps=iso))
    assert window.waitIdle(60)
    assert not any("isocentre" in w for w in window.warnings())
    assert window.geometryFacts()["Isocentre from"] == "given"
    # an isocentre that puts the model off the detector: the files stay open, the panel says why
    window.setOptions(viewer.CaseOptions(isocenter_lps=(iso[0] + 400.0, iso[1], iso[2])))
    assert window.waitIdle(60)
    assert boxes.shown == []
    assert window.frameProjection is None and window.projectionError
    assert window.projectionPanel.placeholderShown()
    assert "outside the detector" in window.projectionPanel.placeholder.text()
    assert not window.framePanel.placeholderShown() and not window.exportAction.isEnabled()


def test_options_dialog_round_trip(qtbot):
    opts = viewer.CaseOptions(units="cm", space="RAS", isocenter_lps=(1.5, -2.0, 3.0), orthographic=True)
    dialog = viewer.CaseOptionsDialog(opts)
    qtbot.addWidget(dialog)
    assert dialog.options() == opts
    dialog.isoDefault.setChecked(True)
    dialog.unitsCombo.setCurrentIndex(0)
    assert dialog.options() == viewer.CaseOptions(space="RAS", orthographic=True)


def test_geometry_overrides_reach_the_projection_and_survive_the_dialog(window, case, qtbot):
    """C-arm values given on the command line (CaseOptions.geometry) are read with the run, named in its
    warnings, kept by the Case options dialog, and re-read when they change."""
    from TAVIRegistrationLib.fluoro import GeometryOverrides

    overrides = GeometryOverrides(sod_mm=600.0)
    open_case(window, case, options=viewer.CaseOptions(geometry=overrides))
    assert window.frameProjection.geometry.sod_mm == pytest.approx(600.0)
    assert any("SOD 600 supplied by the caller" in w for w in window.series.warnings)
    dialog = viewer.CaseOptionsDialog(window.options)
    qtbot.addWidget(dialog)
    dialog.orthoCheck.setChecked(True)
    assert dialog.options() == viewer.CaseOptions(orthographic=True, geometry=overrides)
    window.setOptions(viewer.CaseOptions(geometry=GeometryOverrides(sod_mm=700.0)))
    assert window.waitIdle(60)
    assert window.frameProjection.geometry.sod_mm == pytest.approx(700.0)


# ----------------------------------------------------------------------------------- errors
def test_bad_files_give_a_message_and_keep_the_case(window, case, boxes):
    open_case(window, case)
    before = window.frameOverlay().copy()
    for bad, opener in ((case.bad, window.openFluoro), (case.bad_model, window.openModel)):
        opener(bad)
        assert window.waitIdle(60)
        kind, title, text = boxes.shown[-1]
        assert kind == "warning"                       # an InputError, not an internal failure
        assert "\n" not in text and "Traceback" not in text and text
        assert bad.name in text
    assert len(boxes.shown) == 2
    assert window.modelPath == case.model and window.fluoroPath == case.fluoro
    np.testing.assert_array_equal(window.frameOverlay(), before)


def test_cancel_keeps_the_previous_case(window, case):
    open_case(window, case)
    window.openFluoro(case.single)
    assert window.cancelButton.isVisibleTo(window)
    window.cancel()
    assert window.waitIdle(60)
    assert window.fluoroPath == case.fluoro and window.frameProjection is not None
    assert not window.cancelButton.isVisibleTo(window)


# ----------------------------------------------------------------------------------- register
def test_register_needs_a_segmentation_network(window, case, tmp_path, monkeypatch):
    monkeypatch.setenv("TAVIREG_MODELS_DIR", str(tmp_path))  # no network installed there
    open_case(window, case)
    assert not window.registrationAvailable()
    assert not window.registerAction.isEnabled()
    assert window.registerAction.toolTip() == viewer.REGISTER_UNAVAILABLE_TIP
    assert window.registerButton.toolTip() == viewer.REGISTER_UNAVAILABLE_TIP


@pytest.fixture(scope="module")
def demo_case(tmp_path_factory):
    from TAVIRegistrationLib.synthetic.demo import make_demo_case

    return make_demo_case(tmp_path_factory.mktemp("demo_case"))


def open_demo_with_shipped_networks(window, demo_case, monkeypatch):
    """The demo case open in the viewer with the shipped networks and the ROI a user would draw;
    returns (the models folder, the isocentre, the ROI). Skips without a shipped segmentation network."""
    from TAVIRegistrationLib.networks.weights import installed

    shipped = REPO / "Resources" / "Models"
    monkeypatch.setenv("TAVIREG_MODELS_DIR", str(shipped))
    if not installed("segmentation"):
        pytest.skip("no segmentation network shipped in Resources/Models")
    iso = demo_case.isocenter_lps
    window.openCase(demo_case.model_path, demo_case.fluoro_path, options=viewer.CaseOptions(isocenter_lps=iso),
                    frame=demo_case.frame_index)
    assert window.waitIdle(60) and window.frameProjection is not None, window.errors
    roi = demo_case.truth().user_roi()
    window.setRoi(roi)
    return shipped, iso, roi


def test_register_from_the_viewer_matches_the_cli(window, demo_case, tmp_path, monkeypatch, qtbot):
    """Register clicked in the viewer and ``tavireg register`` on the same inputs (model, frame,
    isocentre, ROI, the shipped networks): the same affine and the same registered pixels."""
    shipped, iso, roi = open_demo_with_shipped_networks(window, demo_case, monkeypatch)
    assert tuple(window.movingRoi()) == tuple(roi)
    assert window.registerButton.isEnabled()
    qtbot.mouseClick(window.registerButton, Qt.LeftButton)
    assert window.waitIdle(300)
    assert window.registration is not None, window.errors
    assert window.exportTo(tmp_path / "viewer")
    assert json.loads((tmp_path / "viewer" / "projection.json").read_text())["registered"] is True

    env = dict(os.environ, TAVIREG_MODELS_DIR=str(shipped))
    proc = subprocess.run([sys.executable, "-m", "TAVIRegistrationLib.cli", "register", "--model",
                           str(demo_case.model_path), "--fluoro", str(demo_case.fluoro_path), "--frame",
                           str(demo_case.frame_index), "--isocenter=" + ",".join(f"{c:.17g}" for c in iso),
                           "--roi", ",".join(str(int(v)) for v in roi), "--out", str(tmp_path / "cli"), "--json"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    transform = json.loads((tmp_path / "cli" / "transform.json").read_text())
    np.testing.assert_allclose(np.asarray(transform["matrix"]), window.registration.matrix, atol=1e-6)
    cli_mask = outputs.read_mask_png(tmp_path / "cli" / "registered_projection.png")
    viewer_mask = outputs.read_mask_png(tmp_path / "viewer" / "projection.png")
    assert cli_mask.any()
    np.testing.assert_array_equal(viewer_mask, cli_mask)
    # the registration's own warnings (e.g. the method's fallback) are listed with the case's
    for w in window.registration.warnings:
        assert w in window.warnings()


def test_register_run_then_play_shows_each_frame_with_its_registration(window, demo_case, monkeypatch, qtbot):
    """Register run registers every frame (as the pipeline's ``register_run`` does on the same inputs);
    stepping or playing the run then shows each frame with its own registered projection."""
    from TAVIRegistrationLib.fluoro import read_fluoro
    shipped, iso, roi = open_demo_with_shipped_networks(window, demo_case, monkeypatch)
    assert window.registerRunAction.isEnabled() and window.playAction.isEnabled()
    window.registerRunAction.trigger()
    assert window.waitIdle(300) and window.run is not None, window.errors
    n = window.series.n_frames
    assert len(window.run.registrations) + len(window.run.failures) == n

    with RegistrationPipeline(load_model(demo_case.model_path), read_fluoro(demo_case.fluoro_path),
                              isocenter_lps=iso) as pipe:
        expected = pipe.register_run(range(n), tuple(roi), device="cpu")
    assert sorted(expected.failures) == sorted(window.run.failures)
    by_frame = {r.frame_index: r for r in expected.registrations}
    for index in range(n):
        window.setFrame(index)
        assert window.waitIdle(60)
        if index in by_frame:
            np.testing.assert_allclose(window.registration.matrix, by_frame[index].matrix, atol=1e-6)
            np.testing.assert_array_equal(window.overlayMask(), by_frame[index].registered_mask)
        else:
            assert window.registration is None and any(f"frame {index} not registered" in w for w in window.warnings())

    start = window.frameIndex
    window.playAction.trigger()
    assert window.playing()
    qtbot.waitUntil(lambda: window.frameIndex != start, timeout=5000)
    window.playAction.trigger()
    assert not window.playing()
    # drawing a new ROI forgets the run
    window.setRoi((roi[0] + 4, roi[1] + 4, roi[2] - 8, roi[3] - 8))
    window.roiEditor.roiEditingFinished.emit(window.roi())
    assert window.run is None and window.registration is None


def test_whole_model_action_turns_the_contrast_front_off(window, demo_case, monkeypatch, qtbot):
    """Registration > Whole model is the pipeline's ``contrast_front`` turned off, read at each Register:
    on the run's first frame (the bolus still arriving) the front leaves part of the projection out and
    the whole model none, and each result equals the library pipeline's with the front on or off."""
    from TAVIRegistrationLib.fluoro import read_fluoro
    shipped, iso, roi = open_demo_with_shipped_networks(window, demo_case, monkeypatch)
    window.setFrame(0)
    assert window.waitIdle(60) and window.frameIndex == 0 and tuple(window.movingRoi()) == tuple(roi)
    assert window.wholeModelAction.isCheckable() and not window.wholeModelAction.isChecked()
    with RegistrationPipeline(load_model(demo_case.model_path), read_fluoro(demo_case.fluoro_path),
                              isocenter_lps=iso) as pipe:
        for whole in (True, False):
            window.wholeModelAction.trigger()  # toggles: on, then off again
            assert window.wholeModelAction.isChecked() == whole
            window.registerAction.trigger()
            assert window.waitIdle(300) and window.registration is not None, window.errors
            pipe.contrast_front = not whole
            expected = pipe.register(0, tuple(roi), device="cpu")
            np.testing.assert_allclose(window.registration.matrix, expected.matrix, atol=1e-6)
            np.testing.assert_array_equal(window.overlayMask(), expected.registered_mask)
            hidden = window.registration.result.metrics["hidden_share"]
            assert hidden == 0.0 if whole else hidden > 0.05, (whole, hidden)


def test_flagged_registration_is_shown_with_its_flag(window, demo_case, tmp_path, monkeypatch, qtbot):
    """A low-agreement registration (threshold 0.99 here) is shown with a red border, the flag in the
    status bar and in the warnings panel."""
    import shutil

    import torch

    from TAVIRegistrationLib.networks.weights import add_manifest_entry, find_entry
    from TAVIRegistrationLib.overlay import FLAG_COLOR
    from TAVIRegistrationLib.networks.regnet import RegNet, scaled_channels

    shipped = REPO / "Resources" / "Models"
    monkeypatch.setenv("TAVIREG_MODELS_DIR", str(shipped))
    try:
        seg = find_entry("segmentation")
    except Exception:
        pytest.skip("no segmentation network shipped in Resources/Models")
    models = tmp_path / "models"
    models.mkdir()
    shutil.copy(shipped / seg["file"], models / seg["file"])
    add_manifest_entry(dict(seg), models)
    torch.jit.script(RegNet(in_size=64, channels=scaled_channels(0.1), fc=16)).save(str(models / "tiny.pt"))
    add_manifest_entry({"name": "tiny", "file": "tiny.pt", "kind": "registration", "input_size": [64, 64],
                        "low_agreement_dice": 0.99}, models)
    monkeypatch.setenv("TAVIREG_MODELS_DIR", str(models))
    window.openCase(demo_case.model_path, demo_case.fluoro_path,
                    options=viewer.CaseOptions(isocenter_lps=demo_case.isocenter_lps), frame=demo_case.frame_index)
    assert window.waitIdle(60) and window.frameProjection is not None, window.errors
    window.setRoi(demo_case.truth().user_roi())
    qtbot.mouseClick(window.registerButton, Qt.LeftButton)
    assert window.waitIdle(300)
    assert window.registration is not None and window.registration.result.flagged, window.errors
    picture = window.composeOverlay()
    assert (picture[0, :] == FLAG_COLOR).all() and (picture[-1, :] == FLAG_COLOR).all()
    assert "LOW AGREEMENT" in window.statusBar().currentMessage()
    assert any("LOW AGREEMENT" in w for w in window.warnings())


# ----------------------------------------------------------------------------------- export
def test_export_writes_all_three_files(window, case, tmp_path):
    open_case(window, case)
    window.setRoi((30, 40, 90, 80))
    out = tmp_path / "export"
    paths = window.exportTo(out)
    assert sorted(p.name for p in paths) == ["overlay.png", "projection.json", "projection.png"]
    assert sorted(os.listdir(out)) == ["overlay.png", "projection.json", "projection.png"]  # no temp files
    np.testing.assert_array_equal(np.asarray(Image.open(out / "overlay.png")), window.frameOverlay())
    png_mask = np.asarray(Image.open(out / "projection.png"))
    np.testing.assert_array_equal(png_mask, window.frameProjection.projection.mask * 255)
    record = json.loads((out / "projection.json").read_text())
    assert record["format"] == 1
    assert record["roi"] == [30, 40, 90, 80] and record["roi_source"] == "drawn"
    assert record["frame"] == 0 and record["registered"] is False
    assert record["geometry"]["primary_angle_deg"] == 30.0
    assert any("isocentre" in w for w in record["warnings"])


def test_failed_export_leaves_nothing(window, case, tmp_path, boxes, monkeypatch):
    open_case(window, case)
    out = tmp_path / "export"
    out.mkdir()
    (out / "overlay.png").write_bytes(b"an older picture")

    def failing_writer(mask):
        def write(fh):
            raise OSError(28, "No space left on device")
        return write

    monkeypatch.setattr(outputs, "mask_png_writer", failing_writer)
    assert window.exportTo(out) == []
    assert sorted(os.listdir(out)) == ["overlay.png"]                       # no partial file
    assert (out / "overlay.png").read_bytes() == b"an older picture"         # untouched
    assert "No space left on device" in boxes.shown[-1][2]


def test_export_action_asks_for_a_folder(window, case, tmp_path, monkeypatch):
    open_case(window, case)
    monkeypatch.setattr(qt.QFileDialog, "getExistingDirectory", staticmethod(lambda *a: str(tmp_path)))
    window.exportAction.trigger()
    assert (tmp_path / "overlay.png").is_file() and (tmp_path / "projection.json").is_file()


# ----------------------------------------------------------------------------------- command line
def _gui(*args, cwd):
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM")}
    return subprocess.run([sys.executable, "-m", "TAVIRegistrationLib.cli", "gui", *args],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=180)


def _assert_picture(path):
    picture = np.asarray(Image.open(path).convert("RGB")).astype(float)
    assert picture.shape[0] >= 600 and picture.shape[1] >= 1000
    assert picture.std() > 20                                           # not blank
    # the frame panel holds the orange projection contour
    orange = (np.abs(picture - np.array(viewer.OVERLAY_COLOR)).sum(axis=2) < 30).sum()
    assert orange > 50


@pytest.mark.parametrize("frame, warning", [("1", "warning: isocentre not given"),
                                            ("auto", "warning: --frame auto: frame 0 of 3")])
def test_cli_screenshot(case, tmp_path, frame, warning):
    out = tmp_path / "shot.png"
    proc = _gui("--model", str(case.model), "--fluoro", str(case.fluoro), "--frame", frame,
                "--screenshot", str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert warning in proc.stderr
    _assert_picture(out)
    assert sorted(os.listdir(tmp_path)) == ["shot.png"]


def test_cli_screenshot_errors_are_one_line(case, tmp_path):
    out = tmp_path / "shot.png"
    proc = _gui("--model", str(case.model), "--fluoro", str(case.bad), "--screenshot", str(out), cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "Traceback" not in proc.stderr and not out.exists()
    proc = _gui("--model", str(case.model), "--fluoro", str(case.fluoro), "--frame", "7",
                "--screenshot", str(out), cwd=tmp_path)
    assert proc.returncode == 2 and "out of range" in proc.stderr and not out.exists()


def test_cli_demo_screenshot(tmp_path):
    out = tmp_path / "demo.png"
    proc = _gui("--demo", "--screenshot", str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    _assert_picture(out)
