"""``tavireg evaluate seg``: DRU-Net and the Frangi baseline on held-out data, tables and figures.

A tiny DRU-Net (trained for one epoch on 64 x 64 synthetic images) is exported to a temporary models
folder; the evaluated data are the session's one-patient phantom data set (its rows marked ``test``
in a copy of its index) and a small synthetic image-mask folder; the Frangi threshold is trained on
other synthetic images only. Runs in well under a minute on the 2-core CPU.
"""

import csv
import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("skimage")
pytest.importorskip("matplotlib")
pytestmark = pytest.mark.filterwarnings(r"ignore:.*torch\.jit\..* is deprecated:DeprecationWarning")

from PIL import Image  # noqa: E402

from TAVIRegistrationLib import cli  # noqa: E402
from TAVIRegistrationLib.evaluation import seg as ev  # noqa: E402
from TAVIRegistrationLib.training.seg import TrainConfig, train  # noqa: E402
from vessel_images import write_vessel_folder  # noqa: E402


# ---------------------------------------------------------------------------------------------
# helpers and fixtures
# ---------------------------------------------------------------------------------------------


def _write_png_index(path: Path, folder: Path, split: str, fov: str, patient="S1"):
    """A case index whose images are the PNG pairs of ``folder`` (absolute paths)."""
    rows = []
    for img in sorted(folder.glob("*.png")):
        if img.stem.endswith("_gt"):
            continue
        rows.append({"patient": patient, "split": split, "fov": fov, "image": str(img.resolve()), "frame": "0",
                     "mask": str(img.with_name(f"{img.stem}_gt.png").resolve())})
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def _copy_index_as_test(src: Path, dst: Path, keep=None) -> Path:
    """A copy of a phantom index with absolute paths and every (kept) row's split set to 'test'."""
    with open(src, newline="") as fh:
        reader = csv.DictReader(fh)
        cols = reader.fieldnames
        rows = list(reader)
    if keep is not None:
        rows = rows[:keep]
    for r in rows:
        r["split"] = "test"
        for k in ("image", "mask"):
            r[k] = str((src.parent / r[k]).resolve())
    with open(dst, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)
    return dst


@pytest.fixture(scope="module")
def setup(tmp_path_factory, phantom_dataset):
    root = tmp_path_factory.mktemp("evalseg")
    cfg = TrainConfig(data=[str(write_vessel_folder(root / "netdata", n=5, seed=0))], out=str(root / "run"), epochs=1,
                      batch_size=2, base_channels=2, size=64, val_fraction=0.2, seed=3, progress=False,
                      export="tiny", export_dir=str(root / "models"))
    train(cfg)
    (root / "phantom_test").mkdir()
    test_index = _copy_index_as_test(phantom_dataset / "index.csv", root / "phantom_test" / "index.csv")
    angio_test = write_vessel_folder(root / "angios" / "test", n=4, seed=11)
    train_upper = write_vessel_folder(root / "angios" / "train", n=3, seed=21)
    train_lower = _write_png_index(root / "lower_train.csv", write_vessel_folder(root / "lowerimgs", n=2, seed=31),
                                   "train", "lower")
    return {"root": root, "models": root / "models", "test_index": test_index, "angio_test": angio_test,
            "train_upper": train_upper, "train_lower": train_lower}


def _run(args, monkeypatch, models):
    monkeypatch.setenv("TAVIREG_MODELS_DIR", str(models))
    return cli.main(["evaluate", "seg", *map(str, args)])


@pytest.fixture(scope="module")
def result(setup):
    mp = pytest.MonkeyPatch()
    try:
        out = setup["root"] / "out"
        rc = _run(["--data", setup["test_index"], "--data", setup["angio_test"],
                   "--frangi-train", setup["train_upper"], "--frangi-train", setup["train_lower"],
                   "--out", out], mp, setup["models"])
    finally:
        mp.undo()
    assert rc == 0
    return out


def _read_csv(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _f(v):
    return float(v) if v not in ("", None) else float("nan")


# ---------------------------------------------------------------------------------------------
# tests
# ---------------------------------------------------------------------------------------------
def test_outputs_and_table_rows(result, setup):
    for name in ("table.csv", "table.md", "per_frame.csv", "boxplots.png", "samples.png", "summary.json"):
        assert (result / name).is_file(), name
    assert not list(result.glob(".*.part"))
    table = _read_csv(result / "table.csv")
    index_fovs = {r["fov"] for r in _read_csv(setup["test_index"])}
    phantom = ev._index_label(setup["test_index"])
    expected = {(phantom, f, m) for f in index_fovs for m in ev.METHODS}
    expected |= {("angios/test", "upper", m) for m in ev.METHODS}
    assert {(r["dataset"], r["fov"], r["method"]) for r in table} == expected
    md = (result / "table.md").read_text()
    assert "DRU-Net" in md and "Frangi" in md and "angios/test" in md
    summary = json.loads((result / "summary.json").read_text())
    assert summary["model"]["name"] == "tiny"
    assert summary["data"][0]["split_used"] == "test"
    assert summary["command"].startswith("tavireg evaluate seg --data ")


def test_medians_match_per_frame(result):
    table = _read_csv(result / "table.csv")
    frames = _read_csv(result / "per_frame.csv")
    for row in table:
        grp = [f for f in frames if (f["dataset"], f["fov"], f["method"]) == (row["dataset"], row["fov"], row["method"])]
        used = [f for f in grp if f["empty_gt"] == "False"]
        assert int(row["n"]) == len(used)
        assert int(row["n_empty_gt"]) == len(grp) - len(used)
        for key in ("dice", "precision", "recall"):
            vals = np.array([_f(f[key]) for f in used])
            vals = vals[np.isfinite(vals)]
            want = np.median(vals) if vals.size else float("nan")
            got = _f(row[f"median_{key}"])
            assert (np.isnan(want) and np.isnan(got)) or got == pytest.approx(want, abs=1e-5), (row, key)


def test_table_ci_and_goals_from_per_frame(result, setup):
    """The CI columns are the patient bootstrap of per_frame.csv's Dice; the goal check has a row per
    DRU-Net data set and FoV, the folder's target being the real-angiogram one plus the Frangi row."""
    table = _read_csv(result / "table.csv")
    frames = _read_csv(result / "per_frame.csv")
    for row in table:
        used = [f for f in frames if (f["dataset"], f["fov"], f["method"]) == (row["dataset"], row["fov"], row["method"])
                and f["empty_gt"] == "False"]
        lo, hi = ev.median_ci([float(f["dice"]) for f in used], [f["patient"] for f in used])
        assert _f(row["dice_ci_low"]) == pytest.approx(lo, abs=1e-5)
        assert _f(row["dice_ci_high"]) == pytest.approx(hi, abs=1e-5)
        assert lo - 1e-5 <= _f(row["median_dice"]) <= hi + 1e-5
        assert int(row["n_patients"]) == len({f["patient"] for f in used})
    goals = json.loads((result / "summary.json").read_text())["goals"]
    drunet_rows = {(r["dataset"], r["fov"]) for r in table if r["method"] == ev.METHOD_DRUNET}
    assert {(g["dataset"], g["fov"]) for g in goals} == drunet_rows
    by_goal = {(g["dataset"], g["goal"]): g for g in goals}
    assert by_goal[("angios/test", "median DSC >= 0.75")]["verdict"] in (
        "met", "not met", "met by the median, not by the whole CI", "not met by the median, CI reaches it")
    frangi = by_goal[("angios/test", "median DSC above Frangi's")]
    med = {m: np.median([float(f["dice"]) for f in frames if f["dataset"] == "angios/test" and f["method"] == m])
           for m in ev.METHODS}
    assert frangi["value"] == pytest.approx(med[ev.METHOD_DRUNET] - med[ev.METHOD_FRANGI], abs=1e-6)
    phantom = ev._index_label(setup["test_index"])
    assert all(g["goal"] == "median DSC >= 0.9" for g in goals if g["dataset"] == phantom)
    assert "## Goals (DRU-Net" in (result / "table.md").read_text()


def test_by_stage_table_from_per_frame(result, setup):
    """by_stage.csv splits the phantom's staged frames (its upper FoV) by procedure stage, in procedure
    order, each row the same medians as the main table over that stage's frames of per_frame.csv; frames
    without a stage (lower FoV, the image folder) are in no stage row."""
    from TAVIRegistrationLib.synthetic.phantom import STAGES

    index = _read_csv(setup["test_index"])
    want_stages = {r["stage"] for r in index if r["stage"]}
    assert want_stages and want_stages <= set(STAGES)
    rows = _read_csv(result / "by_stage.csv")
    frames = _read_csv(result / "per_frame.csv")
    phantom = ev._index_label(setup["test_index"])
    assert {r["dataset"] for r in rows} == {phantom}
    assert {r["stage"] for r in rows} == want_stages
    seen = [r["stage"] for r in rows if r["method"] == ev.METHOD_DRUNET]
    assert seen == [s for s in STAGES if s in want_stages]  # procedure order
    for row in rows:
        grp = [f for f in frames if (f["dataset"], f["fov"], f["stage"], f["method"])
               == (row["dataset"], row["fov"], row["stage"], row["method"])]
        used = [f for f in grp if f["empty_gt"] == "False"]
        assert grp and int(row["n"]) == len(used) and int(row["n_empty_gt"]) == len(grp) - len(used)
        if used:
            assert _f(row["median_dice"]) == pytest.approx(np.median([float(f["dice"]) for f in used]), abs=1e-5)
    # every staged frame of the index is in exactly one stage row
    staged = sum(1 for r in index if r["stage"])
    assert sum(int(r["n"]) + int(r["n_empty_gt"]) for r in rows if r["method"] == ev.METHOD_DRUNET) == staged
    assert {f["stage"] for f in frames if f["dataset"] == "angios/test"} == {""}
    md = (result / "table.md").read_text()
    assert "## By procedure stage" in md and "| stage |" in md
    assert json.loads((result / "summary.json").read_text())["by_stage"] and "by_stage.csv" in md


def test_median_ci_draws_patients_not_frames():
    # patient A: 99 frames at 0.9; patient B: one frame at 0.1. A frame bootstrap would never put the
    # median near 0.1; drawing patients, B twice (probability 1/4) does, so the lower bound is 0.1.
    values = [0.9] * 99 + [0.1]
    patients = ["A"] * 99 + ["B"]
    assert ev.median_ci(values, patients) == (pytest.approx(0.1), pytest.approx(0.9))
    # one patient per frame: the interval contains the median and narrows with more patients
    rng = np.random.default_rng(5)
    widths = []
    for n in (20, 400):
        v = rng.uniform(0, 1, n)
        lo, hi = ev.median_ci(v, [str(i) for i in range(n)])
        assert lo < np.median(v) < hi
        widths.append(hi - lo)
    assert widths[1] < widths[0] / 2
    assert ev.median_ci(v, [str(i) for i in range(400)]) == (lo, hi)  # seeded: the same table every run
    assert ev.median_ci([], []) == (None, None)


def test_goal_verdicts_follow_median_and_ci():
    def rec(frame, method, dice, patient):
        return {"dataset": "real", "fov": "upper", "method": method, "frame": frame, "patient": patient,
                "dice": dice, "precision": dice, "recall": dice, "empty_gt": False, "pred_px": 1, "threshold": 0.5}

    # DRU-Net 0.80 on every image, Frangi 0.50: goal met, above Frangi with the whole interval
    recs = [rec(str(i), m, d, str(i)) for i in range(10) for m, d in ((ev.METHOD_DRUNET, 0.8), (ev.METHOD_FRANGI, 0.5))]
    table = ev.summarise(recs, ["real"])
    goals = {g["goal"]: g for g in ev.check_goals(recs, table, {"real": "image-mask folder"})}
    assert goals["median DSC >= 0.75"]["verdict"] == "met"
    assert goals["median DSC above Frangi's"]["verdict"] == "met"
    assert goals["median DSC above Frangi's"]["value"] == pytest.approx(0.3)
    # the same figures read as a phantom index: the 0.90 goal, no Frangi row
    goals = ev.check_goals(recs, table, {"real": "case index"})
    assert [(g["goal"], g["verdict"]) for g in goals] == [("median DSC >= 0.9", "not met")]
    # a median on the goal with images on both sides: met by the median only; Frangi equal: not above
    recs = [rec(str(i), m, 0.70 + 0.01 * i, str(i)) for i in range(11) for m in ev.METHODS]
    goals = {g["goal"]: g for g in ev.check_goals(recs, ev.summarise(recs, ["real"]), {"real": "image-mask folder"})}
    assert goals["median DSC >= 0.75"]["verdict"] == "met by the median, not by the whole CI"
    assert goals["median DSC above Frangi's"]["verdict"] == "not met"
    assert ev._verdict(0.74, 0.70, 0.78, 0.75) == "not met by the median, CI reaches it"


def test_frangi_threshold_comes_from_training_data_only(result, setup, monkeypatch):
    s1 = json.loads((result / "summary.json").read_text())
    fr = s1["frangi"]
    phantom = ev._index_label(setup["test_index"])
    assert fr["evaluated"] and set(fr["pooled_per_fov"]["thresholds"]) == {"upper", "lower"}
    labels = [t["label"] for t in fr["training"]]
    assert len(labels) == 2 and "angios/train" in labels
    assert [t["frames"] for t in fr["training"]] == [3, 2]
    # angios/test: tuned on its sibling angios/train (3 frames); the phantom copy has no training
    # rows of its own, so it gets the parameters of all training frames of each FoV (3 upper, 2 lower)
    a = fr["params"]["angios/test"]["upper"]
    assert a["chosen_on"].startswith("same data set: angios/train") and a["n_frames"] == 3
    for fov, n in (("upper", 3), ("lower", 2)):
        p = fr["params"][phantom].get(fov)
        if p is not None:
            assert p["chosen_on"].startswith("all training data of this FoV") and p["n_frames"] == n
            assert p["threshold"] == fr["pooled_per_fov"]["thresholds"][fov]
    # other test data (fewer phantom frames, no angio folder): the same parameters
    other = _copy_index_as_test(Path(setup["test_index"]), setup["root"] / "phantom_test" / "index_small.csv", keep=2)
    out2 = setup["root"] / "out2"
    rc = _run(["--data", other, "--frangi-train", setup["train_upper"], "--frangi-train", setup["train_lower"],
               "--out", out2], monkeypatch, setup["models"])
    assert rc == 0
    s2 = json.loads((out2 / "summary.json").read_text())
    assert s2["frangi"]["pooled_per_fov"] == fr["pooled_per_fov"]
    assert s2["frangi"]["per_training_data_set"] == fr["per_training_data_set"]
    for fov, p in s2["frangi"]["params"][ev._index_label(other)].items():
        assert p == fr["params"][phantom][fov]
    # the parameters used on the test frames are those
    for r in _read_csv(result / "per_frame.csv"):
        if r["method"] == "Frangi":
            p = fr["params"][r["dataset"]][r["fov"]]
            assert float(r["threshold"]) == pytest.approx(p["threshold"], rel=1e-5)
            assert r["sigmas"] == ",".join(f"{v:g}" for v in p["sigmas"])


def test_frangi_training_overlapping_test_refused(setup, monkeypatch, capsys):
    out = setup["root"] / "overlap"
    rc = _run(["--data", setup["angio_test"], "--frangi-train", setup["angio_test"], "--out", out],
              monkeypatch, setup["models"])
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "overlaps the evaluated data" in err[0]
    assert not out.exists() or not any(out.iterdir())


def test_frangi_choice_picks_the_best_median_dice(setup):
    frames = ev.folder_frames(setup["train_upper"])[:2]
    sets = [(1.0, 2.0), (2.0, 4.0)]
    got = ev.choose_frangi_thresholds(frames, sigma_sets=sets, thresholds=(0.001, 0.01, 0.1))
    best = got["per_fov"]["upper"]
    # brute force over the same grid
    reader = ev.FrameReader()
    from TAVIRegistrationLib.segmentation import overlap_metrics, resize_mask
    scores = {}
    for sig in sets:
        for th in (0.001, 0.01, 0.1):
            d = []
            for f in frames:
                image, truth = reader.read(f)
                pred = ev.frangi_response(image, sig) >= np.float32(th)
                d.append(overlap_metrics(pred, resize_mask(truth, (256, 256)))["dice"])
            scores[(sig, th)] = float(np.median(d))
    (sig, th), val = max(scores.items(), key=lambda kv: kv[1])
    assert best["median_dice"] == pytest.approx(val)
    assert scores[(tuple(best["sigmas"]), best["threshold"])] == pytest.approx(val)
    assert got["thresholds"]["lower"] == got["per_fov"]["all"]["threshold"]  # no lower frames: fallback
    assert any("no lower-FoV training frames" in w for w in got["warnings"])


def test_threshold_counts_match_brute_force():
    rng = np.random.default_rng(0)
    r = rng.random((32, 32)).astype(np.float32) ** 3
    t = rng.random((32, 32)) > 0.7
    ths = [1e-4, 0.01, 0.1, 0.5, 0.9]
    c = ev.threshold_counts(r, t, ths)
    for k, th in enumerate(ths):
        p = r >= np.float32(th)
        assert tuple(c[k]) == (np.sum(p & t), np.sum(p & ~t), np.sum(~p & t))


def test_figures_not_blank(result):
    for name, min_size in (("boxplots.png", (600, 300)), ("by_stage.png", (600, 300)), ("samples.png", (400, 400))):
        with Image.open(result / name) as im:
            assert im.size[0] >= min_size[0] and im.size[1] >= min_size[1]
            a = np.asarray(im.convert("RGB")).astype(float)
        assert a.std() > 10, name
    with Image.open(result / "samples.png") as im:
        a = np.asarray(im.convert("RGB")).astype(int)
    # the TP/FP/FN colours of the overlays appear (yellow-ish and cyan-ish pixels)
    yellow = (a[..., 0] > 200) & (a[..., 1] > 180) & (a[..., 2] < 90)
    cyan = (a[..., 0] < 90) & (a[..., 1] > 180) & (a[..., 2] > 200)
    assert yellow.sum() > 20 and cyan.sum() > 20


def _error_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_bad_input_exit_2(setup, tmp_path, monkeypatch, capsys):
    models = setup["models"]
    assert _run(["--data", tmp_path / "nope", "--out", tmp_path / "o"], monkeypatch, models) == 2
    assert "no such file or folder" in _error_line(capsys)
    bad = tmp_path / "bad.csv"
    bad.write_text("patient,image\nP0,a.png\n")
    assert _run(["--data", bad, "--out", tmp_path / "o"], monkeypatch, models) == 2
    assert "lacks the column" in _error_line(capsys)
    notest = _write_png_index(tmp_path / "notest.csv", setup["train_upper"], "train", "upper")
    assert _run(["--data", notest, "--out", tmp_path / "o"], monkeypatch, models) == 2
    assert "no rows with split == 'test'" in _error_line(capsys)
    empty_models = tmp_path / "nomodels"
    empty_models.mkdir()
    assert _run(["--data", setup["angio_test"], "--out", tmp_path / "o"], monkeypatch, empty_models) == 2
    assert "no segmentation network is installed" in _error_line(capsys)
    assert cli.main(["evaluate"]) == 2
    _error_line(capsys)
    assert not (tmp_path / "o").exists()


def test_folder_images_get_the_unknown_threshold(setup, tmp_path, monkeypatch):
    """A folder's PNG has no DICOM header: DRU-Net segments it as ``tavireg segment`` would (``--fov
    auto``: the ``unknown`` threshold), a case index row at its FoV's threshold; the warning says so."""
    import shutil

    models = tmp_path / "models"
    shutil.copytree(setup["models"], models)
    manifest = json.loads((models / "manifest.json").read_text())
    for e in manifest["models"]:
        e["thresholds"] = {"upper": 0.05, "lower": 0.1, "unknown": 0.95}
    (models / "manifest.json").write_text(json.dumps(manifest))
    out = tmp_path / "out"
    assert _run(["--data", setup["test_index"], "--data", setup["angio_test"], "--out", out], monkeypatch, models) == 0
    used = {(r["dataset"], r["fov"], float(r["threshold"])) for r in _read_csv(out / "per_frame.csv")
            if r["method"] == ev.METHOD_DRUNET}
    phantom = ev._index_label(setup["test_index"])
    index_fovs = {r["fov"] for r in _read_csv(setup["test_index"])}
    by_fov = {"upper": 0.05, "lower": 0.1}
    assert used == {("angios/test", "upper", 0.95)} | {(phantom, f, by_fov[f]) for f in index_fovs}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model"]["thresholds"]["unknown"] == 0.95
    assert any("field of view unknown" in w for w in summary["warnings"])


def test_pool_reports_every_case_index_together(setup, tmp_path, monkeypatch, capsys):
    """``--pool LABEL``: rows over the case indices' frames together (not the image folder's), their
    patients kept apart, checked against the phantom goal; bad uses exit 2 before evaluating. The
    second index has only training rows: ``--split`` once per ``--data`` takes all of them."""
    (tmp_path / "second").mkdir()
    same_name = _read_csv(setup["test_index"])[0]["patient"]  # a different patient of the same name
    second = _write_png_index(tmp_path / "second" / "index.csv",
                              write_vessel_folder(tmp_path / "imgs", n=3, seed=41), "train", "upper", patient=same_name)
    out = tmp_path / "out"
    args = ["--data", setup["test_index"], "--data", second, "--data", setup["angio_test"], "--pool", "held-out",
            "--split", "test", "--split", "all", "--split", "test"]
    assert _run(args + ["--out", out], monkeypatch, setup["models"]) == 0
    table = _read_csv(out / "table.csv")
    frames = _read_csv(out / "per_frame.csv")
    members = {ev._index_label(setup["test_index"]), ev._index_label(second)}
    pooled = [r for r in table if r["dataset"] == "held-out"]
    assert pooled and {r["fov"] for r in pooled} == {r["fov"] for r in table if r["dataset"] in members}
    for row in pooled:
        grp = [f for f in frames if f["dataset"] in members and (f["fov"], f["method"]) == (row["fov"], row["method"])
               and f["empty_gt"] == "False"]
        assert int(row["n"]) == len(grp)
        assert int(row["n_patients"]) == len({(f["dataset"], f["patient"]) for f in grp})
        assert _f(row["median_dice"]) == pytest.approx(np.median([float(f["dice"]) for f in grp]), abs=1e-5)
    summary = json.loads((out / "summary.json").read_text())
    assert any(g["dataset"] == "held-out" and g["goal"] == "median DSC >= 0.9" for g in summary["goals"])
    assert "--pool held-out" in summary["command"] and "--split test --split all --split test" in summary["command"]
    assert [d["split_used"] for d in summary["data"][:2]] == ["test", "all"]
    capsys.readouterr()
    for bad, message in ((["--data", setup["test_index"], "--data", setup["angio_test"], "--pool", "x"],
                          "at least two case indices"),
                         (args[:6] + ["--pool", "angios/test", "--split", "all"], "already a data set's label"),
                         (args[:8] + ["--split", "test", "--split", "all"], "--split is given 2 times for 3 --data")):
        assert _run(bad + ["--out", tmp_path / "bad"], monkeypatch, setup["models"]) == 2
        assert message in _error_line(capsys)
    assert not (tmp_path / "bad").exists()
