"""Opening a case in the viewer: the file dialogs, and the load jobs that read the model and the
run and make the pipeline in the worker thread (:func:`.case.build_case`), handing the result to the
window's ``installCase``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from ..errors import InputError
from .case import CaseOptions, CaseOptionsDialog, build_case, close_case
from .qt_compat import qt

MODEL_FILTERS = ("Surface models (*.stl *.obj *.ply *.vtk *.vtp);;"
                 "Labelmaps (*.nrrd *.nhdr *.nii *.nii.gz *.mha *.mhd);;All files (*)")
FLUORO_FILTERS = "DICOM (*.dcm *.DCM *.dicom);;All files (*)"


class CaseLoader:
    """File > Open model / Open fluoroscopy / Case options of a :class:`.window.ViewerWindow`."""

    def __init__(self, window):
        self.window = window

    def _askOpen(self, path, title, filters) -> Optional[Path]:
        """``path`` as a Path, or the file the user picks in an open dialog (None: cancelled)."""
        if path is not None:
            return Path(path)
        w = self.window
        result = qt.QFileDialog.getOpenFileName(w, title, w._lastDir, filters)
        path = result[0] if isinstance(result, (tuple, list)) else result
        if not path:
            return None
        w._lastDir = str(Path(path).parent)
        return Path(path)

    def _load(self, label, model_path, model, fluoro_path, series, options, frame, install=None) -> None:
        self.window.jobs.submit(label, lambda: build_case(model_path, model, fluoro_path, series, options, frame),
                                install or self.window.installCase, cleanup=close_case)

    def openModel(self, path=None, options: Optional[CaseOptions] = None) -> None:
        """Read a surface model (a file dialog without ``path``); keeps the current fluoroscopy."""
        w = self.window
        path = self._askOpen(path, "Open vessel model", MODEL_FILTERS)
        if path is None:
            return
        self._load(f"Reading {path.name}", path, None, w.fluoroPath, w.series, options or w.options, w.frameIndex)

    def openFluoro(self, path=None) -> None:
        """Read a fluoroscopy run (a file dialog without ``path``); keeps the current model."""
        w = self.window
        path = self._askOpen(path, "Open fluoroscopy", FLUORO_FILTERS)
        if path is None:
            return
        self._load(f"Reading {path.name}", w.modelPath, w.model, path, None, w.options, 0)

    def openCase(self, model_path=None, fluoro_path=None, options: Optional[CaseOptions] = None,
                 frame: int = 0) -> None:
        """Read a model and a fluoroscopy run together (either may be None: keep the current)."""
        w = self.window
        mp = Path(model_path) if model_path is not None else w.modelPath
        model = None if model_path is not None else w.model
        fp = Path(fluoro_path) if fluoro_path is not None else w.fluoroPath
        series = None if fluoro_path is not None else w.series
        self._load("Opening the case", mp, model, fp, series, options or w.options, frame)

    def setOptions(self, options: CaseOptions) -> None:
        """New model units/space, isocentre or projection model: re-reads the model if needed."""
        w = self.window
        if not isinstance(options, CaseOptions):
            raise TypeError("setOptions takes a CaseOptions")
        if w.model is None and w.series is None:
            w.options = options
            w.refreshAll()
            return
        reread = (options.units, options.space) != (w.options.units, w.options.space)
        frame, note = w.frameIndex, w.frameNote
        series = w.series if options.geometry == w.options.geometry else None  # None: read with the new C-arm values

        def install(data):
            if data.frame_note is None and data.frame_index == frame:
                data.frame_note = note  # the same frame of the same run: how it was chosen still holds
            w.installCase(data, "Case options applied")

        self._load("Applying the case options", w.modelPath, None if reread else w.model, w.fluoroPath, series,
                   options, frame, install)

    def editOptions(self) -> None:
        """The Case options dialog."""
        w = self.window
        hint = tuple(float(c) for c in w.model.center) if w.model is not None else None
        dialog = CaseOptionsDialog(w.options, hint, w)
        if dialog.exec_() == qt.QDialog.Accepted:
            try:
                options = dialog.options()
            except InputError as exc:
                w.reportError("Case options", exc)
                return
            self.setOptions(options)
