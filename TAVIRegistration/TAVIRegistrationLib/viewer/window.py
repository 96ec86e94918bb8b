"""The standalone Qt viewer (``tavireg gui``): one case, frame by frame, over the pipeline.

A thin front end over :class:`.pipeline.RegistrationPipeline`, like the CLI and the Slicer Logic:

* File > Open model... / Open fluoroscopy... / Case options... / Export...;
* a frame slider for multi-frame runs;
* left, the model's projection under the frame's C-arm geometry in a :class:`.roi_view.RoiEditor`,
  where the region of interest (the moving image of the registration) is drawn;
* right, the fluoroscopy frame with the projection drawn over it by :func:`.overlay.overlay_rgb`,
  the very function the command line uses for its pictures (contour or fill, opacity);
* a side panel with the files, the C-arm geometry of the frame (LAO/RAO, CRA/CAU, SID, SOD,
  spacing, magnification), the ROI and every assumption the library made (``warnings``);
* Register (enabled once the library's pipeline provides ``register``) and Export (overlay PNG,
  projection mask PNG and ROI JSON, written atomically through :class:`.outputs.OutputSet`).

Long work (reading files, rendering, later registering) runs in one worker ``QThread`` that owns
the pipeline's renderer; the window stays responsive and shows a progress bar with Cancel. Errors
reach the user as a message box with the library's one-line message (never a traceback).

``run_viewer`` is what ``tavireg gui`` calls; with ``screenshot=`` it renders the window offscreen
to a PNG and returns without showing anything.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import sys
import time
import traceback
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from ..errors import InputError
from ..fluoro import GeometryOverrides
from ..geometry import view_label
from ..overlay import DEFAULT_COLOR
from .qt_compat import QT_API, Signal, qget, qt
from .roi_view import ImageRoiView, RoiEditor

__all__ = [
    "CaseOptions", "ViewerWindow", "CaseOptionsDialog", "run_viewer",
    "geometry_facts", "REGISTER_UNAVAILABLE_TIP", "OVERLAY_COLOR",
]

#: Tooltip of the Register action while the library has no registration step.
REGISTER_UNAVAILABLE_TIP = ("registration needs the vessel segmentation network, and none is installed "
                            "(train one with 'tavireg train-seg --export NAME')")
#: The projection's colour on the frame: the library's default (also the CLI's).
OVERLAY_COLOR = DEFAULT_COLOR

_UNITS_CHOICES = (None, "mm", "cm", "m")
_SPACE_CHOICES = (None, "LPS", "RAS")
_EXPORT_NAMES = ("overlay.png", "projection_mask.png", "roi.json")


# ----------------------------------------------------------------------------------------------
# Pure helpers (no Qt)
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class CaseOptions:
    """How to read the model and place it: ``None`` means "as the file says" / the default.

    ``units`` ('mm', 'cm', 'm') and ``space`` ('LPS', 'RAS') of the model file (default: its
    header, else mm / LPS with a warning); ``isocenter_lps`` the C-arm isocentre in the model's
    LPS mm (default: the model's bounding-box centre, with a warning); ``orthographic`` the
    paper's parallel projection instead of the C-arm's perspective; ``geometry`` C-arm values that
    override or supply what the fluoroscopy file says (``fluoro.GeometryOverrides``).
    """

    units: Optional[str] = None
    space: Optional[str] = None
    isocenter_lps: Optional[Tuple[float, float, float]] = None
    orthographic: bool = False
    geometry: GeometryOverrides = GeometryOverrides()

    def __post_init__(self):
        if self.units not in _UNITS_CHOICES:
            raise InputError(f"model units must be one of mm, cm, m, got {self.units!r}")
        if self.space not in _SPACE_CHOICES:
            raise InputError(f"model space must be LPS or RAS, got {self.space!r}")
        if self.isocenter_lps is not None:
            try:
                iso = tuple(float(c) for c in self.isocenter_lps)
            except (TypeError, ValueError):
                raise InputError(f"isocentre must be three numbers, got {self.isocenter_lps!r}") from None
            if len(iso) != 3 or not all(math.isfinite(c) for c in iso):
                raise InputError(f"isocentre must be three finite numbers, got {self.isocenter_lps!r}")
            object.__setattr__(self, "isocenter_lps", iso)
        object.__setattr__(self, "orthographic", bool(self.orthographic))




def geometry_facts(geom, isocenter_source: Optional[str] = None) -> List[Tuple[str, str]]:
    """(label, text) rows describing one frame's C-arm geometry for the facts panel."""
    pr, pc = geom.pixel_spacing_mm
    m = geom.magnification
    rows = [
        ("View", view_label(geom.primary_angle_deg, geom.secondary_angle_deg, separator="  ")),
        ("SID", f"{geom.sid_mm:.1f} mm"),
        ("SOD", f"{geom.sod_mm:.1f} mm"),
        ("Magnification", f"{m:.3f}"),
        ("Detector pixel", f"{pr:.3f} \u00d7 {pc:.3f} mm"),
        ("Pixel at isocentre", f"{pr / m:.3f} \u00d7 {pc / m:.3f} mm"),
        ("Isocentre (LPS)", "{:.1f}, {:.1f}, {:.1f} mm".format(*geom.isocenter_lps)),
    ]
    if isocenter_source:
        rows.append(("Isocentre from", isocenter_source))
    return rows


def _one_line(exc: BaseException) -> str:
    """The one-line message a user sees: InputError's own text, else 'internal error: Type: msg'."""
    if isinstance(exc, InputError):
        return str(exc)
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    return f"internal error: {text}"


# ----------------------------------------------------------------------------------------------
# Background work
# ----------------------------------------------------------------------------------------------

class _Job:
    """One piece of work for the worker thread; its function never touches a widget."""

    _ids = itertools.count(1)

    def __init__(self, label, fn, on_done=None, on_error=None, busy=True, cleanup=None):
        self.id = next(self._ids)
        self.label = label
        self.fn = fn
        self.on_done = on_done
        self.on_error = on_error
        self.busy = busy
        self.cleanup = cleanup          # called in the worker with the result of a cancelled job
        self.cancelled = False
        self.result = None
        self.error = None
        self.traceback = ""


class _Worker(qt.QObject):
    """Runs jobs one after the other in its thread (it owns the pipeline's VTK renderer)."""

    done = Signal(object)

    def run(self, job):
        if job.cancelled:   # given up before it started: nothing to do, nothing to free
            self.done.emit(job)
            return
        try:
            job.result = job.fn()
        except BaseException as exc:  # noqa: BLE001 - reported to the user by the window
            job.error = exc
            job.traceback = traceback.format_exc()
        if job.cancelled and job.cleanup is not None and job.result is not None:
            _quietly(job.cleanup, job.result)   # here: VTK objects die in the thread that made them
            job.result = None
        self.done.emit(job)


def _quietly(fn, *args):
    try:
        fn(*args)
    except Exception:  # noqa: BLE001 - freeing resources must not raise
        if os.environ.get("TAVIREG_DEBUG"):
            traceback.print_exc()


@dataclass
class _CaseData:
    """What a load job hands back to the window (built in the worker thread)."""

    model_path: Optional[Path]
    model: Any
    fluoro_path: Optional[Path]
    series: Any
    options: CaseOptions
    pipeline: Any = None
    frame_index: int = 0
    projection: Any = None            # FrameProjection of frame_index
    projection_error: Optional[str] = None
    frame_note: Optional[str] = None  # how frame_index was chosen ('auto')


def _build_case(model_path, model, fluoro_path, series, options, frame_index) -> _CaseData:
    """Read what is not read yet, then make the pipeline and project one frame (worker thread)."""
    if model is None and model_path is not None:
        from ..mesh import load_model

        model = load_model(model_path, units=options.units, space=options.space)
    if series is None and fluoro_path is not None:
        from ..fluoro import read_fluoro

        series = read_fluoro(fluoro_path, **options.geometry.as_kwargs())
    data = _CaseData(model_path, model, fluoro_path, series, options)
    if series is not None:  # an index (checked) or fluoro.AUTO_FRAME
        data.frame_index, data.frame_note = series.resolve_frame(frame_index)
    if model is not None and series is not None:
        from ..pipeline import RegistrationPipeline

        data.pipeline = RegistrationPipeline(model, series, isocenter_lps=options.isocenter_lps,
                                             orthographic=options.orthographic)
        try:
            data.projection = data.pipeline.project(data.frame_index)
        except InputError as exc:  # the files are fine; the placement is not: show it in the view
            data.projection_error = str(exc)
        except BaseException:
            data.pipeline.close()
            raise
    return data


# ----------------------------------------------------------------------------------------------
# Widgets
# ----------------------------------------------------------------------------------------------

def _style_icon(name):
    style = qt.QApplication.style()
    return style.standardIcon(getattr(qt.QStyle, name))


def _small(label):
    """A smaller grey label (subtitles, notes)."""
    font = label.font()
    font.setPointSizeF(max(font.pointSizeF() * 0.92, 7.0))
    label.setFont(font)
    label.setStyleSheet("color: #8a8f98;")
    return label


class _Placeholder(qt.QLabel):
    """Centred grey text shown instead of an image (what to do next, or why there is no image)."""

    def __init__(self, text="", parent=None):
        super().__init__(text, parent)
        self.setAlignment(qt.Qt.AlignCenter)
        self.setWordWrap(True)
        self.setMargin(24)
        self.setStyleSheet("QLabel { color: #9aa0a6; background: #15171a; }")
        self.setSizePolicy(qt.QSizePolicy.Expanding, qt.QSizePolicy.Expanding)


class _Panel(qt.QFrame):
    """A titled image panel: header (title + subtitle), a stack (placeholder | view), controls."""

    def __init__(self, title, view, parent=None):
        super().__init__(parent)
        self.setFrameShape(qt.QFrame.StyledPanel)
        layout = qt.QVBoxLayout(self)
        layout.setContentsMargins(6, 6, 6, 6)
        layout.setSpacing(4)
        header = qt.QHBoxLayout()
        header.setSpacing(8)
        self.titleLabel = qt.QLabel(title)
        font = self.titleLabel.font()
        font.setBold(True)
        self.titleLabel.setFont(font)
        header.addWidget(self.titleLabel)
        self.subtitleLabel = _small(qt.QLabel(""))
        self.subtitleLabel.setSizePolicy(qt.QSizePolicy.Ignored, qt.QSizePolicy.Preferred)
        header.addWidget(self.subtitleLabel, 1)
        layout.addLayout(header)
        self.stack = qt.QStackedWidget()
        self.placeholder = _Placeholder()
        self.stack.addWidget(self.placeholder)
        self.stack.addWidget(view)
        layout.addWidget(self.stack, 1)
        self.view = view

    def showPlaceholder(self, text, problem=False):
        self.placeholder.setText(text)
        self.placeholder.setStyleSheet("QLabel { color: %s; background: #15171a; }"
                                       % ("#e3b341" if problem else "#9aa0a6"))
        self.stack.setCurrentIndex(0)

    def showView(self):
        self.stack.setCurrentIndex(1)

    def placeholderShown(self):
        return int(qget(self.stack, "currentIndex")) == 0


class CaseOptionsDialog(qt.QDialog):
    """Model units and space, C-arm isocentre and projection model (:class:`CaseOptions`)."""

    def __init__(self, options: CaseOptions, center_hint=None, parent=None):
        super().__init__(parent)
        self._geometry = options.geometry
        self.setWindowTitle("Case options")
        layout = qt.QVBoxLayout(self)
        form = qt.QFormLayout()
        form.setFieldGrowthPolicy(qt.QFormLayout.ExpandingFieldsGrow)

        self.unitsCombo = qt.QComboBox()
        self.unitsCombo.addItem("From the file header (else mm, with a warning)")
        for u in ("mm", "cm", "m"):
            self.unitsCombo.addItem(u)
        self.unitsCombo.setCurrentIndex(_UNITS_CHOICES.index(options.units))
        form.addRow("Model units", self.unitsCombo)

        self.spaceCombo = qt.QComboBox()
        self.spaceCombo.addItem("From the file header (else LPS, with a warning)")
        for s in ("LPS", "RAS"):
            self.spaceCombo.addItem(s)
        self.spaceCombo.setCurrentIndex(_SPACE_CHOICES.index(options.space))
        form.addRow("Model space", self.spaceCombo)

        isoBox = qt.QVBoxLayout()
        self.isoDefault = qt.QRadioButton("Model bounding-box centre (with a warning)")
        self.isoGiven = qt.QRadioButton("Given, LPS mm:")
        isoRow = qt.QHBoxLayout()
        isoRow.addWidget(self.isoGiven)
        self.isoSpins = []
        start = options.isocenter_lps or center_hint or (0.0, 0.0, 0.0)
        for axis, value in zip("LPS", start):
            spin = qt.QDoubleSpinBox()
            spin.setRange(-5000.0, 5000.0)
            spin.setDecimals(1)
            spin.setSingleStep(1.0)
            spin.setPrefix(axis + " ")
            spin.setValue(float(value))
            spin.setToolTip("Isocentre coordinate along %s (mm, the model's LPS space)" % axis)
            isoRow.addWidget(spin)
            self.isoSpins.append(spin)
        isoBox.addWidget(self.isoDefault)
        isoBox.addLayout(isoRow)
        self.isoGroup = qt.QButtonGroup(self)
        self.isoGroup.addButton(self.isoDefault)
        self.isoGroup.addButton(self.isoGiven)
        (self.isoGiven if options.isocenter_lps is not None else self.isoDefault).setChecked(True)
        self.isoGiven.toggled.connect(self._updateEnabled)
        form.addRow("C-arm isocentre", isoBox)

        self.orthoCheck = qt.QCheckBox("Orthographic (the paper's Eq. 3) instead of the C-arm's perspective")
        self.orthoCheck.setChecked(options.orthographic)
        form.addRow("Projection", self.orthoCheck)
        layout.addLayout(form)

        note = _small(qt.QLabel("Every default taken is listed under Assumptions and warnings."))
        layout.addWidget(note)
        buttons = qt.QDialogButtonBox(qt.QDialogButtonBox.Ok | qt.QDialogButtonBox.Cancel)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        layout.addWidget(buttons)
        self._updateEnabled()

    def _updateEnabled(self, *args):
        for spin in self.isoSpins:
            spin.setEnabled(self.isoGiven.isChecked())

    def options(self) -> CaseOptions:
        iso = None
        if self.isoGiven.isChecked():
            iso = tuple(float(qget(s, "value")) for s in self.isoSpins)
        return CaseOptions(
            units=_UNITS_CHOICES[int(qget(self.unitsCombo, "currentIndex"))],
            space=_SPACE_CHOICES[int(qget(self.spaceCombo, "currentIndex"))],
            isocenter_lps=iso,
            orthographic=self.orthoCheck.isChecked(),
            geometry=self._geometry,  # set on the command line, kept
        )


class ViewerWindow(qt.QMainWindow):
    """The viewer's main window (see the module docstring).

    Every user action has a method that tests and scripts call directly: :meth:`openModel`,
    :meth:`openFluoro`, :meth:`openCase`, :meth:`setOptions`, :meth:`setFrame`, :meth:`setRoi`,
    :meth:`setOverlayMode`, :meth:`setOverlayOpacity`, :meth:`exportTo`, :meth:`register`.
    Loading and rendering run in the worker thread: :meth:`waitIdle` waits for them.

    ``interactive=False`` (screenshots, scripts): errors are collected in :attr:`errors` instead of
    message boxes. ``threaded=False`` runs jobs in the GUI thread (no Cancel).
    """

    caseChanged = Signal()
    projectionChanged = Signal(object)   # the current FrameProjection, or None
    busyChanged = Signal(bool)
    _request = Signal(object)

    def __init__(self, parent=None, *, threaded=None, interactive=True):
        super().__init__(parent)
        self.interactive = bool(interactive)
        self.errors: List[str] = []
        self.modelPath: Optional[Path] = None
        self.fluoroPath: Optional[Path] = None
        self.model = None
        self.series = None
        self.pipeline = None
        self.options = CaseOptions()
        self.frameIndex = 0
        self.frameNote: Optional[str] = None  # how the shown frame was chosen (--frame auto, the button)
        self.frameProjection = None
        self.projectionError: Optional[str] = None
        self.registration = None
        self._roiSource = "default"       # 'default' (the frame's), 'drawn' (user), 'cleared'
        self._drawnRoi = None             # the user's ROI, kept from frame to frame
        self._syncingRoi = False
        self._frameGrey = None            # display_frame() of the current frame (cached)
        self._frameGreyIndex = None
        self._pending: Dict[int, _Job] = {}
        self._projectionJob = None
        self._shutdown = False
        self._lastDir = str(Path.cwd())

        # PythonQt (3D Slicer) does not run Python code in QThreads well: work inline there
        self._threaded = (QT_API == "pyqt5") if threaded is None else bool(threaded)
        self._worker = _Worker()
        self._thread = None
        if self._threaded:
            self._thread = qt.QThread(self)
            self._worker.moveToThread(self._thread)
            self._thread.start()
        self._request.connect(self._worker.run)
        self._worker.done.connect(self._onJobDone)
        app = qt.QApplication.instance()
        if app is not None:   # never leave a running QThread behind, even without closeEvent
            app.aboutToQuit.connect(self.shutdown)

        self.setWindowTitle("TAVI Registration")
        self._buildActions()
        self._buildMenus()
        self._buildToolBar()
        self._buildCentral()
        self._buildSidePanel()
        self._buildStatusBar()
        self.resize(1440, 860)
        self._onOverlayControls()
        self._refreshAll()

    # ================================================================== construction
    def _action(self, text, slot, shortcut=None, tip=None, icon=None):
        action = qt.QAction(text, self)
        if shortcut:
            action.setShortcut(qt.QKeySequence(shortcut))
        if tip:
            action.setToolTip(tip)
            action.setStatusTip(tip)
        if icon:
            action.setIcon(_style_icon(icon))
        action.triggered.connect(lambda *args: slot())
        return action

    def _buildActions(self):
        self.openModelAction = self._action(
            "Open &model\u2026", self.openModel, "Ctrl+Shift+O",
            "Open the pre-operative vessel surface model (STL, OBJ, PLY, VTK, VTP, or a labelmap)",
            "SP_DirOpenIcon")
        self.openFluoroAction = self._action(
            "Open &fluoroscopy\u2026", self.openFluoro, "Ctrl+O",
            "Open the intra-operative fluoroscopy run (XA/RF DICOM)", "SP_DialogOpenButton")
        self.optionsAction = self._action(
            "Case &options\u2026", self.editOptions, "Ctrl+,",
            "Model units and space, C-arm isocentre, projection model",
            "SP_FileDialogDetailedView")
        self.exportAction = self._action(
            "&Export\u2026", self.export, "Ctrl+E",
            "Write the overlay PNG, the projection mask PNG and the ROI JSON to a folder",
            "SP_DialogSaveButton")
        self.quitAction = self._action("&Quit", self.close, "Ctrl+Q")
        self.registerAction = self._action(
            "&Register", self.register, "Ctrl+R", REGISTER_UNAVAILABLE_TIP, "SP_MediaPlay")
        self.fitAction = self._action("&Fit images", self._fitViews, "F",
                                      "Fit both images to their views")
        self.aboutAction = self._action("&About", self._about)

    def _buildMenus(self):
        bar = self.menuBar()
        fileMenu = bar.addMenu("&File")
        for a in (self.openModelAction, self.openFluoroAction, None, self.optionsAction, None,
                  self.exportAction, None, self.quitAction):
            fileMenu.addSeparator() if a is None else fileMenu.addAction(a)
        self.viewMenu = bar.addMenu("&View")
        self.viewMenu.addAction(self.fitAction)
        regMenu = bar.addMenu("&Registration")
        regMenu.addAction(self.registerAction)
        helpMenu = bar.addMenu("&Help")
        helpMenu.addAction(self.aboutAction)

    def _buildToolBar(self):
        tb = qt.QToolBar("Main")
        tb.setObjectName("mainToolBar")
        tb.setMovable(False)
        tb.setToolButtonStyle(qt.Qt.ToolButtonTextBesideIcon)
        tb.setIconSize(qt.QSize(18, 18))
        for a in (self.openModelAction, self.openFluoroAction, self.optionsAction):
            tb.addAction(a)
        tb.addSeparator()
        tb.addAction(self.registerAction)
        tb.addAction(self.exportAction)
        self.addToolBar(tb)
        self.toolBar = tb
        self.registerButton = tb.widgetForAction(self.registerAction)

    def _buildCentral(self):
        central = qt.QWidget()
        layout = qt.QVBoxLayout(central)
        layout.setContentsMargins(6, 6, 6, 4)
        layout.setSpacing(6)
        self.splitter = qt.QSplitter(qt.Qt.Horizontal)
        self.splitter.setChildrenCollapsible(False)

        # left: the model's projection with the ROI editor
        self.roiEditor = RoiEditor()
        for w in (self.roiEditor.overlayLabel, self.roiEditor.fillButton,
                  self.roiEditor.contourButton, self.roiEditor.opacitySlider,
                  self.roiEditor.opacityValueLabel):
            w.setVisible(False)   # no overlay on the projection: its controls would be clutter
        self.projectionPanel = _Panel("Model projection", self.roiEditor)
        self.roiEditor.roiChanged.connect(self._onProjectionRoiChanged)
        self.roiEditor.roiEditingFinished.connect(self._onRoiEditingFinished)

        # right: the fluoroscopy frame with the projection overlaid
        frameBox = qt.QWidget()
        fl = qt.QVBoxLayout(frameBox)
        fl.setContentsMargins(0, 0, 0, 0)
        fl.setSpacing(6)
        self.frameView = ImageRoiView()
        fl.addWidget(self.frameView, 1)
        controls = qt.QHBoxLayout()
        controls.setContentsMargins(6, 0, 6, 0)
        controls.setSpacing(6)
        self.showProjectionCheck = qt.QCheckBox("Projection")
        self.showProjectionCheck.setChecked(True)
        self.showProjectionCheck.setToolTip("Draw the model's projection over the frame")
        self.showProjectionCheck.toggled.connect(lambda *a: self._onOverlayControls())
        controls.addWidget(self.showProjectionCheck)
        controls.addSpacing(6)
        self.contourButton = qt.QToolButton()
        self.contourButton.setText("Contour")
        self.contourButton.setToolTip("Draw the outline of the projection")
        self.fillButton = qt.QToolButton()
        self.fillButton.setText("Fill")
        self.fillButton.setToolTip("Fill the projection (with the opacity on the right)")
        self.modeGroup = qt.QButtonGroup(self)
        for b in (self.contourButton, self.fillButton):
            b.setCheckable(True)
            self.modeGroup.addButton(b)
        self.contourButton.setChecked(True)   # the library's (and the CLI's) default picture
        for b in (self.contourButton, self.fillButton):
            b.setStyleSheet("QToolButton { padding: 2px 8px; } "
                            "QToolButton:checked { background: #2f6fb0; color: white; } "
                            "QToolButton:checked:disabled { background: #3b4048; color: #8a8f98; }")
        modeRow = qt.QHBoxLayout()
        modeRow.setSpacing(0)
        modeRow.addWidget(self.contourButton)
        modeRow.addWidget(self.fillButton)
        controls.addLayout(modeRow)
        self.contourButton.toggled.connect(lambda *a: self._onOverlayControls())
        controls.addSpacing(10)
        self.opacityLabel = qt.QLabel("Opacity")
        controls.addWidget(self.opacityLabel)
        self.opacitySlider = qt.QSlider(qt.Qt.Horizontal)
        self.opacitySlider.setRange(0, 100)
        self.opacitySlider.setSingleStep(5)
        self.opacitySlider.setPageStep(10)
        self.opacitySlider.setValue(60)
        self.opacitySlider.setMinimumWidth(70)
        self.opacitySlider.setMaximumWidth(200)
        self.opacitySlider.setToolTip("Opacity of the filled projection (contours are drawn opaque)")
        self.opacitySlider.valueChanged.connect(lambda *a: self._onOverlayControls())
        controls.addWidget(self.opacitySlider, 1)
        self.opacityValue = qt.QLabel("60 %")
        self.opacityValue.setMinimumWidth(qget(self.opacityValue, "sizeHint").width() + 8)
        self.opacityValue.setAlignment(qt.Qt.AlignRight | qt.Qt.AlignVCenter)
        controls.addWidget(self.opacityValue)
        fl.addLayout(controls)
        statusRow = qt.QHBoxLayout()   # like the RoiEditor's: image facts on the left, Fit right
        statusRow.setContentsMargins(6, 0, 6, 6)
        self.frameInfoLabel = qt.QLabel("")
        self.frameInfoLabel.setSizePolicy(qt.QSizePolicy.Ignored, qt.QSizePolicy.Preferred)
        statusRow.addWidget(self.frameInfoLabel, 1)
        self.frameFitButton = qt.QToolButton()
        self.frameFitButton.setText("Fit")
        self.frameFitButton.setToolTip("Fit the whole frame to the view (F)")
        self.frameFitButton.clicked.connect(lambda *a: self.frameView.fit())
        statusRow.addWidget(self.frameFitButton)
        fl.addLayout(statusRow)
        self.framePanel = _Panel("Fluoroscopy", frameBox)
        self.frameView.roiChanged.connect(self._onFrameRoiChanged)
        self.frameView.roiEditingFinished.connect(self._onRoiEditingFinished)
        self.frameView.cursorMoved.connect(self._onFrameCursor)
        self.frameView.zoomChanged.connect(lambda *a: self._updateFrameInfo())
        self._frameCursor = None

        for view in (self.roiEditor.view, self.frameView):
            view.setBackgroundBrush(qt.QBrush(qt.QColor(18, 19, 21)))   # images read best on dark
        self.splitter.addWidget(self.projectionPanel)
        self.splitter.addWidget(self.framePanel)
        self.splitter.setStretchFactor(0, 1)
        self.splitter.setStretchFactor(1, 1)
        self.splitter.setSizes([10000, 10000])
        layout.addWidget(self.splitter, 1)

        # the frame bar
        bar = qt.QHBoxLayout()
        bar.setContentsMargins(4, 0, 4, 0)
        bar.setSpacing(8)
        self.frameLabel = qt.QLabel("Frame")
        bar.addWidget(self.frameLabel)
        self.frameSlider = qt.QSlider(qt.Qt.Horizontal)
        self.frameSlider.setRange(0, 0)
        self.frameSlider.setPageStep(5)
        self.frameSlider.setToolTip("Frame of the fluoroscopy run (0-based index, as tavireg --frame)")
        bar.addWidget(self.frameSlider, 1)
        self.frameSpin = qt.QSpinBox()
        self.frameSpin.setRange(0, 0)
        self.frameSpin.setToolTip(qget(self.frameSlider, "toolTip"))
        bar.addWidget(self.frameSpin)
        self.frameCountLabel = qt.QLabel("/ 0")
        self.frameCountLabel.setMinimumWidth(48)
        bar.addWidget(self.frameCountLabel)
        self.frameAutoButton = qt.QToolButton()
        self.frameAutoButton.setText("Most contrast")
        self.frameAutoButton.setToolTip("Show the frame of the run with the most contrast medium (as tavireg "
                                        "--frame auto): a run's first frames often have none")
        self.frameAutoButton.clicked.connect(lambda *a: self.showMostOpacifiedFrame())
        bar.addWidget(self.frameAutoButton)
        self.frameViewLabel = qt.QLabel("")
        self.frameViewLabel.setMinimumWidth(200)
        self.frameViewLabel.setAlignment(qt.Qt.AlignRight | qt.Qt.AlignVCenter)
        bar.addWidget(self.frameViewLabel)
        layout.addLayout(bar)
        self.frameSlider.valueChanged.connect(self._onFrameControl)
        self.frameSpin.valueChanged.connect(self._onFrameControl)
        self.setCentralWidget(central)

    def _facts(self, title):
        box = qt.QGroupBox(title)
        form = qt.QFormLayout(box)
        form.setLabelAlignment(qt.Qt.AlignLeft)
        form.setHorizontalSpacing(12)
        form.setVerticalSpacing(3)
        form.setFieldGrowthPolicy(qt.QFormLayout.AllNonFixedFieldsGrow)
        return box, form

    def _buildSidePanel(self):
        panel = qt.QWidget()
        layout = qt.QVBoxLayout(panel)
        layout.setContentsMargins(6, 6, 6, 6)
        layout.setSpacing(6)
        self.caseBox, self.caseForm = self._facts("Inputs")
        layout.addWidget(self.caseBox)
        self.warningsBox = qt.QGroupBox("Assumptions and warnings")
        self.warningsLayout = qt.QVBoxLayout(self.warningsBox)
        self.warningsLayout.setSpacing(6)
        self.warningLabels = []
        layout.addWidget(self.warningsBox)
        self.geometryBox, self.geometryForm = self._facts("C-arm geometry")
        layout.addWidget(self.geometryBox)
        self.roiBox, self.roiForm = self._facts("Region of interest")
        layout.addWidget(self.roiBox)
        layout.addStretch(1)
        scroll = qt.QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(qt.QFrame.NoFrame)
        scroll.setWidget(panel)
        self.sideDock = qt.QDockWidget("Case details", self)
        self.sideDock.setObjectName("caseDock")
        self.sideDock.setFeatures(qt.QDockWidget.DockWidgetMovable | qt.QDockWidget.DockWidgetClosable)
        self.sideDock.setWidget(scroll)
        self.sideDock.setMinimumWidth(420)
        self.addDockWidget(qt.Qt.RightDockWidgetArea, self.sideDock)
        self.viewMenu.addAction(self.sideDock.toggleViewAction())

    def _buildStatusBar(self):
        sb = self.statusBar()
        self.progressLabel = qt.QLabel("")
        self.progressBar = qt.QProgressBar()
        self.progressBar.setMaximumWidth(180)
        self.progressBar.setTextVisible(False)
        self.cancelButton = qt.QToolButton()
        self.cancelButton.setText("Cancel")
        self.cancelButton.setToolTip("Stop waiting for this step (its result is discarded)")
        self.cancelButton.clicked.connect(lambda *a: self.cancel())
        self.warningsButton = qt.QToolButton()
        self.warningsButton.setAutoRaise(True)
        self.warningsButton.setToolTip("Show the assumptions and warnings of this case")
        self.warningsButton.clicked.connect(lambda *a: (self.sideDock.show(), self.sideDock.raise_()))
        research = _small(qt.QLabel("Research use only \u2013 not for clinical decisions"))
        for w in (self.progressLabel, self.progressBar, self.cancelButton):
            sb.addPermanentWidget(w)
            w.setVisible(False)
        sb.addPermanentWidget(self.warningsButton)
        sb.addPermanentWidget(research)

    # ================================================================== jobs
    def _submit(self, label, fn, on_done=None, *, on_error=None, busy=True, cleanup=None):
        if self._shutdown:
            return None
        job = _Job(label, fn, on_done, on_error, busy, cleanup)
        self._pending[job.id] = job
        if busy:
            self._updateBusy()
        self._request.emit(job)
        return job

    def isBusy(self) -> bool:
        """True while a job the window waits for (loading, rendering, registering) is running."""
        return bool(self._pending)

    def waitIdle(self, timeout_s: float = 120.0) -> bool:
        """Process events until no job is pending; False on timeout."""
        deadline = time.monotonic() + float(timeout_s)
        app = qt.QApplication.instance()
        while self._pending:
            if time.monotonic() > deadline:
                return False
            app.processEvents(qt.QEventLoop.AllEvents, 50)
            if self._pending:
                time.sleep(0.002)
        app.processEvents()
        return True

    def cancel(self):
        """Give up waiting for the running busy jobs: the window goes back to its previous case."""
        for job in list(self._pending.values()):
            if job.busy:
                job.cancelled = True
                del self._pending[job.id]
        self.statusBar().showMessage("Cancelled", 4000)
        self._updateBusy()

    def _onJobDone(self, job):
        if self._shutdown:
            return
        current = self._pending.pop(job.id, None)
        if job is self._projectionJob:
            self._projectionJob = None
        if current is None:   # cancelled: drop the result, free what it holds
            if job.cleanup is not None and job.result is not None:
                result = job.result
                self._submit(None, lambda: job.cleanup(result), busy=False)
            self._updateBusy()
            return
        self._updateBusy()
        if job.error is not None:
            if os.environ.get("TAVIREG_DEBUG") and job.traceback:
                sys.stderr.write(job.traceback)
            if job.on_error is not None:
                job.on_error(job.error)
            else:
                self._reportError(job.label or "Error", job.error)
            return
        if job.on_done is not None:
            job.on_done(job.result)

    def _updateBusy(self):
        busy = [j for j in self._pending.values() if j.busy]
        visible = bool(busy)
        if visible:
            self.progressLabel.setText(busy[-1].label + "\u2026")
            self.progressBar.setRange(0, 0)   # busy indicator: the steps do not report fractions
        for w in (self.progressLabel, self.progressBar):
            w.setVisible(visible)
        self.cancelButton.setVisible(visible and self._threaded)
        self.busyChanged.emit(visible)
        self._updateActions()

    def _reportError(self, title, exc):
        message = _one_line(exc) if isinstance(exc, BaseException) else str(exc)
        self.errors.append(message)
        self.statusBar().showMessage(message, 8000)
        if not self.interactive:
            return
        if isinstance(exc, BaseException) and not isinstance(exc, InputError):
            qt.QMessageBox.critical(self, title, message)
        else:
            qt.QMessageBox.warning(self, title, message)

    # ================================================================== opening a case
    def _askOpen(self, title, filters):
        result = qt.QFileDialog.getOpenFileName(self, title, self._lastDir, filters)
        path = result[0] if isinstance(result, (tuple, list)) else result
        if not path:
            return None
        self._lastDir = str(Path(path).parent)
        return Path(path)

    def openModel(self, path=None, options: Optional[CaseOptions] = None):
        """Read a surface model (a file dialog without ``path``); keeps the current fluoroscopy."""
        if path is None:
            path = self._askOpen("Open vessel model",
                                 "Surface models (*.stl *.obj *.ply *.vtk *.vtp);;"
                                 "Labelmaps (*.nrrd *.nhdr *.nii *.nii.gz *.mha *.mhd);;All files (*)")
            if path is None:
                return
        path = Path(path)
        options = options or self.options
        series, fluoroPath, frame = self.series, self.fluoroPath, self.frameIndex
        self._submit(f"Reading {path.name}",
                     lambda: _build_case(path, None, fluoroPath, series, options, frame),
                     self._installCase, cleanup=_close_case)

    def openFluoro(self, path=None):
        """Read a fluoroscopy run (a file dialog without ``path``); keeps the current model."""
        if path is None:
            path = self._askOpen("Open fluoroscopy", "DICOM (*.dcm *.DCM *.dicom);;All files (*)")
            if path is None:
                return
        path = Path(path)
        model, modelPath, options = self.model, self.modelPath, self.options
        self._submit(f"Reading {path.name}",
                     lambda: _build_case(modelPath, model, path, None, options, 0),
                     self._installCase, cleanup=_close_case)

    def openCase(self, model_path=None, fluoro_path=None, options: Optional[CaseOptions] = None,
                 frame: int = 0):
        """Read a model and a fluoroscopy run together (either may be None: keep the current)."""
        options = options or self.options
        mp = Path(model_path) if model_path is not None else self.modelPath
        model = None if model_path is not None else self.model
        fp = Path(fluoro_path) if fluoro_path is not None else self.fluoroPath
        series = None if fluoro_path is not None else self.series
        self._submit("Opening the case",
                     lambda: _build_case(mp, model, fp, series, options, frame),
                     self._installCase, cleanup=_close_case)

    def setOptions(self, options: CaseOptions):
        """New model units/space, isocentre or projection model: re-reads the model if needed."""
        if not isinstance(options, CaseOptions):
            raise TypeError("setOptions takes a CaseOptions")
        if self.model is None and self.series is None:
            self.options = options
            self._refreshAll()
            return
        reread = (options.units, options.space) != (self.options.units, self.options.space)
        model = None if reread else self.model
        mp, fp, series, frame, note = self.modelPath, self.fluoroPath, self.series, self.frameIndex, self.frameNote
        if options.geometry != self.options.geometry:
            series = None  # read again with the new C-arm values

        def install(data):
            if data.frame_note is None and data.frame_index == frame:
                data.frame_note = note  # the same frame of the same run: how it was chosen still holds
            self._installCase(data, "Case options applied")

        self._submit("Applying the case options",
                     lambda: _build_case(mp, model, fp, series, options, frame), install, cleanup=_close_case)

    def editOptions(self):
        """The Case options dialog."""
        hint = tuple(float(c) for c in self.model.center) if self.model is not None else None
        dialog = CaseOptionsDialog(self.options, hint, self)
        if dialog.exec_() == qt.QDialog.Accepted:
            try:
                options = dialog.options()
            except InputError as exc:
                self._reportError("Case options", exc)
                return
            self.setOptions(options)

    def _installCase(self, data: _CaseData, message=None):
        old = self.pipeline
        if old is not None and old is not data.pipeline:
            self._submit(None, old.close, busy=False)
        self.modelPath, self.model = data.model_path, data.model
        self.fluoroPath, self.series = data.fluoro_path, data.series
        self.options = data.options
        self.pipeline = data.pipeline
        self.registration = None
        self.frameIndex = data.frame_index
        self.frameNote = data.frame_note
        self.frameProjection = data.projection
        self.projectionError = data.projection_error
        self._roiSource, self._drawnRoi = "default", None
        self._frameGreyIndex = None
        self._setFrameControls()
        self._refreshAll()
        self.frameView.fit()
        self.roiEditor.fit()
        self.caseChanged.emit()
        self.projectionChanged.emit(self.frameProjection)
        names = [p.name for p in (self.modelPath, self.fluoroPath) if p is not None]
        self.statusBar().showMessage(message or data.frame_note or ("Opened " + " and ".join(names)), 5000)

    # ================================================================== frames
    def _setFrameControls(self):
        n = int(self.series.n_frames) if self.series is not None else 1
        for w in (self.frameSlider, self.frameSpin):
            w.blockSignals(True)
            w.setRange(0, max(n - 1, 0))
            w.setValue(self.frameIndex)
            w.setEnabled(self.series is not None and n > 1)
            w.blockSignals(False)
        self.frameCountLabel.setText("/ %d" % max(n - 1, 0))
        self.frameLabel.setEnabled(self.series is not None and n > 1)
        self.frameAutoButton.setEnabled(self.series is not None and n > 1)

    def _onFrameControl(self, value):
        self.setFrame(int(value))

    def showMostOpacifiedFrame(self):
        """Show the frame of the run with the most contrast medium (``fluoro.opacification_scores``,
        as ``--frame auto``), found in the worker thread; the status bar and the warnings name it."""
        if self.series is None:
            return
        from ..fluoro import AUTO_FRAME

        series = self.series

        def done(result):
            index, note = result
            if self.series is series:
                self.setFrame(index)
                self.frameNote = note
                self.statusBar().showMessage(note, 8000)

        self._submit("Finding the frame with the most contrast", lambda: series.resolve_frame(AUTO_FRAME), done)

    def setFrame(self, index: int):
        """Show frame ``index`` (0-based) of the run. Its geometry shows at once; its image and
        projection together, as soon as the worker has rendered it (the pipeline caches frames)."""
        if self.series is None:
            return
        index = min(max(int(index), 0), int(self.series.n_frames) - 1)
        for w in (self.frameSlider, self.frameSpin):
            if int(qget(w, "value")) != index:
                w.blockSignals(True)
                w.setValue(index)
                w.blockSignals(False)
        if index == self.frameIndex:
            return
        self.frameIndex = index
        self.frameNote = None
        self.registration = None
        if self.pipeline is None:
            self._refreshAll()
            return
        self.frameProjection, self.projectionError = None, None
        self._updateGeometryFacts()   # the images follow with the projection (no stale pairs)
        self._updateActions()
        self._requestProjection()

    def _requestProjection(self):
        if self.pipeline is None or self._projectionJob is not None:
            return   # when the running one ends, its handler asks again for the current frame
        pipeline, index = self.pipeline, self.frameIndex

        def done(fp):
            if pipeline is not self.pipeline:
                return
            if index != self.frameIndex:
                self._requestProjection()
                return
            self.frameProjection, self.projectionError = fp, None
            self._refreshAll()
            self.projectionChanged.emit(fp)

        def failed(exc):
            if pipeline is not self.pipeline:
                return
            if index != self.frameIndex:
                self._requestProjection()
                return
            if isinstance(exc, InputError):   # e.g. the model misses the detector in this frame
                self.frameProjection, self.projectionError = None, str(exc)
                self._refreshAll()
                self.projectionChanged.emit(None)
            else:
                self._reportError("Projection", exc)

        self._projectionJob = self._submit(f"Rendering frame {index}", lambda: pipeline.project(index),
                                           done, on_error=failed, busy=False)

    # ================================================================== ROI
    def roi(self):
        """The ROI drawn (or the frame's default shown) on the projection, or None."""
        return self.roiEditor.roi()

    def setRoi(self, roi):
        """Set the ROI ``(x, y, w, h)`` in frame pixels as if the user had drawn it."""
        self.roiEditor.setRoi(roi)
        self._onRoiEditingFinished(self.roiEditor.roi())

    def roiSource(self) -> str:
        """'drawn' (by the user), 'default' (the frame's bounding box) or 'cleared'."""
        return self._roiSource

    def movingRoi(self):
        """The ROI the registration would use: the drawn one, else the frame's default
        (``roi.validate_roi`` checks it). InputError when unusable; None without projection."""
        if self.frameProjection is None:
            return None
        from ..roi import validate_roi

        roi = self.roiEditor.roi()
        if roi is None:
            roi = self.frameProjection.default_roi
        if roi is None:
            raise InputError("no ROI: the projection is empty")
        rows, cols = self.frameProjection.projection.mask.shape
        return validate_roi(roi, rows, cols)

    def movingImage(self):
        """``(crop, roi)``: the moving image the viewer would register, from the pipeline."""
        roi = self.movingRoi()
        if roi is None:
            return None
        return self.pipeline.moving_image(self.frameIndex, roi)

    def _onProjectionRoiChanged(self, roi):
        if not self._syncingRoi and self.frameView.imageShape() is not None:
            self._syncingRoi = True
            try:
                self.frameView.setRoi(roi)
            finally:
                self._syncingRoi = False
        self._updateRoiFacts()

    def _onFrameRoiChanged(self, roi):
        if not self._syncingRoi:
            self._syncingRoi = True
            try:
                self.roiEditor.setRoi(roi)
            finally:
                self._syncingRoi = False
            self._updateRoiFacts()

    def _onRoiEditingFinished(self, roi):
        self._roiSource = "drawn" if roi is not None else "cleared"
        self._drawnRoi = roi
        if self.registration is not None:
            self.registration = None
            self._updateFrameView()
        self._updateRoiFacts()
        self._updateActions()

    # ================================================================== overlay
    def overlayMode(self) -> str:
        return "contour" if self.contourButton.isChecked() else "fill"

    def setOverlayMode(self, mode: str):
        if mode not in ("contour", "fill"):
            raise ValueError("overlay mode is 'contour' or 'fill', got %r" % (mode,))
        (self.contourButton if mode == "contour" else self.fillButton).setChecked(True)
        self._onOverlayControls()

    def overlayOpacity(self) -> float:
        return int(qget(self.opacitySlider, "value")) / 100.0

    def setOverlayOpacity(self, opacity: float):
        self.opacitySlider.setValue(int(round(min(max(float(opacity), 0.0), 1.0) * 100)))

    def setProjectionVisible(self, visible: bool):
        self.showProjectionCheck.setChecked(bool(visible))

    def _onOverlayControls(self):
        self.opacityValue.setText("%d %%" % int(qget(self.opacitySlider, "value")))
        self._updateOverlayControls()
        self._updateFrameView()

    def _updateOverlayControls(self):
        has = self.overlayMask() is not None
        shown = has and self.showProjectionCheck.isChecked()
        fill = shown and self.overlayMode() == "fill"
        self.showProjectionCheck.setEnabled(has)
        for w in (self.contourButton, self.fillButton):
            w.setEnabled(shown)
        for w in (self.opacitySlider, self.opacityValue, self.opacityLabel):
            w.setEnabled(fill)   # contours are drawn opaque (overlay.overlay_rgb)

    def overlayMask(self):
        """The mask drawn on the frame: the registered projection once registered, else the
        projection under the frame's C-arm geometry; None when there is none."""
        if self.registration is not None:
            return np.asarray(self.registration.registered_mask)
        if self.frameProjection is not None:
            return self.frameProjection.projection.mask
        return None

    def composeOverlay(self):
        """The overlay picture of the current frame, (H, W, 3) uint8, exactly as exported:
        ``overlay.overlay_rgb(frame, mask, mode=..., opacity=...)``; None without a frame."""
        from .. import overlay

        grey = self._currentGrey()
        if grey is None:
            return None
        mask = self.overlayMask()
        if mask is None:
            return np.repeat(grey[:, :, None], 3, axis=2)
        rgb = overlay.overlay_rgb(grey, mask, mode=self.overlayMode(), opacity=self.overlayOpacity(),
                                  color=OVERLAY_COLOR)
        if self.registration is not None and self.registration.result.flagged:
            rgb = overlay.mark_flagged(rgb)
        return rgb

    def frameOverlay(self):
        """What the frame view shows, (H, W, 3) uint8 at image resolution (None without frame)."""
        return self.frameView.renderedImage()

    def _currentGrey(self):
        if self.series is None:
            return None
        if self._frameGreyIndex != self.frameIndex or self._frameGrey is None:
            from ..overlay import display_frame

            self._frameGrey = display_frame(self.series.frame(self.frameIndex))
            self._frameGreyIndex = self.frameIndex
        return self._frameGrey

    def _updateFrameView(self):
        grey = self._currentGrey()
        if grey is None:
            self.frameView.setImage(None)
            return
        if self.showProjectionCheck.isChecked() and self.overlayMask() is not None:
            self.frameView.setImage(self.composeOverlay())
        else:
            self.frameView.setImage(np.repeat(grey[:, :, None], 3, axis=2))
        self._updateFrameInfo()

    # ================================================================== register
    def registrationAvailable(self) -> bool:
        """Whether registration can run: the viewer registers to the DRU-Net segmentation of the
        frame, so a segmentation network must be installed (the registration method itself falls
        back to SimpleITK when no registration network is, with a warning)."""
        from ..networks.weights import installed

        return installed("segmentation")

    def register(self):
        """Register the projection ROI to the current frame in the worker thread.

        Plugs into ``RegistrationPipeline.register(frame_index, roi)``, whose result carries
        ``registered_mask`` (uint8 0/1 on the frame's grid); the frame view then shows
        ``overlay.overlay_rgb`` of it, like the CLI. A degenerate result is reported and not shown.
        """
        if not self.registrationAvailable():
            self._reportError("Register", InputError(REGISTER_UNAVAILABLE_TIP))
            return
        if self.pipeline is None or self.frameProjection is None:
            return
        try:
            roi = self.movingRoi()
        except InputError as exc:
            self._reportError("Register", exc)
            return
        pipeline, index = self.pipeline, self.frameIndex

        def done(result):
            if pipeline is self.pipeline and index == self.frameIndex:
                if not result.valid:  # never show a wrong overlay as if it were right
                    self.registration = None
                    self._reportError("Register", InputError(result.result.message))
                else:
                    self.registration = result
                    if result.result.flagged:  # shown, with the flag: border, status line, warnings panel
                        self.statusBar().showMessage(result.result.flags[0], 0)
                self._refreshAll()

        self._submit(f"Registering frame {index}", lambda: pipeline.register(index, roi), done)

    # ================================================================== export
    def export(self):
        """Ask for a folder and export there (see :meth:`exportTo`)."""
        if self.frameProjection is None:
            return
        directory = qt.QFileDialog.getExistingDirectory(self, "Export to folder", self._lastDir)
        if not directory:
            return
        self._lastDir = directory
        existing = [n for n in _EXPORT_NAMES if (Path(directory) / n).exists()]
        if existing and self.interactive:
            answer = qt.QMessageBox.question(
                self, "Export", "Replace %s in %s?" % (", ".join(existing), directory),
                qt.QMessageBox.Yes | qt.QMessageBox.No, qt.QMessageBox.No)
            if answer != qt.QMessageBox.Yes:
                return
        self.exportTo(directory)

    def exportTo(self, directory) -> List[Path]:
        """Write ``overlay.png`` (the frame view's picture), ``projection_mask.png`` (0/255 on
        the frame's grid) and ``roi.json`` into ``directory``, all or nothing. Returns the paths
        (empty after an error, which is reported like every other)."""
        from ..outputs import OutputSet, image_png_writer, mask_png_writer

        try:
            if self.frameProjection is None:
                raise InputError("nothing to export: open a model and a fluoroscopy run first")
            directory = Path(directory)
            roi = self.movingRoi()
            picture = self.composeOverlay()
            mask = self.overlayMask()
            record = self._exportRecord(roi)
            text = (json.dumps(record, indent=2) + "\n").encode("utf-8")
            with OutputSet(inputs=[self.modelPath, self.fluoroPath]) as outs:
                outs.add(directory / "overlay.png", image_png_writer(picture))
                outs.add(directory / "projection_mask.png", mask_png_writer(mask))
                outs.add(directory / "roi.json", lambda fh: fh.write(text))
            paths = [directory / n for n in _EXPORT_NAMES]
        except Exception as exc:  # noqa: BLE001 - reported as one line
            self._reportError("Export", exc)
            return []
        self.statusBar().showMessage("Exported to %s" % directory, 6000)
        return paths

    def _exportRecord(self, roi):
        fp = self.frameProjection
        return {
            "roi": [int(v) for v in roi],
            "roi_source": {"drawn": "drawn", "default": "default", "cleared": "default"}[self._roiSource],
            "frame": int(self.frameIndex),
            "model": str(self.modelPath) if self.modelPath else None,
            "fluoro": str(self.fluoroPath) if self.fluoroPath else None,
            "model_units": getattr(self.model, "units_used", None),
            "model_space": getattr(self.model, "space_used", None),
            "isocenter_lps": [float(c) for c in self.pipeline.isocenter_lps],
            "isocenter_source": "given" if self.options.isocenter_lps is not None else "model centre",
            "orthographic": bool(self.options.orthographic),
            "geometry": fp.geometry.to_dict(),
            "overlay": {"mode": self.overlayMode(), "opacity": self.overlayOpacity(),
                        "color": list(OVERLAY_COLOR),
                        "mask": "registered" if self.registration is not None else "projection"},
            "registered": self.registration is not None,
            "warnings": self.warnings(),
        }

    # ================================================================== facts and refresh
    def warnings(self) -> List[str]:
        """Every fallback the library took for this case and, after a registration, that
        registration's own warnings (method fallback, low agreement, FoV guess...): shown in the
        warnings panel."""
        if self.pipeline is not None:
            out = list(self.pipeline.warnings) + ([self.frameNote] if self.frameNote else [])
            if self.registration is not None:
                out.extend(w for w in self.registration.warnings if w not in out)
            return out
        out = [self.frameNote] if self.frameNote else []
        for obj in (self.model, self.series):
            if obj is not None:
                out.extend(getattr(obj, "warnings", []))
        return out

    def geometryFacts(self) -> Dict[str, str]:
        """The geometry panel's rows as ``{label: text}``."""
        return {label: text for label, text in self._geometryRows()}

    def _geometryRows(self):
        if self.series is None:
            return []
        if self.pipeline is not None:
            geom = self.pipeline.geometry(self.frameIndex)
            source = "given" if self.options.isocenter_lps is not None else "model centre (assumed)"
            return geometry_facts(geom, source)
        rows = geometry_facts(self.series.geometry(self.frameIndex))
        return [r for r in rows if not r[0].startswith("Isocentre")]

    @staticmethod
    def _fillForm(form, rows):
        while form.rowCount():
            form.removeRow(0)
        for label, text in rows:
            value = qt.QLabel(text)
            value.setTextInteractionFlags(qt.Qt.TextSelectableByMouse)
            value.setWordWrap(True)
            name = qt.QLabel(label)
            name.setStyleSheet("color: #8a8f98;")
            form.addRow(name, value)

    def _refreshAll(self):
        self._updateTitle()
        self._updateCaseFacts()
        self._updateGeometryFacts()
        self._updateWarnings()
        self._updateProjectionView()
        self._updateFramePanel()
        self._updateOverlayControls()
        self._updateRoiFacts()
        self._updateActions()

    def _updateTitle(self):
        names = [p.name for p in (self.modelPath, self.fluoroPath) if p is not None]
        self.setWindowTitle("TAVI Registration" + (" \u2014 " + " \u00b7 ".join(names) if names else ""))

    def _updateCaseFacts(self):
        rows = []
        if self.model is not None:
            m = self.model
            rows.append(("Model", self.modelPath.name if self.modelPath else "(in memory)"))
            ntri = int(getattr(m, "n_triangles", 0))
            rows.append(("Triangles", "{:,}".format(ntri).replace(",", "\u2009")))
            rows.append(("Units", "%s (%s)" % (m.units_used, getattr(m, "units_source", "?"))))
            rows.append(("Space", "%s (%s)" % (m.space_used, getattr(m, "space_source", "?"))))
        else:
            rows.append(("Model", "none \u2013 File \u25b8 Open model\u2026"))
        if self.series is not None:
            s = self.series
            rows.append(("Fluoroscopy", self.fluoroPath.name if self.fluoroPath else "(in memory)"))
            frames = "%d frame%s" % (s.n_frames, "" if s.n_frames == 1 else "s")
            if s.frame_time_ms:
                frames += ", %.0f ms each" % s.frame_time_ms
            rows.append(("Run", "%s \u00b7 %s" % (s.modality, frames)))
        else:
            rows.append(("Fluoroscopy", "none \u2013 File \u25b8 Open fluoroscopy\u2026"))
        rows.append(("Projection", "orthographic (Eq. 3)" if self.options.orthographic else "perspective C-arm"))
        self._fillForm(self.caseForm, rows)

    def _updateGeometryFacts(self):
        rows = self._geometryRows()
        if self.series is None:
            self.geometryBox.setTitle("C-arm geometry")
            self._fillForm(self.geometryForm, [("", "no fluoroscopy open")])
            self.frameViewLabel.setText("")
            return
        self.geometryBox.setTitle("C-arm geometry \u00b7 frame %d" % self.frameIndex)
        self._fillForm(self.geometryForm, rows)
        facts = dict(rows)
        self.frameViewLabel.setText("%s \u00b7 SID %s" % (facts["View"], facts["SID"]))

    def _updateWarnings(self):
        warnings = self.warnings()
        for label in self.warningLabels:
            self.warningsLayout.removeWidget(label)
            label.deleteLater()
        self.warningLabels = []
        texts = warnings or ["none" if (self.model or self.series) else "no case open"]
        for text in texts:
            label = qt.QLabel(("\u26a0  " + text) if warnings else text)
            label.setWordWrap(True)
            label.setTextInteractionFlags(qt.Qt.TextSelectableByMouse)
            if warnings:
                label.setStyleSheet("color: #e3b341;")
            self.warningsLayout.addWidget(label)
            self.warningLabels.append(label)
        self.warningsBox.setTitle("Assumptions and warnings (%d)" % len(warnings))
        self.warningsButton.setText("\u26a0 %d warning%s" % (len(warnings), "" if len(warnings) == 1 else "s"))
        self.warningsButton.setVisible(bool(warnings))

    def _updateProjectionView(self):
        panel = self.projectionPanel
        fp = self.frameProjection
        if fp is None:
            self.roiEditor.setImage(None)
            if self.model is None:
                text = "Open the pre-operative vessel model\n(File \u25b8 Open model\u2026)"
            elif self.series is None:
                text = ("Open a fluoroscopy run to project the model under its C-arm geometry\n"
                        "(File \u25b8 Open fluoroscopy\u2026)")
            elif self.projectionError:
                text = "No projection\n\n%s" % self.projectionError
            else:
                text = "Rendering frame %d\u2026" % self.frameIndex
            panel.showPlaceholder(text, problem=bool(self.projectionError))
            panel.subtitleLabel.setText("")
            return
        proj = fp.projection
        picture = proj.depth_display() if proj.depth_mm is not None else proj.mask * np.uint8(255)
        self.roiEditor.setImage(picture, window=(0, 255))
        panel.showView()
        panel.titleLabel.setText("Model projection \u00b7 frame %d" % fp.frame_index)
        panel.subtitleLabel.setText("drag to draw the ROI")
        panel.subtitleLabel.setToolTip("Drag outside the box to draw a new ROI, inside it to move it, "
                                       "on its handles to resize it; Esc clears it")
        if self._roiSource == "default":
            self.roiEditor.setRoi(fp.default_roi)
        elif self._roiSource == "drawn":
            self.roiEditor.setRoi(self._drawnRoi)
        else:
            self.roiEditor.clearRoi()

    def _updateFramePanel(self):
        panel = self.framePanel
        if self.series is None:
            self.frameView.setImage(None)
            panel.showPlaceholder("Open the intra-operative fluoroscopy run\n(File \u25b8 Open fluoroscopy\u2026)")
            panel.subtitleLabel.setText("")
            return
        panel.showView()
        self._updateFrameView()
        if self.registration is not None:
            what = "registered projection"
        elif self.frameProjection is not None:
            what = "unregistered projection"
        else:
            what = "no projection"
        panel.titleLabel.setText("Fluoroscopy \u00b7 frame %d" % self.frameIndex)
        panel.subtitleLabel.setText(what)
        # (re)set after the image: an ROI given to an image-less view stays hidden otherwise
        self._syncingRoi = True
        try:
            self.frameView.clearRoi()
            self.frameView.setRoi(self.roiEditor.roi())
        finally:
            self._syncingRoi = False

    def _updateFrameInfo(self):
        shape = self.frameView.imageShape()
        if shape is None or self.series is None:
            self.frameInfoLabel.setText("")
            return
        parts = ["%d\u00d7%d px" % (shape[1], shape[0]), "%d%%" % int(round(self.frameView.zoom() * 100))]
        if self._frameCursor is not None:
            col, row = self._frameCursor
            value = float(self.series.frame(self.frameIndex)[row, col])
            parts.append("x %d, y %d: %g" % (col, row, value))
        self.frameInfoLabel.setText("  \u00b7  ".join(parts))

    def _onFrameCursor(self, pixel):
        self._frameCursor = pixel
        self._updateFrameInfo()

    def _updateRoiFacts(self):
        rows = []
        if self.frameProjection is None:
            rows.append(("", "no projection"))
        else:
            roi = self.roiEditor.roi()
            try:
                used = self.movingRoi()
                crop, used = self.pipeline.moving_image(self.frameIndex, used)
                problem = None
            except InputError as exc:
                used, crop, problem = None, None, str(exc)
            if roi is not None:
                source = {"drawn": "drawn", "default": "default (bounding box)",
                          "cleared": "drawn"}[self._roiSource]
                rows.append(("Origin", "x %d, y %d" % roi[:2]))
                rows.append(("Size", "%d \u00d7 %d px" % roi[2:]))
                rows.append(("Source", source))
            elif used is not None:
                rows.append(("ROI", "none drawn: the default is used"))
                rows.append(("Origin", "x %d, y %d" % used[:2]))
                rows.append(("Size", "%d \u00d7 %d px" % used[2:]))
            if problem:
                rows.append(("Problem", problem))
            elif crop is not None:
                rows.append(("Model pixels", "%.0f %% of the ROI" % (100.0 * float(crop.mean()))))
        self._fillForm(self.roiForm, rows)

    def _updateActions(self):
        busy = any(j.busy for j in self._pending.values())
        hasProjection = self.frameProjection is not None
        self.openModelAction.setEnabled(not busy)
        self.openFluoroAction.setEnabled(not busy)
        self.optionsAction.setEnabled(not busy)
        self.exportAction.setEnabled(hasProjection and not busy)
        available = self.registrationAvailable()
        self.registerAction.setEnabled(available and hasProjection and not busy)
        tip = ("Register the projection ROI to the frame" if available else REGISTER_UNAVAILABLE_TIP)
        self.registerAction.setToolTip(tip)
        self.registerAction.setStatusTip(tip)
        if self.registerButton is not None:
            self.registerButton.setToolTip(tip)

    def _fitViews(self):
        self.roiEditor.fit()
        self.frameView.fit()

    def _about(self):
        from .. import __version__

        qt.QMessageBox.about(
            self, "About TAVI Registration",
            "<b>TAVI Registration %s</b><br>Registers a pre-operative CTA vessel model to "
            "intra-operative TAVI fluoroscopy (Li et al., <i>Model-to-Image Registration via Deep "
            "Learning towards Image-Guided Endovascular Interventions</i>).<br><br>"
            "Research software. Not a medical device; not for clinical decisions." % __version__)

    # ================================================================== screenshots and shutdown
    def grabPng(self) -> bytes:
        """The whole window rendered to PNG bytes (works offscreen and without showing it)."""
        qt.QApplication.instance().processEvents()
        pixmap = self.grab()
        data = qt.QByteArray()
        buffer = qt.QBuffer(data)
        buffer.open(qt.QIODevice.WriteOnly)
        if not pixmap.save(buffer, "PNG"):
            raise RuntimeError("Qt could not encode the screenshot as PNG")
        buffer.close()
        return bytes(data)

    def shutdown(self):
        """Close the pipeline in the worker (its renderer's GL context lives in that thread),
        wait for it, and stop the thread."""
        import threading

        if self._shutdown:
            return
        self._shutdown = True
        for job in self._pending.values():
            job.cancelled = True
        self._pending.clear()
        pipeline, closed = self.pipeline, threading.Event()

        def close():
            try:
                if pipeline is not None:
                    _quietly(pipeline.close)
            finally:
                closed.set()

        self._request.emit(_Job(None, close, busy=False))
        if self._thread is not None:
            closed.wait(120)   # jobs run in order: the running one ends first
            self._thread.quit()
            self._thread.wait()

    def closeEvent(self, event):
        self.shutdown()
        qt.QMainWindow.closeEvent(self, event)


def _close_case(data):
    """Cleanup of a cancelled load: close the pipeline it made (runs in the worker)."""
    if data is not None and getattr(data, "pipeline", None) is not None:
        data.pipeline.close()


# ----------------------------------------------------------------------------------------------
# Entry point for ``tavireg gui``
# ----------------------------------------------------------------------------------------------

def _application(screenshot: bool):
    app = qt.QApplication.instance()
    if app is None:
        if screenshot and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
            os.environ["QT_QPA_PLATFORM"] = "offscreen"
        app = qt.QApplication([sys.argv[0] if sys.argv else "tavireg"])
        app.setApplicationName("TAVI Registration")
        app.setStyle("Fusion")
        app.setPalette(_dark_palette())
    return app


def _dark_palette():
    """A calm dark palette for the standalone viewer (images are read in a dim room)."""
    p = qt.QPalette()
    colors = {
        "Window": (43, 45, 48), "WindowText": (222, 224, 227), "Base": (30, 31, 34),
        "AlternateBase": (38, 40, 43), "ToolTipBase": (250, 250, 250), "ToolTipText": (20, 20, 20),
        "Text": (222, 224, 227), "Button": (52, 54, 58), "ButtonText": (222, 224, 227),
        "BrightText": (255, 90, 90), "Highlight": (56, 132, 206), "HighlightedText": (255, 255, 255),
        "Link": (100, 170, 240), "Mid": (70, 72, 76), "Dark": (26, 27, 30), "Light": (80, 82, 86),
    }
    for role, rgb in colors.items():
        p.setColor(getattr(qt.QPalette, role), qt.QColor(*rgb))
    for role in ("WindowText", "Text", "ButtonText"):
        p.setColor(qt.QPalette.Disabled, getattr(qt.QPalette, role), qt.QColor(120, 122, 126))
    p.setColor(qt.QPalette.Disabled, qt.QPalette.Highlight, qt.QColor(78, 82, 88))
    return p


def run_viewer(model=None, fluoro=None, *, units=None, space=None, isocenter=None,
               orthographic=False, frame=0, screenshot=None, demo=False, size=(1440, 860),
               geometry: Optional[GeometryOverrides] = None) -> int:
    """Open the viewer (``tavireg gui``). With ``screenshot`` (a PNG path) render the window with
    the case loaded offscreen, write the PNG atomically and return 0 without showing a window.

    ``demo=True`` opens the demo case (``demo.make_demo_case``, written to a temporary folder).
    Problems with the inputs raise InputError (the CLI prints them as ``error: ...``).
    """
    import tempfile

    if demo and (model is not None or fluoro is not None):
        raise InputError("--demo opens its own case: leave out --model and --fluoro")
    if screenshot is not None:
        screenshot = Path(screenshot)
        if screenshot.suffix.lower() != ".png":
            raise InputError(f"--screenshot writes a PNG: {screenshot.name} does not end in .png")
    options = CaseOptions(units=units, space=space,
                          isocenter_lps=tuple(isocenter) if isocenter is not None else None,
                          orthographic=orthographic, geometry=geometry or GeometryOverrides())
    for path in (model, fluoro):
        if path is not None and not Path(path).is_file():
            raise InputError(f"no such file: {path}")
    auto = isinstance(frame, str)  # fluoro.AUTO_FRAME (the CLI's frame_argument)
    if frame is not None and not auto and int(frame) < 0:
        raise InputError(f"--frame must be 0 or more, got {frame}")

    demo_roi = None
    with tempfile.TemporaryDirectory(prefix="tavireg-gui-") as tmp:
        if demo:
            from ..synthetic.demo import make_demo_case

            case = make_demo_case(Path(tmp))
            model, fluoro = case.model_path, case.fluoro_path
            frame = case.frame_index if not frame else frame
            demo_roi = case.truth().user_roi()  # the ROI a user would draw (as in `tavireg demo`)
            if options.isocenter_lps is None and getattr(case, "isocenter_lps", None) is not None:
                options = replace(options, isocenter_lps=tuple(case.isocenter_lps))

        app = _application(screenshot is not None)
        window = ViewerWindow(interactive=screenshot is None)
        window.resize(*size)
        try:
            if screenshot is not None:
                window.setAttribute(qt.Qt.WA_DontShowOnScreen, True)
            window.show()
            if model is not None or fluoro is not None or options != CaseOptions():
                if model is None and fluoro is None:
                    window.options = options
                else:
                    window.openCase(model, fluoro, options, frame=frame if auto else int(frame or 0))
            if demo and demo_roi is not None and window.waitIdle(300) and not window.errors:
                window.setRoi(demo_roi)
            if screenshot is None:
                return int(app.exec_())
            return _write_screenshot(window, screenshot, frame, [p for p in (model, fluoro) if p])
        finally:
            window.close()
            window.deleteLater()
            app.processEvents()


def _write_screenshot(window, path: Path, frame, inputs) -> int:
    from ..outputs import OutputSet

    if not window.waitIdle(300):
        raise RuntimeError("the case took more than 5 minutes to open")
    if window.errors:
        raise InputError(window.errors[0])
    if window.registrationAvailable() and window.frameProjection is not None:
        window.register()
        window.waitIdle(300)
        if window.errors:
            raise InputError(window.errors[0])
    for warning in window.warnings():
        print(f"warning: {warning}", file=sys.stderr)
    if window.projectionError:
        print(f"warning: {window.projectionError}", file=sys.stderr)
    data = window.grabPng()
    with OutputSet(inputs=inputs) as outs:
        outs.add(path, lambda fh: fh.write(data))
    return 0
