"""The C-arm convention, pinned with points a person can check (DICOM PS3.3 C.8.7.5; docs/conventions.md).

LPS: x -> patient left, y -> posterior, z -> head. Images: x = column (right), y = row (down).
"""

import math

import numpy as np
import pytest

from TAVIRegistrationLib.errors import InputError
from TAVIRegistrationLib.geometry import CArmGeometry, carm_axes, project, project_points, view_label


def geom(primary=0.0, secondary=0.0, sid=1000.0, sod=750.0, spacing=(0.3, 0.3), rows=512, cols=512, iso=(0, 0, 0)):
    return CArmGeometry(primary, secondary, sid, sod, spacing, rows, cols, iso)


ISO = np.zeros(3)
LEFT = np.array([50.0, 0, 0])
HEAD = np.array([0, 0, 50.0])
SPINE = np.array([0, 60.0, 0])  # posterior midline
HEART = np.array([40.0, -30.0, 0])  # anterior and left


@pytest.mark.parametrize("ortho", [False, True])
def test_ap_view_left_is_right_and_head_is_up(ortho):
    g = geom()
    c, left, head = project(g, np.stack([ISO, LEFT, HEAD]), orthographic=ortho)
    assert np.allclose(c, [255.5, 255.5])
    assert left[0] > c[0] and abs(left[1] - c[1]) < 1e-9  # patient left -> image right
    assert head[1] < c[1] and abs(head[0] - c[0]) < 1e-9  # head -> image top


def test_ap_source_posterior_detector_anterior():
    g = geom()
    assert g.source_lps[1] == pytest.approx(750.0)  # +y = posterior
    assert g.detector_center_lps[1] == pytest.approx(-250.0)


@pytest.mark.parametrize("ortho", [False, True])
def test_lao_puts_spine_right_of_heart_and_rao_left(ortho):
    spine_lao, heart_lao = project(geom(primary=40), np.stack([SPINE, HEART]), ortho)
    assert spine_lao[0] > heart_lao[0]
    spine_rao, heart_rao = project(geom(primary=-40), np.stack([SPINE, HEART]), ortho)
    assert spine_rao[0] < heart_rao[0]


def test_left_lateral_detector_is_on_the_left():
    u, v, d = carm_axes(90, 0)
    assert np.allclose(d, [1, 0, 0], atol=1e-12)  # detector toward patient left
    assert np.allclose(u, [0, 1, 0], atol=1e-12)  # columns grow posterior: spine on the right
    assert np.allclose(v, [0, 0, -1], atol=1e-12)


def test_cranial_tilt_moves_detector_toward_head():
    _, _, d = carm_axes(0, 30)
    assert d[2] > 0 and d[1] < 0
    _, _, d = carm_axes(0, -30)
    assert d[2] < 0


@pytest.mark.parametrize("ortho", [False, True])
def test_cra_cau_foreshorten_and_shift_superior_points(ortho):
    # A superior point keeps projecting upward, foreshortened by cos(secondary).
    up_ap = project(geom(), HEAD[None], ortho)[0][1] - 255.5
    up_cra = project(geom(secondary=30), HEAD[None], ortho)[0][1] - 255.5
    up_cau = project(geom(secondary=-30), HEAD[None], ortho)[0][1] - 255.5
    assert up_ap < 0 and up_cra < 0 and up_cau < 0
    if ortho:
        assert up_cra == pytest.approx(up_ap * math.cos(math.radians(30)))
    # In a cranial view the detector looks down from anterior-superior, so the image's "up" tilts
    # posteriorly: an anterior-superior point (the aortic root) sits lower than in AP; CAU: higher.
    root = np.array([0, -80.0, 60.0])
    r_ap, r_cra, r_cau = (project(geom(secondary=s), root[None], ortho)[0][1] for s in (0, 25, -25))
    assert r_cra > r_ap > r_cau
    # anterior points move toward the feet (down) in CRA, toward the head (up) in CAU
    ant = np.array([0, -80.0, 0])
    a_ap, a_cra, a_cau = (project(geom(secondary=s), ant[None], ortho)[0][1] for s in (0, 25, -25))
    assert a_cra > a_ap > a_cau


def test_magnification_at_isocentre_is_sid_over_sod():
    g = geom(sid=1100, sod=800, spacing=(0.2, 0.25))
    assert g.magnification == pytest.approx(1100 / 800)
    dx = 10.0
    xy = project(g, np.array([[0, 0, 0], [dx, 0, 0], [0, 0, -dx]]))
    assert (xy[1, 0] - xy[0, 0]) * 0.25 == pytest.approx(dx * 1100 / 800)  # columns: col spacing
    assert (xy[2, 1] - xy[0, 1]) * 0.2 == pytest.approx(dx * 1100 / 800)  # rows: row spacing


def test_perspective_magnifies_points_near_the_source_more():
    g = geom()
    near_src = np.array([[10.0, 200.0, 0]])  # posterior = toward the source in AP
    near_det = np.array([[10.0, -200.0, 0]])
    c = 255.5
    assert project(g, near_src)[0][0] - c > project(g, near_det)[0][0] - c


def test_orthographic_and_perspective_agree_at_the_isocentre_plane_centre():
    g = geom(primary=25, secondary=-10, iso=(5, -3, 12))
    pts = np.array([[5, -3, 12]])
    assert np.allclose(project(g, pts), project(g, pts, orthographic=True))


def test_w_is_depth_from_source():
    g = geom(primary=33, secondary=12, iso=(1, 2, 3))
    _, w = project_points(g.projection_matrix(), np.array([g.isocenter_lps]))
    assert w[0] == pytest.approx(g.sod_mm)


def test_source_and_detector_on_the_central_ray():
    g = geom(primary=-20, secondary=15, iso=(10, 20, 30))
    s, c = g.source_lps, g.detector_center_lps
    assert np.linalg.norm(c - s) == pytest.approx(g.sid_mm)
    xy = project(g, np.array([c * 0.5 + s * 0.5]))
    assert np.allclose(xy, g.principal_point)


@pytest.mark.parametrize("kwargs", [
    dict(sid=0), dict(sid=-1000), dict(sod=0), dict(sod=1200), dict(spacing=(-0.3, 0.3)),
    dict(spacing=(0.3, float("nan"))), dict(primary=float("inf")), dict(secondary=120), dict(rows=0),
    dict(cols=100000), dict(iso=(0, float("nan"), 0)),
])
def test_nonsense_geometry_is_refused(kwargs):
    with pytest.raises(InputError) as e:
        geom(**kwargs)
    assert "\n" not in str(e.value)


def test_view_label_reads_like_a_clinician_says_it():
    """One label for the Slicer panel, the viewer, ``tavireg info`` and the demo report."""
    assert view_label(30.0, 10.0) == "LAO 30.0\u00b0, CRA 10.0\u00b0"
    assert view_label(-25.0, -8.0) == "RAO 25.0\u00b0, CAU 8.0\u00b0"
    assert view_label(30, 10, separator="  ") == "LAO 30.0\u00b0  CRA 10.0\u00b0"
    assert view_label(-20, -15.25, separator="  ") == "RAO 20.0\u00b0  CAU 15.2\u00b0"
