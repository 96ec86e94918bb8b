"""The small synthetic case of the 3D Slicer module: its Sample Data entry and its self-test.

A toy aortic root (a curved tube, radius 8 mm, with a sphere, radius 14 mm, at one end; LPS mm) and
a three-frame XA run (a short rotational run, DYNAMIC angles) in which the vessels are shifted by a
few mm from where the model and the nominal isocentre put them (patient motion): the projection is
slightly off, as registration expects. Everything is made here by the library, deterministically:
the XA file has fixed UIDs and date, so its bytes, and ``SAMPLE_SHA256``, are the same on every
machine with the same pydicom and the same OpenGL rasteriser (the frames hold the model's rendered
silhouette; ``Testing/test_sample_case.py`` checks it; the module checks a freshly written file
against it and logs a mismatch, which another GPU driver may cause by a few edge pixels).

(The realistic case, ``demo.make_demo_case``, is a whole phantom patient; this one is small enough
to be written, imported into the DICOM database and loaded in a few seconds by a self-test.)
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import List, Tuple

import numpy as np

#: (primary, secondary) angles of the run's three frames
SAMPLE_ANGLES = ((30.0, 10.0), (36.0, 12.0), (-25.0, -8.0))
SAMPLE_SEED = 2019
SAMPLE_FILE = "synthetic_xa.dcm"
#: the intra-operative shift of the vessels, LPS mm
SAMPLE_MOTION_LPS = (3.0, 2.0, -4.0)
#: UIDs under pydicom's root (1.2.826.0.1.3680043.8.498) made from fixed text, and a fixed date
_UID_SOURCE = "TAVIRegistration sample case"
_WHEN = datetime(2026, 1, 1, 12, 0, 0)
#: SHA256 of SAMPLE_FILE as ``write_sample_case`` writes it (seed SAMPLE_SEED, 256 x 256)
SAMPLE_SHA256 = "41cbca37bc6865fdf8cabf4a9650630c66f27b2095688f860899f14de9036368"


@dataclass
class SampleCase:
    dicom_path: Path
    sha256: str
    series_uid: str
    model: object  # mesh.SurfaceModel, LPS mm
    geometries: List[object]  # geometry.CArmGeometry per frame (nominal isocentre)
    isocenter_lps: Tuple[float, float, float]
    motion_lps: Tuple[float, float, float]
    truth_masks: List[np.ndarray]  # where the vessels really project, per frame
    rows: int
    cols: int


def vessel_polydata():
    """The toy aortic root: a curved tube (radius 8 mm) with a sphere (radius 14 mm) at one end."""
    from vtkmodules.vtkCommonCore import vtkPoints
    from vtkmodules.vtkCommonDataModel import vtkCellArray, vtkPolyData, vtkPolyLine
    from vtkmodules.vtkFiltersCore import vtkAppendPolyData, vtkTriangleFilter, vtkTubeFilter
    from vtkmodules.vtkFiltersSources import vtkSphereSource

    t = np.linspace(0.0, 1.0, 60)
    centerline = np.stack([25.0 * np.sin(np.pi * t) - 10.0, 12.0 * np.cos(np.pi * t), -45.0 + 90.0 * t], axis=1)
    points, line = vtkPoints(), vtkPolyLine()
    line.GetPointIds().SetNumberOfIds(len(centerline))
    for index, point in enumerate(centerline):
        points.InsertNextPoint(*[float(c) for c in point])
        line.GetPointIds().SetId(index, index)
    lines = vtkCellArray()
    lines.InsertNextCell(line)
    poly_line = vtkPolyData()
    poly_line.SetPoints(points)
    poly_line.SetLines(lines)
    tube = vtkTubeFilter()
    tube.SetInputData(poly_line)
    tube.SetRadius(8.0)
    tube.SetNumberOfSides(32)
    tube.CappingOn()
    sphere = vtkSphereSource()
    sphere.SetCenter(*[float(c) for c in centerline[0]])
    sphere.SetRadius(14.0)
    sphere.SetThetaResolution(48)
    sphere.SetPhiResolution(48)
    append = vtkAppendPolyData()
    append.AddInputConnection(tube.GetOutputPort())
    append.AddInputConnection(sphere.GetOutputPort())
    triangles = vtkTriangleFilter()
    triangles.SetInputConnection(append.GetOutputPort())
    triangles.Update()
    return triangles.GetOutput()


def write_sample_case(directory, seed: int = SAMPLE_SEED, rows: int = 256, cols: int = 256) -> SampleCase:
    """Write the XA run into ``directory`` (``SAMPLE_FILE``) and return the case with its truth."""
    from pydicom.uid import generate_uid

    from ..fluoro import write_fluoro_dicom
    from ..geometry import CArmGeometry
    from ..mesh import surface_from_polydata
    from ..projection import ProjectionRenderer

    model = surface_from_polydata(vessel_polydata(), space="LPS", units="mm", name="synthetic vessel")
    isocenter = tuple(float(c) for c in model.center + np.array([4.0, -6.0, 10.0]))
    motion = np.asarray(SAMPLE_MOTION_LPS)
    geometries = [CArmGeometry(primary, secondary, 1000.0, 750.0, (0.8, 0.8), rows, cols, isocenter_lps=isocenter)
                  for primary, secondary in SAMPLE_ANGLES]
    rng = np.random.default_rng(seed)
    truth, frames = [], []
    with ProjectionRenderer(model.polydata) as renderer:
        for geometry in geometries:
            mask = renderer.render(geometry.with_isocenter(np.asarray(isocenter) - motion), with_depth=False).mask
            truth.append(mask)
            frame = 175.0 - 70.0 * mask + rng.normal(0.0, 5.0, mask.shape)
            frames.append(np.clip(np.round(frame), 0, 255).astype(np.uint8))
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / SAMPLE_FILE

    def uid(part: str) -> str:
        return generate_uid(entropy_srcs=[_UID_SOURCE, part, str(seed), f"{rows}x{cols}"])

    dataset = write_fluoro_dicom(path, np.stack(frames), geometries[0], per_frame_geometry=geometries,
                                 frame_time_ms=1000.0 / 15.0, series_description="TAVIRegistration synthetic case",
                                 study_instance_uid=uid("study"), series_instance_uid=uid("series"),
                                 sop_instance_uid=uid("instance"), content_datetime=_WHEN)
    return SampleCase(dicom_path=path, sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
                      series_uid=str(dataset.SeriesInstanceUID), model=model, geometries=geometries,
                      isocenter_lps=isocenter, motion_lps=tuple(float(v) for v in motion), truth_masks=truth,
                      rows=rows, cols=cols)
