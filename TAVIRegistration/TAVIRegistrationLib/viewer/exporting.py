"""Exporting from the viewer: File > Export writes the library's projection export
(:class:`..export.ProjectionExport`: projection.png, overlay.png, projection.json) of the frame shown,
all or nothing, through :class:`..outputs.OutputSet`."""

from __future__ import annotations

from pathlib import Path
from typing import List

from ..errors import InputError
from ..export import PROJECTION_FILES, ProjectionExport
from .qt_compat import qt


class Exporter:
    """File > Export of a :class:`.window.ViewerWindow`."""

    def __init__(self, window):
        self.window = window

    def export(self) -> None:
        """Ask for a folder (and before replacing files there) and export there (see :meth:`exportTo`)."""
        w = self.window
        if w.frameProjection is None:
            return
        directory = qt.QFileDialog.getExistingDirectory(w, "Export to folder", w._lastDir)
        if not directory:
            return
        w._lastDir = directory
        existing = [n for n in PROJECTION_FILES if (Path(directory) / n).exists()]
        if existing and w.interactive:
            answer = qt.QMessageBox.question(
                w, "Export", "Replace %s in %s?" % (", ".join(existing), directory),
                qt.QMessageBox.Yes | qt.QMessageBox.No, qt.QMessageBox.No)
            if answer != qt.QMessageBox.Yes:
                return
        self.exportTo(directory)

    def projectionExport(self) -> ProjectionExport:
        """The frame shown as the library exports it: the ROI the registration would use, the overlay
        as drawn (mode, opacity, the registered projection once registered), every warning."""
        w = self.window
        if w.frameProjection is None:
            raise InputError("nothing to export: open a model and a fluoroscopy run first")
        return ProjectionExport(
            frame=w.currentGrey(), frame_projection=w.frameProjection, fluoro=w.fluoroPath, model=w.modelPath,
            roi=w.movingRoi(), roi_source="drawn" if w.roiSource() == "drawn" else "default",
            isocenter_source="given" if w.options.isocenter_lps is not None else "model centre",
            model_units=getattr(w.model, "units_used", None), model_space=getattr(w.model, "space_used", None),
            mode=w.overlayMode(), opacity=w.overlayOpacity(), registration=w.registration, warnings=w.warnings())

    def exportTo(self, directory) -> List[Path]:
        """Write the projection export into ``directory``, all or nothing. Returns the paths (empty
        after an error, which is reported like every other)."""
        from ..outputs import OutputSet

        w = self.window
        try:
            export = self.projectionExport()
            directory = Path(directory)
            with OutputSet(inputs=[w.modelPath, w.fluoroPath]) as outs:
                paths = export.add_to(outs, directory)
        except Exception as exc:  # noqa: BLE001 - reported as one line
            w.reportError("Export", exc)
            return []
        w.statusBar().showMessage("Exported to %s" % directory, 6000)
        return paths
