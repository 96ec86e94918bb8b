"""Synthetic TAVI anatomy: determinism, anatomical relations in LPS, a closed manifold lumen
surface at the right distance from the centerlines, the intra-operative deformation, JSON."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

vtk = pytest.importorskip("vtk")
from vtk.util.numpy_support import vtk_to_numpy  # noqa: E402

from TAVIRegistrationLib.synthetic.anatomy import (  # noqa: E402
    ARCH_TYPES,
    CHAINS,
    LANDMARKS,
    PARAM_RANGES,
    SEGMENTS,
    SINUS_SEGMENTS,
    Anatomy,
    anatomy_from_json,
    anatomy_surface,
    anatomy_to_json,
    deform_anatomy,
    generate_anatomy,
    iliofemoral_segments,
    lumen_distance,
    tortuosity_index,
)
from TAVIRegistrationLib.errors import InputError  # noqa: E402

SEEDS = range(12)


@pytest.fixture(scope="module")
def anatomies():
    return {s: generate_anatomy(s) for s in SEEDS}


@pytest.fixture(scope="module")
def surface2(anatomies):
    """Whole tree at 2 mm voxels (seed 3) and the timings."""
    timings = {}
    return anatomy_surface(anatomies[3], voxel_mm=2.0, timings=timings), timings


def _same(a: Anatomy, b: Anatomy) -> bool:
    return (a.centerlines.keys() == b.centerlines.keys()
            and all(np.array_equal(a.centerlines[k], b.centerlines[k]) for k in a.centerlines)
            and all(np.array_equal(a.radii[k], b.radii[k]) for k in a.radii)
            and all(np.array_equal(a.landmarks[k], b.landmarks[k]) for k in a.landmarks)
            and a.params == b.params)


def _edge_counts(poly):
    fe = vtk.vtkFeatureEdges()
    fe.SetInputData(poly)
    fe.BoundaryEdgesOn()
    fe.NonManifoldEdgesOff()
    fe.FeatureEdgesOff()
    fe.ManifoldEdgesOff()
    fe.Update()
    boundary = fe.GetOutput().GetNumberOfCells()
    fe.BoundaryEdgesOff()
    fe.NonManifoldEdgesOn()
    fe.Update()
    return boundary, fe.GetOutput().GetNumberOfCells()


def _regions(poly) -> int:
    conn = vtk.vtkPolyDataConnectivityFilter()
    conn.SetInputData(poly)
    conn.SetExtractionModeToAllRegions()
    conn.Update()
    return conn.GetNumberOfExtractedRegions()


def _points(poly) -> np.ndarray:
    return vtk_to_numpy(poly.GetPoints().GetData()).astype(float)


def _all_samples(anatomy):
    pts = np.concatenate([anatomy.centerlines[k] for k in anatomy.centerlines])
    rad = np.concatenate([anatomy.radii[k] for k in anatomy.centerlines])
    return pts, rad


def _union_distance(anatomy, x):
    """Brute force: distance of x to the union of the centerline spheres (test's own code)."""
    c, r = _all_samples(anatomy)
    out = np.empty(len(x))
    for i in range(0, len(x), 500):
        d = np.linalg.norm(x[i:i + 500, None, :] - c[None], axis=2) - r[None]
        out[i:i + 500] = d.min(axis=1)
    return out


# -- generation ----------------------------------------------------------------------------------
def test_same_seed_same_anatomy_and_different_seeds_differ(anatomies):
    a, b = generate_anatomy(7), generate_anatomy(7)
    assert _same(a, b)
    assert a.seed == 7
    c = generate_anatomy(8)
    assert not np.allclose(a.landmarks["bifurcation"], c.landmarks["bifurcation"])
    assert a.params != c.params
    g = generate_anatomy(np.random.default_rng(7))
    assert g.seed is None and set(g.centerlines) == set(SEGMENTS)


def test_segments_landmarks_and_params(anatomies):
    for a in anatomies.values():
        assert list(a.centerlines) == list(SEGMENTS) and list(a.landmarks) == list(LANDMARKS)
        for k in SEGMENTS:
            assert a.centerlines[k].shape == (len(a.radii[k]), 3) and len(a.radii[k]) >= 2
            assert np.all(np.isfinite(a.centerlines[k])) and np.all(a.radii[k] > 1.5)
        for chain in CHAINS.values():  # consecutive segments share their joint
            for s0, s1 in zip(chain[:-1], chain[1:]):
                assert np.allclose(a.centerlines[s0][-1], a.centerlines[s1][0])
        json.dumps(a.params)
        for name, (lo, hi, _) in PARAM_RANGES.items():
            assert lo <= a.params[name] <= hi, name
        lo, hi = ARCH_TYPES[a.params["arch_type"]]
        assert lo <= a.params["arch_branch_drop_mm"] <= hi
        assert 11 <= a.params["annulus_radius_mm"] <= 14
        assert 14 <= a.params["sinus_radius_mm"] <= 18
        assert 12 <= a.params["stj_radius_mm"] <= 16
        assert 14 <= a.params["ascending_radius_mm"] <= 18
    assert {a.params["arch_type"] for a in anatomies.values()} == set(ARCH_TYPES)


def test_landmarks_in_anatomical_relations(anatomies):
    ez = np.array([0.0, 0.0, 1.0])
    for a in anatomies.values():
        L, C, P = a.landmarks, a.centerlines, a.params
        ann = L["annulus_center"]
        assert np.linalg.norm(ann) < 1.0  # the annulus centre is the origin
        assert 250 <= ann[2] - L["bifurcation"][2] <= 400
        assert L["left_femoral_bifurcation"][0] > L["right_femoral_bifurcation"][0] + 80
        assert L["left_inguinal"][0] > L["bifurcation"][0] > L["right_inguinal"][0]
        for side in ("left", "right"):
            assert L[f"{side}_inguinal"][1] < L["bifurcation"][1] - 20  # groin anterior
            assert L[f"{side}_femoral_bifurcation"][2] < L[f"{side}_inguinal"][2] - 20
            drop = L[f"{side}_inguinal"][2] - L[f"{side}_femoral_end"][2]
            assert 100 <= drop <= 135
        assert L["arch_top"][2] > ann[2] + 50
        assert C["descending_aorta"][:, 1].mean() > C["ascending_aorta"][:, 1].mean() + 20
        assert C["descending_aorta"][:, 0].mean() > P["midline_x_mm"]  # left of the midline
        assert C["ascending_aorta"][-1, 0] < P["midline_x_mm"]  # ascending right of it
        for br in ("brachiocephalic_origin", "left_common_carotid_origin", "left_subclavian_origin"):
            assert L[br][2] > L["sinotubular_junction"][2] + 30
        assert L["brachiocephalic_origin"][0] < L["left_subclavian_origin"][0]
        assert L["aortic_hiatus"][2] > L["left_renal_origin"][2] > L["bifurcation"][2]
        # root: annulus normal tilted by the drawn angulation toward right, anterior, head
        n = a.annulus_normal
        assert math.degrees(math.acos(n @ ez)) == pytest.approx(P["root_angulation_deg"], abs=0.5)
        assert n[0] < 0 and n[1] < 0 and n[2] > 0
        root = C["aortic_root"]
        for side in ("left", "right"):
            ost = L[f"{side}_coronary_ostium"]
            assert np.min(np.linalg.norm(root - ost, axis=1)) < 20
            assert 5 <= (ost - ann) @ n <= 25
            stub = C[f"{side}_coronary"]
            assert 2.0 <= a.radii[f"{side}_coronary"][0] <= 2.5
            assert np.linalg.norm(stub[-1] - ost) == pytest.approx(
                P[f"{side}_coronary_length_mm"], abs=4.0)
        nadirs = [L[f"{k}_cusp_nadir"] for k in ("right_coronary", "left_coronary", "noncoronary")]
        for q in nadirs:
            assert abs((q - ann) @ n) < 1e-6
            assert np.linalg.norm(q - ann) == pytest.approx(P["annulus_radius_mm"], abs=1e-6)
        assert (nadirs[0] - ann)[1] < 0  # right coronary cusp anterior
        assert nadirs[1][0] > nadirs[2][0]  # left coronary cusp left of the non-coronary cusp
        assert nadirs[2][1] > nadirs[0][1]  # non-coronary cusp posterior of the right one
        # radii along the tree
        assert a.radii["aortic_root"][6] == pytest.approx(P["annulus_radius_mm"], abs=0.05)
        assert a.radii["abdominal_aorta"][-1] == pytest.approx(P["bifurcation_radius_mm"], abs=0.3)
        for side in ("left", "right"):
            for seg in iliofemoral_segments(side)[:3]:
                assert np.all((a.radii[seg] >= 3.5) & (a.radii[seg] <= 6.2))


def test_branches_start_inside_their_parent(anatomies):
    a = anatomies[0]
    parents = {"aorta": ["brachiocephalic_trunk", "left_common_carotid", "left_subclavian",
                         "left_renal", "right_renal"]}
    for side in ("left", "right"):
        parents[f"{side}_iliofemoral"] = [f"{side}_internal_iliac", f"{side}_profunda_femoris"]
    for chain, branches in parents.items():
        p, r = a.chain(chain)
        for b in branches:
            d = np.linalg.norm(p - a.centerlines[b][0], axis=1)
            assert np.min(d - r) < -1.0, b
            # and it leaves the parent: its end is outside
            assert np.min(np.linalg.norm(p - a.centerlines[b][-1], axis=1) - r) > 5.0, b


def test_overrides_fix_parameters_and_keep_the_rest():
    base = generate_anatomy(5)
    a = generate_anatomy(5, root_angulation_deg=45.0, arch_type="III")
    assert a.params["root_angulation_deg"] == 45.0 and a.params["arch_type"] == "III"
    assert 16 <= a.params["arch_branch_drop_mm"] <= 26
    assert a.params["arch_type_measured_drop_mm"] == pytest.approx(
        a.params["arch_branch_drop_mm"], abs=1.0)
    assert math.degrees(math.acos(a.annulus_normal[2])) == pytest.approx(45.0, abs=0.5)
    for k in ("bifurcation_depth_mm", "left_iliac_tortuosity", "annulus_radius_mm", "noise_seed"):
        assert a.params[k] == base.params[k]
    with pytest.raises(InputError, match="unknown"):
        generate_anatomy(1, no_such_parameter=3)
    with pytest.raises(InputError):
        generate_anatomy(1, arch_type="IV")
    with pytest.raises(InputError):
        generate_anatomy(1, bifurcation_depth_mm=float("nan"))
    with pytest.raises(InputError):
        generate_anatomy(-1)


# -- surface ---------------------------------------------------------------------------------------
def test_surface_is_closed_manifold_single_region(surface2):
    poly, timings = surface2
    assert poly.GetNumberOfPolys() == poly.GetNumberOfCells() > 20000
    assert _edge_counts(poly) == (0, 0)
    assert _regions(poly) == 1
    # a tree-shaped lumen is a topological sphere: V - E + F = 2
    edges = vtk.vtkExtractEdges()
    edges.SetInputData(poly)
    edges.Update()
    euler = poly.GetNumberOfPoints() - edges.GetOutput().GetNumberOfCells() + poly.GetNumberOfCells()
    assert euler == 2
    assert timings["total_s"] < 10.0


def test_surface_lies_at_radius_from_the_centerlines(anatomies, surface2):
    poly, _ = surface2
    a = anatomies[3]
    x = _points(poly)
    rng = np.random.default_rng(0)
    x = x[rng.choice(len(x), 3000, replace=False)]
    d = _union_distance(a, x)
    assert np.median(np.abs(d)) < 2.0 * 0.5  # well under one 2 mm voxel
    assert np.percentile(np.abs(d), 95) < 2.0
    # the module's own distance agrees with the brute force one
    assert np.allclose(lumen_distance(a, x), d, atol=0.05)
    # outward normals: they point away from the lumen
    normals = vtk_to_numpy(poly.GetPointData().GetNormals()).astype(float)
    x_all = _points(poly)
    sel = rng.choice(len(x_all), 2000, replace=False)
    step = lumen_distance(a, x_all[sel] + 0.5 * normals[sel]) - lumen_distance(a, x_all[sel])
    assert np.mean(step > 0) > 0.95
    lo, hi = a.bounds()
    b = np.array(poly.GetBounds()).reshape(3, 2)
    assert np.all(np.abs(b[:, 0] - lo) < 4.0) and np.all(np.abs(b[:, 1] - hi) < 4.0)


def test_surface_regions_and_annulus_at_1mm(anatomies):
    a = anatomies[1]
    upper = anatomy_surface(a, voxel_mm=1.0, region="upper")
    assert _edge_counts(upper) == (0, 0) and _regions(upper) == 1
    x = _points(upper)
    z_cut = a.landmarks["mid_descending_aorta"][2]
    assert x[:, 2].min() > z_cut - 15.0
    # the coronary stubs are resolved: surface reaches their distal ends
    for side in ("left", "right"):
        end = a.centerlines[f"{side}_coronary"][-1]
        assert np.min(np.linalg.norm(x - end, axis=1)) < a.radii[f"{side}_coronary"][-1] + 1.0
    lower = anatomy_surface(a, voxel_mm=2.0, region="lower")
    assert _edge_counts(lower) == (0, 0) and _regions(lower) == 1
    assert _points(lower)[:, 2].max() < a.landmarks["aortic_hiatus"][2] + 15.0
    # the annulus: cross-section just above the flat LVOT cut has the annulus radius
    c, n = a.landmarks["annulus_center"], a.annulus_normal
    plane = vtk.vtkPlane()
    plane.SetOrigin(*(c + 0.5 * n))
    plane.SetNormal(*n)
    cut = vtk.vtkCutter()
    cut.SetCutFunction(plane)
    cut.SetInputData(upper)
    cut.Update()
    ring = _points(cut.GetOutput()) - c
    ring = ring[np.linalg.norm(ring, axis=1) < 25.0]
    radial = np.linalg.norm(ring - np.outer(ring @ n, n), axis=1)
    assert np.median(radial) == pytest.approx(a.params["annulus_radius_mm"], abs=0.8)


def test_bad_surface_arguments(anatomies):
    with pytest.raises(InputError):
        anatomy_surface(anatomies[0], voxel_mm=0.0)
    with pytest.raises(InputError):
        anatomy_surface(anatomies[0], region="middle")
    with pytest.raises(InputError):
        anatomy_surface(anatomies[0], region=((0, 0, 1000), (1, 1, 1001)))


# -- deformation -----------------------------------------------------------------------------------
def _max_turn(p: np.ndarray) -> float:
    t = np.diff(p, axis=0)
    t /= np.linalg.norm(t, axis=1, keepdims=True)
    return float(np.max(np.arccos(np.clip(np.sum(t[1:] * t[:-1], axis=1), -1, 1))))


def test_deformation_moves_root_and_straightens_iliacs(anatomies):
    a = anatomies[4]
    before = generate_anatomy(4)
    d = deform_anatomy(a, 11, root_motion_mm=4.0)
    assert _same(a, before)  # input untouched
    assert d.state == "intra-operative" and d.params["deformation"]["root_motion_mm"] == 4.0
    assert _same(d, deform_anatomy(a, 11, root_motion_mm=4.0))
    moved = np.linalg.norm(d.landmarks["annulus_center"] - a.landmarks["annulus_center"])
    assert moved == pytest.approx(4.0, abs=1e-9)
    for k in ("aortic_root", "ascending_aorta", "aortic_arch", "left_coronary", "right_coronary") \
            + SINUS_SEGMENTS:
        assert np.max(np.linalg.norm(d.centerlines[k] - a.centerlines[k], axis=1)) <= 4.0 + 1e-9
    for k in SEGMENTS:
        assert np.array_equal(d.radii[k], a.radii[k])
        assert d.centerlines[k].shape == a.centerlines[k].shape
    fr = d.params["deformation"]["wire_straightening"]
    for side in ("left", "right"):
        assert 0.0 < fr[side] <= 0.6
        p0, _ = a.chain(f"{side}_iliofemoral")
        p1, _ = d.chain(f"{side}_iliofemoral")
        assert tortuosity_index(p1) < tortuosity_index(p0)
        iliac0 = np.concatenate([a.centerlines[f"{side}_common_iliac"],
                                 a.centerlines[f"{side}_external_iliac"]])
        iliac1 = np.concatenate([d.centerlines[f"{side}_common_iliac"],
                                 d.centerlines[f"{side}_external_iliac"]])
        assert tortuosity_index(iliac1) < tortuosity_index(iliac0)
        # the femoral end stays, the femoral bifurcation stays close
        end_move = np.linalg.norm(d.landmarks[f"{side}_femoral_end"] - a.landmarks[f"{side}_femoral_end"])
        assert end_move < 0.5
        assert np.linalg.norm(d.landmarks[f"{side}_femoral_bifurcation"]
                              - a.landmarks[f"{side}_femoral_bifurcation"]) < 0.5
        assert np.linalg.norm(d.landmarks[f"{side}_iliac_bifurcation"]
                              - a.landmarks[f"{side}_iliac_bifurcation"]) > 0.5
        # landmarks stay on their vessel, no kinks appear
        assert np.min(np.linalg.norm(p1 - d.landmarks[f"{side}_femoral_bifurcation"], axis=1)) < 1e-6
        # no kinks: the turn per 0.5 mm step stays small (radius of curvature > 10 mm)
        assert _max_turn(p1) < 0.05 and _max_turn(p0) < 0.05
        for stub in (f"{side}_internal_iliac", f"{side}_profunda_femoris"):
            assert np.min(np.linalg.norm(p1 - d.centerlines[stub][0], axis=1)) < 1e-6
    aorta0, _ = a.chain("aorta")
    aorta1, _ = d.chain("aorta")
    assert _max_turn(aorta1) <= _max_turn(aorta0) + 0.005
    # the deformed lumen is still one closed surface
    poly = anatomy_surface(d, voxel_mm=2.5)
    assert _edge_counts(poly) == (0, 0) and _regions(poly) == 1


def test_deformation_options(anatomies):
    a = anatomies[2]
    same = deform_anatomy(a, 0, wire_straightening=0.0, root_motion_mm=0.0)
    assert all(np.array_equal(same.centerlines[k], a.centerlines[k]) for k in SEGMENTS)
    d = deform_anatomy(a, 0, wire_straightening=(0.5, 0.0), root_motion_mm=0.0)
    assert np.array_equal(d.centerlines["right_external_iliac"], a.centerlines["right_external_iliac"])
    assert not np.array_equal(d.centerlines["left_external_iliac"], a.centerlines["left_external_iliac"])
    drawn = [deform_anatomy(a, s).params["deformation"] for s in range(20)]
    for p in drawn:
        acc = p["access_side"]
        assert 0.2 <= p["wire_straightening"][acc] <= 0.6
        assert 1.0 <= p["root_motion_mm"] <= 5.0
    with pytest.raises(InputError):
        deform_anatomy(a, 0, wire_straightening=1.5)
    with pytest.raises(InputError):
        deform_anatomy(a, 0, access_side="middle")


# -- JSON ------------------------------------------------------------------------------------------
def test_json_round_trip(anatomies):
    for a in (anatomies[6], deform_anatomy(anatomies[6], 3)):
        doc = json.loads(json.dumps(anatomy_to_json(a)))
        assert doc["coordinate_system"] == "LPS" and doc["units"] == "mm"
        b = anatomy_from_json(doc)
        assert _same(a, b) and b.seed == a.seed and b.state == a.state
    with pytest.raises(InputError):
        anatomy_from_json({"format": "something else"})
    doc = anatomy_to_json(anatomies[6])
    doc["radii"]["aortic_root"] = doc["radii"]["aortic_root"][:-1]
    with pytest.raises(InputError):
        anatomy_from_json(doc)


def _units(a):
    """Vessel units for the contact check: name -> (points, radii, parent unit or None)."""
    units = {"aorta": (*_concat_unit(a, list(CHAINS["aorta"]) + list(SINUS_SEGMENTS)), None)}
    for side in ("left", "right"):
        units[f"{side}_iliofemoral"] = (*a.chain(f"{side}_iliofemoral"), "aorta")
        for b in (f"{side}_internal_iliac", f"{side}_profunda_femoris"):
            units[b] = (a.centerlines[b], a.radii[b], f"{side}_iliofemoral")
    for b in ("left_coronary", "right_coronary", "brachiocephalic_trunk", "left_common_carotid",
              "left_subclavian", "left_renal", "right_renal"):
        units[b] = (a.centerlines[b], a.radii[b], "aorta")
    return units


def _concat_unit(a, names):
    return (np.concatenate([a.centerlines[k] for k in names]),
            np.concatenate([a.radii[k] for k in names]))


def _gap(p1, r1, p2, r2) -> float:
    if len(p1) == 0 or len(p2) == 0:
        return np.inf
    return float((np.linalg.norm(p1[:, None] - p2[None], axis=2) - r1[:, None] - r2[None]).min())


def _min_gaps(a):
    """Smallest wall-to-wall gaps between vessels that should not touch. A branch's distal part
    (beyond 12 mm past the point where it leaves its parent; for the iliofemoral axes beyond 30 mm)
    must keep clear of every other vessel's distal part, and of its own parent."""
    units = _units(a)
    distal = {}
    for name, (p, r, parent) in units.items():
        s = np.concatenate([[0], np.cumsum(np.linalg.norm(np.diff(p, axis=0), axis=1))])
        if parent is None:
            distal[name] = np.ones(len(p), bool)
            continue
        pp, pr, _ = units[parent]
        out = np.array([np.min(np.linalg.norm(pp - x, axis=1) - pr) > 0 for x in p])
        s_exit = s[np.argmax(out)]
        distal[name] = s > s_exit + (30.0 if name.endswith("iliofemoral") else 12.0)
    gaps = {}
    names = list(units)
    for i, n1 in enumerate(names):
        for n2 in names[i + 1:]:
            (p1, r1, par1), (p2, r2, par2) = units[n1], units[n2]
            m1, m2 = distal[n1], distal[n2]
            g = _gap(p1[m1], r1[m1], p2[m2], r2[m2])
            if par1 == n2:
                g = min(g, _gap(p1[m1], r1[m1], p2, r2))
            if par2 == n1:
                g = min(g, _gap(p2[m2], r2[m2], p1, r1))
            gaps[(n1, n2)] = g
    return gaps


def test_vessels_do_not_touch_where_they_should_not(anatomies):
    for seed in (0, 3, 7, 20):
        a = anatomies[seed] if seed in anatomies else generate_anatomy(seed)
        for state in (a, deform_anatomy(a, seed, wire_straightening=0.6, root_motion_mm=5.0)):
            bad = {k: round(v, 1) for k, v in _min_gaps(state).items() if v < 2.0}
            assert not bad, (seed, state.state, bad)
