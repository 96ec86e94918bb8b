"""The contrast front (``filling``): path lengths through a model's lumen, its vessel ends, and a
registration that leaves out the vessels a frame shows without contrast."""

import numpy as np
import pytest

from TAVIRegistrationLib import filling
from TAVIRegistrationLib.geometry import CArmGeometry, project
from TAVIRegistrationLib.mesh import _mask_surface, _padded_crop, _smoothed, surface_from_polydata
from TAVIRegistrationLib.projection import ProjectionRenderer
from TAVIRegistrationLib.registration import apply_matrix, register_pair

#: centreline of the trunk (top tip, bifurcation) and the two limbs' tips, voxel = 1 mm, (x, y, z)
TOP, FORK, LEFT, RIGHT = (60, 40, 115), (60, 40, 70), (12, 40, 30), (108, 40, 30)
RADIUS = 6.0


def _segment(shape, a, b, radius):
    """Voxels (z, y, x) within ``radius`` of the segment a-b (points given as x, y, z)."""
    z, y, x = np.indices(shape)
    p = np.stack([x, y, z], axis=-1).astype(float)
    a, b = np.asarray(a, float), np.asarray(b, float)
    t = np.clip(((p - a) @ (b - a)) / float((b - a) @ (b - a)), 0.0, 1.0)
    return np.linalg.norm(p - (a + t[..., None] * (b - a)), axis=-1) <= radius


def _model(filled: float = 1.0):
    """A bifurcation as one closed surface (LPS mm): the trunk and the first ``filled`` of each limb."""
    shape = (130, 80, 120)
    mask = _segment(shape, TOP, FORK, RADIUS)
    for tip in (LEFT, RIGHT):
        end = np.asarray(FORK, float) + filled * (np.asarray(tip, float) - np.asarray(FORK, float))
        mask |= _segment(shape, FORK, end, RADIUS - 1.5)
    return surface_from_polydata(_smoothed(_mask_surface(_padded_crop(mask))), space="LPS", units="mm",
                                 name="bifurcation")


@pytest.fixture(scope="module")
def bifurcation():
    return _model()


def _geometry(isocenter):
    return CArmGeometry(0.0, 0.0, 1000.0, 750.0, (0.8, 0.8), 256, 256, isocenter_lps=tuple(isocenter))


def test_flow_distances_follow_the_vessels(bifurcation):
    flow = filling.vessel_flow(bifurcation)
    assert filling.vessel_flow(bifurcation) is flow  # kept on the model
    points = bifurcation.points()
    tips = points[flow.ends]
    # one end at each tip of the tree, none elsewhere
    assert len(flow.ends) == 3
    for tip in (TOP, LEFT, RIGHT):
        assert np.min(np.linalg.norm(tips - np.asarray(tip, float), axis=1)) < RADIUS + 3.0
    top = int(np.argmin(np.linalg.norm(tips - np.asarray(TOP, float), axis=1)))
    limb = float(np.linalg.norm(np.subtract(LEFT, FORK)))
    along = float(np.linalg.norm(np.subtract(FORK, TOP))) + limb
    for tip in (LEFT, RIGHT):
        vertex = int(np.argmin(np.linalg.norm(points - np.asarray(tip, float), axis=1)))
        # the path runs through the lumen along the axis, not across the gap between the limbs (a
        # path over 26-connected voxels is up to 8 % longer than the straight line it follows)
        assert along - 8.0 < flow.distance[top, vertex] < 1.1 * along + 6.0
    assert not flow.warnings


def test_every_part_of_a_model_in_pieces_gets_its_ends():
    """Two separate vessels (an export with islands): each has its two tips among the ends, and no
    path runs from one to the other."""
    shape = (100, 60, 80)
    mask = _segment(shape, (15, 30, 10), (15, 30, 90), 5.0) | _segment(shape, (60, 30, 10), (60, 30, 70), 4.0)
    model = surface_from_polydata(_smoothed(_mask_surface(_padded_crop(mask))), space="LPS", units="mm",
                                  name="two vessels")
    flow = filling.vessel_flow(model)
    points = model.points()
    tips = points[flow.ends]
    for tip in ((15, 30, 10), (15, 30, 90), (60, 30, 10), (60, 30, 70)):
        assert np.min(np.linalg.norm(tips - np.asarray(tip, float), axis=1)) < 8.0, tip
    left = points[:, 0] < 40
    for k, end in enumerate(flow.ends):
        own = left[end]
        assert np.all(np.isfinite(flow.distance[k, left == own]))
        assert np.all(np.isinf(flow.distance[k, left != own]))


def test_open_surface_falls_back_to_surface_paths_with_a_warning():
    from vtkmodules.vtkFiltersSources import vtkPlaneSource

    plane = vtkPlaneSource()
    plane.SetOrigin(0.0, 0.0, 0.0)
    plane.SetPoint1(60.0, 0.0, 0.0)
    plane.SetPoint2(0.0, 30.0, 0.0)
    plane.SetResolution(30, 15)
    plane.Update()
    from vtkmodules.vtkFiltersCore import vtkTriangleFilter

    tri = vtkTriangleFilter()
    tri.SetInputData(plane.GetOutput())
    tri.Update()
    model = surface_from_polydata(tri.GetOutput(), space="LPS", units="mm", name="sheet")
    flow = filling.vessel_flow(model)
    assert flow.warnings and "encloses no volume" in flow.warnings[0]
    assert np.all(np.isfinite(flow.distance))
    assert flow.distance.max() > 55.0  # across the sheet's length


def _drawn_tree(size=256):
    """On a window grid: a trunk from the top and two limbs, and every pixel's path length (px) from
    the trunk's top end."""
    image = np.zeros((size, size), bool)
    length = np.full((size, size), np.inf, np.float32)

    def draw(a, b, half_width, start):
        n = int(np.hypot(b[0] - a[0], b[1] - a[1]))
        for t in range(n + 1):
            r = int(round(a[0] + (b[0] - a[0]) * t / n))
            c = int(round(a[1] + (b[1] - a[1]) * t / n))
            box = np.s_[r - half_width:r + half_width + 1, c - half_width:c + half_width + 1]
            image[box] = True
            length[box] = np.minimum(length[box], start + t)
        return start + n

    fork = draw((40, 128), (130, 128), 6, 0)
    draw((130, 128), (220, 60), 4, fork)
    draw((130, 128), (220, 196), 4, fork)
    return image, length, fork


def test_a_start_far_off_is_shifted_onto_the_frame_before_the_front_is_judged():
    """The frame shows the trunk and the first 40 % of the limbs filled, 36 px (three times the
    tolerance) away from the unregistered projection. Judged where it lies, the filled trunk seems
    partly uncovered and less than half of the unfilled limbs is left out; moved by the translation
    that overlaps the frame most, most of them are left out, and nothing filled."""
    moving, length, fork = _drawn_tree()
    filled = length <= fork + 45
    fixed = np.roll(np.roll(moving & filled, 30, axis=0), -20, axis=1)
    box = np.zeros_like(moving)
    box[20:240, 30:226] = True
    identity = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    theta, shift = filling.shifted_start(moving, fixed, identity)
    assert np.allclose(theta, [[1.0, 0.0, 2.0 * 20 / 256], [0.0, 1.0, -2.0 * 30 / 256]])
    assert shift == pytest.approx(np.hypot(30, 20))
    unfilled = (moving & ~filled).sum()
    at_start = filling._judge(moving, fixed, box, length[None], identity, "start")
    assert (at_start.hidden & ~filled).sum() < 0.5 * unfilled

    def never():
        raise AssertionError("the shifted start agrees enough: no network pass is needed")

    front = filling.filled_front(moving, fixed, box, length[None], None, never)
    assert front.at == "shifted start" and "shifted onto the frame's vessels" in front.note()
    assert not (front.hidden & filled).any()
    assert (front.hidden & ~filled).sum() > 0.75 * unfilled


def test_the_upper_field_of_view_judges_with_the_tighter_tolerance():
    """An aorta as the upper field of view shows it: the ascending aorta filled, the arch, and the
    descending aorta running beside it 10-12 px away without contrast. Within the 12 px tolerance the
    unfilled descending aorta passes for filled and nothing is left out; within the upper field of
    view's 8 px it is left out, and nothing filled is."""
    size = 256
    moving = np.zeros((size, size), bool)
    length = np.full((size, size), np.inf, np.float32)
    moving[40:221, 94:107] = True  # the ascending aorta, from its root (row 220) up
    length[40:221, 94:107] = (220 - np.arange(40, 221))[:, None]
    moving[38:43, 94:119] = True  # the arch
    length[38:40, 94:107] = 180
    length[38:43, 107:119] = 180 + np.arange(1, 13)[None, :]
    moving[40:221, 116:119] = True  # the descending aorta, 10-12 px from the ascending one
    length[43:221, 116:119] = (192 + np.arange(1, 179))[:, None]
    assert np.isfinite(length[moving]).all()
    filled = length <= 182
    fixed = moving & filled
    box = np.ones_like(moving)
    descending = moving & (length > 192)

    def never():
        raise AssertionError("the start agrees: no network pass is needed")

    assert filling.tolerance_for(None) == filling.tolerance_for("lower") == filling.TOLERANCE_PX == 12.0
    wide = filling.filled_front(moving, fixed, box, length[None], None, never, filling.tolerance_for("lower"))
    assert not wide.hidden.any()
    tight = filling.filled_front(moving, fixed, box, length[None], None, never, filling.tolerance_for("upper"))
    assert filling.tolerance_for("upper") == 8.0 and tight.at == "start"
    assert not (tight.hidden & filled).any()
    assert (tight.hidden & descending).sum() > 0.9 * descending.sum()


def test_registration_leaves_out_the_vessels_beyond_the_front(bifurcation):
    """The contrast, injected at the top of the trunk, has filled the trunk and the first 40 % of each
    limb (a bolus front on its way, as in the descending aorta of a root injection), and the patient
    moved: the front hides the rest of the limbs, the filled part is registered, and the registered
    mask still draws the whole model."""
    iso = bifurcation.center
    motion = np.array([2.0, 0.0, -3.0])
    nominal = _geometry(iso)
    moved = nominal.with_isocenter(iso - motion)
    with ProjectionRenderer(bifurcation.polydata) as r:
        proj = r.render(nominal, with_depth=False)
        unfilled = r.render(moved, with_depth=False).mask.astype(bool)
    with ProjectionRenderer(_model(filled=0.4).polydata) as r:
        fixed = r.render(moved, with_depth=False).mask
    unfilled &= ~fixed.astype(bool)
    rows, cols = np.nonzero(proj.mask)
    roi = (int(cols.min()) - 4, int(rows.min()) - 4, int(np.ptp(cols)) + 9, int(np.ptp(rows)) + 9)
    flow = filling.vessel_flow(bifurcation).project(proj.matrix)
    with_front = register_pair(proj.mask, fixed, roi, "cnn+refine", flow=flow, device="cpu")
    whole = register_pair(proj.mask, fixed, roi, "cnn+refine", device="cpu")
    assert with_front.valid and whole.valid
    share = with_front.metrics["hidden_share"]
    assert 0.2 < share < 0.6, share
    assert any("contrast front" in w for w in with_front.warnings)
    assert whole.metrics["hidden_share"] == 0.0
    # the whole projection is drawn, the unfilled limbs included
    assert (with_front.registered_mask.astype(bool) & unfilled).sum() > 0.5 * unfilled.sum()
    # landmarks on the filled part (top, fork): the motion lies in the detector plane, so the truth
    # shifts them alike
    marks = project(nominal, np.array([TOP, FORK], float))
    truth = marks + (project(moved, bifurcation.center[None]) - project(nominal, bifurcation.center[None]))
    err_front = np.linalg.norm(apply_matrix(with_front.frame_matrix, marks) - truth, axis=1).max()
    err_whole = np.linalg.norm(apply_matrix(whole.frame_matrix, marks) - truth, axis=1).max()
    assert err_front < 2.0, (err_front, err_whole)
    assert err_front < err_whole, (err_front, err_whole)
