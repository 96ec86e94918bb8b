"""The viewer's side panel: the case's inputs, its assumptions and warnings, the frame's C-arm
geometry and the region of interest, as rows of ``(label, text)`` shown in :class:`CaseDetails`.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

from ..geometry import view_label
from .qt_compat import qt

Rows = List[Tuple[str, str]]


def geometry_facts(geom, isocenter_source: Optional[str] = None) -> Rows:
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


def case_rows(model, model_path, series, fluoro_path, orthographic: bool) -> Rows:
    """The Inputs rows: the model (triangles, units, space), the run (modality, frames), the projection."""
    rows = []
    if model is not None:
        rows.append(("Model", model_path.name if model_path else "(in memory)"))
        ntri = int(getattr(model, "n_triangles", 0))
        rows.append(("Triangles", "{:,}".format(ntri).replace(",", "\u2009")))
        rows.append(("Units", "%s (%s)" % (model.units_used, getattr(model, "units_source", "?"))))
        rows.append(("Space", "%s (%s)" % (model.space_used, getattr(model, "space_source", "?"))))
    else:
        rows.append(("Model", "none \u2013 File \u25b8 Open model\u2026"))
    if series is not None:
        rows.append(("Fluoroscopy", fluoro_path.name if fluoro_path else "(in memory)"))
        frames = "%d frame%s" % (series.n_frames, "" if series.n_frames == 1 else "s")
        if series.frame_time_ms:
            frames += ", %.0f ms each" % series.frame_time_ms
        rows.append(("Run", "%s \u00b7 %s" % (series.modality, frames)))
    else:
        rows.append(("Fluoroscopy", "none \u2013 File \u25b8 Open fluoroscopy\u2026"))
    rows.append(("Projection", "orthographic (Eq. 3)" if orthographic else "perspective C-arm"))
    return rows


def roi_rows(roi, roi_source: str, used, crop, problem: Optional[str]) -> Rows:
    """The Region of interest rows: the ROI shown (``roi``, from ``roi_source``) or else the default
    one used, the problem that makes it unusable, or the share of model pixels in its ``crop``."""
    rows = []
    if roi is not None:
        source = {"drawn": "drawn", "default": "default (bounding box)", "cleared": "drawn"}[roi_source]
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
    return rows


def _facts(title):
    box = qt.QGroupBox(title)
    form = qt.QFormLayout(box)
    form.setLabelAlignment(qt.Qt.AlignLeft)
    form.setHorizontalSpacing(12)
    form.setVerticalSpacing(3)
    form.setFieldGrowthPolicy(qt.QFormLayout.AllNonFixedFieldsGrow)
    return box, form


def fill_form(form, rows: Rows) -> None:
    """Replace the rows of ``form`` by ``rows`` (selectable values, grey labels)."""
    while form.rowCount():
        form.removeRow(0)
    for label, text in rows:
        value = qt.QLabel(text)
        value.setTextInteractionFlags(qt.Qt.TextSelectableByMouse)
        value.setWordWrap(True)
        name = qt.QLabel(label)
        name.setStyleSheet("color: #8a8f98;")
        form.addRow(name, value)


class CaseDetails(qt.QWidget):
    """The side panel's boxes: Inputs, Assumptions and warnings, C-arm geometry, Region of interest."""

    def __init__(self, parent=None):
        super().__init__(parent)
        layout = qt.QVBoxLayout(self)
        layout.setContentsMargins(6, 6, 6, 6)
        layout.setSpacing(6)
        self.caseBox, self.caseForm = _facts("Inputs")
        layout.addWidget(self.caseBox)
        self.warningsBox = qt.QGroupBox("Assumptions and warnings")
        self.warningsLayout = qt.QVBoxLayout(self.warningsBox)
        self.warningsLayout.setSpacing(6)
        self.warningLabels = []
        layout.addWidget(self.warningsBox)
        self.geometryBox, self.geometryForm = _facts("C-arm geometry")
        layout.addWidget(self.geometryBox)
        self.roiBox, self.roiForm = _facts("Region of interest")
        layout.addWidget(self.roiBox)
        layout.addStretch(1)

    def showCase(self, rows: Rows) -> None:
        fill_form(self.caseForm, rows)

    def showGeometry(self, frame_index: Optional[int], rows: Rows) -> None:
        """The frame's geometry rows (``frame_index`` None: no fluoroscopy open)."""
        if frame_index is None:
            self.geometryBox.setTitle("C-arm geometry")
            fill_form(self.geometryForm, [("", "no fluoroscopy open")])
            return
        self.geometryBox.setTitle("C-arm geometry \u00b7 frame %d" % frame_index)
        fill_form(self.geometryForm, rows)

    def showRoi(self, rows: Rows) -> None:
        fill_form(self.roiForm, rows)

    def showWarnings(self, warnings: Sequence[str], case_open: bool) -> None:
        """One label a warning (amber), else 'none' or 'no case open'."""
        for label in self.warningLabels:
            self.warningsLayout.removeWidget(label)
            label.deleteLater()
        self.warningLabels = []
        texts = list(warnings) or ["none" if case_open else "no case open"]
        for text in texts:
            label = qt.QLabel(("\u26a0  " + text) if warnings else text)
            label.setWordWrap(True)
            label.setTextInteractionFlags(qt.Qt.TextSelectableByMouse)
            if warnings:
                label.setStyleSheet("color: #e3b341;")
            self.warningsLayout.addWidget(label)
            self.warningLabels.append(label)
        self.warningsBox.setTitle("Assumptions and warnings (%d)" % len(warnings))
