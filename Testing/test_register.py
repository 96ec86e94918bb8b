"""`tavireg register` and `tavireg demo` end to end on a phantom case, and the affine M.

The registration networks are trained separately (`tavireg train-seg/train-reg`); these tests use
the optimisation method (`sitk`) and the ground-truth vessel mask (`--fixed-mask`), so they check
the pipeline, the affine convention and the exports whatever weights are installed.
"""

import csv
import json
import re

import numpy as np
import pydicom
import pytest
from PIL import Image

from TAVIRegistrationLib.cli import main
from TAVIRegistrationLib.fluoro import read_fluoro, write_fluoro_dicom
from TAVIRegistrationLib.mesh import load_model
from TAVIRegistrationLib.synthetic.phantom import frame_truth
from TAVIRegistrationLib.pipeline import RegistrationPipeline
from TAVIRegistrationLib.registration import warp_mask

OUTPUTS = ("overlay.png", "registered_projection.png", "transform.json", "overlay.dcm")


@pytest.fixture(scope="module")
def frame(phantom_dataset):
    """The upper-FoV frame with the most contrast, and its ground truth."""
    with open(phantom_dataset / "index.csv", newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["fov"] == "upper"]
    row = max(rows, key=lambda r: int(r["opacified_px"]))
    truth = frame_truth(phantom_dataset, row)
    mask_png = phantom_dataset / row["mask"]
    return phantom_dataset, row, truth, mask_png


def _args(frame, out, *extra):
    root, row, truth, mask_png = frame
    iso = ",".join(row["isocenter_lps"].split(";"))
    return ["register", "--model", str(root / row["case"]).replace("case.json", "model.vtk"),
            "--fluoro", str(root / row["image"]), "--frame", row["frame"], f"--isocenter={iso}",
            "--out", str(out)] + [str(e) for e in extra]


def _one_line_error(code, capsys):
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and err.strip().count("\n") == 0, err
    return err


def test_register_writes_the_contract_outputs(frame, tmp_path, capsys):
    root, row, truth, mask_png = frame
    roi = truth.user_roi()
    out = tmp_path / "reg"
    code = main(_args(frame, out, "--fixed-mask", mask_png, "--method", "sitk", "--roi", ",".join(map(str, roi)), "--json"))
    assert code == 0, capsys.readouterr().err
    summary = json.loads(capsys.readouterr().out)
    for name in OUTPUTS + ("metrics.csv",):
        assert (out / name).is_file(), name
    t = json.loads((out / "transform.json").read_text())
    M = np.array(t["matrix"])
    assert M.shape == (3, 3) and np.allclose(M[2], [0, 0, 1])
    assert t["roi"] == list(roi) and t["fixed_mask"] == "given" and set(t["metrics"]) >= {"dice", "precision", "recall"}
    reg = np.array(Image.open(out / "registered_projection.png"))
    assert reg.shape == truth.mask.shape and set(np.unique(reg)) <= {0, 255}
    # the registered projection agrees with the truth better than the unregistered one
    x, y, w, h = roi
    nominal = truth.projection_nominal.copy()
    nominal[:y] = 0; nominal[y + h:] = 0; nominal[:, :x] = 0; nominal[:, x + w:] = 0  # noqa: E702
    def dice(a, b):
        a, b = a > 0, b > 0
        return 2 * (a & b).sum() / (a.sum() + b.sum())
    assert dice(reg, truth.mask) > dice(nominal, truth.mask)
    assert summary["metrics"]["dice"] > 0.8
    # the Secondary Capture files into the frame's study, with new series/instance UIDs
    sc = pydicom.dcmread(out / "overlay.dcm")
    src = pydicom.dcmread(root / row["image"], stop_before_pixels=True)
    assert sc.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7" and sc.StudyInstanceUID == src.StudyInstanceUID
    assert sc.SeriesInstanceUID != src.SeriesInstanceUID and sc.SOPInstanceUID != src.SOPInstanceUID
    assert sc.pixel_array.shape == truth.mask.shape + (3,)
    assert np.array_equal(sc.pixel_array, np.array(Image.open(out / "overlay.png")))


def test_whole_model_registers_the_whole_projection(frame, tmp_path, capsys):
    """By default cnn+refine registers the projection up to the contrast front and says how
    much it left out; ``--whole-model`` leaves nothing out."""
    root, row, truth, mask_png = frame
    roi = ",".join(map(str, truth.user_roi()))
    shares = {}
    for name, extra in (("front", ()), ("whole", ("--whole-model",))):
        out = tmp_path / name
        code = main(_args(frame, out, "--fixed-mask", mask_png, "--method", "cnn+refine", "--roi", roi, *extra))
        err = capsys.readouterr().err
        assert code == 0, err
        t = json.loads((out / "transform.json").read_text())
        shares[name] = t["metrics"]["hidden_share"]
        assert ("contrast front" in err) == (shares[name] > 0), err
    assert shares["whole"] == 0.0
    assert 0.0 <= shares["front"] <= 1.0 - 0.3  # filling.MIN_KEEP of the projection is always kept


def test_anonymize_strips_patient_identity_from_every_output(frame, tmp_path, capsys):
    """--anonymize: no output file holds the source's patient name, ID or study/series/instance UIDs;
    the Secondary Capture says so (PatientIdentityRemoved) and does not point back to the source."""
    from TAVIRegistrationLib.export import STUDY_ATTRIBUTES

    root, row, truth, mask_png = frame
    src = pydicom.dcmread(root / row["image"], stop_before_pixels=True)
    src.PatientBirthDate, src.AccessionNumber = "19400101", "ACC12345"  # identifiers the phantom leaves empty
    source = tmp_path / "source.dcm"
    src_full = pydicom.dcmread(root / row["image"])
    src_full.PatientBirthDate, src_full.AccessionNumber = src.PatientBirthDate, src.AccessionNumber
    src_full.InstitutionName = "Heart Centre Example"  # not needed by the export: never copied
    src_full.save_as(source)
    args = _args(frame, tmp_path / "plain", "--fixed-mask", mask_png, "--method", "sitk")
    args[args.index("--fluoro") + 1] = str(source)
    assert main(args) == 0, capsys.readouterr().err
    plain = pydicom.dcmread(tmp_path / "plain" / "overlay.dcm")
    assert plain.PatientID == src.PatientID and plain.StudyInstanceUID == src.StudyInstanceUID
    assert "InstitutionName" not in plain  # only what filing into the study needs is copied
    copied = {e.keyword for e in plain if e.keyword in {x.keyword for x in src_full}}
    assert copied <= set(STUDY_ATTRIBUTES) | {"SOPClassUID", "Modality", "Rows", "Columns", "BitsAllocated",
                                              "BitsStored", "HighBit", "PixelRepresentation", "SamplesPerPixel",
                                              "PhotometricInterpretation", "PixelData", "SeriesNumber",
                                              "InstanceNumber", "SeriesDate", "SeriesTime", "ContentDate",
                                              "ContentTime", "Manufacturer", "SoftwareVersions", "ImageType",
                                              "SeriesDescription", "SOPInstanceUID", "SeriesInstanceUID",
                                              "BurnedInAnnotation", "PlanarConfiguration", "ImageComments"}, copied

    args[args.index("--out") + 1] = str(tmp_path / "anon")
    assert main(args + ["--anonymize"]) == 0, capsys.readouterr().err
    anon = pydicom.dcmread(tmp_path / "anon" / "overlay.dcm")
    assert anon.PatientIdentityRemoved == "YES" and anon.DeidentificationMethod
    assert anon.StudyInstanceUID != src.StudyInstanceUID and "SourceImageSequence" not in anon
    secrets = [str(src.PatientName), src.PatientID, src.StudyInstanceUID, src.SeriesInstanceUID,
               src.SOPInstanceUID, "19400101", "ACC12345", "Heart Centre Example"]
    for f in (tmp_path / "anon").iterdir():
        data = f.read_bytes()
        for secret in secrets:
            assert secret.encode() not in data, (f.name, secret)
    assert json.loads((tmp_path / "anon" / "transform.json").read_text())["anonymized_dicom"] is True
    np.testing.assert_array_equal(anon.pixel_array, plain.pixel_array)


def test_known_affine_is_recovered_within_a_pixel(frame):
    """Fixed image = the nominal projection (inside the ROI) moved by a known affine on the frame grid."""
    root, row, truth, _ = frame
    series = read_fluoro(root / row["image"])
    model = load_model(root / row["case"].replace("case.json", "model.vtk"))
    iso = tuple(float(v) for v in row["isocenter_lps"].split(";"))
    with RegistrationPipeline(model, series, isocenter_lps=iso) as pipe:
        i = int(row["frame"])
        proj = pipe.project(i).projection.mask
        rows, cols = proj.shape
        roi = truth.user_roi()
        x, y, w, h = roi
        moving_roi = proj[y:y + h, x:x + w]
        a = np.deg2rad(3.0)
        A = np.array([[1.04 * np.cos(a), -np.sin(a), 6.0], [np.sin(a), 0.98 * np.cos(a), -4.0], [0, 0, 1]])
        c = np.array([x + w / 2, y + h / 2])
        A[:2, 2] += c - A[:2, :2] @ c  # about the ROI centre
        T_roi = np.array([[1, 0, x], [0, 1, y], [0, 0, 1.0]])
        fixed = warp_mask(moving_roi, A @ T_roi, (rows, cols))
        reg = pipe.register(i, roi, fixed_mask=fixed, method="sitk")
        assert reg.valid, reg.result.problems
        # the run's FoV (which picks a FoV's registration network): its header's, unless one is named
        assert (pipe.fov(), pipe.fov("lower"), pipe.fov("auto")) == (row["fov"], "lower", row["fov"])
        corners = np.array([[0, 0, 1], [w - 1, 0, 1], [0, h - 1, 1], [w - 1, h - 1, 1]], float).T
        err = np.hypot(*((reg.matrix @ corners)[:2] - (A @ T_roi @ corners)[:2]))
        assert err.max() < 1.0, err


@pytest.mark.parametrize("case", ["empty-mask", "wrong-size", "roi-outside", "roi-off-projection", "degenerate"])
def test_bad_registration_input_exit_2_and_no_output(case, frame, tmp_path, capsys):
    root, row, truth, mask_png = frame
    out = tmp_path / "reg"
    rows, cols = truth.mask.shape
    mask = tmp_path / "mask.png"
    roi = truth.user_roi()
    if case == "empty-mask":
        Image.fromarray(np.zeros((rows, cols), np.uint8)).save(mask)
    elif case == "wrong-size":
        Image.fromarray(np.zeros((rows + 3, cols), np.uint8)).save(mask)
    elif case == "degenerate":  # a tiny blob: no affine can explain it
        m = np.zeros((rows, cols), np.uint8)
        m[5:8, 5:8] = 255
        Image.fromarray(m).save(mask)
    else:
        mask = mask_png
        if case == "roi-outside":
            roi = (cols + 10, 0, 20, 20)
        else:
            empty = np.argwhere(truth.projection_nominal == 0)
            r0, c0 = empty[len(empty) // 2]
            ys, xs = np.nonzero(truth.projection_nominal == 0)
            # a 16x16 square free of the projection
            for r0, c0 in zip(ys[::97], xs[::97]):
                if r0 + 16 <= rows and c0 + 16 <= cols and not truth.projection_nominal[r0:r0 + 16, c0:c0 + 16].any():
                    break
            roi = (int(c0), int(r0), 16, 16)
    before = mask.read_bytes()
    code = main(_args(frame, out, "--fixed-mask", mask, "--method", "sitk", "--roi", ",".join(map(str, roi))))
    err = _one_line_error(code, capsys)
    if case == "empty-mask":  # the problem and what to do about it
        assert "the given vessel mask is empty" in err and "pick a frame with contrast" in err
    assert not any((out / n).exists() for n in OUTPUTS)
    assert mask.read_bytes() == before


def test_fixed_mask_cannot_serve_a_whole_run(frame, tmp_path, capsys):
    root, row, truth, mask_png = frame
    args = _args(frame, tmp_path / "o", "--fixed-mask", mask_png, "--method", "sitk")
    args[args.index("--frame") + 1] = "all"
    _one_line_error(main(args), capsys)


def test_frame_auto_registers_the_most_opacified_frame_and_says_so(frame, tmp_path, capsys):
    root, row, truth, mask_png = frame
    args = _args(frame, tmp_path / "auto", "--fixed-mask", mask_png, "--method", "sitk", "--json")
    args[args.index("--frame") + 1] = "auto"
    assert main(args) == 0, capsys.readouterr().err
    summary = json.loads(capsys.readouterr().out)
    series = read_fluoro(root / row["image"])
    want = series.most_opacified_frame()
    assert summary["frames"] == [want]
    assert any(w.startswith(f"--frame auto: frame {want} of {series.n_frames}") for w in summary["warnings"])
    args[args.index("--frame") + 1] = "peak"
    assert "'auto'" in _one_line_error(main(args), capsys)


def test_demo_runs_and_reports(tmp_path, capsys, monkeypatch):
    # no networks installed: the demo registers to the ground-truth mask with SimpleITK, and says so
    monkeypatch.setenv("TAVIREG_MODELS_DIR", str(tmp_path / "no-models"))
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--method", "sitk", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert (out / "report.md").is_file() and (out / "registration" / "overlay.png").is_file()
    text = (out / "report.md").read_text()
    for pic in ("frame_with_unregistered_projection.png", "fixed_mask.png", "registered_vs_truth.png"):
        assert pic in text and (out / pic).is_file()
    assert result["dice_vs_truth"] > result["dice_before"]
    assert result["segmentation"] == "ground truth"
    assert any("no segmentation network" in w for w in result["warnings"])


def test_low_agreement_is_flagged_and_shown(frame, tmp_path, capsys, monkeypatch):
    """A registration below the installed low-agreement threshold is written, but flagged: a
    FLAGGED line, transform.json says so, the overlay has the red border (here the threshold 0.999
    makes every registration low-agreement)."""
    import torch

    from TAVIRegistrationLib.networks.weights import add_manifest_entry
    from TAVIRegistrationLib.overlay import FLAG_COLOR
    from TAVIRegistrationLib.networks.regnet import RegNet, scaled_channels

    models = tmp_path / "models"
    models.mkdir()
    torch.jit.script(RegNet(in_size=64, channels=scaled_channels(0.1), fc=16)).save(str(models / "tiny.pt"))
    add_manifest_entry({"name": "tiny", "file": "tiny.pt", "kind": "registration", "input_size": [64, 64],
                        "low_agreement_dice": 0.999}, models)
    monkeypatch.setenv("TAVIREG_MODELS_DIR", str(models))
    root, row, truth, mask_png = frame
    out = tmp_path / "reg"
    code = main(_args(frame, out, "--fixed-mask", mask_png, "--method", "sitk", "--roi",
                      ",".join(map(str, truth.user_roi()))))
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert captured.out.startswith("FLAGGED") and "LOW AGREEMENT" in captured.err
    t = json.loads((out / "transform.json").read_text())
    assert t["valid"] is True and t["flagged"] is True and "below 0.999" in t["flags"][0]
    shown = re.search(r"Dice (\d\.\d{3}) .* below (\d\.\d{3})", t["flags"][0])  # both legible, and apart
    assert shown and float(shown[1]) < float(shown[2]) and abs(float(shown[1]) - t["metrics"]["dice"]) < 6e-4
    rgb = np.array(Image.open(out / "overlay.png"))
    assert (rgb[0, :] == FLAG_COLOR).all() and (rgb[:, -1] == FLAG_COLOR).all()
    assert "FLAGGED" in pydicom.dcmread(out / "overlay.dcm").ImageComments


def test_a_run_survives_a_frame_that_fails(frame, tmp_path, capsys):
    """--frame all over a run whose middle frame is blank (nothing to segment): it is recorded as failed
    (warnings, frames.csv, the movie) and the others register; a run where no frame registers exits 2
    and writes nothing."""
    root, row, truth, mask_png = frame
    source = root / row["image"]
    stored = pydicom.dcmread(source).pixel_array
    stored = stored if stored.ndim == 3 else stored[None]
    good = stored[int(row["frame"])]
    blank = np.full_like(good, int(np.median(good)))
    geometry = read_fluoro(source, load_pixels=False).geometry(int(row["frame"]))
    bits = int(pydicom.dcmread(source, stop_before_pixels=True).BitsStored)
    run = tmp_path / "run.dcm"
    write_fluoro_dicom(run, np.stack([good, blank, good]), geometry, bits_stored=bits, frame_time_ms=66.7)
    args = _args(frame, tmp_path / "out", "--method", "sitk", "--json")
    args[args.index("--fluoro") + 1] = str(run)
    args[args.index("--frame") + 1] = "all"
    code = main(args)
    captured = capsys.readouterr()
    assert code == 0, captured.err
    summary = json.loads(captured.out)
    assert summary["failed_frames"] == [1] and summary["frames"] == [0, 2]
    assert any(w.startswith("frame 1 not registered: ") for w in summary["warnings"]), summary["warnings"]
    with open(tmp_path / "out" / "frames.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["frame"] for r in rows] == ["0", "1", "2"] and rows[1]["status"] == "failed"
    assert {rows[0]["status"], rows[2]["status"]} <= {"registered", "flagged"}
    assert "nothing to segment" in rows[1]["problem"] and rows[1]["m00"] == ""
    assert Image.open(tmp_path / "out" / "overlay.gif").n_frames == 3
    transform = json.loads((tmp_path / "out" / "transform.json").read_text())
    assert transform["frame"] == 2 and list(transform["failed_frames"]) == ["1"]

    write_fluoro_dicom(run, np.stack([blank, blank]), geometry, bits_stored=bits, frame_time_ms=66.7)
    args[args.index("--out") + 1] = str(tmp_path / "none")
    err = _one_line_error(main(args), capsys)
    assert "no frame of the run registered" in err and not (tmp_path / "none").exists()
