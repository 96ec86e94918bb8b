"""The viewer's widgets: titled image panels, the frame panel's overlay controls and the frame bar.

Each is built here and only shown by the window (:mod:`.window`), which connects their signals.
"""

from __future__ import annotations

from typing import Optional

from .qt_compat import Signal, qget, qt
from .roi_view import ImageRoiView, RoiEditor


def style_icon(name):
    style = qt.QApplication.style()
    return style.standardIcon(getattr(qt.QStyle, name))


def small(label):
    """A smaller grey label (subtitles, notes)."""
    font = label.font()
    font.setPointSizeF(max(font.pointSizeF() * 0.92, 7.0))
    label.setFont(font)
    label.setStyleSheet("color: #8a8f98;")
    return label


class Placeholder(qt.QLabel):
    """Centred grey text shown instead of an image (what to do next, or why there is no image)."""

    def __init__(self, text="", parent=None):
        super().__init__(text, parent)
        self.setAlignment(qt.Qt.AlignCenter)
        self.setWordWrap(True)
        self.setMargin(24)
        self.setStyleSheet("QLabel { color: #9aa0a6; background: #15171a; }")
        self.setSizePolicy(qt.QSizePolicy.Expanding, qt.QSizePolicy.Expanding)


class Panel(qt.QFrame):
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
        self.subtitleLabel = small(qt.QLabel(""))
        self.subtitleLabel.setSizePolicy(qt.QSizePolicy.Ignored, qt.QSizePolicy.Preferred)
        header.addWidget(self.subtitleLabel, 1)
        layout.addLayout(header)
        self.stack = qt.QStackedWidget()
        self.placeholder = Placeholder()
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


def projection_panel():
    """``(panel, editor)``: the model's projection in a :class:`RoiEditor` (where the ROI is drawn),
    without the editor's overlay controls (nothing is overlaid on the projection)."""
    editor = RoiEditor()
    for w in (editor.overlayLabel, editor.fillButton, editor.contourButton, editor.opacitySlider,
              editor.opacityValueLabel):
        w.setVisible(False)
    editor.view.setBackgroundBrush(qt.QBrush(qt.QColor(18, 19, 21)))   # images read best on dark
    return Panel("Model projection", editor), editor


class OverlayControls(qt.QWidget):
    """How the projection is drawn over the frame: shown or not, contour or fill, opacity.

    ``changed`` is emitted on every change.
    """

    changed = Signal()

    def __init__(self, parent=None):
        super().__init__(parent)
        controls = qt.QHBoxLayout(self)
        controls.setContentsMargins(6, 0, 6, 0)
        controls.setSpacing(6)
        self.showProjectionCheck = qt.QCheckBox("Projection")
        self.showProjectionCheck.setChecked(True)
        self.showProjectionCheck.setToolTip("Draw the model's projection over the frame")
        self.showProjectionCheck.toggled.connect(lambda *a: self.changed.emit())
        controls.addWidget(self.showProjectionCheck)
        controls.addSpacing(6)
        controls.addLayout(self._buildModeButtons())
        controls.addSpacing(10)
        self._buildOpacity(controls)

    def _buildModeButtons(self):
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
        self.contourButton.toggled.connect(lambda *a: self.changed.emit())
        return modeRow

    def _buildOpacity(self, controls):
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
        self.opacitySlider.valueChanged.connect(lambda *a: self.changed.emit())
        controls.addWidget(self.opacitySlider, 1)
        self.opacityValue = qt.QLabel("60 %")
        self.opacityValue.setMinimumWidth(qget(self.opacityValue, "sizeHint").width() + 8)
        self.opacityValue.setAlignment(qt.Qt.AlignRight | qt.Qt.AlignVCenter)
        controls.addWidget(self.opacityValue)

    def mode(self) -> str:
        return "contour" if self.contourButton.isChecked() else "fill"

    def setMode(self, mode: str) -> None:
        if mode not in ("contour", "fill"):
            raise ValueError("overlay mode is 'contour' or 'fill', got %r" % (mode,))
        (self.contourButton if mode == "contour" else self.fillButton).setChecked(True)

    def opacity(self) -> float:
        return int(qget(self.opacitySlider, "value")) / 100.0

    def setOpacity(self, opacity: float) -> None:
        self.opacitySlider.setValue(int(round(min(max(float(opacity), 0.0), 1.0) * 100)))

    def projectionShown(self) -> bool:
        return self.showProjectionCheck.isChecked()

    def refresh(self, hasMask: bool) -> None:
        """Show the opacity value; enable what applies (a mask to draw; opacity only when filled:
        contours are drawn opaque by ``overlay.overlay_rgb``)."""
        self.opacityValue.setText("%d %%" % int(qget(self.opacitySlider, "value")))
        shown = hasMask and self.projectionShown()
        fill = shown and self.mode() == "fill"
        self.showProjectionCheck.setEnabled(hasMask)
        for w in (self.contourButton, self.fillButton):
            w.setEnabled(shown)
        for w in (self.opacitySlider, self.opacityValue, self.opacityLabel):
            w.setEnabled(fill)


class FrameBox(qt.QWidget):
    """The fluoroscopy frame (an :class:`ImageRoiView`), its :class:`OverlayControls` and a status
    row (image facts on the left, Fit on the right, like the :class:`RoiEditor`'s)."""

    def __init__(self, parent=None):
        super().__init__(parent)
        fl = qt.QVBoxLayout(self)
        fl.setContentsMargins(0, 0, 0, 0)
        fl.setSpacing(6)
        self.view = ImageRoiView()
        self.view.setBackgroundBrush(qt.QBrush(qt.QColor(18, 19, 21)))   # images read best on dark
        fl.addWidget(self.view, 1)
        self.overlay = OverlayControls()
        fl.addWidget(self.overlay)
        statusRow = qt.QHBoxLayout()
        statusRow.setContentsMargins(6, 0, 6, 6)
        self.infoLabel = qt.QLabel("")
        self.infoLabel.setSizePolicy(qt.QSizePolicy.Ignored, qt.QSizePolicy.Preferred)
        statusRow.addWidget(self.infoLabel, 1)
        self.fitButton = qt.QToolButton()
        self.fitButton.setText("Fit")
        self.fitButton.setToolTip("Fit the whole frame to the view (F)")
        self.fitButton.clicked.connect(lambda *a: self.view.fit())
        statusRow.addWidget(self.fitButton)
        fl.addLayout(statusRow)


class FrameBar(qt.QWidget):
    """The frame slider of a run with its spin box, frame count, *Most contrast* and the view label.

    ``frameChosen(int)`` is emitted when the user picks a frame; ``mostContrast`` when *Most
    contrast* is clicked.
    """

    frameChosen = Signal(int)
    mostContrast = Signal()

    def __init__(self, parent=None):
        super().__init__(parent)
        bar = qt.QHBoxLayout(self)
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
        self.frameAutoButton.clicked.connect(lambda *a: self.mostContrast.emit())
        bar.addWidget(self.frameAutoButton)
        self.frameViewLabel = qt.QLabel("")
        self.frameViewLabel.setMinimumWidth(200)
        self.frameViewLabel.setAlignment(qt.Qt.AlignRight | qt.Qt.AlignVCenter)
        bar.addWidget(self.frameViewLabel)
        self.frameSlider.valueChanged.connect(lambda value: self.frameChosen.emit(int(value)))
        self.frameSpin.valueChanged.connect(lambda value: self.frameChosen.emit(int(value)))

    def setRun(self, n_frames: Optional[int], index: int) -> None:
        """Range and value for a run of ``n_frames`` (None: no run open), without emitting."""
        n = int(n_frames) if n_frames is not None else 1
        enabled = n_frames is not None and n > 1
        for w in (self.frameSlider, self.frameSpin):
            w.blockSignals(True)
            w.setRange(0, max(n - 1, 0))
            w.setValue(index)
            w.setEnabled(enabled)
            w.blockSignals(False)
        self.frameCountLabel.setText("/ %d" % max(n - 1, 0))
        self.frameLabel.setEnabled(enabled)
        self.frameAutoButton.setEnabled(enabled)

    def showFrame(self, index: int) -> None:
        """Move the slider and the spin box to ``index`` without emitting."""
        for w in (self.frameSlider, self.frameSpin):
            if int(qget(w, "value")) != index:
                w.blockSignals(True)
                w.setValue(index)
                w.blockSignals(False)
