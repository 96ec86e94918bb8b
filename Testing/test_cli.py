"""The command-line contract of `tavireg info` and `tavireg project` (docs/conventions.md).

Exit 0 on success; 2 on bad input with exactly one line `error: ...` on stderr and no output file
left behind; inputs never changed.
"""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from TAVIRegistrationLib.cli import main
from TAVIRegistrationLib.fluoro import write_fluoro_dicom
from TAVIRegistrationLib.geometry import CArmGeometry
from TAVIRegistrationLib.mesh import load_model, polydata_from_arrays, save_model
from TAVIRegistrationLib.projection import render_projection

GEOM = CArmGeometry(25.0, -10.0, 1050.0, 780.0, (0.3, 0.3), 192, 160)


def _tube(n=24, r=12.0, length=120.0):
    """A closed capped cylinder along z (a crude aorta), as arrays."""
    ang = np.linspace(0, 2 * np.pi, n, endpoint=False)
    zs = np.linspace(-length / 2, length / 2, 8)
    pts = [[r * np.cos(a) + 10, r * np.sin(a), z] for z in zs for a in ang]
    pts += [[10, 0, zs[0]], [10, 0, zs[-1]]]
    tris = []
    for k in range(len(zs) - 1):
        for i in range(n):
            a, b = k * n + i, k * n + (i + 1) % n
            tris += [[a, b, b + n], [a, b + n, a + n]]
    bottom, top = len(pts) - 2, len(pts) - 1
    last = (len(zs) - 1) * n
    for i in range(n):
        tris += [[bottom, (i + 1) % n, i], [top, last + i, last + (i + 1) % n]]
    return np.array(pts, float), np.array(tris)


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    d = tmp_path_factory.mktemp("case")
    pts, tris = _tube()
    model = d / "tube.vtk"
    save_model(polydata_from_arrays(pts, tris), model, space="LPS")
    fluoro = d / "frame.dcm"
    write_fluoro_dicom(fluoro, (np.arange(192 * 160) % 251).reshape(192, 160).astype(np.uint8), GEOM)
    return d, model, fluoro


def run(args, capsys):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def assert_input_error(code, err):
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err


def sha(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# ---------------------------------------------------------------------------------------- info
def test_info_json_has_the_contract_keys(case, capsys):
    _, _, fluoro = case
    code, out, err = run(["info", fluoro, "--json"], capsys)
    assert code == 0, err
    info = json.loads(out)
    for key in ("modality", "rows", "cols", "frames", "primary_angle_deg", "secondary_angle_deg", "sid_mm",
                "sod_mm", "imager_pixel_spacing_mm", "magnification", "warnings"):
        assert key in info
    assert info["modality"] == "XA" and (info["rows"], info["cols"], info["frames"]) == (192, 160, 1)
    assert info["primary_angle_deg"] == pytest.approx(25.0)
    assert info["secondary_angle_deg"] == pytest.approx(-10.0)
    assert info["sid_mm"] == pytest.approx(1050.0) and info["sod_mm"] == pytest.approx(780.0)
    assert info["imager_pixel_spacing_mm"] == pytest.approx([0.3, 0.3])
    assert info["magnification"] == pytest.approx(1050.0 / 780.0)
    assert info["warnings"] == []


def test_info_names_a_fallback_in_warnings(tmp_path, capsys):
    f = tmp_path / "nosod.dcm"
    ds = write_fluoro_dicom(f, np.zeros((64, 64), np.uint8), CArmGeometry(0, 0, 1000, 800, (0.3, 0.3), 64, 64),
                            omit_tags=("DistanceSourceToPatient",))
    assert "DistanceSourceToPatient" not in ds
    code, out, err = run(["info", f, "--json"], capsys)
    assert code == 0, err
    info = json.loads(out)
    assert info["sod_mm"] == pytest.approx(800.0)  # SID / EstimatedRadiographicMagnificationFactor
    assert any("SOD" in w and "1114" in w for w in info["warnings"])


def test_info_without_sod_or_magnification_is_an_error(tmp_path, capsys):
    f = tmp_path / "nosod.dcm"
    write_fluoro_dicom(f, np.zeros((64, 64), np.uint8), CArmGeometry(0, 0, 1000, 800, (0.3, 0.3), 64, 64),
                       omit_tags=("DistanceSourceToPatient", "EstimatedRadiographicMagnificationFactor"))
    code, _, err = run(["info", f, "--json"], capsys)
    assert_input_error(code, err)
    assert "1111" in err


def test_geometry_overrides_supply_what_the_file_lacks_on_every_command(case, tmp_path, capsys):
    """A run without SOD (nor magnification) is refused until --sod supplies it: info, project and
    register take the same overrides, segment needs no geometry at all; each override is named."""
    d, model, _ = case
    f = tmp_path / "nosod.dcm"
    frame = np.full((192, 160), 200, np.uint8)
    truth = render_projection(load_model(model).polydata, GEOM.with_isocenter((10.0, 0.0, 0.0))).mask
    frame[truth > 0] = 60
    write_fluoro_dicom(f, frame, GEOM, omit_tags=("DistanceSourceToPatient", "EstimatedRadiographicMagnificationFactor"))
    Image.fromarray(truth * 255).save(tmp_path / "truth.png")
    register = ["register", "--model", model, "--fluoro", f, "--isocenter", "10,0,0", "--fixed-mask",
                tmp_path / "truth.png", "--method", "sitk", "--json"]
    for args in (["info", f, "--json"], register + ["--out", tmp_path / "reg0"]):
        code, _, err = run(args, capsys)
        assert_input_error(code, err)
        assert "supply the SOD" in err
    code, out, err = run(["info", f, "--sod", "780", "--json"], capsys)
    assert code == 0, err
    info = json.loads(out)
    assert info["sod_mm"] == pytest.approx(780.0) and info["magnification"] == pytest.approx(1050.0 / 780.0)
    assert any("SOD 780 supplied by the caller" in w for w in info["warnings"])
    code, out, err = run(["info", f, "--sod", "780", "--primary", "-30", "--json"], capsys)
    assert json.loads(out)["primary_angle_deg"] == pytest.approx(-30.0)
    assert any("primary angle -30" in w and "overrides the file's 25" in w for w in json.loads(out)["warnings"])
    code, out, err = run(register + ["--sod", "780", "--out", tmp_path / "reg"], capsys)
    assert code == 0, err
    assert any("SOD 780 supplied by the caller" in w for w in json.loads(out)["warnings"])
    code, _, err = run(["project", "--model", model, "--fluoro", f, "--sod", "780", "--isocenter", "10,0,0",
                        "--out", tmp_path / "proj.png"], capsys)
    assert code == 0, err
    assert "SOD 780 supplied by the caller" in err
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "proj.png")) > 0, truth > 0)
    code, _, err = run(["segment", f, "--out", tmp_path / "mask.png"], capsys)
    assert code == 0, err


def test_info_human_readable(case, capsys):
    code, out, _ = run(["info", case[2]], capsys)
    assert code == 0 and "LAO" in out and "CAU" in out and "1050.0 mm" in out


@pytest.mark.parametrize("make", ["random", "truncated", "nopixels", "ct", "sid0", "png", "missing"])
def test_info_bad_input_exit_2(make, case, tmp_path, capsys):
    _, _, good = case
    f = tmp_path / f"{make}.dcm"
    if make == "random":
        f.write_bytes(np.random.default_rng(0).bytes(4096))
    elif make == "truncated":
        f.write_bytes(good.read_bytes()[:700])
    elif make == "png":
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(f, format="PNG")
    elif make in ("nopixels", "ct", "sid0"):
        import pydicom

        ds = pydicom.dcmread(good)
        if make == "nopixels":
            del ds.PixelData
        elif make == "ct":
            ds.Modality = "CT"
            ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
            ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        else:
            ds.DistanceSourceToDetector = "0"
        ds.save_as(f)
    before = sha(f) if f.exists() else None
    code, _, err = run(["info", f, "--json"], capsys)
    assert_input_error(code, err)
    if before:
        assert sha(f) == before


# ------------------------------------------------------------------------------------- project
def test_project_from_fluoro_matches_the_library(case, tmp_path, capsys):
    _, model, fluoro = case
    out = tmp_path / "proj.png"
    depth = tmp_path / "depth.png"
    code, stdout, err = run(["project", "--model", model, "--fluoro", fluoro, "--isocenter", "0,0,0",
                             "--out", out, "--depth", depth, "--json"], capsys)
    assert code == 0, err
    png = np.array(Image.open(out))
    assert png.shape == (192, 160) and set(np.unique(png)) == {0, 255}
    expected = render_projection(load_model(model).polydata, GEOM).mask
    assert np.array_equal(png > 0, expected > 0)
    summary = json.loads(stdout)
    assert summary["area_px"] == int(expected.sum())
    assert np.allclose(summary["projection_matrix"], GEOM.projection_matrix())
    d = np.array(Image.open(depth))
    assert d.shape == png.shape and d[png == 0].max() == 0 and d[png > 0].min() > 0


def test_project_export_writes_the_projection_export(case, tmp_path, capsys):
    _, model, fluoro = case
    out = tmp_path / "export"
    code, _, err = run(["project", "--model", model, "--fluoro", fluoro, "--isocenter", "0,0,0",
                        "--out", tmp_path / "proj.png", "--export", out], capsys)
    assert code == 0, err
    assert sorted(os.listdir(out)) == ["overlay.png", "projection.json", "projection.png"]
    assert np.array_equal(np.array(Image.open(out / "projection.png")), np.array(Image.open(tmp_path / "proj.png")))
    assert np.array(Image.open(out / "overlay.png")).shape == (192, 160, 3)
    record = json.loads((out / "projection.json").read_text())
    assert record["format"] == 1 and record["frame"] == 0 and record["registered"] is False
    assert record["isocenter_source"] == "given" and record["roi_source"] == "default"
    assert record["area_px"] == int((np.array(Image.open(out / "projection.png")) > 0).sum())


def test_project_export_needs_the_frame(case, tmp_path, capsys):
    _, model, _ = case
    code, _, err = run(["project", "--model", model, "--primary", 25, "--secondary", -10, "--sid", 1050,
                        "--sod", 780, "--spacing", 0.3, "--rows", 192, "--cols", 160,
                        "--out", tmp_path / "p.png", "--export", tmp_path / "export"], capsys)
    assert_input_error(code, err)
    assert not (tmp_path / "p.png").exists() and not (tmp_path / "export").exists()


def test_project_manual_geometry_equals_fluoro_geometry(case, tmp_path, capsys):
    _, model, fluoro = case
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    assert run(["project", "--model", model, "--fluoro", fluoro, "--out", a], capsys)[0] == 0
    code, _, err = run(["project", "--model", model, "--primary", 25, "--secondary", -10, "--sid", 1050,
                        "--sod", 780, "--spacing", "0.3,0.3", "--rows", 192, "--cols", 160, "--out", b], capsys)
    assert code == 0, err
    assert "isocentre not given" in err  # the fallback is named
    assert np.array_equal(np.array(Image.open(a)), np.array(Image.open(b)))


def test_project_orthographic_differs_but_overlaps(case, tmp_path, capsys):
    _, model, fluoro = case
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    run(["project", "--model", model, "--fluoro", fluoro, "--out", a], capsys)
    assert run(["project", "--model", model, "--fluoro", fluoro, "--orthographic", "--out", b], capsys)[0] == 0
    pa, pb = np.array(Image.open(a)) > 0, np.array(Image.open(b)) > 0
    dice = 2 * (pa & pb).sum() / (pa.sum() + pb.sum())
    assert 0.7 < dice < 1.0


def test_project_units_and_space_change_the_picture(case, tmp_path, capsys):
    _, model, fluoro = case
    outs = {}
    for name, extra in {"mm": [], "cm": ["--units", "cm"], "ras": ["--space", "RAS"]}.items():
        outs[name] = tmp_path / f"{name}.png"
        code, _, err = run(["project", "--model", model, "--fluoro", fluoro, "--isocenter", "0,0,0",
                            "--out", outs[name]] + extra, capsys)
        assert code == 0, err
    mm, cm, ras = (np.array(Image.open(outs[k])) > 0 for k in ("mm", "cm", "ras"))
    # RAS flips x: the tube centred at x=+10 (patient left) moves to the patient's right
    assert np.nonzero(ras)[1].mean() < np.nonzero(mm)[1].mean()
    assert cm.sum() > 1.5 * mm.sum()  # ten times larger model: fills most of the detector


def _bad_meshes(d):
    empty = d / "empty.stl"
    empty.write_bytes(b"")
    nan = d / "nan.vtk"
    pts, tris = _tube()
    pts[3] = np.nan
    nan.write_text(
        "# vtk DataFile Version 4.2\nbad\nASCII\nDATASET POLYDATA\nPOINTS %d float\n" % len(pts)
        + "\n".join(" ".join("nan" if np.isnan(v) else f"{v:.3f}" for v in p) for p in pts)
        + "\nPOLYGONS %d %d\n" % (len(tris), 4 * len(tris))
        + "\n".join("3 %d %d %d" % tuple(t) for t in tris) + "\n"
    )
    unknown = d / "model.xyz"
    unknown.write_text("1 2 3\n")
    garbage = d / "garbage.stl"
    garbage.write_bytes(np.random.default_rng(1).bytes(300))
    return {"empty": empty, "nan": nan, "unknown": unknown, "garbage": garbage}


@pytest.mark.parametrize("kind", ["empty", "nan", "unknown", "garbage"])
def test_project_bad_mesh_exit_2_and_no_output(kind, case, tmp_path, capsys):
    _, _, fluoro = case
    bad = _bad_meshes(tmp_path)[kind]
    before = sha(bad)
    out = tmp_path / "out" / "proj.png"
    code, _, err = run(["project", "--model", bad, "--fluoro", fluoro, "--out", out], capsys)
    assert_input_error(code, err)
    assert not out.exists()
    assert sha(bad) == before
    assert not [p for p in tmp_path.rglob("*.part")]


@pytest.mark.parametrize("args", [
    ["--primary", 0],  # incomplete manual geometry
    ["--primary", 0, "--secondary", 0, "--sid", 0, "--sod", 700, "--spacing", 0.3, "--rows", 64, "--cols", 64],
    ["--primary", 0, "--secondary", 0, "--sid", 1000, "--sod", 700, "--spacing", -0.3, "--rows", 64, "--cols", 64],
    ["--primary", 0, "--secondary", 0, "--sid", 1000, "--sod", 700, "--spacing", "a,b", "--rows", 64, "--cols", 64],
])
def test_project_bad_geometry_exit_2(args, case, tmp_path, capsys):
    _, model, _ = case
    out = tmp_path / "p.png"
    code, _, err = run(["project", "--model", model, "--out", out] + args, capsys)
    assert_input_error(code, err)
    assert not out.exists()


def test_project_model_outside_the_detector_exit_2(case, tmp_path, capsys):
    _, model, fluoro = case
    out = tmp_path / "p.png"
    code, _, err = run(["project", "--model", model, "--fluoro", fluoro, "--isocenter", "0,0,400", "--out", out], capsys)
    assert_input_error(code, err)
    assert not out.exists()


def test_project_refuses_to_overwrite_its_input(case, tmp_path, capsys):
    _, model, fluoro = case
    before = sha(fluoro)
    code, _, err = run(["project", "--model", model, "--fluoro", fluoro, "--out", fluoro], capsys)
    assert_input_error(code, err)
    assert sha(fluoro) == before


def test_project_frame_out_of_range(case, tmp_path, capsys):
    _, model, fluoro = case
    code, _, err = run(["project", "--model", model, "--fluoro", fluoro, "--frame", 5, "--out", tmp_path / "p.png"], capsys)
    assert_input_error(code, err)


def test_real_aorta_loads_and_projects(shared_data, tmp_path, capsys):
    stl = shared_data / "meshes" / "thoracic_aorta" / "wall_aorta.stl"
    if not stl.exists():
        pytest.skip(f"{stl} not present")
    out = tmp_path / "aorta.png"
    code, _, err = run(["project", "--model", stl, "--primary", -30, "--secondary", 0, "--sid", 1000, "--sod", 750,
                        "--spacing", 0.3, "--rows", 512, "--cols", 512, "--out", out], capsys)
    assert code == 0, err
    assert "assum" in err  # units and space are unstated in that file: the assumptions are named
    mask = np.array(Image.open(out)) > 0
    assert 0.01 < mask.mean() < 0.6


def test_console_script_usage_error_is_one_line():
    exe = Path(sys.executable).with_name("tavireg")
    if not exe.exists():
        pytest.skip("console script not installed in this environment")
    proc = subprocess.run([str(exe), "project", "--nonsense"], capture_output=True, text=True,
                          env={**os.environ, "TAVIREG_DEBUG": ""})
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and proc.stderr.startswith("error: ")
