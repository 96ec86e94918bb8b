"""TAVIRegistration: the 3D Slicer module (module, widget, logic and self-test).

Thin by design: it moves data between MRML nodes and the TAVIRegistrationLib library (which never
imports ``slicer``) and nothing else. The library is imported lazily, inside the methods that use it,
so that loading the module costs nothing and a missing Python package is reported when it is needed.
Qt (``qt``) is imported only where the module class and the widget use it, so that the Logic and the
self-test's Logic methods also run on Slicer's core libraries without the application
(``slicer-core``; ``Testing/test_slicer_logic.py``).

Minimum 3D Slicer version: 5.10. ``@parameterNodeWrapper`` needs 5.4, but the library reads the
fluoroscopy DICOM with pydicom 3 (``pydicom.pixels``), which needs Python 3.10; Slicer up to 5.8 ships
Python 3.9, 5.10 ships Python 3.12 with pydicom 2.4.4 (upgraded on request, see
``TAVIRegistrationLogic.ensurePythonPackages``) and 5.12 ships pydicom 3. The file itself keeps to
Python 3.9 syntax (no ``X | None`` hints), so that only the pydicom requirement pins the version.

Coordinates: Slicer holds models in RAS, the library works in DICOM LPS millimetres; the conversion
happens here (``rasFromLps`` / ``lpsFromRas``), and parent transforms of the input nodes are applied
explicitly (``vtkMRMLModelNode.GetPolyData`` ignores them).
"""

import importlib
import json
import logging
import math
import os
import pathlib
import re
import sys
import tempfile
import unittest
from typing import Annotated, Optional, Tuple, Union

import numpy as np
import vtk

import slicer
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.parameterNodeWrapper import Default, WithinRange, parameterNodeWrapper
from slicer.util import VTKObservationMixin
from slicer import (
    vtkMRMLLinearTransformNode,
    vtkMRMLMarkupsFiducialNode,
    vtkMRMLMarkupsROINode,
    vtkMRMLModelNode,
    vtkMRMLScalarVolumeNode,
    vtkMRMLSegmentationNode,
)

#: Python packages the library needs beyond those 3D Slicer ships:
#: (distribution, import name, pip requirement, minimum version, what it is for).
PYTHON_REQUIREMENTS = (
    ("pydicom", "pydicom", "pydicom>=3.0", "3.0", "reads the frames and C-arm geometry of XA/RF files"),
    ("pylibjpeg", "pylibjpeg", "pylibjpeg>=2.0", "2.0", "decodes JPEG Lossless fluoroscopy"),
    ("pylibjpeg-libjpeg", "libjpeg", "pylibjpeg-libjpeg>=2.1", "2.1", "JPEG codec used by pylibjpeg"),
)

#: Colour table of the projection volume shown over the frame.
PROJECTION_COLOR_NODE_ID = "vtkMRMLColorTableNodeYellow"
SEGMENTATION_COLOR_NODE_ID = "vtkMRMLColorTableNodeCyan"
REGISTERED_COLOR_NODE_ID = "vtkMRMLColorTableNodeGreen"

#: Why a step of the data flow cannot run here (see TAVIRegistrationLogic.stepAvailability): the steps
#: are implemented; segmentation and registration need the DRU-Net weights in Resources/Models.
STEP_UNAVAILABLE_REASONS = {
    "segment": "Vessel segmentation is not available: no DRU-Net weights are installed in the module's "
               "Resources/Models folder (see the README).",
    "register": "Registration is not available: it segments the frame with DRU-Net, and no DRU-Net weights are "
                "installed in the module's Resources/Models folder (see the README).",
}

SAMPLE_CATEGORY = "TAVIRegistration"
SYNTHETIC_SAMPLE_NAME = "TAVIRegistrationSynthetic"

PAPER = ("Li et al., \"Model-to-Image Registration via Deep Learning towards Image-Guided Endovascular "
         "Interventions\"")

HELP_TEXT = """
<p>Registers a pre-operative CTA vessel surface model (aortic root, aorta, iliac and femoral arteries) to
intra-operative TAVI fluoroscopy. The model's C-arm projection is rendered from the frame's DICOM positioner
angles and distances (Positioner Primary/Secondary Angle, SID, SOD, Imager Pixel Spacing) and shown over the
frame in the slice views.</p>
<ol>
<li>Load the XA/RF run with the DICOM module (it becomes a sequence of 2D frames) and the vessel model
(a model, or a segmentation whose closed surfaces are used).</li>
<li>Select them under <i>Inputs</i>, pick the frame (<i>Most contrast</i> goes to the frame with the most contrast
medium), and optionally a point list whose first point is the C-arm
isocentre (without it the model's bounding-box centre is used, with a warning).</li>
<li><i>Render projection</i>: the projection becomes a volume over the frame (opacity adjustable), and the 3D view's
camera is placed at the X-ray source looking at the detector. The 3D view shows the model from the source side,
so it is mirrored left-right compared with the fluoroscopy display, which shows the image as seen from the
detector side.</li>
<li>Draw the region of interest on the frame in the panel's ROI editor; <i>Export</i> writes the projection, an
overlay picture and the geometry.</li>
<li><i>Segment</i> shows the DRU-Net vessel mask of the frame; <i>Register</i> segments the frame, predicts the 2D
affine of the projection's ROI with the registration CNN (refined by a few gradient steps), and shows the registered
projection over the frame with the affine as a transform node. A degenerate affine is refused and nothing is shown;
a registration whose overlap with the vessel mask is low is shown with a warning in the status line.</li>
</ol>
<p>Segmentation and registration need PyTorch, which the PyTorch extension installs after asking.</p>
<p>Requires 3D Slicer 5.10 or later: the fluoroscopy reader needs pydicom 3 (Python 3.10 or later). Missing Python
packages are installed with pip after asking.</p>
<p>Method: """ + PAPER + """. Research software, not a medical device: not for clinical decisions.</p>
"""

ACKNOWLEDGEMENT_TEXT = """
<p>Method: """ + PAPER + """.</p>
<p>Vessel segmentation is trained with the angios40 coronary angiograms and expert vessel masks of the DCA1
database: F. Cervantes-Sanchez, I. Cruz-Aceves, A. Hernandez-Aguirre et al., "Automatic segmentation of
coronary arteries in X-ray angiograms using multiscale analysis and artificial neural networks", Applied
Sciences 9(24):5507, 2019 (BSD-3-Clause license).</p>
"""


class OperationCancelled(Exception):
    """Raised at the next step of a running operation after the user pressed Cancel."""


class StepNotAvailableError(RuntimeError):
    """A step of the data flow (segmentation, registration) that this version cannot run."""


# ------------------------------------------------------------------------------------------------
# Pure helpers (numpy, math and re only): Testing/test_slicer_module.py runs them without 3D Slicer
# ------------------------------------------------------------------------------------------------

def rasFromLps(points):
    """RAS coordinates of LPS points: x and y change sign. ``points``: (..., 3); returns a new array.

    The map is its own inverse, so ``lpsFromRas`` is the same operation.
    """
    p = np.array(points, dtype=float)
    if p.ndim == 0 or p.shape[-1] != 3:
        raise ValueError("points must have 3 coordinates along the last axis, got shape %s" % (p.shape,))
    p[..., 0] *= -1.0
    p[..., 1] *= -1.0
    return p


def lpsFromRas(points):
    """LPS coordinates of RAS points (see ``rasFromLps``)."""
    return rasFromLps(points)


def rasMatrixFromLps(matrix):
    """A 4x4 transform of LPS coordinates expressed in RAS coordinates (conjugation by diag(-1,-1,1,1))."""
    m = np.array(matrix, dtype=float)
    if m.shape != (4, 4):
        raise ValueError("a 4x4 matrix is needed, got shape %s" % (m.shape,))
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    return flip @ m @ flip


def lpsMatrixFromRas(matrix):
    """A 4x4 transform of RAS coordinates expressed in LPS coordinates (see ``rasMatrixFromLps``)."""
    return rasMatrixFromLps(matrix)


def planeMatrixFromAffine(affine):
    """4x4 IJK matrix acting on (i = column, j = row, k, 1) as the 3x3 pixel affine acts on (x, y, 1)."""
    a = np.array(affine, dtype=float)
    if a.shape != (3, 3) or not np.all(np.isfinite(a)):
        raise ValueError("the affine must be a finite 3x3 matrix, got shape %s" % (a.shape,))
    if not np.allclose(a[2], [0.0, 0.0, 1.0], atol=1e-9):
        raise ValueError("the 3x3 matrix is not affine: its last row must be 0 0 1")
    m = np.eye(4)
    m[0, 0], m[0, 1], m[0, 3] = a[0, 0], a[0, 1], a[0, 2]
    m[1, 0], m[1, 1], m[1, 3] = a[1, 0], a[1, 1], a[1, 2]
    return m


def roiIjkToRas(frameIjkToRas, roi):
    """IJK-to-RAS matrix of an image cropped from the frame at ``roi`` = (x, y, w, h) frame pixels."""
    frame = np.array(frameIjkToRas, dtype=float)
    if frame.shape != (4, 4):
        raise ValueError("a 4x4 IJK-to-RAS matrix is needed, got shape %s" % (frame.shape,))
    shift = np.eye(4)
    shift[0, 3] = float(roi[0])
    shift[1, 3] = float(roi[1])
    return frame @ shift


def pixelRoiFromRasBounds(rasBounds, frameIjkToRas, rows, cols):
    """The frame pixels (x, y, w, h) whose centres lie inside a box given by its RAS bounds
    (xmin, xmax, ymin, ymax, zmin, zmax; a Markups ROI's ``GetRASBounds``), clipped to the frame; None
    when none does. The box is projected along the frame's normal (its depth does not matter)."""
    b = [float(v) for v in rasBounds]
    if len(b) != 6 or not all(math.isfinite(v) for v in b) or b[1] < b[0] or b[3] < b[2] or b[5] < b[4]:
        return None
    corners = np.array([[x, y, z, 1.0] for x in b[0:2] for y in b[2:4] for z in b[4:6]])
    ijk = (np.linalg.inv(np.array(frameIjkToRas, dtype=float)) @ corners.T).T
    x0 = max(0, int(math.ceil(ijk[:, 0].min() - 1e-9)))
    x1 = min(int(cols) - 1, int(math.floor(ijk[:, 0].max() + 1e-9)))
    y0 = max(0, int(math.ceil(ijk[:, 1].min() - 1e-9)))
    y1 = min(int(rows) - 1, int(math.floor(ijk[:, 1].max() + 1e-9)))
    if x1 < x0 or y1 < y0:
        return None
    return (x0, y0, x1 - x0 + 1, y1 - y0 + 1)


def rasBoxFromPixelRoi(roi, frameIjkToRas, thicknessMm=1.0):
    """(centre, radius) in RAS of the box over frame pixels ``roi`` = (x, y, w, h) (pixel edges, so that
    ``pixelRoiFromRasBounds`` of its bounds gives ``roi`` back), ``thicknessMm`` across the frame: what a
    Markups ROI needs (``SetXYZ``, ``SetRadiusXYZ``), for a frame whose axes run along RAS axes."""
    x, y, w, h = (float(v) for v in roi)
    frame = np.array(frameIjkToRas, dtype=float)
    corners = np.array([[i, j, 0.0, 1.0] for i in (x - 0.5, x + w - 0.5) for j in (y - 0.5, y + h - 0.5)])
    ras = (frame @ corners.T).T[:, :3]
    lo, hi = ras.min(axis=0), ras.max(axis=0)
    centre = (lo + hi) / 2.0
    radius = (hi - lo) / 2.0
    flat = radius < 1e-6  # the axis across the frame
    radius[flat] = float(thicknessMm) / 2.0
    return centre, radius


def rasTransformFromAffine(affine, frameIjkToRas, movingIjkToRas=None):
    """The 3x3 pixel affine (moving-ROI pixels -> frame pixels) as a 4x4 RAS "to parent" matrix.

    A volume on the moving image's pixel grid (IJK-to-RAS ``movingIjkToRas``, by default the frame's)
    placed under this transform lands on the frame (``frameIjkToRas``) where the affine maps its pixels.
    """
    frame = np.array(frameIjkToRas, dtype=float)
    moving = frame if movingIjkToRas is None else np.array(movingIjkToRas, dtype=float)
    if frame.shape != (4, 4) or moving.shape != (4, 4):
        raise ValueError("IJK-to-RAS matrices must be 4x4")
    return frame @ planeMatrixFromAffine(affine) @ np.linalg.inv(moving)


def affineFromRasTransform(transform, frameIjkToRas, movingIjkToRas=None):
    """Inverse of ``rasTransformFromAffine``: the 3x3 pixel affine of an in-plane RAS transform."""
    frame = np.array(frameIjkToRas, dtype=float)
    moving = frame if movingIjkToRas is None else np.array(movingIjkToRas, dtype=float)
    m = np.linalg.inv(frame) @ np.array(transform, dtype=float) @ moving
    if not (np.allclose(m[2], [0.0, 0.0, 1.0, 0.0], atol=1e-6) and np.allclose(m[:2, 2], 0.0, atol=1e-6)
            and np.allclose(m[3], [0.0, 0.0, 0.0, 1.0], atol=1e-9)):
        raise ValueError("the transform does not stay in the frame's plane: it is not a 2D affine")
    return np.array([[m[0, 0], m[0, 1], m[0, 3]], [m[1, 0], m[1, 1], m[1, 3]], [0.0, 0.0, 1.0]])


def carmCameraParameters(sourceLps, detectorCenterLps, rowDirectionLps, detectorHeightMm, sidMm):
    """3D view camera (RAS) at the X-ray source, looking at the detector centre.

    View up is the image's "up" (against the row direction, toward the head at AP), the vertical view
    angle spans the detector height seen from the source: 2 atan(height / 2 / SID).
    """
    if not sidMm > 0 or not detectorHeightMm > 0:
        raise ValueError("SID and detector height must be positive")
    return {
        "position": rasFromLps(sourceLps),
        "focalPoint": rasFromLps(detectorCenterLps),
        "viewUp": rasFromLps(-np.asarray(rowDirectionLps, dtype=float)),
        "viewAngle": math.degrees(2.0 * math.atan(float(detectorHeightMm) / 2.0 / float(sidMm))),
    }


def parseInstanceUids(attributeValue):
    """SOP instance UIDs of a ``DICOM.instanceUIDs`` node attribute (space separated)."""
    return [uid for uid in str(attributeValue or "").split() if uid]


def versionAtLeast(version, minimum):
    """Whether a version string is at least ``minimum``, comparing the leading numeric parts."""
    def numbers(text):
        parts = []
        for piece in re.split(r"[.+\-]", str(text)):
            match = re.match(r"\d+", piece)
            if not match:
                break
            parts.append(int(match.group()))
        return parts

    a, b = numbers(version), numbers(minimum)
    width = max(len(a), len(b))
    return a + [0] * (width - len(a)) >= b + [0] * (width - len(b))


def masksAgreeWithinOnePixel(a, b):
    """Whether every foreground pixel of each mask lies within one pixel (8-neighbourhood) of the other."""
    a = np.asarray(a) > 0
    b = np.asarray(b) > 0
    if a.shape != b.shape:
        return False

    def grown(m):
        padded = np.pad(m, 1)
        out = np.zeros_like(m)
        rows, cols = m.shape
        for dr in (0, 1, 2):
            for dc in (0, 1, 2):
                out |= padded[dr:dr + rows, dc:dc + cols]
        return out

    return not np.any(a & ~grown(b)) and not np.any(b & ~grown(a))


def _report(progress, fraction, message):
    """Call the progress callback, if any (it raises OperationCancelled to stop the operation)."""
    if progress is not None:
        progress(float(fraction), message)


# ------------------------------------------------------------------------------------------------
# Resources: Resources/ is beside the module file in the built extension, one level up in the source tree
# ------------------------------------------------------------------------------------------------

def resourceFilePath(filename):
    """Absolute path of ``Resources/<filename>`` in the built extension or the source checkout."""
    moduleDir = os.path.dirname(os.path.abspath(__file__))
    candidates = [os.path.join(moduleDir, "Resources", filename),
                  os.path.join(os.path.dirname(moduleDir), "Resources", filename)]
    for candidate in candidates:
        if os.path.exists(candidate):
            return candidate
    return candidates[0]


#
# TAVIRegistration
#

class TAVIRegistration(ScriptedLoadableModule):
    """Uses ScriptedLoadableModule base class, available at:
    https://github.com/Slicer/Slicer/blob/main/Base/Python/slicer/ScriptedLoadableModule.py
    """

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "TAVI Registration"
        self.parent.categories = ["IGT"]
        self.parent.dependencies = ["DICOM", "Sequences", "Markups"]
        self.parent.contributors = ["TAVIRegistration contributors"]
        self.parent.helpText = HELP_TEXT
        self.parent.acknowledgementText = ACKNOWLEDGEMENT_TEXT
        # The base class looks for the icon beside the module file only (the built extension's layout).
        iconPath = resourceFilePath("Icons/TAVIRegistration.png")
        if os.path.isfile(iconPath):
            import qt

            self.parent.icon = qt.QIcon(iconPath)
        slicer.app.connect("startupCompleted()", registerSampleData)


#
# Sample data
#

def registerSampleData():
    """Add the synthetic TAVI case to the Sample Data module.

    The case is generated on this computer by the library (``TAVIRegistrationLib.synthetic.sample_case``: a vessel
    model and an XA DICOM run with full C-arm geometry, byte-reproducible and checked against its SHA256
    ``SAMPLE_SHA256``), imported into the DICOM database and loaded, like the self-test does.
    """
    import SampleData

    SampleData.SampleDataLogic.registerCustomSampleDataSource(
        category=SAMPLE_CATEGORY,
        sampleName=SYNTHETIC_SAMPLE_NAME,
        thumbnailFileName=resourceFilePath("Icons/TAVIRegistration.png"),
        uris=[],
        fileNames=[],
        nodeNames=[],
        customDownloader=_loadSyntheticSample,
    )


def _loadSyntheticSample(source=None):
    """Sample Data button: make, import and load the synthetic case, and select it in the module."""
    logic = TAVIRegistrationLogic()
    with slicer.util.tryWithErrorDisplay("The Python packages TAVIRegistration needs are not available."):
        logic.ensurePythonPackages(ask=True)
    with slicer.util.tryWithErrorDisplay("Could not load the synthetic TAVI case.", waitCursor=True):
        case = logic.loadSyntheticCase()
        parameterNode = logic.getParameterNode()
        parameterNode.model = case.modelNode
        parameterNode.fluoroVolume = case.fluoroVolume
        parameterNode.isocenter = case.isocenterNode
        slicer.util.selectModule("TAVIRegistration")


#
# TAVIRegistrationParameterNode
#

def _defaultExportDirectory():
    return pathlib.Path(slicer.app.defaultScenePath)


@parameterNodeWrapper
class TAVIRegistrationParameterNode:
    """The module's parameters (saved with the scene).

    model - vessel surface: a model node or a segmentation node (its closed surfaces).
    fluoroVolume - the fluoroscopy frame volume loaded by the DICOM module (a sequence's proxy node).
    frameIndex - frame of the run (the sequence browser's item).
    isocenter - optional point list whose first point is the C-arm isocentre.
    orthographic - parallel projection (the paper's Eq. 3) instead of the C-arm's perspective.
    placeCamera - put the 3D view's camera at the X-ray source after rendering.
    followFrame - render again when another frame is shown.
    overlayOpacity - opacity of the projection over the frame in the slice views.
    projectionVolume - output: the projection on the frame's pixel grid.
    roi - region of interest (x, y, w, h) in frame pixels; (0, 0, 0, 0) = none drawn yet.
    roiNode - optional Markups ROI that shows and edits the same region in the slice views.
    forceCpu - run the networks on the CPU (segmentation and registration).
    wholeModel - cnn+refine registers the whole projection, not only its part up to the contrast front
        (the vessels the frame shows filled; ``tavireg register --whole-model``).
    registrationTransform - output: the registration affine as a linear transform.
    exportDirectory - folder of the exported files.
    """

    model: Optional[Union[vtkMRMLModelNode, vtkMRMLSegmentationNode]]
    fluoroVolume: vtkMRMLScalarVolumeNode
    frameIndex: int = 0
    isocenter: vtkMRMLMarkupsFiducialNode
    orthographic: bool = False
    placeCamera: bool = True
    followFrame: bool = True
    overlayOpacity: Annotated[float, WithinRange(0.0, 1.0)] = 0.5
    projectionVolume: vtkMRMLScalarVolumeNode
    roi: Tuple[int, int, int, int] = (0, 0, 0, 0)
    roiNode: vtkMRMLMarkupsROINode
    forceCpu: bool = False
    wholeModel: bool = False
    registrationTransform: vtkMRMLLinearTransformNode
    exportDirectory: Annotated[pathlib.Path, Default(generator=_defaultExportDirectory)]


#
# TAVIRegistrationWidget
#

class TAVIRegistrationWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Uses ScriptedLoadableModuleWidget base class, available at:
    https://github.com/Slicer/Slicer/blob/main/Base/Python/slicer/ScriptedLoadableModule.py
    """

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)  # needed for parameter node observation
        self.logic = None
        self.roiEditor = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._observedFluoroID = None
        self._observedBrowser = None
        self._observedRoiNode = None
        self._syncingRoi = False
        self._busy = False
        self._cancelRequested = False

    def resourcePath(self, filename):
        return resourceFilePath(filename)

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)

        uiWidget = slicer.util.loadUI(self.resourcePath("UI/TAVIRegistration.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = TAVIRegistrationLogic()
        self._setupRoiEditor()
        self.ui.progressBar.hide()
        self.ui.cancelButton.hide()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.renderProjectionButton.connect("clicked(bool)", self.onRenderProjectionButton)
        self.ui.segmentButton.connect("clicked(bool)", self.onSegmentButton)
        self.ui.registerButton.connect("clicked(bool)", self.onRegisterButton)
        self.ui.registerRunButton.connect("clicked(bool)", self.onRegisterRunButton)
        self.ui.exportButton.connect("clicked(bool)", self.onExportButton)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancelButton)
        self.ui.frameSlider.connect("valueChanged(int)", self.onFrameSliderChanged)
        self.ui.mostContrastButton.connect("clicked(bool)", self.onMostContrastButton)
        self.ui.overlayOpacitySlider.connect("valueChanged(double)", self.onOverlayOpacityChanged)

        self._updateStepAvailability()
        self.initializeParameterNode()

    def _setupRoiEditor(self):
        """Embed the shared ROI editor (TAVIRegistrationLib.viewer.roi_view.RoiEditor, PythonQt) in the panel."""
        layout = self.ui.roiEditorFrame.layout()
        try:
            from TAVIRegistrationLib.viewer.roi_view import RoiEditor
        except Exception as exc:  # shown in the panel and logged: the rest of the module still works
            logging.exception("TAVIRegistration: the ROI editor could not be loaded")
            import qt

            label = qt.QLabel("The ROI editor could not be loaded: %s" % exc)
            label.wordWrap = True
            layout.addWidget(label)
            return
        self.roiEditor = RoiEditor()
        layout.addWidget(self.roiEditor)
        self.roiEditor.roiEditingFinished.connect(self.onRoiEditingFinished)

    def cleanup(self) -> None:
        self.removeObservers()
        if self.logic is not None:
            self.logic.close()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
        self._observeFluoro(None)

    def onSceneStartClose(self, caller, event) -> None:
        self.setParameterNode(None)
        if self.logic is not None:
            self.logic.close()
            self.logic.lastProjection = None

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        pn = self._parameterNode
        if not pn.fluoroVolume:
            for volume in slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode"):
                if self.logic.browserForVolume(volume) is not None and volume.GetAttribute("TAVIRegistration.role") is None:
                    pn.fluoroVolume = volume
                    break
        if not pn.model:
            for model in slicer.util.getNodesByClass("vtkMRMLModelNode"):
                if not model.GetHideFromEditors():
                    pn.model = model
                    break

    def setParameterNode(self, inputParameterNode: Optional[TAVIRegistrationParameterNode]) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            # The .ui sets a "SlicerParameterName" dynamic property on each widget bound to a parameter.
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
        self._onParameterNodeModified()

    # -- GUI state --------------------------------------------------------------------------------
    def _onParameterNodeModified(self, caller=None, event=None) -> None:
        pn = self._parameterNode
        self._observeFluoro(pn.fluoroVolume if pn else None)
        self._observeRoiNode(pn.roiNode if pn else None)
        self._updateButtonStates()

    # -- the ROI as a Markups ROI: both ways ---------------------------------------------------------
    def _observeRoiNode(self, roiNode):
        if roiNode is self._observedRoiNode:
            return
        if self._observedRoiNode is not None:
            self.removeObserver(self._observedRoiNode, slicer.vtkMRMLMarkupsNode.PointModifiedEvent,
                                self._onRoiNodeModified)
        self._observedRoiNode = roiNode
        if roiNode is not None:
            self.addObserver(roiNode, slicer.vtkMRMLMarkupsNode.PointModifiedEvent, self._onRoiNodeModified)
            pn = self._parameterNode
            roi = self.logic.validRoi(pn.roi, None) if pn else None
            if roi and pn.fluoroVolume is not None:  # the node starts where the panel's ROI is
                self._syncingRoi = True
                try:
                    self.logic.updateMarkupsRoi(roiNode, roi, pn.fluoroVolume)
                finally:
                    self._syncingRoi = False

    def _onRoiNodeModified(self, caller=None, event=None):
        """The Markups ROI was moved or resized in a slice view: the same pixels in the panel."""
        pn = self._parameterNode
        if self._syncingRoi or pn is None or pn.fluoroVolume is None:
            return
        roi = self.logic.roiFromMarkupsRoi(caller, pn.fluoroVolume)
        if roi is None:
            return
        self._syncingRoi = True
        try:
            pn.roi = roi
            if self.roiEditor is not None:
                self.roiEditor.setRoi(roi)
        finally:
            self._syncingRoi = False

    def _updateStepAvailability(self):
        """Disable the buttons of steps this version cannot run, with the reason as their tooltip."""
        tips = {
            "segment": (self.ui.segmentButton, "Segment the vessels in the current frame (DRU-Net)"),
            "register": (self.ui.registerButton, "Register the projection's ROI to the frame (affine CNN)"),
            "register run": (self.ui.registerRunButton, "Register every frame of the run; the sequence browser "
                                                        "then plays the registered overlay"),
        }
        for step, (button, tip) in tips.items():
            reason = self.logic.stepAvailability(step.split()[0])
            button.toolTip = reason if reason else tip
        torchSteps = [s for s in ("segment", "register") if self.logic.stepAvailable(s)]
        self.ui.forceCpuCheckBox.enabled = bool(torchSteps)
        if not torchSteps:
            self.ui.forceCpuCheckBox.toolTip = ("Chooses the device of segmentation and registration, which are "
                                                "not available in this version.")
        registerReason = self.logic.stepAvailability("register")
        self.ui.transformSelector.enabled = not registerReason
        self.ui.wholeModelCheckBox.enabled = not registerReason
        if registerReason:
            self.ui.transformSelector.toolTip = registerReason
            self.ui.wholeModelCheckBox.toolTip = registerReason

    def _updateButtonStates(self):
        pn = self._parameterNode
        idle = not self._busy
        ready = bool(pn and pn.model and pn.fluoroVolume)
        self.ui.renderProjectionButton.enabled = ready and idle
        self.ui.renderProjectionButton.toolTip = (
            "Render the model's projection for the selected frame" if ready
            else "Select the vessel model and the fluoroscopy volume first")
        hasProjection = self.logic.lastProjection is not None
        self.ui.exportButton.enabled = hasProjection and idle
        self.ui.exportButton.toolTip = ("Write projection.png, overlay.png and projection.json" if hasProjection
                                        else "Render a projection first")
        self.ui.segmentButton.enabled = (self.logic.stepAvailable("segment") and bool(pn and pn.fluoroVolume)
                                         and idle)
        self.ui.registerButton.enabled = self.logic.stepAvailable("register") and ready and hasProjection and idle
        self.ui.registerRunButton.enabled = (self.ui.registerButton.enabled
                                             and self.logic.numberOfFrames(pn.fluoroVolume) > 1)

    def _setStatus(self, text):
        self.ui.statusLabel.text = text

    # -- frames -------------------------------------------------------------------------------------
    def _observeFluoro(self, volume):
        """Follow the sequence browser of the selected fluoroscopy volume (frame slider both ways)."""
        volumeID = volume.GetID() if volume else None
        if volumeID == self._observedFluoroID:
            return
        if self._observedBrowser is not None:
            self.removeObserver(self._observedBrowser, vtk.vtkCommand.ModifiedEvent, self._onBrowserModified)
        self._observedFluoroID = volumeID
        self._observedBrowser = self.logic.browserForVolume(volume) if volume else None
        if self._observedBrowser is not None:
            self.addObserver(self._observedBrowser, vtk.vtkCommand.ModifiedEvent, self._onBrowserModified)
        frames = self.logic.numberOfFrames(volume) if volume else 0
        current = self.logic.currentFrameIndex(volume) if volume else 0
        for widget in (self.ui.frameSlider, self.ui.frameSpinBox):
            wasBlocked = widget.blockSignals(True)
            widget.setRange(0, max(frames - 1, 0))
            widget.setValue(current)
            widget.enabled = frames > 1
            widget.blockSignals(wasBlocked)
        self.ui.mostContrastButton.enabled = frames > 1
        self._updateFrameInfo()

    def onFrameSliderChanged(self, value):
        volume = self._parameterNode.fluoroVolume if self._parameterNode else None
        if volume is None:
            return
        browser = self.logic.browserForVolume(volume)
        if browser is not None and browser.GetSelectedItemNumber() != value:
            browser.SetSelectedItemNumber(value)  # _onBrowserModified follows
        else:
            self._frameChanged(value)

    def onMostContrastButton(self):
        """Go to the frame with the most contrast medium (``TAVIRegistrationLogic.mostOpacifiedFrame``)."""
        volume = self._parameterNode.fluoroVolume if self._parameterNode else None
        if volume is None:
            return
        with slicer.util.tryWithErrorDisplay("Could not find the frame with the most contrast.", waitCursor=True):
            index, note = self.logic.mostOpacifiedFrame(volume)
            self.logic.selectFrame(volume, index)  # the browser observer moves the slider
            self._setStatus(note)

    def _onBrowserModified(self, caller=None, event=None):
        if self._observedBrowser is None:
            return
        index = max(0, self._observedBrowser.GetSelectedItemNumber())
        for widget in (self.ui.frameSlider, self.ui.frameSpinBox):
            if widget.value != index:
                wasBlocked = widget.blockSignals(True)
                widget.setValue(index)
                widget.blockSignals(wasBlocked)
        pn = self._parameterNode
        if pn is not None and pn.frameIndex != index:
            self._frameChanged(index)

    def _frameChanged(self, index):
        pn = self._parameterNode
        if pn is None:
            return
        pn.frameIndex = index
        self._updateFrameInfo()
        last = self.logic.lastProjection
        if (pn.followFrame and not self._busy and last is not None and last.frameIndex != index
                and pn.fluoroVolume is not None and last.fluoroVolumeID == pn.fluoroVolume.GetID()):
            self._renderQuietly()

    def _updateFrameInfo(self):
        pn = self._parameterNode
        volume = pn.fluoroVolume if pn else None
        if volume is None:
            self.ui.geometryLabel.text = ""
            return
        index = self.logic.currentFrameIndex(volume)
        try:
            geometry = self.logic.frameGeometry(volume, index)
        except Exception as exc:  # shown in the panel: reading the geometry is optional here
            self.ui.geometryLabel.text = "C-arm geometry not available: %s" % exc
            return
        from TAVIRegistrationLib.geometry import view_label

        self.ui.geometryLabel.text = "Frame %d of %d: %s, SID %.0f mm, SOD %.0f mm, detector pixel %.3f mm" % (
            index + 1, self.logic.numberOfFrames(volume),
            view_label(geometry.primary_angle_deg, geometry.secondary_angle_deg),
            geometry.sid_mm, geometry.sod_mm, geometry.pixel_spacing_mm[1])

    # -- actions ------------------------------------------------------------------------------------
    def _run(self, title, work):
        """Run ``work(progress)`` with the progress bar and Cancel shown; errors go to an error display."""
        if self._busy:
            return None
        self._busy = True
        self._cancelRequested = False
        self.ui.progressBar.value = 0
        self.ui.progressBar.show()
        self.ui.cancelButton.show()
        self._updateButtonStates()
        try:
            with slicer.util.tryWithErrorDisplay("%s failed." % title, waitCursor=True):
                try:
                    return work(self._onProgress)
                except OperationCancelled:
                    self._setStatus("%s: cancelled." % title)
                    return None
        finally:
            self._busy = False
            self.ui.progressBar.hide()
            self.ui.cancelButton.hide()
            self._updateButtonStates()

    def _onProgress(self, fraction, message):
        self.ui.progressBar.value = int(round(100.0 * min(max(fraction, 0.0), 1.0)))
        self.ui.progressBar.setFormat("%s  %%p%%" % message)
        slicer.app.processEvents()
        if self._cancelRequested:
            raise OperationCancelled(message)

    def onCancelButton(self):
        self._cancelRequested = True
        self._setStatus("Cancelling...")

    def _renderArguments(self):
        pn = self._parameterNode
        return dict(
            modelNode=pn.model,
            fluoroVolume=pn.fluoroVolume,
            frameIndex=self.logic.currentFrameIndex(pn.fluoroVolume),
            projectionVolume=pn.projectionVolume,
            isocenterNode=pn.isocenter,
            orthographic=pn.orthographic,
            overlayOpacity=pn.overlayOpacity,
            placeCamera=pn.placeCamera,
        )

    def onRenderProjectionButton(self):
        with slicer.util.tryWithErrorDisplay("The Python packages TAVIRegistration needs are not available."):
            self.logic.ensurePythonPackages(ask=True)

        def work(progress):
            return self.logic.renderProjection(progress=progress, **self._renderArguments())

        result = self._run("Rendering the projection", work)
        if result is not None:
            self._showProjection(result)

    def _renderQuietly(self):
        """Render for a new frame without dialogs (follow-frame): a problem goes to the status line."""
        try:
            result = self.logic.renderProjection(**self._renderArguments())
        except Exception as exc:
            self._setStatus("Projection not updated: %s" % exc)
            return
        self._showProjection(result)

    def _showProjection(self, result):
        from TAVIRegistrationLib.geometry import view_label

        pn = self._parameterNode
        pn.projectionVolume = result.volumeNode
        mask = result.frameProjection.projection.mask
        if self.roiEditor is not None:
            self.roiEditor.setImage(self.logic.frameArray(pn.fluoroVolume, result.frameIndex))
            self.roiEditor.setOverlay(mask, color=(255, 200, 0))
            roi = self.logic.validRoi(pn.roi, mask.shape) or result.frameProjection.default_roi
            if roi:
                self.roiEditor.setRoi(roi)
                pn.roi = tuple(int(v) for v in roi)
        lines = ["Projection of frame %d: %d pixels (%s)." % (
            result.frameIndex, int(mask.sum()),
            view_label(result.geometry.primary_angle_deg, result.geometry.secondary_angle_deg))]
        lines += ["Warning: %s" % w for w in result.warnings]
        self._setStatus("\n".join(lines))
        self._updateButtonStates()

    def onRoiEditingFinished(self, roi):
        pn = self._parameterNode
        if pn is None:
            return
        pn.roi = tuple(int(v) for v in roi) if roi else (0, 0, 0, 0)
        if roi and pn.roiNode is not None and pn.fluoroVolume is not None and not self._syncingRoi:
            self._syncingRoi = True
            try:
                self.logic.updateMarkupsRoi(pn.roiNode, roi, pn.fluoroVolume)
            finally:
                self._syncingRoi = False

    def onOverlayOpacityChanged(self, value):
        self.logic.setOverlayOpacity(value)

    def _ensureTorch(self):
        with slicer.util.tryWithErrorDisplay("PyTorch is not available."):
            self.logic.ensurePythonPackages(ask=True)
            self.logic.ensureTorch(ask=True)
            return True
        return False

    def onSegmentButton(self):
        pn = self._parameterNode
        if not self._ensureTorch():
            return
        outcome = self._run("Vessel segmentation", lambda progress: self.logic.segmentFrame(
            pn.fluoroVolume, frameIndex=self.logic.currentFrameIndex(pn.fluoroVolume), forceCpu=pn.forceCpu,
            overlayOpacity=pn.overlayOpacity, progress=progress))
        if outcome is None:
            return
        if self.roiEditor is not None:
            self.roiEditor.setImage(self.logic.frameArray(pn.fluoroVolume, outcome.frameIndex))
            self.roiEditor.setOverlay(outcome.result.mask, color=(0, 220, 255))
        lines = ["Segmentation of frame %d (%s FoV): %d vessel pixels." % (
            outcome.frameIndex, outcome.result.fov_used, int(outcome.result.mask.sum()))]
        lines += ["Warning: %s" % w for w in outcome.warnings]
        self._setStatus("\n".join(lines))

    def onRegisterButton(self):
        pn = self._parameterNode
        if not self._ensureTorch():
            return
        outcome = self._run("Registration", lambda progress: self.logic.registerFrame(
            pn.model, pn.fluoroVolume, frameIndex=self.logic.currentFrameIndex(pn.fluoroVolume),
            roi=self.logic.validRoi(pn.roi, None), isocenterNode=pn.isocenter, transformNode=pn.registrationTransform,
            forceCpu=pn.forceCpu, orthographic=pn.orthographic, overlayOpacity=pn.overlayOpacity,
            wholeModel=pn.wholeModel, progress=progress))
        if outcome is None:
            return
        pn.registrationTransform = outcome.transformNode
        if self.roiEditor is not None:
            self.roiEditor.setImage(self.logic.frameArray(pn.fluoroVolume, outcome.frameIndex))
            self.roiEditor.setOverlay(outcome.registration.registered_mask, color=(0, 255, 0))
        m = outcome.metrics
        lines = ["Registration of frame %d (%s, %.0f ms): Dice %.3f, recall %.3f, precision %.3f against the %s." % (
            outcome.frameIndex, outcome.registration.result.method, 1000.0 * outcome.registration.result.seconds,
            m.get("dice", float("nan")), m.get("recall", float("nan")), m.get("precision", float("nan")),
            "DRU-Net segmentation" if outcome.registration.fixed_source == "segmentation" else "given mask")]
        lines = ["FLAGGED: %s" % f for f in outcome.flags] + lines
        lines += ["Warning: %s" % w for w in outcome.warnings if w not in outcome.flags]
        self._setStatus("\n".join(lines))

    def onRegisterRunButton(self):
        pn = self._parameterNode
        if not self._ensureTorch():
            return
        outcome = self._run("Run registration", lambda progress: self.logic.registerRun(
            pn.model, pn.fluoroVolume, roi=self.logic.validRoi(pn.roi, None), isocenterNode=pn.isocenter,
            forceCpu=pn.forceCpu, orthographic=pn.orthographic, overlayOpacity=pn.overlayOpacity,
            wholeModel=pn.wholeModel, progress=progress))
        if outcome is None:
            return
        run = outcome.run
        n = len(run.registrations) + len(run.failures)
        lines = ["Run registration: %d of %d frames registered; play the run in the sequence browser to see "
                 "the overlay follow the frames." % (len(run.registrations), n)]
        lines += ["Warning: %s" % w for w in outcome.warnings]
        self._setStatus("\n".join(lines))

    def onExportButton(self):
        pn = self._parameterNode
        directory = pathlib.Path(str(pn.exportDirectory))
        if not directory.is_absolute() or not directory.is_dir():
            import qt

            chosen = qt.QFileDialog.getExistingDirectory(slicer.util.mainWindow(), "Export folder")
            if not chosen:
                return
            directory = pathlib.Path(chosen)
            pn.exportDirectory = directory

        def work(progress):
            _report(progress, 0.1, "Writing the exported files")
            return self.logic.exportProjection(directory, fluoroVolume=pn.fluoroVolume,
                                               roi=self.logic.validRoi(pn.roi, None))

        files = self._run("Export", work)
        if files:
            self._setStatus("Wrote %s" % ", ".join(str(f) for f in files))


#
# TAVIRegistrationLogic
#

class ProjectionResult:
    """What ``TAVIRegistrationLogic.renderProjection`` made: the volume node and the library's result."""

    def __init__(self, volumeNode, frameProjection, frameIndex, warnings, cameraNode, dicomPath, fluoroVolumeID,
                 modelName, isocenterSource="model centre", modelUnits=None, modelSpace=None):
        self.volumeNode = volumeNode
        self.frameProjection = frameProjection  # TAVIRegistrationLib.pipeline.FrameProjection
        self.frameIndex = frameIndex
        self.warnings = list(warnings)
        self.cameraNode = cameraNode
        self.dicomPath = dicomPath
        self.fluoroVolumeID = fluoroVolumeID
        self.modelName = modelName
        self.isocenterSource = isocenterSource  # "given" (the point list) or "model centre"
        self.modelUnits = modelUnits
        self.modelSpace = modelSpace

    @property
    def geometry(self):
        return self.frameProjection.geometry


class SegmentationOutcome:
    """What ``TAVIRegistrationLogic.segmentFrame`` made: the mask volume and the library's result."""

    def __init__(self, volumeNode, result, frameIndex):
        self.volumeNode = volumeNode
        self.result = result  # TAVIRegistrationLib.segmentation.SegmentationResult
        self.frameIndex = frameIndex
        self.warnings = list(result.warnings)


class RegistrationOutcome:
    """What ``TAVIRegistrationLogic.registerFrame`` made: nodes and the library's FrameRegistration."""

    def __init__(self, volumeNode, transformNode, registration, frameIndex, warnings):
        self.volumeNode = volumeNode
        self.transformNode = transformNode
        self.registration = registration  # TAVIRegistrationLib.pipeline.FrameRegistration
        self.frameIndex = frameIndex
        self.warnings = list(warnings)

    @property
    def metrics(self):
        return dict(self.registration.metrics)

    @property
    def affine(self):
        return np.asarray(self.registration.matrix)

    @property
    def flags(self):
        """Why the result should not be trusted without a look (low agreement); empty when none."""
        return list(self.registration.result.flags)


class RunOutcome:
    """What ``TAVIRegistrationLogic.registerRun`` made: the two sequences synchronised with the run's
    frames (registered projection, affine) and the library's RunRegistration."""

    def __init__(self, maskSequence, transformSequence, run, warnings):
        self.maskSequence = maskSequence
        self.transformSequence = transformSequence
        self.run = run  # TAVIRegistrationLib.pipeline.RunRegistration
        self.warnings = list(warnings)

    @property
    def failedFrames(self):
        return sorted(self.run.failures)


class SyntheticCase:
    """The synthetic TAVI case loaded into the scene, with the ground truth it was made from."""

    def __init__(self, **fields):
        self.__dict__.update(fields)


class TAVIRegistrationLogic(ScriptedLoadableModuleLogic):
    """Moves data between MRML nodes and TAVIRegistrationLib's pipeline; usable without the widget.

    Uses ScriptedLoadableModuleLogic base class, available at:
    https://github.com/Slicer/Slicer/blob/main/Base/Python/slicer/ScriptedLoadableModule.py
    """

    #: Steps of the data flow this Logic implements (``segmentFrame``, ``registerFrame`` below): the
    #: widget enables the buttons of those set to True, and the self-test's registration test runs.
    IMPLEMENTED_STEPS = {"project": True, "segment": True, "register": True}


    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self._seriesCache = {}
        self._pipeline = None
        self._pipelineKey = None
        self.lastProjection = None
        self.lastRegistration = None

    def getParameterNode(self):
        return TAVIRegistrationParameterNode(super().getParameterNode())

    def close(self):
        """Release the pipeline's offscreen render window."""
        if self._pipeline is not None:
            self._pipeline.close()
        self._pipeline = None
        self._pipelineKey = None

    # -- Python packages ------------------------------------------------------------------------------
    @staticmethod
    def pythonVersionProblem():
        """Why this Python cannot run the library ('' when it can)."""
        if sys.version_info < (3, 10):
            return ("TAVIRegistration reads fluoroscopy DICOM with pydicom 3, which needs Python 3.10 or later; "
                    "this 3D Slicer runs Python %d.%d. Use 3D Slicer 5.10 or later." % sys.version_info[:2])
        return ""

    @staticmethod
    def missingPythonRequirements():
        """[(pip requirement, what it is for, installed version or None)] of missing or too old packages."""
        import importlib.metadata as metadata

        missing = []
        for distribution, _module, requirement, minimum, purpose in PYTHON_REQUIREMENTS:
            try:
                version = metadata.version(distribution)
            except metadata.PackageNotFoundError:
                version = None
            if version is None or not versionAtLeast(version, minimum):
                missing.append((requirement, purpose, version))
        return missing

    def requirePythonPackages(self):
        """Raise RuntimeError (without installing anything) when a needed package is missing."""
        problem = self.pythonVersionProblem()
        if problem:
            raise RuntimeError(problem)
        missing = self.missingPythonRequirements()
        if missing:
            raise RuntimeError("Python packages missing: %s (click Render projection to install them)"
                               % ", ".join(requirement for requirement, _, _ in missing))
        stale = []
        for _distribution, module, _requirement, minimum, _purpose in PYTHON_REQUIREMENTS:
            version = getattr(sys.modules.get(module), "__version__", None)
            if version and not versionAtLeast(str(version), minimum):
                stale.append("%s %s" % (module, version))
        if stale:
            raise RuntimeError("Restart 3D Slicer to use the upgraded Python packages (%s is still loaded in this "
                               "session)." % ", ".join(stale))

    def installMissingPythonPackages(self, ask=True):
        """Install missing packages with ``slicer.util.pip_install``, asking first when ``ask``.

        Returns the requirements installed. Raises RuntimeError when declined.
        """
        problem = self.pythonVersionProblem()
        if problem:
            raise RuntimeError(problem)
        missing = self.missingPythonRequirements()
        if not missing:
            return []
        lines = ["  - %s: %s (%s)" % (requirement, purpose, "installed: " + version if version else "not installed")
                 for requirement, purpose, version in missing]
        question = ("TAVIRegistration needs these Python packages:\n\n%s\n\nInstall them now with pip? This needs "
                    "internet access and may take a minute." % "\n".join(lines))
        if ask and not slicer.util.confirmOkCancelDisplay(question, windowTitle="TAVIRegistration: Python packages"):
            raise RuntimeError("Python packages not installed: %s"
                               % ", ".join(requirement for requirement, _, _ in missing))
        requirements = [requirement for requirement, _, _ in missing]
        logging.info("TAVIRegistration: pip install %s", " ".join(requirements))
        slicer.util.pip_install(requirements)
        importlib.invalidate_caches()
        return requirements

    def ensurePythonPackages(self, ask=True):
        """Install what is missing (asking first when ``ask``), then check everything is usable now."""
        self.installMissingPythonPackages(ask=ask)
        self.requirePythonPackages()

    def ensureTorch(self, ask=True):
        """``torch``, installed through the PyTorch extension's PyTorchUtils after asking (once) if missing."""
        try:
            import torch
            return torch
        except ImportError:
            pass
        try:
            import PyTorchUtils
        except ImportError:
            raise RuntimeError("PyTorch is needed for segmentation and registration: install the 'PyTorch' "
                               "extension with the Extensions Manager, restart 3D Slicer and try again.") from None
        question = ("Segmentation and registration need PyTorch, which is not installed yet. Install it now with the "
                    "PyTorch extension? It downloads several hundred MB (a few GB for a CUDA build) and takes some "
                    "minutes.")
        if ask and not slicer.util.confirmOkCancelDisplay(question, windowTitle="TAVIRegistration: PyTorch"):
            raise RuntimeError("PyTorch is not installed: segmentation and registration cannot run.")
        torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False, torchVersionRequirement=">=2.0")
        if torch is None:
            raise RuntimeError("PyTorch could not be installed (see the Python console).")
        return torch

    # -- steps ------------------------------------------------------------------------------------------
    def stepAvailability(self, step):
        """'' when ``step`` ('project', 'segment', 'register') can run in this version, else the reason."""
        if step not in self.IMPLEMENTED_STEPS:
            raise ValueError("unknown step %r" % step)
        if not self.IMPLEMENTED_STEPS[step]:
            return "%s is not available in this version." % step
        if step in STEP_UNAVAILABLE_REASONS:
            try:
                from TAVIRegistrationLib.networks.weights import installed
            except ImportError:  # the Python packages are not installed yet: the step asks for them when run
                return ""
            if not installed("segmentation"):
                return STEP_UNAVAILABLE_REASONS[step]
        return ""

    def stepAvailable(self, step):
        return not self.stepAvailability(step)

    def _requireStep(self, step):
        reason = self.stepAvailability(step)
        if reason:
            raise StepNotAvailableError(reason)

    # -- fluoroscopy: MRML nodes -> DICOM file -> library ----------------------------------------------
    @staticmethod
    def browserForVolume(volumeNode):
        """The sequence browser whose proxy node is ``volumeNode`` (None for a plain volume)."""
        if volumeNode is None:
            return None
        try:
            sequencesLogic = slicer.modules.sequences.logic()
        except AttributeError:
            return None
        return sequencesLogic.GetFirstBrowserNodeForProxyNode(volumeNode)

    def numberOfFrames(self, volumeNode):
        browser = self.browserForVolume(volumeNode)
        if browser is not None:
            sequence = browser.GetSequenceNode(volumeNode)
            if sequence is not None:
                return sequence.GetNumberOfDataNodes()
        return 1

    def currentFrameIndex(self, volumeNode):
        browser = self.browserForVolume(volumeNode)
        return max(0, browser.GetSelectedItemNumber()) if browser is not None else 0

    def selectFrame(self, volumeNode, frameIndex):
        """Show frame ``frameIndex`` (the sequence browser's item); InputError when out of range."""
        from TAVIRegistrationLib.errors import InputError

        frames = self.numberOfFrames(volumeNode)
        if isinstance(frameIndex, bool) or int(frameIndex) != frameIndex or not 0 <= frameIndex < frames:
            raise InputError("frame %r is out of range: %s has %d frame(s) (0-%d)"
                             % (frameIndex, volumeNode.GetName(), frames, frames - 1))
        browser = self.browserForVolume(volumeNode)
        if browser is not None and browser.GetSelectedItemNumber() != int(frameIndex):
            browser.SetSelectedItemNumber(int(frameIndex))

    def dicomFileForVolume(self, volumeNode):
        """Path of the DICOM file the volume was loaded from (through the DICOM database)."""
        from TAVIRegistrationLib.errors import InputError

        uids = []
        browser = self.browserForVolume(volumeNode)
        if browser is not None:
            sequence = browser.GetSequenceNode(volumeNode)
            if sequence is not None and sequence.GetNumberOfDataNodes() > 0:
                item = min(max(browser.GetSelectedItemNumber(), 0), sequence.GetNumberOfDataNodes() - 1)
                dataNode = sequence.GetNthDataNode(item)
                if dataNode is not None:
                    uids = parseInstanceUids(dataNode.GetAttribute("DICOM.instanceUIDs"))
        if not uids:
            uids = parseInstanceUids(volumeNode.GetAttribute("DICOM.instanceUIDs"))
        if not uids:
            raise InputError("%s was not loaded from DICOM (it has no DICOM.instanceUIDs attribute): load the XA/RF "
                             "run with the DICOM module, its C-arm geometry is read from the file" % volumeNode.GetName())
        database = slicer.dicomDatabase
        if database is None or not database.isOpen:
            raise InputError("the DICOM database is not open: open the DICOM module and load the run from there")
        path = database.fileForInstance(uids[0])
        if not path or not os.path.isfile(path):
            raise InputError("the DICOM file of %s (instance %s) is not in the DICOM database or was moved"
                             % (volumeNode.GetName(), uids[0]))
        return path

    def fluoroSeries(self, path, pixels=False):
        """The library's FluoroSeries of a DICOM file (cached while the file is unchanged).

        The header alone serves geometry and projection; ``pixels`` also decodes the frames, which
        segmentation needs. A series read with its pixels serves both, so it replaces a header-only one.
        """
        from TAVIRegistrationLib.fluoro import read_fluoro

        stat = os.stat(path)
        stamp = (stat.st_mtime_ns, stat.st_size)
        cached = self._seriesCache.get(path)
        if cached is not None and cached[0] == stamp and (not pixels or cached[1].frames is not None):
            return cached[1]
        series = read_fluoro(path, load_pixels=bool(pixels))
        self._seriesCache = {path: (stamp, series)}
        return series

    def checkVolumeMatchesSeries(self, volumeNode, series):
        """InputError unless the volume's frames are those of the DICOM file (size and count)."""
        from TAVIRegistrationLib.errors import InputError

        imageData = volumeNode.GetImageData()
        if imageData is None:
            raise InputError("%s holds no image" % volumeNode.GetName())
        cols, rows, slices = imageData.GetDimensions()
        if slices != 1:
            raise InputError("%s holds %d slices: load the XA/RF run with the DICOM module's image sequence plugin "
                             "so that each frame is one 2D image" % (volumeNode.GetName(), slices))
        if (rows, cols) != (series.rows, series.cols):
            raise InputError("%s is %d x %d pixels but its DICOM file says %d x %d"
                             % (volumeNode.GetName(), cols, rows, series.cols, series.rows))
        frames = self.numberOfFrames(volumeNode)
        if frames != series.n_frames:
            raise InputError("%s has %d frame(s) but its DICOM file %s has %d"
                             % (volumeNode.GetName(), frames, os.path.basename(str(series.path)), series.n_frames))

    def frameGeometry(self, volumeNode, frameIndex):
        """C-arm geometry of a frame as the DICOM file states it (isocentre at the origin)."""
        self.requirePythonPackages()
        series = self.fluoroSeries(self.dicomFileForVolume(volumeNode))
        return series.geometry(int(frameIndex))

    def mostOpacifiedFrame(self, volumeNode):
        """(index, sentence) of the frame of the run with the most contrast medium, chosen by the library
        on the run's DICOM pixels as ``tavireg --frame auto`` does (``FluoroSeries.resolve_frame``)."""
        from TAVIRegistrationLib.fluoro import AUTO_FRAME, read_fluoro

        self.requirePythonPackages()
        series = read_fluoro(self.dicomFileForVolume(volumeNode))
        self.checkVolumeMatchesSeries(volumeNode, series)
        return series.resolve_frame(AUTO_FRAME)

    def frameArray(self, volumeNode, frameIndex):
        """Pixels (rows, cols) of a frame as 3D Slicer holds them (a copy)."""
        self.selectFrame(volumeNode, frameIndex)
        return np.array(slicer.util.arrayFromVolume(volumeNode)[0], copy=True)

    # -- vessel model: MRML node (RAS, maybe transformed) -> library SurfaceModel (LPS mm) -----------
    def surfaceModelFromNode(self, node):
        from TAVIRegistrationLib.errors import InputError
        from TAVIRegistrationLib.mesh import surface_from_polydata

        if node is None:
            raise InputError("select the vessel model")
        if node.IsA("vtkMRMLSegmentationNode"):
            polyData = self._segmentationSurface(node)
        elif node.IsA("vtkMRMLModelNode"):
            polyData = node.GetPolyData()
            if polyData is None or polyData.GetNumberOfPoints() == 0:
                raise InputError("model %s holds no surface (it is empty, or a volumetric mesh)" % node.GetName())
        else:
            raise InputError("%s is neither a model nor a segmentation" % node.GetName())
        return surface_from_polydata(self._inWorldCoordinates(node, polyData), space="RAS", units="mm",
                                     name=node.GetName())

    @staticmethod
    def _segmentationSurface(segmentationNode):
        """Closed surfaces of the segmentation's visible segments (all segments without a display node)."""
        from TAVIRegistrationLib.errors import InputError

        segmentation = segmentationNode.GetSegmentation()
        if segmentation.GetNumberOfSegments() == 0:
            raise InputError("segmentation %s has no segments" % segmentationNode.GetName())
        segmentationNode.CreateClosedSurfaceRepresentation()
        displayNode = segmentationNode.GetDisplayNode()
        append = vtk.vtkAppendPolyData()
        for index in range(segmentation.GetNumberOfSegments()):
            segmentId = segmentation.GetNthSegmentID(index)
            if displayNode is not None and not displayNode.GetSegmentVisibility(segmentId):
                continue
            surface = vtk.vtkPolyData()
            if segmentationNode.GetClosedSurfaceRepresentation(segmentId, surface) and surface.GetNumberOfPoints():
                append.AddInputData(surface)
        if append.GetNumberOfInputConnections(0) == 0:
            raise InputError("segmentation %s has no visible, non-empty segment" % segmentationNode.GetName())
        append.Update()
        return append.GetOutput()

    @staticmethod
    def _inWorldCoordinates(node, polyData):
        """``polyData`` mapped by the node's parent transforms (linear or not) to world RAS."""
        parent = node.GetParentTransformNode()
        if parent is None:
            return polyData
        toWorld = vtk.vtkGeneralTransform()
        parent.GetTransformToWorld(toWorld)
        transformFilter = vtk.vtkTransformFilter()
        transformFilter.SetTransform(toWorld)
        transformFilter.SetInputData(polyData)
        transformFilter.Update()
        return transformFilter.GetPolyDataOutput()

    @staticmethod
    def _modelKey(node):
        """What identifies the model's current geometry, or None when it cannot be told (segmentations)."""
        if node is None or not node.IsA("vtkMRMLModelNode"):
            return None
        polyData = node.GetPolyData()
        parent = node.GetParentTransformNode()
        return (node.GetID(), node.GetMTime(), polyData.GetMTime() if polyData is not None else 0,
                parent.GetID() if parent is not None else None,
                parent.GetTransformToWorldMTime() if parent is not None else 0)

    @staticmethod
    def isocenterLps(markupsNode):
        """The isocentre (LPS mm) from the first point of a point list; None without a point list."""
        from TAVIRegistrationLib.errors import InputError

        if markupsNode is None:
            return None
        if markupsNode.GetNumberOfControlPoints() < 1:
            raise InputError("point list %s is empty: place the isocentre point, or select none"
                             % markupsNode.GetName())
        position = [0.0, 0.0, 0.0]
        markupsNode.GetNthControlPointPositionWorld(0, position)
        return tuple(float(c) for c in lpsFromRas(position))

    # -- the pipeline -------------------------------------------------------------------------------------
    def pipelineFor(self, modelNode, fluoroVolume, isocenterNode=None, orthographic=False, progress=None,
                    pixels=False):
        """The library's RegistrationPipeline for these nodes (reused while nothing changed).

        ``pixels``: the pipeline will segment frames, so its series holds the decoded frames.
        """
        from TAVIRegistrationLib.pipeline import RegistrationPipeline

        path = self.dicomFileForVolume(fluoroVolume)
        _report(progress, 0.15, "Reading the C-arm geometry from the DICOM file")
        series = self.fluoroSeries(path, pixels=pixels)
        self.checkVolumeMatchesSeries(fluoroVolume, series)
        isocenter = self.isocenterLps(isocenterNode)
        modelKey = self._modelKey(modelNode)
        key = None if modelKey is None else (modelKey, path, id(series), isocenter, bool(orthographic))
        if key is not None and key == self._pipelineKey and self._pipeline is not None:
            return self._pipeline
        _report(progress, 0.3, "Converting the vessel model to patient LPS coordinates")
        model = self.surfaceModelFromNode(modelNode)
        self.close()
        self._pipeline = RegistrationPipeline(model, series, isocenter_lps=isocenter, orthographic=orthographic)
        self._pipelineKey = key
        return self._pipeline

    def _casePipeline(self, modelNode, fluoroVolume, frameIndex, isocenterNode, orthographic, progress,
                      pixels=False):
        """The steps' common start: the inputs checked, frame ``frameIndex`` (default: the one shown)
        shown, and the pipeline of this case (with decoded frames when ``pixels``). Returns
        ``(frameIndex, pipeline)``."""
        from TAVIRegistrationLib.errors import InputError

        _report(progress, 0.0, "Checking the inputs")
        self.requirePythonPackages()
        if fluoroVolume is None:
            raise InputError("select the fluoroscopy volume")
        if modelNode is None:
            raise InputError("select the vessel model")
        if frameIndex is None:
            frameIndex = self.currentFrameIndex(fluoroVolume)
        self.selectFrame(fluoroVolume, frameIndex)
        return int(frameIndex), self.pipelineFor(modelNode, fluoroVolume, isocenterNode, orthographic, progress,
                                                 pixels=pixels)

    def renderProjection(self, modelNode, fluoroVolume, frameIndex=None, projectionVolume=None, isocenterNode=None,
                         orthographic=False, showResult=True, overlayOpacity=0.5, placeCamera=True, cameraNode=None,
                         progress=None):
        """Render the model's C-arm projection for a frame into a volume over that frame.

        ``frameIndex`` defaults to the frame shown; ``projectionVolume`` is created when None. With
        ``placeCamera`` the 3D view's camera (or ``cameraNode``) is put at the X-ray source.
        ``progress(fraction, message)`` is called between steps (it may raise OperationCancelled).
        Python packages must be there (``ensurePythonPackages``). Returns a ProjectionResult.
        """
        frameIndex, pipeline = self._casePipeline(modelNode, fluoroVolume, frameIndex, isocenterNode, orthographic,
                                                  progress)
        _report(progress, 0.6, "Rendering the projection of frame %d" % frameIndex)
        frameProjection = pipeline.project(int(frameIndex))
        _report(progress, 0.85, "Writing the projection volume")
        projectionVolume = self.updateMaskVolume(
            projectionVolume, frameProjection.projection.mask, fluoroVolume,
            name="%s projection" % fluoroVolume.GetName(), colorNodeID=PROJECTION_COLOR_NODE_ID,
            role="projection", frameIndex=frameIndex)
        camera = self.placeCameraAtSource(frameProjection.geometry, cameraNode) if placeCamera else None
        if showResult:
            self.showOverlay(fluoroVolume, projectionVolume, overlayOpacity)
        result = ProjectionResult(projectionVolume, frameProjection, int(frameIndex), pipeline.warnings, camera,
                                  self.dicomFileForVolume(fluoroVolume), fluoroVolume.GetID(), modelNode.GetName(),
                                  isocenterSource="given" if isocenterNode is not None else "model centre",
                                  modelUnits=getattr(pipeline.model, "units_used", None),
                                  modelSpace=getattr(pipeline.model, "space_used", None))
        self.lastProjection = result
        return result

    def renderProjectionUsingParameterNode(self, parameterNode, progress=None):
        return self.renderProjection(
            parameterNode.model, parameterNode.fluoroVolume, frameIndex=parameterNode.frameIndex,
            projectionVolume=parameterNode.projectionVolume, isocenterNode=parameterNode.isocenter,
            orthographic=parameterNode.orthographic, overlayOpacity=parameterNode.overlayOpacity,
            placeCamera=parameterNode.placeCamera, progress=progress)

    @staticmethod
    def validRoi(roi, shape):
        """``roi`` clipped to a frame of ``shape`` (rows, cols), or None when unset or unusable.

        With ``shape`` None only the "unset" value (0, 0, 0, 0) is recognised.
        """
        if roi is None:
            return None
        roi = tuple(int(v) for v in roi)
        if len(roi) != 4 or roi[2] <= 0 or roi[3] <= 0:
            return None
        if shape is None:
            return roi
        from TAVIRegistrationLib.errors import InputError
        from TAVIRegistrationLib.roi import validate_roi

        try:
            return validate_roi(roi, int(shape[0]), int(shape[1]))
        except InputError:
            return None

    # -- the ROI as a Markups ROI in the slice views -------------------------------------------------------
    @staticmethod
    def _frameIjkToRasWorld(volumeNode):
        """The frame volume's IJK-to-RAS matrix in world coordinates (its parent transforms applied)."""
        ijkToRas = vtk.vtkMatrix4x4()
        volumeNode.GetIJKToRASMatrix(ijkToRas)
        matrix = slicer.util.arrayFromVTKMatrix(ijkToRas)
        parent = volumeNode.GetParentTransformNode()
        if parent is not None:
            toWorld = vtk.vtkMatrix4x4()
            parent.GetMatrixTransformToWorld(toWorld)
            matrix = slicer.util.arrayFromVTKMatrix(toWorld) @ matrix
        return matrix

    def roiFromMarkupsRoi(self, roiNode, fluoroVolume):
        """The frame pixels (x, y, w, h) a Markups ROI covers (``pixelRoiFromRasBounds``), or None."""
        if roiNode is None or fluoroVolume is None or fluoroVolume.GetImageData() is None:
            return None
        bounds = [0.0] * 6
        roiNode.GetRASBounds(bounds)
        cols, rows, _ = fluoroVolume.GetImageData().GetDimensions()
        return pixelRoiFromRasBounds(bounds, self._frameIjkToRasWorld(fluoroVolume), rows, cols)

    def updateMarkupsRoi(self, roiNode, roi, fluoroVolume, name="TAVIRegistration ROI"):
        """Place a Markups ROI (created when None) over frame pixels ``roi``; returns the node."""
        if roiNode is None:
            roiNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsROINode", slicer.mrmlScene.GenerateUniqueName(name))
            roiNode.CreateDefaultDisplayNodes()
        centre, radius = rasBoxFromPixelRoi(roi, self._frameIjkToRasWorld(fluoroVolume))
        with slicer.util.NodeModify(roiNode):
            roiNode.SetXYZ(*[float(c) for c in centre])
            roiNode.SetRadiusXYZ(*[float(r) for r in radius])
        return roiNode

    # -- results -> MRML nodes ----------------------------------------------------------------------------
    @staticmethod
    def updateMaskVolume(volumeNode, mask, referenceVolume, name, colorNodeID, role, frameIndex=None):
        """Write a binary mask (rows, cols) into a volume on the reference frame's pixel grid."""
        from TAVIRegistrationLib.errors import InputError

        mask = np.asarray(mask)
        cols, rows, _ = referenceVolume.GetImageData().GetDimensions()
        if mask.shape != (rows, cols):
            raise InputError("mask of shape %s does not fit the %d x %d frame" % (mask.shape, cols, rows))
        if volumeNode is None:
            volumeNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode",
                                                            slicer.mrmlScene.GenerateUniqueName(name))
        ijkToRas = vtk.vtkMatrix4x4()
        referenceVolume.GetIJKToRASMatrix(ijkToRas)
        volumeNode.SetIJKToRASMatrix(ijkToRas)
        slicer.util.updateVolumeFromArray(volumeNode, (mask > 0).astype(np.uint8)[np.newaxis])
        volumeNode.SetAndObserveTransformNodeID(referenceVolume.GetTransformNodeID())
        volumeNode.SetAttribute("TAVIRegistration.role", role)
        if frameIndex is not None:
            volumeNode.SetAttribute("TAVIRegistration.frameIndex", str(int(frameIndex)))
        displayNode = volumeNode.GetDisplayNode()
        if displayNode is None:
            volumeNode.CreateDefaultDisplayNodes()
            displayNode = volumeNode.GetDisplayNode()
        with slicer.util.NodeModify(displayNode):
            displayNode.AutoWindowLevelOff()
            displayNode.SetWindowLevelMinMax(0.0, 1.0)
            displayNode.SetAndObserveColorNodeID(colorNodeID)
            displayNode.SetAutoThreshold(0)
            displayNode.SetThreshold(0.5, 1.0)  # background pixels transparent over the frame
            displayNode.ApplyThresholdOn()
        return volumeNode

    @staticmethod
    def showOverlay(backgroundVolume, foregroundVolume, opacity):
        """Frame in the background, result in the foreground of every slice view."""
        composites = slicer.util.getNodesByClass("vtkMRMLSliceCompositeNode")
        refit = any(c.GetBackgroundVolumeID() != backgroundVolume.GetID() for c in composites)
        slicer.util.setSliceViewerLayers(background=backgroundVolume, foreground=foregroundVolume,
                                         foregroundOpacity=float(opacity), fit=refit)

    @staticmethod
    def setOverlayOpacity(opacity):
        """Opacity of this module's volumes where they are shown in the foreground."""
        for composite in slicer.util.getNodesByClass("vtkMRMLSliceCompositeNode"):
            foregroundID = composite.GetForegroundVolumeID()
            node = slicer.mrmlScene.GetNodeByID(foregroundID) if foregroundID else None
            if node is not None and node.GetAttribute("TAVIRegistration.role"):
                composite.SetForegroundOpacity(float(opacity))

    @staticmethod
    def threeDViewCameraNode():
        """Camera of the first 3D view; without a 3D view (e.g. --no-main-window) a camera node of our own."""
        layoutManager = slicer.app.layoutManager()
        if layoutManager is not None and layoutManager.threeDViewCount > 0:
            viewNode = layoutManager.threeDWidget(0).mrmlViewNode()
            cameraNode = slicer.modules.cameras.logic().GetViewActiveCameraNode(viewNode)
            if cameraNode is not None:
                return cameraNode
        for cameraNode in slicer.util.getNodesByClass("vtkMRMLCameraNode"):
            if cameraNode.GetAttribute("TAVIRegistration.role") == "c-arm camera":
                return cameraNode
        cameraNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLCameraNode", "TAVIRegistration C-arm camera")
        cameraNode.SetAttribute("TAVIRegistration.role", "c-arm camera")
        return cameraNode

    def placeCameraAtSource(self, geometry, cameraNode=None):
        """Put a camera at the frame's X-ray source, looking at the detector centre (see carmCameraParameters)."""
        u, v, d = geometry.axes()
        parameters = carmCameraParameters(geometry.source_lps, geometry.detector_center_lps, v,
                                          geometry.rows * geometry.pixel_spacing_mm[0], geometry.sid_mm)
        if cameraNode is None:
            cameraNode = self.threeDViewCameraNode()
        with slicer.util.NodeModify(cameraNode):
            cameraNode.SetPosition(*[float(c) for c in parameters["position"]])
            cameraNode.SetFocalPoint(*[float(c) for c in parameters["focalPoint"]])
            cameraNode.SetViewUp(*[float(c) for c in parameters["viewUp"]])
            cameraNode.SetViewAngle(float(parameters["viewAngle"]))
            cameraNode.ResetClippingRange()
        return cameraNode

    @staticmethod
    def setAffineTransform(transformNode, affine, referenceVolume, roi=None, name="TAVIRegistration transform"):
        """Store a 3x3 pixel affine (moving-ROI pixels -> frame pixels) in a linear transform node.

        The transform lives in the reference frame's coordinates (under the frame's parent transform): a
        volume on the ROI's pixel grid (``roiIjkToRas``) placed under it lands where the affine maps it.
        """
        ijkToRas = vtk.vtkMatrix4x4()
        referenceVolume.GetIJKToRASMatrix(ijkToRas)
        frame = slicer.util.arrayFromVTKMatrix(ijkToRas)
        moving = roiIjkToRas(frame, roi) if roi is not None else None
        matrix = rasTransformFromAffine(affine, frame, moving)
        if transformNode is None:
            transformNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLinearTransformNode",
                                                               slicer.mrmlScene.GenerateUniqueName(name))
        transformNode.SetAndObserveTransformNodeID(referenceVolume.GetTransformNodeID())
        slicer.util.updateTransformMatrixFromArray(transformNode, matrix)
        transformNode.SetAttribute("TAVIRegistration.role", "registration")
        return transformNode

    # -- segmentation and registration ---------------------------------------------------------------
    @staticmethod
    def _device(forceCpu):
        return "cpu" if forceCpu else None

    def segmentFrame(self, fluoroVolume, frameIndex=None, outputVolume=None, forceCpu=False, progress=None,
                     showResult=True, overlayOpacity=0.5):
        """Vessel segmentation of a frame (DRU-Net) into a mask volume over the frame.

        The frame comes from its DICOM file (as for the projection); the FoV from its header. Uses the
        current pipeline when it holds this file (its cache then serves a later registration), else the
        library's ``segment_frame``; the weights are verified by their SHA256 in the library. Returns a
        SegmentationOutcome (volume node, the library's SegmentationResult, frame index).
        """
        from TAVIRegistrationLib.errors import InputError
        from TAVIRegistrationLib.segmentation import fov_from_header, segment_frame

        _report(progress, 0.0, "Checking the inputs")
        self.requirePythonPackages()
        self.ensureTorch(ask=False)
        if fluoroVolume is None:
            raise InputError("select the fluoroscopy volume")
        if frameIndex is None:
            frameIndex = self.currentFrameIndex(fluoroVolume)
        self.selectFrame(fluoroVolume, frameIndex)
        path = self.dicomFileForVolume(fluoroVolume)
        series = self.fluoroSeries(path, pixels=True)
        self.checkVolumeMatchesSeries(fluoroVolume, series)
        _report(progress, 0.3, "Segmenting the vessels of frame %d (DRU-Net)" % frameIndex)
        if self._pipeline is not None and self._pipeline.series is series:
            result = self._pipeline.segment(int(frameIndex), device=self._device(forceCpu))
        else:
            result = segment_frame(series.frame(int(frameIndex)), device=self._device(forceCpu),
                                   fov_hint=fov_from_header(series.header))
        _report(progress, 0.85, "Writing the segmentation volume")
        volume = self.updateMaskVolume(outputVolume, result.mask, fluoroVolume,
                                       name="%s vessels" % fluoroVolume.GetName(),
                                       colorNodeID=SEGMENTATION_COLOR_NODE_ID, role="segmentation",
                                       frameIndex=frameIndex)
        if showResult:
            self.showOverlay(fluoroVolume, volume, overlayOpacity)
        return SegmentationOutcome(volume, result, int(frameIndex))

    def registerFrame(self, modelNode, fluoroVolume, frameIndex=None, roi=None, isocenterNode=None,
                      transformNode=None, fixedMask=None, forceCpu=False, progress=None, method=None,
                      outputVolume=None, orthographic=False, showResult=True, overlayOpacity=0.5,
                      wholeModel=False):
        """Register the projection's ROI to the frame (the library pipeline's ``register``).

        ``fixedMask`` (the frame's vessel mask, rows x cols), when given, replaces the DRU-Net
        segmentation; ``method`` cnn, cnn+refine or sitk (default: the library's); ``wholeModel``:
        cnn+refine registers the whole projection instead of its part up to the contrast front (the
        pipeline's ``contrast_front``). A valid result becomes
        the transform node (``setAffineTransform``) and the registered projection volume (role
        "registered projection") shown over the frame; a flagged one (low agreement) too, with the flag in
        its ``warnings``. A degenerate or failed registration raises RegistrationFailed and shows nothing.
        Returns a RegistrationOutcome whose ``metrics`` hold ``dice``, ``recall`` and ``precision``
        against the fixed mask.
        """
        from TAVIRegistrationLib.errors import InputError

        frameIndex, pipeline = self._casePipeline(modelNode, fluoroVolume, frameIndex, isocenterNode, orthographic,
                                                  progress, pixels=fixedMask is None)
        self.ensureTorch(ask=False)
        shape = pipeline.project(int(frameIndex)).projection.mask.shape
        if roi is not None and self.validRoi(roi, shape) is None:
            raise InputError("the ROI %s lies outside the %d x %d frame" % (tuple(roi), shape[1], shape[0]))
        _report(progress, 0.5, "Segmenting and registering frame %d" % frameIndex if fixedMask is None
                else "Registering frame %d" % frameIndex)
        pipeline.contrast_front = not wholeModel
        registration = pipeline.register(int(frameIndex), roi, fixed_mask=fixedMask, method=method,
                                         device=self._device(forceCpu))
        registration.result.raise_if_invalid()
        _report(progress, 0.85, "Writing the registered projection and the transform")
        transformNode = self.setAffineTransform(transformNode, registration.matrix, fluoroVolume, registration.roi)
        volume = self.updateMaskVolume(outputVolume, registration.registered_mask, fluoroVolume,
                                       name="%s registered projection" % fluoroVolume.GetName(),
                                       colorNodeID=REGISTERED_COLOR_NODE_ID, role="registered projection",
                                       frameIndex=frameIndex)
        # a low-agreement registration is shown, flagged: the attribute, the warnings and the status line say so
        volume.SetAttribute("TAVIRegistration.flagged", "; ".join(registration.result.flags))
        if showResult:
            self.showOverlay(fluoroVolume, volume, overlayOpacity)
        outcome = RegistrationOutcome(volume, transformNode, registration, int(frameIndex),
                                      list(pipeline.warnings) + list(registration.warnings))
        self.lastRegistration = outcome
        return outcome

    def registerRun(self, modelNode, fluoroVolume, roi=None, isocenterNode=None, forceCpu=False, progress=None,
                    method=None, orthographic=False, overlayOpacity=0.5, showResult=True, wholeModel=False):
        """Register every frame of the run (the library pipeline's ``register_run``: each frame warm-started
        from the last one that registered; a frame that fails is recorded and the run goes on);
        ``wholeModel``: see ``registerFrame``.

        The registered projections and the affines become two sequences in the run's sequence browser,
        synchronised with its frames, so that playing the run plays the overlay. A frame that did not
        register holds an empty mask and the identity, with its reason in the data node's
        ``TAVIRegistration.failed`` attribute. InputError when no frame registered. Returns a RunOutcome.
        """
        from TAVIRegistrationLib.errors import InputError

        _, pipeline = self._casePipeline(modelNode, fluoroVolume, None, isocenterNode, orthographic, progress,
                                         pixels=True)
        self.ensureTorch(ask=False)
        browser = self.browserForVolume(fluoroVolume)
        frames = self.numberOfFrames(fluoroVolume)

        def frameDone(done, total):
            _report(progress, 0.1 + 0.75 * done / total, "Registered frame %d of %d" % (done, total))

        pipeline.contrast_front = not wholeModel
        run = pipeline.register_run(range(frames), roi, method=method, device=self._device(forceCpu),
                                    progress=frameDone)
        if not run.registrations:
            first, why = min(run.failures.items())
            raise InputError("no frame of the run registered (frame %d: %s)" % (first, why))
        _report(progress, 0.9, "Writing the registered run")
        sequences = []
        for kind in ("registered projection", "registration transform"):
            sequence = slicer.mrmlScene.AddNewNodeByClass(
                "vtkMRMLSequenceNode", slicer.mrmlScene.GenerateUniqueName("%s %s" % (fluoroVolume.GetName(), kind)))
            sequence.SetAttribute("TAVIRegistration.role", kind)
            sequences.append(sequence)
        maskSequence, transformSequence = sequences
        frameSequence = browser.GetSequenceNode(fluoroVolume) if browser is not None else None
        registered = {reg.frame_index: reg for reg in run.registrations}
        empty = np.zeros(pipeline.project(run.registrations[0].frame_index).projection.mask.shape, np.uint8)
        volume = transform = None
        for index in range(frames):
            reg = registered.get(index)
            volume = self.updateMaskVolume(volume, reg.registered_mask if reg else empty, fluoroVolume,
                                           name="frame", colorNodeID=REGISTERED_COLOR_NODE_ID,
                                           role="registered projection", frameIndex=index)
            transform = self.setAffineTransform(transform, reg.matrix if reg else np.eye(3), fluoroVolume,
                                                reg.roi if reg else None)
            for node in (volume, transform):
                node.SetAttribute("TAVIRegistration.failed", run.failures.get(index, ""))
                node.SetAttribute("TAVIRegistration.flagged", "; ".join(reg.result.flags) if reg else "")
            value = frameSequence.GetNthIndexValue(index) if frameSequence is not None else str(index)
            maskSequence.SetDataNodeAtValue(volume, value)
            transformSequence.SetDataNodeAtValue(transform, value)
        for node in (volume, transform):  # the sequences hold copies
            slicer.mrmlScene.RemoveNode(node)
        if browser is not None:
            for sequence in sequences:
                browser.AddSynchronizedSequenceNode(sequence)
            if showResult:
                self.showOverlay(fluoroVolume, browser.GetProxyNode(maskSequence), overlayOpacity)
        warnings = list(pipeline.warnings) + run.failure_warnings()
        return RunOutcome(maskSequence, transformSequence, run, warnings)

    # -- export ---------------------------------------------------------------------------------------------
    def exportProjection(self, directory, fluoroVolume=None, result=None, roi=None, captureThreeDView=True):
        """Write the library's projection export (``TAVIRegistrationLib.export.ProjectionExport``:
        projection.png, 0/255 on the frame's grid, overlay.png and projection.json) and view3d.png.

        All files appear together or not at all (the library's OutputSet). Returns their paths.
        """
        from TAVIRegistrationLib.errors import InputError
        from TAVIRegistrationLib.export import ProjectionExport
        from TAVIRegistrationLib.outputs import OutputSet

        result = result or self.lastProjection
        if result is None:
            raise InputError("render a projection first")
        if fluoroVolume is None:
            fluoroVolume = slicer.mrmlScene.GetNodeByID(result.fluoroVolumeID)
        if fluoroVolume is None or fluoroVolume.GetID() != result.fluoroVolumeID:
            raise InputError("the projection was rendered for another fluoroscopy volume: render it again")
        directory = pathlib.Path(directory)
        if not directory.is_absolute():
            raise InputError("choose an output folder (absolute path), not %s" % directory)
        roi = self.validRoi(roi, result.frameProjection.projection.mask.shape)
        export = ProjectionExport(
            frame=self.frameArray(fluoroVolume, result.frameIndex), frame_projection=result.frameProjection,
            fluoro=result.dicomPath, model=result.modelName, roi=roi,
            roi_source="drawn" if roi is not None else "default", isocenter_source=result.isocenterSource,
            model_units=result.modelUnits, model_space=result.modelSpace, warnings=result.warnings)
        threeDView = self._captureThreeDView() if captureThreeDView else None
        with OutputSet(inputs=[pathlib.Path(result.dicomPath)]) as outputs:
            written = export.add_to(outputs, directory)
            if threeDView is not None:
                written.append(outputs.add(directory / "view3d.png", lambda fh: fh.write(threeDView)))
        return written

    @staticmethod
    def _captureThreeDView():
        """PNG bytes of the first 3D view (None when there is no 3D view)."""
        layoutManager = slicer.app.layoutManager()
        if layoutManager is None or layoutManager.threeDViewCount == 0:
            return None
        import ScreenCapture

        handle, path = tempfile.mkstemp(suffix=".png")
        os.close(handle)
        try:
            ScreenCapture.ScreenCaptureLogic().captureImageFromView(layoutManager.threeDWidget(0).threeDView(), path)
            with open(path, "rb") as fh:
                return fh.read()
        finally:
            os.remove(path)

    # -- synthetic case (Sample Data and self-test) --------------------------------------------------------
    def writeSyntheticCase(self, directory, seed=None):
        """Write the synthetic case's XA run with the library (``TAVIRegistrationLib.synthetic.sample_case``) and
        check its SHA256. Returns a SyntheticCase without nodes (path, model in LPS, geometries, masks)."""
        from TAVIRegistrationLib.synthetic.sample_case import SAMPLE_SEED, SAMPLE_SHA256, write_sample_case

        seed = SAMPLE_SEED if seed is None else seed
        case = write_sample_case(directory, seed=seed)
        if seed == SAMPLE_SEED and case.sha256 != SAMPLE_SHA256:
            logging.warning("TAVIRegistration: the synthetic XA file's SHA256 is %s, expected %s (another pydicom "
                            "or OpenGL rasteriser than the one it was recorded with)", case.sha256, SAMPLE_SHA256)
        return SyntheticCase(dicomPath=str(case.dicom_path), sha256=case.sha256, seriesUID=case.series_uid,
                             modelLps=case.model, geometries=case.geometries, isocenterLps=case.isocenter_lps,
                             motionLps=case.motion_lps, truthMasks=case.truth_masks, rows=case.rows, cols=case.cols)

    def loadSyntheticCase(self, directory=None, seed=None):
        """Write the synthetic case, import it into the open DICOM database and load it with its nodes.

        The model node holds RAS coordinates shifted by an offset that its parent transform undoes (so the
        transform handling is exercised); the isocentre is the first point of a point list.
        """
        from DICOMLib import DICOMUtils
        from TAVIRegistrationLib.mesh import transform_polydata

        database = slicer.dicomDatabase
        if database is None or not database.isOpen:
            raise RuntimeError("The DICOM database is not open: open the DICOM module once (it creates the "
                               "database), then load the synthetic case again.")
        if directory is None:
            directory = tempfile.mkdtemp(prefix="TAVIRegistrationSynthetic-", dir=slicer.app.temporaryPath)
        case = self.writeSyntheticCase(directory, seed=seed)
        if not DICOMUtils.importDicom(directory):
            raise RuntimeError("the synthetic XA file could not be imported into the DICOM database")
        fluoroVolume = None
        for nodeID in DICOMUtils.loadSeriesByUID([case.seriesUID]):
            node = slicer.mrmlScene.GetNodeByID(nodeID)
            if node is not None and node.IsA("vtkMRMLScalarVolumeNode") and self.browserForVolume(node) is not None:
                fluoroVolume = node
                break
        if fluoroVolume is None:
            raise RuntimeError("the DICOM module did not load the synthetic XA file as an image sequence")

        offsetRas = np.array([12.0, -8.0, 5.0])
        toShiftedRas = np.eye(4)
        toShiftedRas[:3, 3] = -offsetRas
        modelNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLModelNode", "Synthetic vessel model")
        lpsToRas = np.diag([-1.0, -1.0, 1.0, 1.0])
        modelNode.SetAndObservePolyData(transform_polydata(case.modelLps.polydata, toShiftedRas @ lpsToRas))
        modelNode.CreateDefaultDisplayNodes()
        placement = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "Synthetic model placement")
        shift = np.eye(4)
        shift[:3, 3] = offsetRas
        slicer.util.updateTransformMatrixFromArray(placement, shift)
        modelNode.SetAndObserveTransformNodeID(placement.GetID())

        isocenterNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "C-arm isocentre")
        isocenterNode.AddControlPoint(*[float(c) for c in rasFromLps(case.isocenterLps)], "isocentre")

        case.modelNode = modelNode
        case.modelTransformNode = placement
        case.fluoroVolume = fluoroVolume
        case.browserNode = self.browserForVolume(fluoroVolume)
        case.isocenterNode = isocenterNode
        return case


#
# TAVIRegistrationTest
#

class TAVIRegistrationTest(ScriptedLoadableModuleTest):
    """Self-test on the synthetic case, made by the library and loaded through the DICOM database.

    Run it with Testing/run_slicer_selftest.sh (headless), with CTest in a build tree, or with the
    module's Reload and Test button (developer mode).
    """

    TESTS = ("test_ProjectionThroughDICOM", "test_ModulePanel", "test_SegmentationVolume", "test_RegistrationMetrics")

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        for name in self.TESTS:
            self.setUp()
            try:
                getattr(self, name)()
            except unittest.SkipTest as exc:
                self.delayDisplay("%s skipped: %s" % (name, exc))

    def _withCase(self, check):
        """Run ``check(logic, case)`` on the synthetic case in a temporary DICOM database."""
        from DICOMLib import DICOMUtils

        logic = TAVIRegistrationLogic()
        logic.ensurePythonPackages(ask=False)
        with tempfile.TemporaryDirectory(prefix="TAVIRegistrationTest-") as work:
            with DICOMUtils.TemporaryDICOMDatabase(os.path.join(work, "database")):
                case = logic.loadSyntheticCase(os.path.join(work, "case"))
                try:
                    check(logic, case)
                finally:
                    logic.close()

    def test_ProjectionThroughDICOM(self):
        """Frame volume -> DICOM file -> geometry -> projection volume, camera at the source, export."""
        self.delayDisplay("Projection of the synthetic case through the DICOM database")
        self._withCase(self._checkProjection)
        self.delayDisplay("Projection test passed")

    def _checkProjection(self, logic, case):
        from TAVIRegistrationLib.projection import render_projection

        volume = case.fluoroVolume
        self.assertEqual(logic.numberOfFrames(volume), len(case.geometries))
        frameIndex = 1
        read = logic.frameGeometry(volume, frameIndex)
        expected = case.geometries[frameIndex]
        self.assertAlmostEqual(read.primary_angle_deg, expected.primary_angle_deg, places=4)
        self.assertAlmostEqual(read.secondary_angle_deg, expected.secondary_angle_deg, places=4)
        self.assertAlmostEqual(read.sid_mm, expected.sid_mm, places=4)
        self.assertAlmostEqual(read.sod_mm, expected.sod_mm, places=4)

        result = logic.renderProjection(case.modelNode, volume, frameIndex=frameIndex,
                                        isocenterNode=case.isocenterNode)
        self.assertEqual(case.browserNode.GetSelectedItemNumber(), frameIndex)
        self.assertFalse([w for w in result.warnings if "isocentre" in w], result.warnings)
        np.testing.assert_allclose(result.geometry.isocenter_lps, case.isocenterLps, atol=1e-6)

        # the projection volume has the frame's size and pixel grid
        projectionVolume = result.volumeNode
        self.assertEqual(projectionVolume.GetImageData().GetDimensions(), (case.cols, case.rows, 1))
        frameMatrix, projectionMatrix = vtk.vtkMatrix4x4(), vtk.vtkMatrix4x4()
        volume.GetIJKToRASMatrix(frameMatrix)
        projectionVolume.GetIJKToRASMatrix(projectionMatrix)
        np.testing.assert_allclose(slicer.util.arrayFromVTKMatrix(projectionMatrix),
                                   slicer.util.arrayFromVTKMatrix(frameMatrix))

        # it matches the library's own projection of the model (LPS) within a pixel
        nodeMask = slicer.util.arrayFromVolume(projectionVolume)[0] > 0
        direct = render_projection(case.modelLps.polydata, case.geometries[frameIndex], with_depth=False).mask > 0
        self.assertTrue(direct.any())
        self.assertTrue(masksAgreeWithinOnePixel(nodeMask, direct))
        dice = 2.0 * np.count_nonzero(nodeMask & direct) / (np.count_nonzero(nodeMask) + np.count_nonzero(direct))
        self.assertGreater(dice, 0.97)

        # the camera is at the X-ray source, looking at the detector centre
        camera = result.cameraNode
        geometry = result.geometry
        np.testing.assert_allclose(camera.GetPosition(), rasFromLps(geometry.source_lps), atol=1e-4)
        np.testing.assert_allclose(camera.GetFocalPoint(), rasFromLps(geometry.detector_center_lps), atol=1e-4)
        expectedAngle = math.degrees(2.0 * math.atan(geometry.rows * geometry.pixel_spacing_mm[0] / 2.0 / geometry.sid_mm))
        self.assertAlmostEqual(camera.GetViewAngle(), expectedAngle, places=4)

        # the ROI as a Markups ROI in the slice views and back: the same pixels
        roi = result.frameProjection.default_roi
        roiNode = logic.updateMarkupsRoi(None, roi, volume)
        self.assertEqual(logic.roiFromMarkupsRoi(roiNode, volume), tuple(roi))

        # export: the projection PNG is the mask on the frame's grid
        with tempfile.TemporaryDirectory(prefix="TAVIRegistrationExport-") as out:
            files = logic.exportProjection(out, fluoroVolume=volume, captureThreeDView=False)
            self.assertEqual(sorted(os.path.basename(str(f)) for f in files),
                             ["overlay.png", "projection.json", "projection.png"])
            from PIL import Image

            exported = np.asarray(Image.open(os.path.join(out, "projection.png"))) > 0
            np.testing.assert_array_equal(exported, nodeMask)
            with open(os.path.join(out, "projection.json"), encoding="utf-8") as fh:
                self.assertEqual(json.load(fh)["frame"], frameIndex)

    def test_ModulePanel(self):
        """The panel: unavailable steps disabled with their reason, frame slider, ROI editor after rendering."""
        self.delayDisplay("Module panel")
        widget = slicer.modules.taviregistration.widgetRepresentation().self()
        widget.enter()
        for step, button in (("segment", widget.ui.segmentButton), ("register", widget.ui.registerButton)):
            reason = widget.logic.stepAvailability(step)
            if reason:
                self.assertFalse(button.enabled)
                self.assertEqual(button.toolTip, reason)
        self.assertIsNotNone(widget.roiEditor, "the ROI editor is not in the panel")

        def check(logic, case):
            from TAVIRegistrationLib.fluoro import read_fluoro

            parameterNode = widget.logic.getParameterNode()
            parameterNode.model = case.modelNode
            parameterNode.fluoroVolume = case.fluoroVolume
            parameterNode.isocenter = case.isocenterNode
            slicer.app.processEvents()
            self.assertEqual(widget.ui.frameSlider.maximum, len(case.geometries) - 1)
            self.assertTrue(widget.ui.mostContrastButton.enabled)
            index, note = widget.logic.mostOpacifiedFrame(case.fluoroVolume)
            self.assertEqual(index, read_fluoro(case.dicomPath).most_opacified_frame())
            self.assertTrue(note.startswith("--frame auto: frame %d of" % index))
            widget.ui.mostContrastButton.click()
            slicer.app.processEvents()
            self.assertEqual(case.browserNode.GetSelectedItemNumber(), index)
            self.assertEqual(widget.ui.frameSlider.value, index)
            widget.ui.frameSlider.value = 2
            self.assertEqual(case.browserNode.GetSelectedItemNumber(), 2)
            self.assertTrue(widget.ui.renderProjectionButton.enabled)
            widget.onRenderProjectionButton()
            result = widget.logic.lastProjection
            self.assertIsNotNone(result)
            self.assertEqual(result.frameIndex, 2)
            self.assertEqual(tuple(widget.roiEditor.view.imageShape()), (case.rows, case.cols))
            self.assertEqual(tuple(parameterNode.roi), tuple(result.frameProjection.default_roi))
            self.assertEqual(parameterNode.projectionVolume.GetID(), result.volumeNode.GetID())
            self.assertTrue(widget.ui.exportButton.enabled)
            widget.logic.close()

        self._withCase(check)
        self.delayDisplay("Module panel test passed")

    def test_SegmentationVolume(self):
        """DRU-Net on a frame of the synthetic case: a 0/1 volume on the frame's grid, equal to the library's."""
        logic = TAVIRegistrationLogic()
        reason = logic.stepAvailability("segment")
        if reason:
            self.skipTest(reason)

        def check(logic, case):
            from TAVIRegistrationLib.fluoro import read_fluoro
            from TAVIRegistrationLib.segmentation import segment_frame

            outcome = logic.segmentFrame(case.fluoroVolume, frameIndex=1, forceCpu=True)
            volume = outcome.volumeNode
            self.assertEqual(volume.GetImageData().GetDimensions(), (case.cols, case.rows, 1))
            self.assertEqual(volume.GetAttribute("TAVIRegistration.role"), "segmentation")
            array = slicer.util.arrayFromVolume(volume)[0]
            direct = segment_frame(read_fluoro(case.dicomPath).frame(1), device="cpu",  # fluoroSeries: header only
                                   fov_hint=outcome.result.fov_used).mask
            np.testing.assert_array_equal(array > 0, direct > 0)

        self._withCase(check)

    def test_RegistrationMetrics(self):
        """Registration of the synthetic frame: better overlap than the unregistered projection (skipped
        while the registration step is not available)."""
        logic = TAVIRegistrationLogic()
        reason = logic.stepAvailability("register")
        if reason:
            self.skipTest(reason)

        def check(logic, case):
            frameIndex = 0
            projection = logic.renderProjection(case.modelNode, case.fluoroVolume, frameIndex=frameIndex,
                                                isocenterNode=case.isocenterNode)
            truth = case.truthMasks[frameIndex] > 0
            before = projection.frameProjection.projection.mask > 0
            diceBefore = 2.0 * np.count_nonzero(before & truth) / (np.count_nonzero(before) + np.count_nonzero(truth))
            registered = logic.registerFrame(case.modelNode, case.fluoroVolume, frameIndex=frameIndex,
                                             isocenterNode=case.isocenterNode, fixedMask=case.truthMasks[frameIndex])
            metrics = registered.metrics
            for name in ("dice", "recall", "precision"):
                self.assertIn(name, metrics)
            self.assertGreater(metrics["dice"], diceBefore)
            self.assertGreaterEqual(metrics["dice"], 0.71)  # the paper's median registration Dice

        self._withCase(check)
