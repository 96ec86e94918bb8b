"""``tavireg evaluate reg`` (registration against the phantom's ground truth) and the pipeline benchmark.

Small on purpose: the SimpleITK method on 2-3 frames of the session's one-patient phantom, and the
benchmark on a tiny generated case. The figures themselves are measured by the real runs (see the
module docstrings), never asserted here.
"""

import csv
import json
import math

from pathlib import Path

import numpy as np
import pytest

from TAVIRegistrationLib import cli
from TAVIRegistrationLib.evaluation import reg as ev


def _run(argv) -> int:
    """``tavireg evaluate reg ARGV`` through the real command line."""
    return cli.main(["evaluate", "reg", *argv])


@pytest.fixture(scope="module")
def test_index(phantom_dataset) -> Path:
    """The session phantom's index with every row in the test split (one patient has no test
    split of its own); beside the original so that its relative paths still resolve."""
    src = phantom_dataset / "index.csv"
    dst = phantom_dataset / "index_all_test.csv"
    with open(src, newline="") as fh:
        reader = csv.DictReader(fh)
        rows, cols = list(reader), reader.fieldnames
    with open(dst, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=cols, lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow(dict(r, split="test"))
    assert any(int(r["opacified_px"]) > 0 for r in rows)
    return dst


@pytest.fixture(scope="module")
def sitk_eval(test_index, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval_reg")
    rc = _run(["--data", str(test_index), "--methods", "sitk", "--max-frames", "3", "--out", str(out), "--json"])
    assert rc == 0
    return out


def _f(text: str) -> float:
    return float(text) if text != "" else math.nan


def test_evaluate_reg_outputs_and_table(sitk_eval):
    out = sitk_eval
    for name in ("per_frame.csv", "table.csv", "table.md", "boxplots.png", "summary.json"):
        assert (out / name).is_file(), name
    assert not list(out.glob(".*.part"))
    with open(out / "per_frame.csv", newline="") as fh:
        frames = list(csv.DictReader(fh))
    with open(out / "table.csv", newline="") as fh:
        table = list(csv.DictReader(fh))
    assert 1 <= len(frames) <= 3 and all(r["method"] == "sitk" for r in frames)
    assert [r["fov"] for r in table if r["method"] == "sitk"][-1] == "all"
    fovs = sorted({r["fov"] for r in frames})
    assert sorted(r["fov"] for r in table if r["fov"] != "all") == fovs
    # the table's medians are those of per_frame.csv
    for row in table:
        recs = [r for r in frames if row["fov"] in ("all", r["fov"])]
        assert int(row["n"]) == len(recs)
        for key in ("dice", "precision", "recall", "dice_before", "dice_truth_affine", "dice_optimum"):
            v = [_f(r[key]) for r in recs if r[key] != ""]
            assert _f(row[f"median_{key}"]) == pytest.approx(float(np.median(v)), abs=1e-5)
        with_lm = [r for r in recs if int(r["n_landmarks"]) > 0]
        if with_lm:
            assert _f(row["median_tre_mm"]) == pytest.approx(float(np.median([_f(r["tre_mm"]) for r in with_lm])), abs=1e-5)
            assert _f(row["mean_tre_mm"]) == pytest.approx(float(np.mean([_f(r["tre_mm"]) for r in with_lm])), abs=1e-5)
            verdicts = [r["success"] == "True" for r in with_lm]
            assert _f(row["success_rate"]) == pytest.approx(sum(verdicts) / len(verdicts))
            optimum = [r["success_optimum"] == "True" for r in with_lm]
            assert _f(row["success_rate_optimum"]) == pytest.approx(sum(optimum) / len(optimum))
            assert _f(row["median_tre_optimum_mm"]) == pytest.approx(
                float(np.median([_f(r["tre_optimum_mm"]) for r in with_lm])), abs=1e-5)
            matched = [r["success_matched_optimum"] == "True" for r in with_lm]
            assert _f(row["success_rate_matched_optimum"]) == pytest.approx(sum(matched) / len(matched))
            matched_tre = [_f(r["tre_matched_optimum_mm"]) for r in with_lm]
            assert all(math.isfinite(v) for v in matched_tre)  # the phantom writes the true projection
            assert _f(row["median_tre_matched_optimum_mm"]) == pytest.approx(float(np.median(matched_tre)), abs=1e-5)
            known = [r["success_known_filling"] == "True" for r in with_lm]
            assert _f(row["success_rate_known_filling"]) == pytest.approx(sum(known) / len(known))
            known_tre = [_f(r["tre_known_filling_mm"]) for r in with_lm]
            assert all(math.isfinite(v) for v in known_tre)  # the default registration network is installed
            assert all(v < ev.SUCCESS_MM for ok, v in zip(known, known_tre) if ok)
            assert _f(row["median_tre_known_filling_mm"]) == pytest.approx(float(np.median(known_tre)), abs=1e-5)
            by_run = {}
            for r in with_lm:
                by_run.setdefault((r["patient"], r["series"]), []).append(r["success"] == "True")
            assert _f(row["success_rate_by_run"]) == pytest.approx(np.mean([np.mean(v) for v in by_run.values()]))
        assert int(row["n_runs"]) == len({(r["patient"], r["series"]) for r in recs})
        assert int(row["n_invalid"]) == sum(r["valid"] != "True" for r in recs)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["methods"] == ["sitk"] and summary["fixed"] == "truth"
    assert set(summary["goals"]["sitk"]) == set(ev.GOALS) == set(summary["goals"][ev.OPTIMUM_LABEL])
    assert set(summary["goals"][ev.MATCHED_LABEL]) == set(ev.GOALS)
    all_row = next(r for r in table if r["fov"] == "all")
    optimum_tre = summary["goals"][ev.OPTIMUM_LABEL]["median_tre_mm"]
    assert optimum_tre["value"] == pytest.approx(_f(all_row["median_tre_optimum_mm"]), abs=1e-5)
    assert optimum_tre["met"] == (optimum_tre["value"] <= ev.GOALS["median_tre_mm"][1])
    assert "| sitk | all |" in (out / "table.md").read_text()
    assert f"| {ev.OPTIMUM_LABEL} | " in (out / "table.md").read_text()
    assert "Registration on held-out phantom patients" in (out / "table.md").read_text()
    # a table of another split says whose frames it holds
    assert "patients of the 'train' split" in ev.table_markdown(summary["table"], "truth", "train")


def test_evaluate_reg_registration_helps(sitk_eval):
    with open(sitk_eval / "per_frame.csv", newline="") as fh:
        frames = [r for r in csv.DictReader(fh) if int(r["n_landmarks"]) > 0 and r["tre_mm"] != ""]
    assert frames, "no frame with a landmark inside its ROI"
    after = np.mean([_f(r["tre_mm"]) for r in frames])
    before = np.mean([_f(r["tre_before_mm"]) for r in frames])
    assert after <= before
    dice = [_f(r["dice"]) for r in frames]
    dice0 = [_f(r["dice_before"]) for r in frames]
    assert np.mean(dice) >= np.mean(dice0)


def test_evaluate_reg_boxplots_not_blank(sitk_eval):
    from PIL import Image

    img = np.asarray(Image.open(sitk_eval / "boxplots.png").convert("RGB")).astype(int)
    assert img.shape[0] > 200 and img.shape[1] > 600
    assert img.std() > 10
    # boxes are filled with the legend's colours, not only black lines on white: the method's hue
    # (sitk's blue patch in the legend below the panels) fills pixels inside the panels too (boxes of
    # a few frames are thin, so the fill is few pixels, shaded by the box's edge)
    split = int(0.85 * img.shape[0])
    legend, panels = img[split:], img[:split]

    def blue(a):
        return ((a[..., 2] - a[..., 0]) > 50) & (a[..., 2] > 100)

    assert blue(legend).sum() > 20 and blue(panels).sum() > 30


def test_window_overlap_definition():
    from TAVIRegistrationLib.registration import Window

    truth = np.zeros((20, 20), np.uint8)
    truth[5:10, 5:10] = 1
    truth[15:, 15:] = 1  # outside the window: not asked of the registration
    pred = np.zeros_like(truth)
    pred[5:10, 5:10] = 1
    m = ev.window_overlap(pred, truth, Window(0, 0, 12))
    assert m["dice"] == pytest.approx(1.0) and m["recall"] == pytest.approx(1.0)
    b = ev.before_overlap(pred, (5, 5, 3, 5), truth, Window(0, 0, 12))
    assert b["precision"] == pytest.approx(1.0) and b["recall"] == pytest.approx(15 / 25)


def test_evaluate_reg_bad_input(tmp_path, test_index, capsys):
    out = tmp_path / "out"
    assert _run(["--data", str(tmp_path / "missing.csv"), "--out", str(out)]) == 2
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    assert _run(["--data", str(bad), "--out", str(out)]) == 2
    captured = capsys.readouterr()
    assert "missing column" in captured.out + captured.err
    assert _run(["--data", str(test_index), "--methods", "bogus", "--out", str(out)]) == 2
    assert _run(["--data", str(test_index), "--max-frames", "0", "--out", str(out)]) == 2
    assert not out.exists() or not any(out.iterdir())


def test_evaluate_reg_skips_missing_network(tmp_path, test_index, monkeypatch):
    monkeypatch.setenv("TAVIREG_MODELS_DIR", str(tmp_path / "no_models"))
    warnings = []
    assert ev.available_methods(["cnn", "cnn+refine", "sitk"], warnings) == ["sitk"]
    assert len(warnings) == 2 and "cnn" in warnings[0]
    assert _run(["--data", str(test_index), "--methods", "cnn", "--out", str(tmp_path / "o")]) == 2
    assert _run(["--data", str(test_index), "--methods", "sitk", "--fixed", "segmentation",
                 "--out", str(tmp_path / "o")]) == 2


def test_spread_keeps_both_ends():
    assert ev.spread(list(range(10)), 3) in ([0, 4, 9], [0, 5, 9])
    assert ev.spread(list(range(4)), None) == [0, 1, 2, 3]


def test_success_by_run_weighs_every_run_once():
    """A run of three successful frames and a run of one failed frame: 75 % of the frames, 50 % of the
    runs; a frame without a landmark (no verdict) counts in neither."""
    def rec(series, success):
        return {"method": "cnn", "fov": "lower", "patient": "P1", "series": series, "valid": True,
                "success": success, "n_landmarks": 0 if success is None else 2}

    records = [rec("s1", True), rec("s1", True), rec("s1", True), rec("s2", False), rec("s3", None)]
    row = next(r for r in ev.summarize(records, ["cnn"]) if r["fov"] == "all")
    assert row["n"] == 5 and row["n_runs"] == 3 and row["n_tre"] == 4
    assert row["success_rate"] == pytest.approx(0.75) and row["success_rate_by_run"] == pytest.approx(0.5)
    assert "| cnn | all | 5 (3) |" in ev.table_markdown(ev.summarize(records, ["cnn"]))


def test_bench_pipeline_tiny_generated_case(tmp_path, monkeypatch):
    from TAVIRegistrationLib.evaluation import bench

    monkeypatch.setenv("TAVIREG_MODELS_DIR", str(tmp_path / "no_models"))  # the same result wherever it runs
    res = bench.bench_pipeline(None, n_frames=2, size=128, seed=3, methods=["sitk"])
    assert res["benchmark"] == "pipeline" and res["frames"] >= 2
    st = res["stages"]
    for stage in ("read", "overlay"):
        assert st[stage]["n"] >= 2 and st[stage]["median_ms"] > 0
    assert (st["project"] or {"n": 0})["n"] + st["project_first"]["n"] >= 2
    assert st["segment"] == "skipped: no network"
    assert st["register"]["sitk"]["n"] >= 2
    assert res["whole_frame"]["sitk"]["n"] >= 2
    assert res["speed_ratio_sitk_over_cnn"] is None
    json.dumps(res)


def test_bench_pipeline_times_cnn_and_its_network_beside_sitk(tmp_path, monkeypatch):
    """With a registration network installed: cnn beside sitk, the speed ratio, and the network's
    forward pass alone (what of cnn's register stage is the network; the figures are the benchmark's)."""
    import torch

    from TAVIRegistrationLib.evaluation import bench
    from TAVIRegistrationLib.networks.weights import add_manifest_entry
    from TAVIRegistrationLib.networks.regnet import RegNet, scaled_channels

    models = tmp_path / "models"
    models.mkdir()
    torch.jit.script(RegNet(in_size=64, channels=scaled_channels(0.1), fc=16)).save(str(models / "tiny.pt"))
    add_manifest_entry({"name": "tiny", "file": "tiny.pt", "kind": "registration", "input_size": [64, 64]}, models)
    monkeypatch.setenv("TAVIREG_MODELS_DIR", str(models))
    res = bench.bench_pipeline(None, n_frames=2, size=128, seed=3, methods=["cnn", "sitk"])
    reg = res["stages"]["register"]
    assert reg["cnn"]["n"] >= 2 and reg["sitk"]["n"] >= 2
    assert res["speed_ratio_sitk_over_cnn"] == pytest.approx(reg["sitk"]["median_ms"] / reg["cnn"]["median_ms"])
    net = res["register_network_only"]
    assert net["input"] == "64x64" and net["n"] == 20 and 0 < net["median_ms"]
    json.dumps(res)


def test_agreement_threshold_separates_failures_from_successes():
    from TAVIRegistrationLib.evaluation.reg import agreement_analysis

    rng = np.random.default_rng(0)
    recs = [{"method": "cnn", "valid": True, "success": True, "fixed_dice": float(d)} for d in rng.uniform(0.7, 0.95, 40)]
    recs += [{"method": "cnn", "valid": True, "success": False, "fixed_dice": float(d)} for d in rng.uniform(0.2, 0.6, 10)]
    recs += [{"method": "cnn", "valid": False, "success": False, "fixed_dice": float("nan")}]  # not counted
    chosen = agreement_analysis(recs)["cnn"]
    assert 0.6 <= chosen["threshold"] <= 0.7
    assert chosen["failures_flagged"] == 1.0 and chosen["successes_flagged"] == 0.0
    assert chosen["n_success"] == 40 and chosen["n_failure"] == 10 and chosen["chosen_here"]
    given = agreement_analysis(recs, 0.5)["cnn"]
    assert given["threshold"] == 0.5 and 0 < given["failures_flagged"] < 1 and not given["chosen_here"]


def test_dice_optimum_is_the_refinement_from_the_truth_affine():
    """The "Dice optimum" reference: with a fixed mask that is exactly the projection moved by an
    affine, the optimum stays at that affine (TRE ~0) when started there, and returns to it when the
    phantom's affine is off by a shift (the refinement really runs from the given start)."""
    from TAVIRegistrationLib import registration as R
    from TAVIRegistrationLib.training import reg as TR
    from TAVIRegistrationLib.synthetic.phantom import FrameTruth

    frame, roi = (256, 256), (60, 40, 130, 150)
    vessel = TR.synthetic_vessel_mask(frame, np.random.default_rng(3))
    a = math.radians(4.0)
    true_m = np.array([[1.03 * math.cos(a), -1.03 * math.sin(a), 8.0], [1.03 * math.sin(a), 1.03 * math.cos(a), -11.0],
                       [0.0, 0.0, 1.0]])
    fixed = R.warp_mask(vessel, true_m, frame)
    ys, xs = np.nonzero(vessel[roi[1]:roi[1] + roi[3], roi[0]:roi[0] + roi[2]])
    pick = np.linspace(0, len(xs) - 1, 5).astype(int)
    nominal = {f"L{k}": np.array([xs[i] + roi[0], ys[i] + roi[1]], float) for k, i in enumerate(pick)}
    moved = {k: (true_m @ np.r_[p, 1.0])[:2] for k, p in nominal.items()}

    def truth(affine):
        return FrameTruth(mask=fixed, projection_nominal=vessel, affine=affine, landmarks_px=moved,
                          landmarks_nominal_px=nominal, landmarks_in_frame=list(nominal), mm_per_px_at_isocenter=0.2,
                          isocenter_lps=(0.0, 0.0, 0.0))

    window = R.registration_window(roi)
    exact = ev.optimum_near_truth(vessel, fixed, roi, truth(true_m), 5)
    reference = ev.truth_affine_overlap(vessel, roi, truth(true_m), window)["dice"]  # window Dice (< 1: the ROI)
    assert exact["tre_optimum_mm"] < 0.1 and exact["success_optimum"] is True
    assert exact["dice_optimum"] == pytest.approx(reference, abs=0.01)
    off = true_m.copy()
    off[:2, 2] += (7.0, -5.0)  # 8.6 px = 1.7 mm off
    assert ev.mean_tre_mm(truth(off), off, roi)[0] > 1.5
    back = ev.optimum_near_truth(vessel, fixed, roi, truth(off), 5)
    assert back["tre_optimum_mm"] < 0.3 and back["dice_optimum"] == pytest.approx(reference, abs=0.02)
    assert ev.truth_affine_overlap(vessel, roi, truth(off), window)["dice"] < reference - 0.2
    # a refused pair (no vessel in the fixed mask): NaN figures and a failure verdict
    refused = ev.optimum_near_truth(vessel, np.zeros(frame, np.uint8), roi, truth(true_m), 5)
    assert math.isnan(refused["tre_optimum_mm"]) and refused["success_optimum"] is False
    # with the projection past the frame, as the methods get it: a bar that leaves the top of the frame,
    # found 12 px lower, is covered up to the frame's edge at the optimum only with the canvas
    pad, down = 32, np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 12.0], [0.0, 0.0, 1.0]])
    bar = vessel.copy()
    bar[0:80, 120:130] = 1
    canvas = np.zeros((frame[0] + 2 * pad, frame[1] + 2 * pad), np.uint8)
    canvas[pad:-pad, pad:-pad] = bar
    canvas[0:pad, pad + 120:pad + 130] = 1
    fixed_bar = R.warp_mask(bar, down, frame)
    fixed_bar[0:12, 120:130] = 1
    top_roi = (60, 0, 130, 190)
    moved_bar = {k: (down @ np.r_[p, 1.0])[:2] for k, p in nominal.items()}
    bar_truth = FrameTruth(mask=fixed_bar, projection_nominal=bar, affine=down, landmarks_px=moved_bar,
                           landmarks_nominal_px=nominal, landmarks_in_frame=list(nominal), mm_per_px_at_isocenter=0.2,
                           isocenter_lps=(0.0, 0.0, 0.0))
    cut = ev.optimum_near_truth(bar, fixed_bar, top_roi, bar_truth, 5)
    whole = ev.optimum_near_truth(bar, fixed_bar, top_roi, bar_truth, 5, canvas=canvas, pad=pad)
    assert whole["tre_optimum_mm"] < 0.3 and cut["tre_optimum_mm"] < 0.3
    assert whole["dice_optimum"] > cut["dice_optimum"] + 0.01


def test_matched_optimum_separates_unfilled_vessels_from_the_method():
    """The content-matched reference: the model holds a trunk and two limbs; the frame shows the left
    limb filled, the right one unfilled, and another filled vessel beside where the right limb lies.
    The Dice optimum against the frame's mask drags the model's right limb onto that vessel, off the
    landmarks; the optimum against the model's own vessels under the truth (``projection_true``) is not,
    and neither is ``cnn+refine`` told which of the model's vessels are filled (``known_filling_reference``)."""
    from PIL import Image, ImageDraw

    from TAVIRegistrationLib import registration as R
    from TAVIRegistrationLib.synthetic.phantom import FrameTruth

    frame, roi = (256, 256), (40, 30, 180, 200)

    def drawn(*lines):
        image = Image.new("L", frame[::-1], 0)
        for line in lines:
            ImageDraw.Draw(image).line(line, 1, 10)
        return np.asarray(image, np.uint8).copy()

    trunk, left, right = [(128, 40), (128, 120)], [(128, 120), (80, 220)], [(128, 120), (176, 220)]
    model = drawn(trunk, left, right)
    true_m = np.array([[1.0, 0.0, 9.0], [0.0, 1.0, -6.0], [0.0, 0.0, 1.0]])
    frame_mask = R.warp_mask(drawn(trunk, left, [(150, 130), (196, 225)]), true_m, frame)
    nominal = {"top": np.array([128.0, 50.0]), "bifurcation": np.array([128.0, 118.0]), "left": np.array([85.0, 210.0])}
    truth = FrameTruth(mask=frame_mask, projection_nominal=model, affine=true_m,
                       landmarks_px={k: (true_m @ np.r_[p, 1.0])[:2] for k, p in nominal.items()},
                       landmarks_nominal_px=nominal, landmarks_in_frame=list(nominal), mm_per_px_at_isocenter=0.5,
                       isocenter_lps=(0.0, 0.0, 0.0), projection_true=R.warp_mask(model, true_m, frame))
    plain = ev.optimum_near_truth(model, truth.mask, roi, truth, 3)
    matched = ev.optimum_near_truth(model, truth.projection_true, roi, truth, 3, name="matched_optimum")
    assert set(matched) == {"dice_matched_optimum", "precision_matched_optimum", "recall_matched_optimum",
                            "tre_matched_optimum_mm", "success_matched_optimum"}
    assert matched["tre_matched_optimum_mm"] < 0.3 and matched["success_matched_optimum"] is True
    assert plain["tre_optimum_mm"] > 2.0
    # no true projection in the index: NaN figures, no verdict of success
    missing = ev.optimum_near_truth(model, None, roi, truth, 3, name="matched_optimum")
    assert math.isnan(missing["tre_matched_optimum_mm"]) and missing["success_matched_optimum"] is False
    # the method told which vessels are filled: it registers the trunk and the left limb only
    filled = truth.filled_region() & (model > 0)
    right_only = (drawn(right) > 0) & ~(drawn(trunk, left) > 0)
    assert filled[drawn(trunk, left) > 0].mean() > 0.95 and filled[right_only].mean() < 0.05
    known = ev.known_filling_reference(model, truth.mask, roi, truth, 3)
    assert set(known) == {"dice_known_filling", "precision_known_filling", "recall_known_filling",
                          "tre_known_filling_mm", "success_known_filling"}
    assert known["tre_known_filling_mm"] < 1.0 and known["success_known_filling"] is True


def test_eligible_rows_by_split_and_contrast():
    rows = [{"split": s, "mask": "m.png", "opacified_px": px} for s, px in
            (("train", "10"), ("val", "5"), ("test", "7"), ("test", "0"), ("val", "x"))]
    assert len(ev.eligible_rows(rows, "test")) == 1 and len(ev.eligible_rows(rows, "val")) == 1
    assert [r["split"] for r in ev.eligible_rows(rows, "all")] == ["train", "val", "test"]  # a set made to evaluate on
