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
* Register (enabled once a segmentation network is installed) and Export (the library's projection
  export, :class:`.export.ProjectionExport`: projection.png, overlay.png and projection.json, written
  atomically through :class:`.outputs.OutputSet`).

The window composes its parts: the widgets (:mod:`.widgets`), the side panel (:mod:`.facts`), the
worker thread (:mod:`.jobs`), opening a case (:mod:`.loading`, over :mod:`.case`), registering
(:mod:`.registering`) and exporting (:mod:`.exporting`). Long work (reading files, rendering,
registering) runs in one worker ``QThread`` that owns the pipeline's renderer; the window stays
responsive and shows a progress bar with Cancel. Errors reach the user as a message box with the
library's one-line message (never a traceback).

``run_viewer`` is what ``tavireg gui`` calls; with ``screenshot=`` it renders the window offscreen
to a PNG and returns without showing anything.
"""

from __future__ import annotations

import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from ..errors import InputError
from ..export import projection_overlay
from ..fluoro import GeometryOverrides
from ..overlay import DEFAULT_COLOR
from .case import CaseData, CaseOptions, CaseOptionsDialog
from .exporting import Exporter
from .facts import CaseDetails, case_rows, geometry_facts, roi_rows
from .jobs import JobQueue, quietly
from .loading import CaseLoader
from .qt_compat import qt, Signal
from .registering import REGISTER_UNAVAILABLE_TIP, WHOLE_MODEL_TIP, Player, Registrar, registration_available
from .widgets import FrameBar, FrameBox, Panel, projection_panel, small, style_icon

__all__ = [
    "CaseOptions", "ViewerWindow", "CaseOptionsDialog", "run_viewer",
    "geometry_facts", "REGISTER_UNAVAILABLE_TIP", "OVERLAY_COLOR",
]

#: The projection's colour on the frame: the library's default (also the CLI's).
OVERLAY_COLOR = DEFAULT_COLOR


def _one_line(exc: BaseException) -> str:
    """The one-line message a user sees: InputError's own text, else 'internal error: Type: msg'."""
    if isinstance(exc, InputError):
        return str(exc)
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    return f"internal error: {text}"


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
        self.run = None                   # pipeline.RunRegistration of Register run, or None
        self._runByFrame: Dict[int, object] = {}
        self._roiSource = "default"       # 'default' (the frame's), 'drawn' (user), 'cleared'
        self._drawnRoi = None             # the user's ROI, kept from frame to frame
        self._syncingRoi = False
        self._frameGrey = None            # display_frame() of the current frame (cached)
        self._frameGreyIndex = None
        self._frameCursor = None
        self._projectionJob = None
        self._lastDir = str(Path.cwd())

        self.jobs = JobQueue(self, threaded=threaded, on_busy=self._updateBusy, on_error=self.reportError)
        self.loader = CaseLoader(self)
        self.registrar = Registrar(self)
        self.player = Player(self)
        self.exporter = Exporter(self)
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
        self.refreshAll()

    # ================================================================== construction
    def _action(self, text, slot, shortcut=None, tip=None, icon=None):
        action = qt.QAction(text, self)
        if shortcut:
            action.setShortcut(qt.QKeySequence(shortcut))
        if tip:
            action.setToolTip(tip)
            action.setStatusTip(tip)
        if icon:
            action.setIcon(style_icon(icon))
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
            "Write projection.png (the projection mask), overlay.png and projection.json to a folder",
            "SP_DialogSaveButton")
        self.quitAction = self._action("&Quit", self.close, "Ctrl+Q")
        self.registerAction = self._action(
            "&Register", self.register, "Ctrl+R", REGISTER_UNAVAILABLE_TIP, "SP_MediaPlay")
        self.registerRunAction = self._action(
            "Register r&un", self.registerRun, "Ctrl+Shift+R", REGISTER_UNAVAILABLE_TIP, "SP_MediaSeekForward")
        self.wholeModelAction = self._action(
            "&Whole model (no contrast front)", lambda: None, None, WHOLE_MODEL_TIP)
        self.wholeModelAction.setCheckable(True)
        self.playAction = self._action("&Play", lambda: self.setPlaying(self.playAction.isChecked()), "Space",
                                       "Play the run (with the registered overlay after Register run)",
                                       "SP_MediaPlay")
        self.playAction.setCheckable(True)
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
        regMenu.addAction(self.registerRunAction)
        regMenu.addSeparator()
        regMenu.addAction(self.wholeModelAction)
        self.viewMenu.addAction(self.playAction)
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
        tb.addAction(self.registerRunAction)
        tb.addAction(self.playAction)
        tb.addAction(self.exportAction)
        self.addToolBar(tb)
        self.toolBar = tb
        self.registerButton = tb.widgetForAction(self.registerAction)

    def _buildCentral(self):
        """Left the projection panel, right the frame panel, below the frame bar."""
        central = qt.QWidget()
        layout = qt.QVBoxLayout(central)
        layout.setContentsMargins(6, 6, 6, 4)
        layout.setSpacing(6)
        self.projectionPanel, self.roiEditor = projection_panel()
        self.roiEditor.roiChanged.connect(self._onProjectionRoiChanged)
        self.roiEditor.roiEditingFinished.connect(self._onRoiEditingFinished)
        self._buildFramePanel()
        self.splitter = qt.QSplitter(qt.Qt.Horizontal)
        self.splitter.setChildrenCollapsible(False)
        self.splitter.addWidget(self.projectionPanel)
        self.splitter.addWidget(self.framePanel)
        self.splitter.setStretchFactor(0, 1)
        self.splitter.setStretchFactor(1, 1)
        self.splitter.setSizes([10000, 10000])
        layout.addWidget(self.splitter, 1)
        self.frameBar = FrameBar()
        self.frameBar.frameChosen.connect(self.setFrame)
        self.frameBar.mostContrast.connect(self.showMostOpacifiedFrame)
        self.frameSlider, self.frameSpin = self.frameBar.frameSlider, self.frameBar.frameSpin
        self.frameAutoButton, self.frameViewLabel = self.frameBar.frameAutoButton, self.frameBar.frameViewLabel
        layout.addWidget(self.frameBar)
        self.setCentralWidget(central)

    def _buildFramePanel(self):
        """The fluoroscopy frame with the projection overlaid, its overlay controls and facts."""
        self.frameBox = FrameBox()
        self.framePanel = Panel("Fluoroscopy", self.frameBox)
        self.frameView = self.frameBox.view
        self.overlayControls = self.frameBox.overlay
        self.opacitySlider = self.overlayControls.opacitySlider
        self.showProjectionCheck = self.overlayControls.showProjectionCheck
        self.overlayControls.changed.connect(self._onOverlayControls)
        self.frameView.roiChanged.connect(self._onFrameRoiChanged)
        self.frameView.roiEditingFinished.connect(self._onRoiEditingFinished)
        self.frameView.cursorMoved.connect(self._onFrameCursor)
        self.frameView.zoomChanged.connect(lambda *a: self._updateFrameInfo())

    def _buildSidePanel(self):
        self.details = CaseDetails()
        self.roiForm = self.details.roiForm
        scroll = qt.QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(qt.QFrame.NoFrame)
        scroll.setWidget(self.details)
        self.sideDock = qt.QDockWidget("Case details", self)
        self.sideDock.setObjectName("caseDock")
        self.sideDock.setFeatures(qt.QDockWidget.DockWidgetMovable | qt.QDockWidget.DockWidgetClosable)
        self.sideDock.setWidget(scroll)
        self.sideDock.setMinimumWidth(420)
        self.addDockWidget(qt.Qt.RightDockWidgetArea, self.sideDock)
        self.viewMenu.addAction(self.sideDock.toggleViewAction())

    @property
    def warningLabels(self):
        """The labels of the warnings panel, one a warning."""
        return self.details.warningLabels

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
        research = small(qt.QLabel("Research use only \u2013 not for clinical decisions"))
        for w in (self.progressLabel, self.progressBar, self.cancelButton):
            sb.addPermanentWidget(w)
            w.setVisible(False)
        sb.addPermanentWidget(self.warningsButton)
        sb.addPermanentWidget(research)

    # ================================================================== jobs
    def isBusy(self) -> bool:
        """True while a job the window waits for (loading, rendering, registering) is running."""
        return bool(self.jobs.pending)

    def waitIdle(self, timeout_s: float = 120.0) -> bool:
        """Process events until no job is pending; False on timeout."""
        return self.jobs.waitIdle(timeout_s)

    def cancel(self):
        """Give up waiting for the running busy jobs: the window goes back to its previous case."""
        self.jobs.cancelBusy()
        self.statusBar().showMessage("Cancelled", 4000)

    def _updateBusy(self):
        busy = self.jobs.busyJobs()
        visible = bool(busy)
        if visible:
            self.progressLabel.setText(busy[-1].label + "\u2026")
            self.progressBar.setRange(0, 0)   # busy indicator: the steps do not report fractions
        for w in (self.progressLabel, self.progressBar):
            w.setVisible(visible)
        self.cancelButton.setVisible(visible and self.jobs.threaded)
        self.busyChanged.emit(visible)
        self._updateActions()

    def reportError(self, title, exc):
        """Show one line for ``exc`` (a message box when interactive) and keep it in :attr:`errors`."""
        message = _one_line(exc) if isinstance(exc, BaseException) else str(exc)
        self.errors.append(message)
        self.statusBar().showMessage(message, 8000)
        if not self.interactive:
            return
        if isinstance(exc, BaseException) and not isinstance(exc, InputError):
            qt.QMessageBox.critical(self, title, message)
        else:
            qt.QMessageBox.warning(self, title, message)

    # ================================================================== opening a case (loading.CaseLoader)
    def openModel(self, path=None, options: Optional[CaseOptions] = None):
        """Read a surface model (a file dialog without ``path``); keeps the current fluoroscopy."""
        self.loader.openModel(path, options)

    def openFluoro(self, path=None):
        """Read a fluoroscopy run (a file dialog without ``path``); keeps the current model."""
        self.loader.openFluoro(path)

    def openCase(self, model_path=None, fluoro_path=None, options: Optional[CaseOptions] = None,
                 frame: int = 0):
        """Read a model and a fluoroscopy run together (either may be None: keep the current)."""
        self.loader.openCase(model_path, fluoro_path, options, frame)

    def setOptions(self, options: CaseOptions):
        """New model units/space, isocentre or projection model: re-reads the model if needed."""
        self.loader.setOptions(options)

    def editOptions(self):
        """The Case options dialog."""
        self.loader.editOptions()

    def installCase(self, data: CaseData, message=None):
        """Show the case a load job made (the previous pipeline is closed in the worker)."""
        old = self.pipeline
        if old is not None and old is not data.pipeline:
            self.jobs.submit(None, old.close, busy=False)
        self.modelPath, self.model = data.model_path, data.model
        self.fluoroPath, self.series = data.fluoro_path, data.series
        self.options = data.options
        self.pipeline = data.pipeline
        self.registration = None
        self.setPlaying(False)
        self.run, self._runByFrame = None, {}
        self.frameIndex = data.frame_index
        self.frameNote = data.frame_note
        self.frameProjection = data.projection
        self.projectionError = data.projection_error
        self._roiSource, self._drawnRoi = "default", None
        self._frameGreyIndex = None
        self.frameBar.setRun(self.series.n_frames if self.series is not None else None, self.frameIndex)
        self.refreshAll()
        self.frameView.fit()
        self.roiEditor.fit()
        self.caseChanged.emit()
        self.projectionChanged.emit(self.frameProjection)
        names = [p.name for p in (self.modelPath, self.fluoroPath) if p is not None]
        self.statusBar().showMessage(message or data.frame_note or ("Opened " + " and ".join(names)), 5000)

    # ================================================================== frames
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

        self.jobs.submit("Finding the frame with the most contrast", lambda: series.resolve_frame(AUTO_FRAME), done)

    def setFrame(self, index: int):
        """Show frame ``index`` (0-based) of the run. Its geometry shows at once; its image and
        projection together, as soon as the worker has rendered it (the pipeline caches frames)."""
        if self.series is None:
            return
        index = min(max(int(index), 0), int(self.series.n_frames) - 1)
        self.frameBar.showFrame(index)
        if index == self.frameIndex:
            return
        self.frameIndex = index
        self.frameNote = None
        self.registration = self._runByFrame.get(index)
        if self.run is not None and index in self.run.failures:
            self.statusBar().showMessage(f"frame {index} not registered: {self.run.failures[index]}", 4000)
        if self.pipeline is None:
            self.refreshAll()
            return
        self.frameProjection, self.projectionError = None, None
        self._updateGeometryFacts()   # the images follow with the projection (no stale pairs)
        self._updateActions()
        self._requestProjection()

    def _requestProjection(self):
        if self.pipeline is None or self._projectionJob is not None:
            return   # when the running one ends, its handler asks again for the current frame
        pipeline, index = self.pipeline, self.frameIndex
        job = self.jobs.submit(
            f"Rendering frame {index}", lambda: pipeline.project(index),
            lambda fp: self._onProjection(pipeline, index, fp, None),
            on_error=lambda exc: self._onProjection(pipeline, index, None, exc), busy=False)
        if job is not None and job.id in self.jobs.pending:  # not already done (jobs run inline unthreaded)
            self._projectionJob = job

    def _onProjection(self, pipeline, index, fp, exc):
        """A projection job ended with ``fp`` or ``exc``: show it, or ask for the frame shown now."""
        self._projectionJob = None
        if pipeline is not self.pipeline:
            return
        if index != self.frameIndex:
            self._requestProjection()
            return
        if exc is not None and not isinstance(exc, InputError):
            self.reportError("Projection", exc)
            return
        # an InputError: e.g. the model misses the detector in this frame
        self.frameProjection, self.projectionError = fp, (str(exc) if exc is not None else None)
        self.refreshAll()
        self.projectionChanged.emit(fp)

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

    def _showRoiOn(self, target, roi):
        """Copy ``roi`` to the other view without its change coming back."""
        self._syncingRoi = True
        try:
            target.setRoi(roi)
        finally:
            self._syncingRoi = False

    def _onProjectionRoiChanged(self, roi):
        if not self._syncingRoi and self.frameView.imageShape() is not None:
            self._showRoiOn(self.frameView, roi)
        self._updateRoiFacts()

    def _onFrameRoiChanged(self, roi):
        if not self._syncingRoi:
            self._showRoiOn(self.roiEditor, roi)
            self._updateRoiFacts()

    def _onRoiEditingFinished(self, roi):
        self._roiSource = "drawn" if roi is not None else "cleared"
        self._drawnRoi = roi
        if self.registration is not None or self.run is not None:
            self.registration = None
            self.run, self._runByFrame = None, {}
            self._updateFrameView()
        self._updateRoiFacts()
        self._updateActions()

    # ================================================================== overlay
    def overlayMode(self) -> str:
        return self.overlayControls.mode()

    def setOverlayMode(self, mode: str):
        self.overlayControls.setMode(mode)
        self._onOverlayControls()

    def overlayOpacity(self) -> float:
        return self.overlayControls.opacity()

    def setOverlayOpacity(self, opacity: float):
        self.overlayControls.setOpacity(opacity)

    def setProjectionVisible(self, visible: bool):
        self.showProjectionCheck.setChecked(bool(visible))

    def _onOverlayControls(self):
        self.overlayControls.refresh(self.overlayMask() is not None)
        self._updateFrameView()

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
        ``export.projection_overlay`` (``overlay.overlay_rgb`` with mode and opacity, and the flag
        border of a low-agreement registration); None without a frame."""
        grey = self.currentGrey()
        if grey is None:
            return None
        mask = self.overlayMask()
        if mask is None:
            return np.repeat(grey[:, :, None], 3, axis=2)
        flagged = self.registration is not None and bool(self.registration.result.flagged)
        return projection_overlay(grey, mask, mode=self.overlayMode(), opacity=self.overlayOpacity(),
                                  color=OVERLAY_COLOR, flagged=flagged)

    def frameOverlay(self):
        """What the frame view shows, (H, W, 3) uint8 at image resolution (None without frame)."""
        return self.frameView.renderedImage()

    def currentGrey(self):
        """The current frame for display (``overlay.display_frame``, cached), or None."""
        if self.series is None:
            return None
        if self._frameGreyIndex != self.frameIndex or self._frameGrey is None:
            from ..overlay import display_frame

            self._frameGrey = display_frame(self.series.frame(self.frameIndex))
            self._frameGreyIndex = self.frameIndex
        return self._frameGrey

    def _updateFrameView(self):
        grey = self.currentGrey()
        if grey is None:
            self.frameView.setImage(None)
            return
        if self.overlayControls.projectionShown() and self.overlayMask() is not None:
            self.frameView.setImage(self.composeOverlay())
        else:
            self.frameView.setImage(np.repeat(grey[:, :, None], 3, axis=2))
        self._updateFrameInfo()

    # ================================================================== register and export
    def registrationAvailable(self) -> bool:
        """Whether registration can run (a segmentation network installed: ``registering``)."""
        return registration_available()

    def registerRun(self):
        """Register every frame of the run (see :meth:`.registering.Registrar.registerRun`)."""
        self.registrar.registerRun()

    def setRun(self, run):
        """Show a registered run (``pipeline.RunRegistration``; None forgets it): each frame with its
        registration as it is shown or played."""
        self.run = run
        self._runByFrame = {r.frame_index: r for r in run.registrations} if run is not None else {}
        self.registration = self._runByFrame.get(self.frameIndex)
        self.refreshAll()

    def setPlaying(self, on: bool):
        """Play (or stop) the run at its frame rate."""
        self.player.setPlaying(on)

    def playing(self) -> bool:
        return self.player.playing()

    def register(self):
        """Register the projection ROI to the current frame in the worker thread (``Registrar``)."""
        self.registrar.register()

    def export(self):
        """Ask for a folder and export there (see :meth:`exportTo`)."""
        self.exporter.export()

    def exportTo(self, directory) -> List[Path]:
        """Write the library's projection export (``projection.png``, 0/255 on the frame's grid: the
        mask drawn; ``overlay.png``, the frame view's picture; ``projection.json``) into ``directory``,
        all or nothing. Returns the paths (empty after an error, which is reported like every other)."""
        return self.exporter.exportTo(directory)

    # ================================================================== facts and refresh
    def warnings(self) -> List[str]:
        """Every fallback the library took for this case and, after a registration, that
        registration's own warnings (method fallback, low agreement, FoV guess...): shown in the
        warnings panel."""
        if self.pipeline is not None:
            out = list(self.pipeline.warnings) + ([self.frameNote] if self.frameNote else [])
            if self.registration is not None:
                out.extend(w for w in self.registration.warnings if w not in out)
            if self.run is not None:
                out.extend(self.run.failure_warnings())
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

    def refreshAll(self):
        """Bring every panel, view and action up to date with the case."""
        self._updateTitle()
        self.details.showCase(case_rows(self.model, self.modelPath, self.series, self.fluoroPath,
                                        self.options.orthographic))
        self._updateGeometryFacts()
        self._updateWarnings()
        self._updateProjectionView()
        self._updateFramePanel()
        self.overlayControls.refresh(self.overlayMask() is not None)
        self._updateRoiFacts()
        self._updateActions()

    def _updateTitle(self):
        names = [p.name for p in (self.modelPath, self.fluoroPath) if p is not None]
        self.setWindowTitle("TAVI Registration" + (" \u2014 " + " \u00b7 ".join(names) if names else ""))

    def _updateGeometryFacts(self):
        rows = self._geometryRows()
        self.details.showGeometry(self.frameIndex if self.series is not None else None, rows)
        facts = dict(rows)
        self.frameViewLabel.setText("%s \u00b7 SID %s" % (facts["View"], facts["SID"]) if rows else "")

    def _updateWarnings(self):
        warnings = self.warnings()
        self.details.showWarnings(warnings, self.model is not None or self.series is not None)
        self.warningsButton.setText("\u26a0 %d warning%s" % (len(warnings), "" if len(warnings) == 1 else "s"))
        self.warningsButton.setVisible(bool(warnings))

    def _updateProjectionView(self):
        panel = self.projectionPanel
        fp = self.frameProjection
        if fp is None:
            self.roiEditor.setImage(None)
            panel.showPlaceholder(self._projectionPlaceholder(), problem=bool(self.projectionError))
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

    def _projectionPlaceholder(self) -> str:
        """What the projection panel says while it has no projection: what to do next, or why."""
        if self.model is None:
            return "Open the pre-operative vessel model\n(File \u25b8 Open model\u2026)"
        if self.series is None:
            return ("Open a fluoroscopy run to project the model under its C-arm geometry\n"
                    "(File \u25b8 Open fluoroscopy\u2026)")
        if self.projectionError:
            return "No projection\n\n%s" % self.projectionError
        return "Rendering frame %d\u2026" % self.frameIndex

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
            self.frameBox.infoLabel.setText("")
            return
        parts = ["%d\u00d7%d px" % (shape[1], shape[0]), "%d%%" % int(round(self.frameView.zoom() * 100))]
        if self._frameCursor is not None:
            col, row = self._frameCursor
            value = float(self.series.frame(self.frameIndex)[row, col])
            parts.append("x %d, y %d: %g" % (col, row, value))
        self.frameBox.infoLabel.setText("  \u00b7  ".join(parts))

    def _onFrameCursor(self, pixel):
        self._frameCursor = pixel
        self._updateFrameInfo()

    def _updateRoiFacts(self):
        if self.frameProjection is None:
            self.details.showRoi([("", "no projection")])
            return
        try:
            crop, used = self.pipeline.moving_image(self.frameIndex, self.movingRoi())
            problem = None
        except InputError as exc:
            used, crop, problem = None, None, str(exc)
        self.details.showRoi(roi_rows(self.roiEditor.roi(), self._roiSource, used, crop, problem))

    def _updateActions(self):
        busy = bool(self.jobs.busyJobs())
        hasProjection = self.frameProjection is not None
        self.openModelAction.setEnabled(not busy)
        self.openFluoroAction.setEnabled(not busy)
        self.optionsAction.setEnabled(not busy)
        self.exportAction.setEnabled(hasProjection and not busy)
        self.registrar.updateAction(hasProjection and not busy)

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
        if self.jobs.closed:
            return
        self.player.setPlaying(False)
        pipeline = self.pipeline
        self.jobs.close(lambda: quietly(pipeline.close) if pipeline is not None else None)

    def closeEvent(self, event):
        self.shutdown()
        qt.QMainWindow.closeEvent(self, event)


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
