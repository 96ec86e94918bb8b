"""``tools/seg_selection.py``: the DRU-Net selection rule (four medians, three criteria) as one command.

Two tiny DRU-Nets (one epoch on 64 x 64 synthetic images, different seeds) play baseline and
candidate; the validation phantom is the session's one-patient data set, the development set a copy
of its index marked ``val``, the real set the tiny networks' own training folder (their manifest
entries name its validation images).
"""

import csv
import hashlib
import importlib.util
import json
import statistics
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("skimage")
pytest.importorskip("matplotlib")
pytestmark = pytest.mark.filterwarnings(r"ignore:.*torch\.jit\..* is deprecated:DeprecationWarning")

from TAVIRegistrationLib.training.seg import TrainConfig, train  # noqa: E402
from vessel_images import write_vessel_folder  # noqa: E402

SCRIPT = Path(__file__).resolve().parents[1] / "tools" / "seg_selection.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("seg_selection", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


sel = _load_script()


def _result(upper, lower, dev, real, clean=10, empty=10):
    m = {"upper": upper, "lower": lower, "development": dev, "real": real}
    return {"medians": m, "score": sum(m.values()) / 4, "empty_lower_clean": clean, "empty_lower": empty}


def test_judge_applies_each_criterion():
    base = _result(0.90, 0.90, 0.90, 0.80)
    cands = {
        "good": _result(0.92, 0.91, 0.91, 0.79, clean=9),      # +0.0075, drop 0.01 allowed, 9 >= 10 - 1
        "small": _result(0.905, 0.905, 0.905, 0.80),          # +0.00375
        "drop": _result(0.95, 0.95, 0.95, 0.78),              # real down 0.02
        "empties": _result(0.93, 0.93, 0.93, 0.80, clean=8),  # 8 < 9
    }
    d = sel.judge(base, cands)
    assert d["verdicts"]["good"]["passes"]
    assert [f[:3] for f in d["verdicts"]["small"]["failed"]] == ["(1)"]
    assert [f[:3] for f in d["verdicts"]["drop"]["failed"]] == ["(2)"]
    assert [f[:3] for f in d["verdicts"]["empties"]["failed"]] == ["(3)"]
    assert d["empty_needed"] == 9
    # the highest-scoring candidate decides: 'drop' fails, so nothing ships although 'good' passes
    assert d["highest"] == "drop" and d["ships"] is None
    d2 = sel.judge(base, {"good": cands["good"], "small": cands["small"]})
    assert d2["ships"] == "good"


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def setup(tmp_path_factory, phantom_dataset):
    root = tmp_path_factory.mktemp("selection")
    netdata = write_vessel_folder(root / "netdata", n=5, seed=0)
    for name, seed in (("base", 3), ("cand", 4)):
        train(TrainConfig(data=[str(netdata)], out=str(root / f"run_{name}"), epochs=1, batch_size=2, base_channels=2,
                          size=64, val_fraction=0.2, seed=seed, progress=False, export=name,
                          export_dir=str(root / "models")))
    dev = root / "dev" / "index.csv"
    dev.parent.mkdir()
    with open(phantom_dataset / "index.csv", newline="") as fh:
        reader = csv.DictReader(fh)
        cols, rows = reader.fieldnames, list(reader)
    for r in rows:
        r["split"] = "val"
        for k in ("image", "mask"):
            r[k] = str((phantom_dataset / r[k]).resolve())
    with open(dev, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)
    return {"root": root, "models": root / "models", "validation": phantom_dataset / "index.csv",
            "development": dev, "real": netdata}


def _args(s, out, real=None):
    return ["--validation", str(s["validation"]), "--development", str(s["development"]),
            "--real", str(real or s["real"]), "--baseline", "base", "--baseline-dir", str(s["models"]),
            "--candidate", "cand", "--candidates-dir", str(s["models"]), "--out", str(out)]


def test_scores_come_from_the_evaluations(setup, capsys):
    before = {p: _sha(p) for p in (setup["validation"], setup["development"])}
    out = setup["root"] / "out"
    assert sel.main(_args(setup, out) + ["--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record == json.loads((out / "selection.json").read_text())
    assert {p: _sha(p) for p in before} == before  # inputs only read
    entry = json.loads((setup["models"] / "manifest.json").read_text())["models"][0]
    named = sorted(p.split(":", 1)[1] for p in entry["validation_patients"] if p.startswith("netdata:"))
    assert sorted(record["data"]["real_images"]) == named
    with open(setup["validation"], newline="") as fh:
        n_rows = sum(1 for _ in csv.DictReader(fh))
    assert record["data"]["frames"]["validation"] == n_rows  # every split of the validation phantom
    labels = record["data"]["labels"]
    for name in ("base", "cand"):
        with open(out / name / "per_frame.csv", newline="") as fh:
            pf = [r for r in csv.DictReader(fh) if r["method"] == "DRU-Net"]
        # evaluate seg --split all on the validation phantom: every row of it
        assert sum(r["dataset"] == labels["validation"] for r in pf) == n_rows
        vessel = [r for r in pf if r["empty_gt"] == "False"]
        assert {r["dataset"] for r in vessel} == {labels["validation"], labels["real"], labels["development"]}

        def med(ds, fov=None):
            return statistics.median(float(r["dice"]) for r in vessel
                                     if r["dataset"] == labels[ds] and (fov is None or r["fov"] == fov))
        m = record["results"][name]["medians"]
        assert m["upper"] == pytest.approx(med("validation", "upper"), abs=1e-6)
        assert m["lower"] == pytest.approx(med("validation", "lower"), abs=1e-6)
        assert m["development"] == pytest.approx(med("development"), abs=1e-6)
        assert m["real"] == pytest.approx(med("real"), abs=1e-6)
        assert record["results"][name]["score"] == pytest.approx(sum(m.values()) / 4)
    expected = sel.judge(record["results"]["base"], {"cand": record["results"]["cand"]})
    assert record["decision"]["ships"] == expected["ships"]
    assert record["decision"]["verdicts"]["cand"]["passes"] == expected["verdicts"]["cand"]["passes"]
    # a second run reuses the evaluations of the same networks
    stamp = (out / "cand" / "summary.json").stat().st_mtime_ns
    assert sel.main(_args(setup, out)) == 0
    assert (out / "cand" / "summary.json").stat().st_mtime_ns == stamp
    assert ("ships: `cand`" if expected["ships"] else "nothing ships") in capsys.readouterr().out
    # other data (the development set's first frame left out): evaluated again
    fewer = setup["root"] / "dev" / "fewer.csv"
    lines = setup["development"].read_text().splitlines(keepends=True)
    fewer.write_text("".join(lines[:1] + lines[2:]))
    args = _args(setup, out)
    args[args.index("--development") + 1] = str(fewer)
    assert sel.main(args + ["--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["data"]["frames"]["development"] == record["data"]["frames"]["development"] - 1
    assert (out / "cand" / "summary.json").stat().st_mtime_ns != stamp


def test_bad_input_exit_2(setup, tmp_path, capsys):
    empty_real = tmp_path / "netdata"
    empty_real.mkdir()
    assert sel.main(_args(setup, tmp_path / "o1", real=empty_real)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "not found" in err and len(err.splitlines()) == 1
    assert sel.main(_args(setup, tmp_path / "o2") + ["--candidate", "nonesuch"]) == 2
    assert "nonesuch" in capsys.readouterr().err
    no_val = tmp_path / "noval.csv"
    no_val.write_text((setup["validation"]).read_text())  # its splits: no 'val' row
    args = _args(setup, tmp_path / "o3")
    args[args.index("--development") + 1] = str(no_val)
    assert sel.main(args) == 2
    assert "no rows with split == 'val'" in capsys.readouterr().err
