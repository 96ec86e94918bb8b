"""The 3D Slicer module's Logic and self-test, run on Slicer's own core libraries (``slicer-core``).

The module file ``TAVIRegistration/TAVIRegistration.py`` is imported as Slicer imports it, and its
``TAVIRegistrationLogic`` drives a real ``vtkMRMLScene`` with Slicer's module logics: the synthetic
case is written as an XA DICOM file, read by vtkITK into a sequence of frames the way Slicer's DICOM
image-sequence plugin loads it, the vessel model is a RAS model node under a parent transform, and
every result is compared with what the library computes on the same inputs. What ``slicer-core``
lacks (the template base classes, the parameter-node wrapper, ``slicer.app``, the DICOM database)
comes from ``Testing/slicer_standin.py``. The Qt panel needs the Slicer application: its test runs
with ``Testing/run_slicer_selftest.sh``.
"""

import contextlib
import importlib.util
import math
import sys
import unittest
from pathlib import Path

import numpy as np
import pytest

if sys.version_info < (3, 10):
    pytest.skip("slicer-core needs Python 3.10 or later", allow_module_level=True)
pytest.importorskip("slicer_core", reason="slicer-core (3D Slicer's core libraries) is not installed; it has "
                                          "wheels for CPython 3.10-3.13 only: the Slicer Logic suite is skipped")

import slicer  # noqa: E402  (slicer-core)
import slicer_standin  # noqa: E402
import vtk  # noqa: E402

from TAVIRegistrationLib.fluoro import read_fluoro, write_fluoro_dicom  # noqa: E402
from TAVIRegistrationLib.geometry import CArmGeometry  # noqa: E402
from TAVIRegistrationLib.networks.weights import installed  # noqa: E402
from TAVIRegistrationLib.pipeline import RegistrationPipeline  # noqa: E402
from TAVIRegistrationLib.segmentation import segment_frame  # noqa: E402

MODULE_FILE = Path(__file__).resolve().parents[1] / "TAVIRegistration" / "TAVIRegistration.py"
needs_networks = pytest.mark.skipif(not installed("segmentation") or not installed("registration"),
                                    reason="the shipped networks are not in Resources/Models")


@pytest.fixture
def module(tmp_path):
    """The module file imported on a fresh scene (the stand-ins installed first, as Slicer would have them)."""
    slicer_standin.install(tmp_path / "slicer-temp")
    spec = importlib.util.spec_from_file_location("TAVIRegistration", MODULE_FILE)
    loaded = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loaded)
    return loaded


@pytest.fixture
def case(module, tmp_path):
    """The synthetic case loaded through the DICOM database: (logic, case)."""
    from DICOMLib import DICOMUtils

    logic = module.TAVIRegistrationLogic()
    with DICOMUtils.TemporaryDICOMDatabase(str(tmp_path / "database")):
        loaded = logic.loadSyntheticCase(str(tmp_path / "case"))
        yield logic, loaded
        logic.close()


def frame_matrix(volume):
    matrix = vtk.vtkMatrix4x4()
    volume.GetIJKToRASMatrix(matrix)
    return slicer.util.arrayFromVTKMatrix(matrix)


def library_pipeline(logic, case):
    """The library's pipeline on the same inputs as the Logic's: the model as the Logic converts it,
    the DICOM file with its pixels, the isocentre of the point list."""
    return RegistrationPipeline(logic.surfaceModelFromNode(case.modelNode), read_fluoro(case.dicomPath),
                                isocenter_lps=logic.isocenterLps(case.isocenterNode))


def dice(a, b):
    a, b = np.asarray(a) > 0, np.asarray(b) > 0
    return 2.0 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))


# ------------------------------------------------------------------------------------------------
# The module's own self-test, unchanged
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["test_ProjectionThroughDICOM", "test_SegmentationVolume",
                                  "test_RegistrationMetrics"])
def test_self_test_method_passes(module, name):
    if name != "test_ProjectionThroughDICOM" and not (installed("segmentation") and installed("registration")):
        pytest.skip("the shipped networks are not in Resources/Models")
    result = unittest.TestResult()
    module.TAVIRegistrationTest(name).run(result)
    problems = [text for _test, text in result.errors + result.failures] + [why for _test, why in result.skipped]
    assert result.testsRun == 1 and not problems, "\n".join(problems)


# ------------------------------------------------------------------------------------------------
# Loading: frames through vtkITK as a sequence, the model in RAS under a parent transform
# ------------------------------------------------------------------------------------------------
def test_frames_are_the_dicom_pixels_in_a_sequence(case):
    logic, loaded = case
    volume = loaded.fluoroVolume
    pixels = read_fluoro(loaded.dicomPath).frames
    assert logic.numberOfFrames(volume) == len(pixels) == 3
    for index in (2, 0, 1):
        np.testing.assert_array_equal(logic.frameArray(volume, index), pixels[index])
        assert loaded.browserNode.GetSelectedItemNumber() == index
    # the DICOM image-sequence plugin's frame placement: column i toward -R, row j toward -A, 0.8 mm pixels
    np.testing.assert_allclose(frame_matrix(volume), np.diag([-0.8, -0.8, 1.0, 1.0]))
    assert logic.dicomFileForVolume(volume) == loaded.dicomPath


def test_model_from_an_lps_file_under_a_parent_transform_lands_where_a_person_expects(module, tmp_path):
    """A sphere written at LPS (30, 0, 0) in an LPS file is read by Slicer's models logic into RAS
    (-30, 0, 0); a parent transform moving it 20 mm toward the head (RAS +S) puts it at LPS (30, 0, 20).
    In an AP view (SID 1000, SOD 750, 0.5 mm pixels) the patient's left is on the image's right and the
    head at the top: the sphere's shadow is 30 * 4/3 / 0.5 = 80 px right of the centre and
    20 * 4/3 / 0.5 = 53.3 px above it."""
    from DICOMLib import DICOMUtils

    sphere = vtk.vtkSphereSource()
    sphere.SetCenter(30.0, 0.0, 0.0)
    sphere.SetRadius(10.0)
    sphere.SetThetaResolution(64)
    sphere.SetPhiResolution(64)
    writer = vtk.vtkSTLWriter()
    writer.SetInputConnection(sphere.GetOutputPort())
    writer.SetFileName(str(tmp_path / "sphere.stl"))
    writer.Write()
    modelNode = slicer.modules.models.logic().AddModel(str(tmp_path / "sphere.stl"),
                                                       slicer.vtkMRMLStorageNode.CoordinateSystemLPS)
    bounds = [0.0] * 6
    modelNode.GetPolyData().GetBounds(bounds)
    np.testing.assert_allclose([(bounds[0] + bounds[1]) / 2, (bounds[2] + bounds[3]) / 2,
                                (bounds[4] + bounds[5]) / 2], [-30.0, 0.0, 0.0], atol=1e-3)
    up = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "20 mm up")
    shift = np.eye(4)
    shift[2, 3] = 20.0
    slicer.util.updateTransformMatrixFromArray(up, shift)
    modelNode.SetAndObserveTransformNodeID(up.GetID())

    logic = module.TAVIRegistrationLogic()
    surface = logic.surfaceModelFromNode(modelNode)
    np.testing.assert_allclose(surface.center, [30.0, 0.0, 20.0], atol=1e-3)

    rows = cols = 512
    geometry = CArmGeometry(0.0, 0.0, 1000.0, 750.0, (0.5, 0.5), rows, cols)
    frames = np.full((1, rows, cols), 128, dtype=np.uint8)
    (tmp_path / "run").mkdir()
    write_fluoro_dicom(tmp_path / "run" / "ap.dcm", frames, geometry)
    isocenter = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "isocentre")
    isocenter.AddControlPoint(0.0, 0.0, 0.0)
    with DICOMUtils.TemporaryDICOMDatabase(str(tmp_path / "database")):
        DICOMUtils.importDicom(str(tmp_path / "run"))
        volume = slicer.mrmlScene.GetNodeByID(
            DICOMUtils.loadSeriesByUID([str(read_fluoro(tmp_path / "run" / "ap.dcm").header.SeriesInstanceUID)])[0])
        result = logic.renderProjection(modelNode, volume, frameIndex=0, isocenterNode=isocenter)
        logic.close()
    mask = slicer.util.arrayFromVolume(result.volumeNode)[0] > 0
    rowsOn, colsOn = np.nonzero(mask)
    centre = ((cols - 1) / 2.0, (rows - 1) / 2.0)
    assert colsOn.mean() - centre[0] == pytest.approx(80.0, abs=1.0)
    assert centre[1] - rowsOn.mean() == pytest.approx(20.0 * 1000.0 / 750.0 / 0.5, abs=1.0)


def test_segmentation_node_projects_like_the_model_node(case):
    """A segmentation holding the model's surface as a closed-surface segment gives the same projection."""
    logic, loaded = case
    segmentationNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "vessels")
    segmentationNode.CreateDefaultDisplayNodes()
    segmentationNode.AddSegmentFromClosedSurfaceRepresentation(loaded.modelNode.GetPolyData(), "root")
    segmentationNode.SetAndObserveTransformNodeID(loaded.modelTransformNode.GetID())
    fromModel = logic.renderProjection(loaded.modelNode, loaded.fluoroVolume, frameIndex=1,
                                       isocenterNode=loaded.isocenterNode)
    modelMask = slicer.util.arrayFromVolume(fromModel.volumeNode)[0].copy()
    fromSegmentation = logic.renderProjection(segmentationNode, loaded.fluoroVolume, frameIndex=1,
                                              isocenterNode=loaded.isocenterNode)
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(fromSegmentation.volumeNode)[0], modelMask)


# ------------------------------------------------------------------------------------------------
# Projection, geometry, ROI, export
# ------------------------------------------------------------------------------------------------
def test_render_projection_equals_the_library_render(case):
    logic, loaded = case
    result = logic.renderProjection(loaded.modelNode, loaded.fluoroVolume, frameIndex=2,
                                    isocenterNode=loaded.isocenterNode)
    expected = library_pipeline(logic, loaded).project(2).projection.mask
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(result.volumeNode)[0], expected)
    np.testing.assert_allclose(frame_matrix(result.volumeNode), frame_matrix(loaded.fluoroVolume))
    assert result.volumeNode.GetAttribute("TAVIRegistration.role") == "projection"
    assert result.volumeNode.GetAttribute("TAVIRegistration.frameIndex") == "2"


def test_frame_geometry_and_most_opacified_frame(case):
    logic, loaded = case
    for index, expected in enumerate(loaded.geometries):
        read = logic.frameGeometry(loaded.fluoroVolume, index)
        assert (read.primary_angle_deg, read.secondary_angle_deg) == pytest.approx(
            (expected.primary_angle_deg, expected.secondary_angle_deg), abs=1e-4)
        assert (read.sid_mm, read.sod_mm) == pytest.approx((1000.0, 750.0))
    index, note = logic.mostOpacifiedFrame(loaded.fluoroVolume)
    assert index == read_fluoro(loaded.dicomPath).most_opacified_frame()
    assert note.startswith("--frame auto: frame %d of 3" % index)


def test_markups_roi_round_trip_covers_the_frame_pixels(case):
    logic, loaded = case
    volume = loaded.fluoroVolume
    roi = (40, 60, 100, 50)
    roiNode = logic.updateMarkupsRoi(None, roi, volume)
    # frame pixel (x, y) sits at RAS (-0.8 x, -0.8 y): the box spans x 39.5-139.5, y 59.5-109.5 pixels
    centre, radius = [0.0] * 3, [0.0] * 3
    roiNode.GetXYZ(centre)
    roiNode.GetRadiusXYZ(radius)
    np.testing.assert_allclose(centre[:2], [-0.8 * 89.5, -0.8 * 84.5])
    np.testing.assert_allclose(radius[:2], [0.8 * 50.0, 0.8 * 25.0])
    assert logic.roiFromMarkupsRoi(roiNode, volume) == roi
    roiNode.SetXYZ(centre[0] - 8.0, centre[1], centre[2])  # 8 mm toward -R: 10 pixels to the right
    assert logic.roiFromMarkupsRoi(roiNode, volume) == (50, 60, 100, 50)


def test_export_projection_writes_the_projection_and_its_summary(case, tmp_path):
    import json

    from PIL import Image

    logic, loaded = case
    result = logic.renderProjection(loaded.modelNode, loaded.fluoroVolume, frameIndex=0,
                                    isocenterNode=loaded.isocenterNode)
    files = logic.exportProjection(str(tmp_path / "export"), roi=(10, 20, 120, 100), captureThreeDView=False)
    assert sorted(Path(f).name for f in files) == ["overlay.png", "projection.json", "projection.png"]
    exported = np.asarray(Image.open(tmp_path / "export" / "projection.png"))
    np.testing.assert_array_equal(exported, result.frameProjection.projection.mask * 255)
    summary = json.loads((tmp_path / "export" / "projection.json").read_text())
    assert summary["format"] == 1 and summary["registered"] is False
    assert summary["frame"] == 0 and summary["roi"] == [10, 20, 120, 100] and summary["roi_source"] == "drawn"
    assert summary["geometry"]["primary_angle_deg"] == pytest.approx(30.0)
    assert summary["isocenter_source"] == "given"


def test_the_three_front_ends_write_one_projection_export(case, tmp_path, capsys):
    """The Slicer Logic's Export, the Qt viewer's File > Export and ``tavireg project --export`` on the
    same case write the same files with the same JSON keys (``export.ProjectionExport``)."""
    import json
    import os

    pytest.importorskip("PyQt5")
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from TAVIRegistrationLib.cli import main
    from TAVIRegistrationLib.export import PROJECTION_FILES
    from TAVIRegistrationLib.mesh import save_model
    from TAVIRegistrationLib.viewer import window as viewer
    from TAVIRegistrationLib.viewer.qt_compat import qt

    logic, loaded = case
    logic.renderProjection(loaded.modelNode, loaded.fluoroVolume, frameIndex=0, isocenterNode=loaded.isocenterNode)
    logic.exportProjection(str(tmp_path / "slicer"), captureThreeDView=False)

    model = save_model(loaded.modelLps.polydata, tmp_path / "model.vtk")
    iso = tuple(float(c) for c in loaded.isocenterLps)
    assert main(["project", "--model", str(model), "--fluoro", loaded.dicomPath, "--frame", "0",
                 "--isocenter=" + ",".join(repr(c) for c in iso), "--out", str(tmp_path / "cli.png"),
                 "--export", str(tmp_path / "cli")]) == 0, capsys.readouterr().err

    app = qt.QApplication.instance() or qt.QApplication(["test"])
    window = viewer.ViewerWindow(interactive=False)
    try:
        window.openCase(model, loaded.dicomPath, viewer.CaseOptions(isocenter_lps=iso), frame=0)
        assert window.waitIdle(120) and window.frameProjection is not None, window.errors
        assert window.exportTo(tmp_path / "viewer"), window.errors
    finally:
        window.close()
        app.processEvents()

    records = {}
    for front_end in ("slicer", "cli", "viewer"):
        assert sorted(os.listdir(tmp_path / front_end)) == sorted(PROJECTION_FILES), front_end
        records[front_end] = json.loads((tmp_path / front_end / "projection.json").read_text())
        assert records[front_end]["format"] == 1 and records[front_end]["frame"] == 0
    keys = {front_end: sorted(record) for front_end, record in records.items()}
    assert keys["slicer"] == keys["cli"] == keys["viewer"]
    assert sorted(records["slicer"]["overlay"]) == sorted(records["cli"]["overlay"]) == sorted(records["viewer"]["overlay"])


# ------------------------------------------------------------------------------------------------
# Segmentation and registration: the same results as the library's
# ------------------------------------------------------------------------------------------------
@needs_networks
@pytest.mark.parametrize("renderFirst", [False, True], ids=["alone", "after-projection"])
def test_segment_frame_equals_the_library(case, renderFirst):
    logic, loaded = case
    if renderFirst:  # the pipeline of the projection (header only) is then there
        logic.renderProjection(loaded.modelNode, loaded.fluoroVolume, frameIndex=1, isocenterNode=loaded.isocenterNode)
    outcome = logic.segmentFrame(loaded.fluoroVolume, frameIndex=1, forceCpu=True)
    expected = segment_frame(read_fluoro(loaded.dicomPath).frame(1), device="cpu", fov_hint=outcome.result.fov_used)
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(outcome.volumeNode)[0], expected.mask)
    assert expected.mask.any()


def assert_same_registration(outcome, expected):
    np.testing.assert_allclose(outcome.affine, expected.matrix, atol=1e-6)
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(outcome.volumeNode)[0], expected.registered_mask)
    assert outcome.registration.fixed_source == expected.fixed_source
    assert outcome.metrics == pytest.approx(expected.metrics)


@needs_networks
def test_register_frame_with_a_given_mask_equals_the_library_pipeline(case):
    logic, loaded = case
    truth = loaded.truthMasks[0]
    roi = (60, 50, 150, 160)
    outcome = logic.registerFrame(loaded.modelNode, loaded.fluoroVolume, frameIndex=0, roi=roi,
                                  isocenterNode=loaded.isocenterNode, fixedMask=truth, forceCpu=True)
    expected = library_pipeline(logic, loaded).register(0, roi, fixed_mask=truth, device="cpu")
    assert_same_registration(outcome, expected)
    assert expected.fixed_source == "given"
    assert dice(expected.registered_mask, truth) > dice(expected.projection.projection.mask, truth)

    # the transform node: the ROI pixel (x, y) of the moving image lands on frame pixel M (x, y)
    transform = slicer.util.arrayFromTransformMatrix(outcome.transformNode)
    frame = frame_matrix(loaded.fluoroVolume)
    for x, y in ((0.0, 0.0), (149.0, 0.0), (30.0, 120.0)):
        movingRas = frame @ np.array([x + roi[0], y + roi[1], 0.0, 1.0])
        mapped = outcome.affine @ np.array([x, y, 1.0])
        np.testing.assert_allclose(transform @ movingRas, frame @ np.array([mapped[0], mapped[1], 0.0, 1.0]),
                                   atol=1e-6)
    assert outcome.transformNode.GetAttribute("TAVIRegistration.role") == "registration"


@needs_networks
def test_register_frame_whole_model_turns_the_contrast_front_off(case):
    """``wholeModel`` (the panel's "Whole model" box) is the pipeline's ``contrast_front`` turned off,
    call by call: on a frame whose lower half shows no contrast the front leaves part of the
    projection out, the whole model none, and each equals the library's pipeline with the front on
    or off."""
    logic, loaded = case
    roi = (60, 50, 150, 160)
    truth = loaded.truthMasks[0].copy()
    truth[roi[1] + roi[3] // 2:] = 0  # the lower half of the ROI shows no contrast
    for wholeModel in (True, False, True):
        outcome = logic.registerFrame(loaded.modelNode, loaded.fluoroVolume, frameIndex=0, roi=roi,
                                      isocenterNode=loaded.isocenterNode, fixedMask=truth, forceCpu=True,
                                      method="cnn+refine", wholeModel=wholeModel)
        pipeline = library_pipeline(logic, loaded)
        pipeline.contrast_front = not wholeModel
        expected = pipeline.register(0, roi, fixed_mask=truth, method="cnn+refine", device="cpu")
        assert_same_registration(outcome, expected)
        hidden = outcome.registration.result.metrics["hidden_share"]
        assert hidden == 0.0 if wholeModel else hidden > 0.1, (wholeModel, hidden)


# ------------------------------------------------------------------------------------------------
# The parameter node
# ------------------------------------------------------------------------------------------------
def test_parameter_node_holds_the_inputs_and_drives_the_projection(case):
    logic, loaded = case
    parameters = logic.getParameterNode()
    assert (parameters.frameIndex, parameters.overlayOpacity, tuple(parameters.roi)) == (0, 0.5, (0, 0, 0, 0))
    assert parameters.model is None and parameters.placeCamera is True
    parameters.model = loaded.modelNode
    parameters.fluoroVolume = loaded.fluoroVolume
    parameters.isocenter = loaded.isocenterNode
    parameters.frameIndex = 2
    again = logic.getParameterNode()  # another wrapper of the same MRML node
    assert again.model.GetID() == loaded.modelNode.GetID() and again.frameIndex == 2
    with pytest.raises(ValueError):
        again.overlayOpacity = 1.5
    result = logic.renderProjectionUsingParameterNode(again)
    assert result.frameIndex == 2 and loaded.browserNode.GetSelectedItemNumber() == 2
    camera = result.cameraNode
    np.testing.assert_allclose(camera.GetPosition(), loaded.geometries[2].with_isocenter(
        loaded.isocenterLps).source_lps * np.array([-1.0, -1.0, 1.0]), atol=1e-4)
    assert camera.GetViewAngle() == pytest.approx(math.degrees(2.0 * math.atan(256 * 0.8 / 2.0 / 1000.0)))


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The demo case: a phantom patient's vessel model (an LPS .vtk file) and its XA runs."""
    from TAVIRegistrationLib.synthetic.demo import make_demo_case

    return make_demo_case(tmp_path_factory.mktemp("demo"))


@contextlib.contextmanager
def demo_in_scene(demo, folder):
    """(model node, isocentre point list, run volume) of the demo case: its LPS .vtk file read by Slicer's
    models logic into a RAS node, its run imported into a DICOM database and loaded as a sequence."""
    from DICOMLib import DICOMUtils

    modelNode = slicer.modules.models.logic().AddModel(str(demo.model_path),
                                                       slicer.vtkMRMLStorageNode.CoordinateSystemLPS)
    isocenter = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "isocentre")
    isocenter.AddControlPoint(*[float(c) for c in np.array(demo.isocenter_lps) * [-1.0, -1.0, 1.0]])
    with DICOMUtils.TemporaryDICOMDatabase(str(folder / "database")):
        DICOMUtils.importDicom(str(demo.fluoro_path.parent))
        seriesUID = str(read_fluoro(demo.fluoro_path, load_pixels=False).header.SeriesInstanceUID)
        yield modelNode, isocenter, slicer.mrmlScene.GetNodeByID(DICOMUtils.loadSeriesByUID([seriesUID])[0])


@needs_networks
def test_register_frame_segmenting_the_demo_frame_equals_the_library_pipeline(module, demo, tmp_path):
    """Without a given mask the Logic segments the frame's DICOM pixels: the demo case's model file read
    by Slicer's models logic (LPS file, RAS node), its run loaded as a sequence, registered by default."""
    from TAVIRegistrationLib.mesh import load_model

    logic = module.TAVIRegistrationLogic()
    with demo_in_scene(demo, tmp_path) as (modelNode, isocenter, volume):
        outcome = logic.registerFrame(modelNode, volume, frameIndex=demo.frame_index, isocenterNode=isocenter,
                                      forceCpu=True)
        logic.close()
    model = logic.surfaceModelFromNode(modelNode)
    np.testing.assert_allclose(model.bounds, load_model(demo.model_path).bounds, atol=1e-4)  # LPS again
    with RegistrationPipeline(model, read_fluoro(demo.fluoro_path), isocenter_lps=demo.isocenter_lps) as pipeline:
        expected = pipeline.register(demo.frame_index, device="cpu")
    assert expected.fixed_source == "segmentation" and expected.valid
    assert_same_registration(outcome, expected)


@needs_networks
def test_register_run_plays_the_overlay_with_the_frames(module, demo, tmp_path):
    """registerRun over the demo case's three-frame run: the registered projections and the affines are
    sequences in the run's browser, so that showing frame k shows frame k's result; the results are
    the library's ``register_run`` on the same inputs, failed frames included."""
    logic = module.TAVIRegistrationLogic()
    with demo_in_scene(demo, tmp_path) as (modelNode, isocenter, volume):
        seen = []
        outcome = logic.registerRun(modelNode, volume, isocenterNode=isocenter, forceCpu=True,
                                    progress=lambda fraction, message: seen.append(fraction))
        browser = logic.browserForVolume(volume)
        with RegistrationPipeline(logic.surfaceModelFromNode(modelNode), read_fluoro(demo.fluoro_path),
                                  isocenter_lps=demo.isocenter_lps) as pipeline:
            expected = pipeline.register_run(range(3), device="cpu")
        assert outcome.failedFrames == sorted(expected.failures) and len(expected.registrations) >= 1
        assert seen == sorted(seen) and len(seen) >= 3
        maskProxy = browser.GetProxyNode(outcome.maskSequence)
        transformProxy = browser.GetProxyNode(outcome.transformSequence)
        frame = frame_matrix(volume)
        for reg in expected.registrations:
            logic.selectFrame(volume, reg.frame_index)
            np.testing.assert_array_equal(slicer.util.arrayFromVolume(maskProxy)[0], reg.registered_mask)
            moving = module.roiIjkToRas(frame, reg.roi)
            np.testing.assert_allclose(slicer.util.arrayFromTransformMatrix(transformProxy),
                                       module.rasTransformFromAffine(reg.matrix, frame, moving), atol=1e-6)
            assert maskProxy.GetAttribute("TAVIRegistration.failed") == ""
        for index, why in expected.failures.items():
            logic.selectFrame(volume, index)
            assert maskProxy.GetAttribute("TAVIRegistration.failed") == why
            assert not slicer.util.arrayFromVolume(maskProxy).any()
        logic.close()


@needs_networks
def test_register_run_where_no_frame_registers_is_an_error(case):
    """The synthetic sample case with an ROI in a corner the model's projection does not reach: every
    frame fails, registerRun raises one InputError naming the first reason, and adds no sequence."""
    from TAVIRegistrationLib.errors import InputError

    logic, loaded = case
    before = len(slicer.util.getNodesByClass("vtkMRMLSequenceNode"))
    with pytest.raises(InputError, match=r"no frame of the run registered \(frame 0: .*no part of the model"):
        logic.registerRun(loaded.modelNode, loaded.fluoroVolume, roi=(0, 0, 12, 12), isocenterNode=loaded.isocenterNode,
                          forceCpu=True)
    assert len(slicer.util.getNodesByClass("vtkMRMLSequenceNode")) == before


@needs_networks
def test_cancelling_a_run_registration_adds_nothing(module, demo, tmp_path):
    """Cancel (the progress callback raising OperationCancelled, as the panel's Cancel button makes it)
    stops registerRun after the frame in progress; no sequence is added to the scene."""
    logic = module.TAVIRegistrationLogic()
    with demo_in_scene(demo, tmp_path) as (modelNode, isocenter, volume):
        before = len(slicer.util.getNodesByClass("vtkMRMLSequenceNode"))
        messages = []

        def progress(fraction, message):
            messages.append(message)
            if message.startswith("Registered frame 1 "):
                raise module.OperationCancelled(message)

        with pytest.raises(module.OperationCancelled):
            logic.registerRun(modelNode, volume, isocenterNode=isocenter, forceCpu=True, progress=progress)
        assert not any(m.startswith("Registered frame 2 ") for m in messages)
        assert len(slicer.util.getNodesByClass("vtkMRMLSequenceNode")) == before
        logic.close()
