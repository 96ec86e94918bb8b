"""``tavireg foreign``: registration cases from a vessel surface the phantom did not draw.

A small surface (the sample case's toy aortic root) stands in for a real anatomy; the real thoracic aorta in
``../shared/data/meshes`` is used where it is present.
"""

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from TAVIRegistrationLib import cli
from TAVIRegistrationLib.fluoro import read_fluoro
from TAVIRegistrationLib.mesh import load_model, save_model
from TAVIRegistrationLib.synthetic import foreign
from TAVIRegistrationLib.synthetic.phantom import case_index_version, frame_truth

SHARED_AORTA = Path(__file__).resolve().parents[2] / "shared" / "data" / "meshes" / "thoracic_aorta"


def bent_tube(tmp_path: Path) -> Path:
    """The sample case's toy aortic root (a curved tube and a sphere, under 120 mm across: it gets scaled)."""
    from TAVIRegistrationLib.synthetic.sample_case import vessel_polydata

    return save_model(vessel_polydata(), tmp_path / "root.stl")


def test_foreign_cases_carry_a_consistent_ground_truth(tmp_path):
    mesh = bent_tube(tmp_path)
    out = tmp_path / "foreign"
    summary = foreign.generate_foreign(foreign.ForeignConfig(meshes=[mesh], out=out, poses=2, styles=["bold"],
                                                             seed=3, size=256))
    b = np.asarray(load_model(mesh).bounds).reshape(3, 2)
    assert summary["frames"] == 2 and summary["scale"] * (b[:, 1] - b[:, 0]).max() == pytest.approx(150.0)
    assert any("scaled by" in n for n in summary["notes"])
    with open(out / "index.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["style"] for r in rows] == ["bold", "bold"] and all(r["split"] == "test" for r in rows)
    assert case_index_version(out / "index.csv") is None  # not a phantom's: validates beside any version
    for row in rows:
        series = read_fluoro(out / row["image"])
        assert series.n_frames == 1 and series.bits_stored == 12 and series.photometric_interpretation == "MONOCHROME2"
        geom = series.geometry(0)
        assert (geom.rows, geom.cols) == (256, 256) and geom.primary_angle_deg == pytest.approx(float(row["primary_deg"]))
        truth = frame_truth(out, row)
        assert truth.mask.any() and truth.projection_nominal.any()
        # the lumen is darker than the background around it
        frame = series.frame(0)
        assert frame[truth.mask > 0].mean() < frame[truth.mask == 0].mean()
        # the affine maps the nominal landmarks onto the true ones (to the rigid motion's 2D residual)
        nominal = np.array([truth.landmarks_nominal_px[k] for k in sorted(truth.landmarks_px)])
        true = np.array([truth.landmarks_px[k] for k in sorted(truth.landmarks_px)])
        mapped = nominal @ truth.affine[:2, :2].T + truth.affine[:2, 2]
        moved = np.linalg.norm(true - nominal, axis=1).mean()
        assert np.linalg.norm(mapped - true, axis=1).mean() < 0.25 * moved
        assert truth.user_roi() is not None
    same = foreign.generate_foreign(foreign.ForeignConfig(meshes=[mesh], out=tmp_path / "again", poses=2,
                                                          styles=["bold"], seed=3, size=256))
    assert same["frames"] == 2
    assert (tmp_path / "again" / "index.csv").read_text() == (out / "index.csv").read_text()


def test_foreign_command_refuses_bad_input(tmp_path, capsys):
    mesh = bent_tube(tmp_path)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x.txt").write_text("x")
    bad = [
        ["--mesh", str(tmp_path / "missing.stl"), "--out", str(tmp_path / "a")],
        ["--mesh", str(mesh), "--out", str(tmp_path / "b"), "--styles", "angio", "--backgrounds", str(tmp_path)],
        ["--mesh", str(mesh), "--out", str(tmp_path / "c"), "--styles", "watercolour"],
        ["--mesh", str(mesh), "--out", str(tmp_path / "full"), "--styles", "bold"],
        ["--mesh", str(mesh), "--out", str(tmp_path / "d"), "--poses", "0", "--styles", "bold"],
    ]
    for argv in bad:
        assert cli.main(["foreign", *argv]) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert not any((tmp_path / n).exists() for n in "abcd")
    assert cli.main(["foreign", "--mesh", str(mesh), "--out", str(tmp_path / "ok"), "--poses", "1", "--styles",
                     "bold", "--size", "128", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["frames"] == 1


@pytest.mark.skipif(not SHARED_AORTA.is_dir(), reason="the real aorta of ../shared/data is not here")
def test_the_real_aorta_in_both_styles(tmp_path):
    angios = SHARED_AORTA.parents[1] / "angios40" / "train"
    if not angios.is_dir():
        pytest.skip("the real angiograms of ../shared/data are not here")
    meshes = [SHARED_AORTA / "wall_aorta.stl"] + sorted(SHARED_AORTA.glob("inlet.stl")) + sorted(SHARED_AORTA.glob("outlet*.stl"))
    out = tmp_path / "aorta"
    summary = foreign.generate_foreign(foreign.ForeignConfig(meshes=meshes, out=out, poses=1, seed=0, size=256,
                                                             backgrounds=angios))
    assert summary["frames"] == 2 and summary["styles"] == ["bold", "angio"]
    with open(out / "index.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    angio = read_fluoro(out / rows[1]["image"])
    assert angio.bits_stored == 8 and frame_truth(out, rows[1]).mask.any()
