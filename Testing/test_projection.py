"""The VTK rendering and the 3x4 matrix agree: the silhouette is where the matrix puts the mesh."""

import numpy as np
import pytest
from scipy import ndimage
from skimage.draw import polygon
from vtkmodules.util.numpy_support import vtk_to_numpy
from vtkmodules.vtkCommonDataModel import vtkPolyData
from vtkmodules.vtkFiltersCore import vtkAppendPolyData, vtkTriangleFilter
from vtkmodules.vtkFiltersSources import vtkCylinderSource, vtkSphereSource

from TAVIRegistrationLib.errors import InputError
from TAVIRegistrationLib.geometry import CArmGeometry, project_points
from TAVIRegistrationLib.projection import ProjectionRenderer, render_projection


def _phantom():
    """Two spheres and a tilted cylinder: asymmetric, so a flip or a swap of axes would show."""
    app = vtkAppendPolyData()
    for center, r in (((20, -10, 30), 15), ((-35, 25, -20), 8)):
        s = vtkSphereSource()
        s.SetCenter(*center)
        s.SetRadius(r)
        s.SetThetaResolution(32)
        s.SetPhiResolution(32)
        app.AddInputConnection(s.GetOutputPort())
    c = vtkCylinderSource()
    c.SetRadius(5)
    c.SetHeight(90)
    c.SetCenter(0, 0, -40)
    c.SetResolution(32)
    app.AddInputConnection(c.GetOutputPort())
    tri = vtkTriangleFilter()
    tri.SetInputConnection(app.GetOutputPort())
    tri.Update()
    return tri.GetOutput()


def _reference_mask(pd, P, rows, cols):
    """Rasterise the projected triangles in numpy (pixel centres at integer coordinates)."""
    pts = vtk_to_numpy(pd.GetPoints().GetData()).astype(float)
    xy, _ = project_points(P, pts)
    cells = vtk_to_numpy(pd.GetPolys().GetConnectivityArray()).reshape(-1, 3)
    ref = np.zeros((rows, cols), bool)
    for tri in cells:
        rr, cc = polygon(xy[tri, 1], xy[tri, 0], shape=(rows, cols))
        ref[rr, cc] = True
    return ref


PHANTOM = _phantom()


@pytest.mark.parametrize("ortho", [False, True])
@pytest.mark.parametrize("angles,spacing,size", [
    ((0, 0), (0.3, 0.3), (256, 256)),
    ((35, 20), (0.3, 0.3), (300, 240)),
    ((-30, -15), (0.2, 0.35), (256, 320)),  # non-square pixels, non-square image
])
def test_silhouette_matches_matrix_within_a_pixel(ortho, angles, spacing, size):
    rows, cols = size
    g = CArmGeometry(angles[0], angles[1], 1100, 800, spacing, rows, cols, (5, 0, 0))
    proj = render_projection(PHANTOM, g, orthographic=ortho)
    ref = _reference_mask(PHANTOM, proj.matrix, rows, cols)
    assert proj.mask.dtype == np.uint8 and proj.mask.shape == (rows, cols)
    assert proj.mask.sum() > 500
    diff = (proj.mask > 0) ^ ref
    # every disagreeing pixel lies on the reference silhouette's border (within one pixel)
    border = ref ^ ndimage.binary_erosion(ref)
    near_border = ndimage.binary_dilation(border, iterations=1)
    assert not (diff & ~near_border).any()
    assert diff.sum() < 0.1 * ref.sum()


def test_depth_is_distance_from_source_along_the_central_ray():
    g = CArmGeometry(20, 10, 1000, 750, (0.3, 0.3), 256, 256)
    s = vtkSphereSource()
    s.SetRadius(20)
    s.SetThetaResolution(64)
    s.SetPhiResolution(64)
    s.Update()
    proj = render_projection(s.GetOutput(), g)
    # The sphere's nearest point to the source is 20 mm before the isocentre.
    assert np.nanmin(proj.depth_mm) == pytest.approx(750 - 20, abs=0.5)
    assert np.isnan(proj.depth_mm[proj.mask == 0]).all()
    assert not np.isnan(proj.depth_mm[proj.mask > 0]).any()
    picture = proj.depth_display()
    assert picture.dtype == np.uint8 and picture[proj.mask == 0].max() == 0


def test_renderer_is_reused_across_frames_and_sizes():
    with ProjectionRenderer(PHANTOM) as r:
        a = r.render(CArmGeometry(0, 0, 1000, 750, (0.3, 0.3), 200, 200))
        b = r.render(CArmGeometry(0, 0, 1000, 750, (0.3, 0.3), 400, 400))
        c = r.render(CArmGeometry(0, 0, 1000, 750, (0.3, 0.3), 200, 200))
    assert a.mask.shape == (200, 200) and b.mask.shape == (400, 400)
    assert np.array_equal(a.mask, c.mask)
    assert b.mask.sum() > 3.5 * a.mask.sum()  # twice the size: four times the area


def test_model_moves_the_right_way_in_the_image():
    g = CArmGeometry(0, 0, 1000, 750, (0.3, 0.3), 256, 256)
    s = vtkSphereSource()
    s.SetRadius(10)
    s.SetCenter(30, 0, 30)  # patient-left and head
    s.Update()
    ys, xs = np.nonzero(render_projection(s.GetOutput(), g).mask)
    assert xs.mean() > 127.5 and ys.mean() < 127.5  # right half, top half


def test_empty_model_is_refused():
    with pytest.raises(InputError):
        ProjectionRenderer(vtkPolyData())


def test_model_behind_the_source_is_refused():
    g = CArmGeometry(0, 0, 1000, 750, (0.3, 0.3), 64, 64)
    s = vtkSphereSource()
    s.SetCenter(0, 2000, 0)  # far posterior, behind the source in an AP view
    s.Update()
    with pytest.raises(InputError):
        render_projection(s.GetOutput(), g)
