"""A case in the viewer: the options it is read with (:class:`CaseOptions`, edited in
:class:`CaseOptionsDialog`) and what reading it makes (:func:`build_case`, run in the worker thread).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Tuple

from ..errors import InputError
from ..fluoro import GeometryOverrides
from .qt_compat import qget, qt
from .widgets import small

_UNITS_CHOICES = (None, "mm", "cm", "m")
_SPACE_CHOICES = (None, "LPS", "RAS")


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


@dataclass
class CaseData:
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


def build_case(model_path, model, fluoro_path, series, options, frame_index) -> CaseData:
    """Read what is not read yet, then make the pipeline and project one frame (worker thread)."""
    if model is None and model_path is not None:
        from ..mesh import load_model

        model = load_model(model_path, units=options.units, space=options.space)
    if series is None and fluoro_path is not None:
        from ..fluoro import read_fluoro

        series = read_fluoro(fluoro_path, **options.geometry.as_kwargs())
    data = CaseData(model_path, model, fluoro_path, series, options)
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


def close_case(data):
    """Cleanup of a cancelled load: close the pipeline it made (runs in the worker)."""
    if data is not None and getattr(data, "pipeline", None) is not None:
        data.pipeline.close()


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

        note = small(qt.QLabel("Every default taken is listed under Assumptions and warnings."))
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
