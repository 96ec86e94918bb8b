"""Synthetic TAVI cases (``tavireg phantom``): files, geometry, ground truth, determinism.

One small data set (1 patient, 6 frames of 256 x 256) is generated through the command line once
per module; the tests re-derive its ground truth from the written files with the foundation
reader, loader and projector.
"""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from TAVIRegistrationLib import cli

from TAVIRegistrationLib.synthetic import phantom, xray
from TAVIRegistrationLib.synthetic.anatomy import generate_anatomy
from TAVIRegistrationLib.fluoro import read_fluoro
from TAVIRegistrationLib.geometry import CArmGeometry, project
from TAVIRegistrationLib.mesh import arrays_from_polydata, load_model, polydata_from_arrays
from TAVIRegistrationLib.projection import ProjectionRenderer

from conftest import PHANTOM_ARGS as ARGS, generate_phantom as _generate


@pytest.fixture(scope="module")
def dataset(phantom_dataset) -> Path:
    return phantom_dataset


@pytest.fixture(scope="module")
def case(dataset):
    pdir = dataset / "patients" / "P000"
    pre, doc, deformation = phantom.load_case(pdir)
    return pdir, pre, doc, deformation


def _rows(dataset):
    with open(dataset / "index.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def _png(path) -> np.ndarray:
    return np.asarray(Image.open(path)) > 0


def _frames(doc):
    for s in doc["series"]:
        for f in s["frames"]:
            yield s, f


def test_layout_index_and_split(dataset, case):
    pdir, pre, doc, _ = case
    rows = _rows(dataset)
    assert len(rows) == 6
    for col in ("patient", "split", "fov", "image", "frame", "mask", "projection_true",
                "projection_nominal", "affine", "case"):
        assert col in rows[0]
    assert {r["fov"] for r in rows} == {"upper", "lower"}
    for r in rows:
        for col in ("image", "mask", "projection_true", "projection_nominal", "case"):
            assert (dataset / r[col]).is_file(), r[col]
        assert r["split"] == json.loads((dataset / "split.json").read_text())["patients"][r["patient"]]
    assert (pdir / "model.vtk").read_bytes().find(b"SPACE=LPS") >= 0
    anatomy = json.loads((pdir / "anatomy.json").read_text())
    assert "annulus_center" in anatomy["landmarks"] and "aortic_root" in anatomy["centerlines"]
    assert all("isocenter_lps" in s and len(np.asarray(s["pose"]["T_true"])) == 4 for s in doc["series"])


def test_split_is_patient_wise_like_the_paper():
    split = phantom.split_patients(10, 0)
    values = list(split.values())
    assert (values.count("train"), values.count("val"), values.count("test")) == (7, 1, 2)
    assert split == phantom.split_patients(10, 0)


def test_dicom_round_trip_gives_the_nominal_geometry(case):
    pdir, _, doc, _ = case
    for s in doc["series"]:
        series = read_fluoro(pdir / s["file"])
        assert series.modality == "XA"
        assert series.n_frames == len(s["frames"])
        nominal = phantom.series_geometry(s)
        for i in range(series.n_frames):
            g = series.geometry(i)
            assert g.primary_angle_deg == pytest.approx(nominal.primary_angle_deg, abs=1e-6)
            assert g.secondary_angle_deg == pytest.approx(nominal.secondary_angle_deg, abs=1e-6)
            assert g.sid_mm == pytest.approx(nominal.sid_mm, abs=1e-6)
            assert g.sod_mm == pytest.approx(nominal.sod_mm, abs=1e-6)
            assert g.pixel_spacing_mm == pytest.approx(nominal.pixel_spacing_mm, abs=1e-9)
            assert (g.rows, g.cols) == (nominal.rows, nominal.cols) == (256, 256)
        assert s["geometry"]["sod_mm"] < s["geometry"]["sid_mm"]


def test_true_projection_is_the_model_projected_under_the_true_pose(case):
    """Re-derive the deformed, posed surface from model.vtk + anatomy.json + case.json."""
    pdir, _, doc, deformation = case
    points, triangles = arrays_from_polydata(load_model(pdir / "model.vtk").polydata)
    checked = 0
    for s, f in _frames(doc):
        geom = phantom.series_geometry(s)
        moved = phantom.true_points(deformation, np.asarray(s["pose"]["T_true"]), points, f)
        with ProjectionRenderer(polydata_from_arrays(moved, triangles)) as r:
            mask = r.render(geom, with_depth=False).mask > 0
        saved = _png(pdir / f["projection_true"])
        assert mask.sum() > 500
        assert (mask != saved).sum() <= 0.001 * mask.size
        checked += 1
    assert checked == 6


def test_opacified_mask_lies_inside_the_true_projection(case):
    pdir, _, doc, _ = case
    opacified = 0
    for _s, f in _frames(doc):
        m = _png(pdir / f["mask"])
        t = _png(pdir / f["projection_true"])
        assert m.sum() == f["opacified_px"]
        if m.any():
            opacified += 1
            assert (m & t).sum() >= 0.98 * m.sum()
    assert opacified >= 3


def test_affine_maps_nominal_landmarks_onto_the_true_ones(case):
    _, _, doc, _ = case
    for s, f in _frames(doc):
        M = np.asarray(f["affine"])
        assert M.shape == (3, 3) and np.allclose(M[2], (0, 0, 1))
        # the iliac wire straightening is not affine: the residual stays, but it is small
        assert f["affine_rms_px"] is not None and f["affine_rms_px"] < 0.03 * 256
        names = [n for n in f["landmarks_in_frame"] if n in f["landmarks_nominal_px"]]
        assert len(names) >= 2
        before, after = [], []
        for n in names:
            a = np.array(f["landmarks_nominal_px"][n] + [1.0])
            b = np.array(f["landmarks_px"][n])
            before.append(np.linalg.norm(a[:2] - b))
            after.append(np.linalg.norm((M @ a)[:2] - b))
        assert np.median(after) < 0.03 * 256
        assert np.median(after) <= max(0.6 * np.median(before), 3.0)


def test_landmark_pixels_are_the_true_landmarks_projected(case):
    _, pre, doc, deformation = case
    names = list(pre.landmarks)
    pts = np.array([pre.landmarks[n] for n in names])
    s, f = next(_frames(doc))
    xy = project(phantom.series_geometry(s),
                 phantom.true_points(deformation, np.asarray(s["pose"]["T_true"]), pts, f))
    for n, p in zip(names, xy):
        assert f["landmarks_px"][n] == pytest.approx(list(p), abs=1e-6)


def test_vessel_is_darker_than_its_surroundings_where_opacified(case):
    pdir, _, doc, _ = case
    compared = 0
    for s, f in _frames(doc):
        m = _png(pdir / f["mask"])
        if m.sum() < 300:
            continue
        frame = read_fluoro(pdir / s["file"]).frame(f["index"])
        ring = ndimage.binary_dilation(m, iterations=6) & ~_png(pdir / f["projection_true"])
        assert frame[m].mean() < frame[ring].mean()
        compared += 1
    assert compared >= 3


def test_same_seed_gives_the_same_data(dataset, tmp_path):
    again = _generate(tmp_path / "again")
    assert (again / "index.csv").read_bytes() == (dataset / "index.csv").read_bytes()
    for r in _rows(dataset):
        a = read_fluoro(dataset / r["image"]).frame(int(r["frame"]))
        b = read_fluoro(again / r["image"]).frame(int(r["frame"]))
        assert np.array_equal(a, b)
        assert np.array_equal(_png(dataset / r["mask"]), _png(again / r["mask"]))
    # the DICOM files themselves are byte-identical (fixed UIDs and study date/time)
    for dcm in sorted(dataset.rglob("*.dcm")):
        assert dcm.read_bytes() == (again / dcm.relative_to(dataset)).read_bytes()
    # an existing data set is not replaced without --overwrite
    assert cli.main(["phantom", "--out", str(again)] + ARGS) == 2


def test_worker_processes_give_the_same_data_as_one(tmp_path):
    """``--workers 2`` (the default on two cores) runs patients in a process pool, whose workers
    read their own meshes back in-process (a pool worker may not start the guarded reader's child)."""
    args = ["--patients", "2", "--frames-per-patient", "3", "--size", "256", "--seed", "7"]
    assert cli.main(["phantom", "--out", str(tmp_path / "one")] + args + ["--workers", "1"]) == 0
    assert cli.main(["phantom", "--out", str(tmp_path / "two")] + args + ["--workers", "2"]) == 0
    assert (tmp_path / "one" / "index.csv").read_bytes() == (tmp_path / "two" / "index.csv").read_bytes()
    for dcm in sorted((tmp_path / "one").rglob("*.dcm")):
        assert dcm.read_bytes() == (tmp_path / "two" / dcm.relative_to(tmp_path / "one")).read_bytes()


@pytest.mark.parametrize("primary, side", [(30.0, +1), (-30.0, -1)])
def test_spine_is_right_of_the_root_in_lao_and_left_in_rao(primary, side):
    pre = generate_anatomy(5)
    body = xray.build_body(pre, np.random.default_rng(0))
    spine = [s for s in body.solids if s.name.startswith("vertebral body")]
    annulus = np.asarray(pre.landmarks["annulus_center"], float)
    geom = CArmGeometry(primary, 0.0, 1000.0, 750.0, (0.8, 0.8), 256, 256, tuple(annulus))
    grid = xray.RayGrid(geom)
    L = sum(xray.solid_path_lengths(spine, grid, np.eye(4)).values())
    cols = np.arange(L.shape[1])
    spine_col = float((L.sum(axis=0) * cols).sum() / L.sum())
    root_col = float(project(geom, annulus[None])[0, 0])
    assert side * (spine_col - root_col) > 10.0


def test_tube_path_length_is_exact_for_a_straight_rod():
    """The disk-convolution tube engine gives 2 sqrt(r^2 - rho^2) across a rod."""
    geom = CArmGeometry(0.0, 0.0, 1000.0, 500.0, (0.2, 0.2), 200, 200)
    grid = xray.RayGrid(geom)
    r = 3.0
    rod = xray.LineSet.from_curve([(-30.0, 0.0, 0.0), (30.0, 0.0, 0.0)], r, "steel", spacing=0.2)
    L = xray.tube_path_lengths([rod], grid, np.eye(4))["steel"]
    # the rod runs along the image columns through the centre; magnification 2, 0.1 mm per pixel
    profile = L[:, 100].astype(float)
    # pixel-averaged 2 sqrt(r^2 - rho^2) at 0.1 mm per pixel
    fine = (np.arange(2000) + 0.5) / 10.0 - 100.0
    expected = (2.0 * np.sqrt(np.clip(r * r - (fine * 0.1) ** 2, 0.0, None))).reshape(200, 10).mean(axis=1)
    assert np.max(np.abs(profile - expected)) < 0.25
    assert profile.sum() * 0.1 == pytest.approx(np.pi * r * r, rel=0.02)  # cross-section area
    # the same rod seen obliquely (60 deg out of the image plane) is longer by 1 / sin(30 deg)
    c, s_ = np.cos(np.radians(60.0)), np.sin(np.radians(60.0))
    tilted = xray.LineSet.from_curve([(-30.0 * c, -30.0 * s_, 0.0), (30.0 * c, 30.0 * s_, 0.0)], r, "steel",
                                     spacing=0.2)
    Lt = xray.tube_path_lengths([tilted], grid, np.eye(4))["steel"][:, 100]
    assert Lt.max() == pytest.approx(2 * r / c, rel=0.05)


# ------------------------------------------------------------------------------------------------
# contrast rules and the generator version
# ------------------------------------------------------------------------------------------------
def test_contrast_rules_name_the_segments_they_apply_to():
    """Each rule of ContrastModel by exact segment name: the sinuses of Valsalva fill with the root
    (not under the coronary rule, whose names they contain); renal arteries belong to no limb."""
    from TAVIRegistrationLib.synthetic.anatomy import SEGMENTS

    rules = phantom.contrast_rules()
    assert rules == {
        "aorta": ("aortic_root", "ascending_aorta", "aortic_arch", "descending_aorta", "abdominal_aorta",
                  "sinus_right_coronary", "sinus_left_coronary", "sinus_noncoronary"),
        "coronary": ("left_coronary", "right_coronary"),
        "arch branches": ("brachiocephalic_trunk", "left_common_carotid", "left_subclavian"),
        "left limb": ("left_common_iliac", "left_external_iliac", "left_common_femoral", "left_superficial_femoral",
                      "left_internal_iliac", "left_profunda_femoris"),
        "right limb": ("right_common_iliac", "right_external_iliac", "right_common_femoral",
                       "right_superficial_femoral", "right_internal_iliac", "right_profunda_femoris"),
    }
    named = [s for segments in rules.values() for s in segments]
    assert len(named) == len(set(named)) and set(named) <= set(SEGMENTS)
    assert set(SEGMENTS) - set(named) == {"left_renal", "right_renal"}


def test_sinuses_fill_with_the_root_whatever_the_coronaries_do(case):
    """Upper FoV: in a series whose coronaries stay empty, the sinus samples carry contrast as the root
    samples next to them do."""
    _, pre, _, deformation = case
    sinus = np.isin(np.array(deformation.names)[deformation.segment],
                    ("sinus_right_coronary", "sinus_left_coronary", "sinus_noncoronary"))
    root = np.array(deformation.names)[deformation.segment] == "aortic_root"
    for seed in range(40):
        model = phantom.ContrastModel(pre, deformation, "upper", np.random.default_rng(seed), "right")
        if model.coronary_gain == 0.0:
            break
    else:
        pytest.fail("no series without coronary filling in 40 seeds")
    c = model.concentration(model.rise + 0.5)
    assert c[sinus].mean() > 0.5 * c[root].mean() > 0


def test_index_rows_carry_the_generator_version(dataset, tmp_path):
    assert {r["phantom_version"] for r in _rows(dataset)} == {str(phantom.VERSION)}
    assert phantom.case_index_version(dataset / "index.csv") == phantom.VERSION
    old = tmp_path / "old.csv"
    with open(dataset / "index.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    with open(old, "w", newline="") as fh:  # an index written before the column existed
        w = csv.DictWriter(fh, fieldnames=[c for c in rows[0] if c != "phantom_version"], extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    assert phantom.case_index_version(old) == 1
    with pytest.raises(phantom.InputError, match="mixes phantom versions"):
        phantom.check_one_version({"new": phantom.VERSION, "old": 1, "angiograms": None}, "--data")
    phantom.check_one_version({"new": phantom.VERSION, "angiograms": None}, "--data")
