"""A registered run against one frame at a time, on phantom runs with ground truth.

For every run (XA file) of a ``tavireg phantom`` data set, the frames with contrast are registered
twice with the installed networks: by the run pipeline (``RegistrationPipeline.iter_run``: one render,
batched segmentation, each frame warm-started from the last that registered, ``RUN_HOLD_DICE``) and
one frame at a time from scratch (``RegistrationPipeline.register``). The ROI is the one a user would
draw on the run's most opacified frame, kept for the whole run. Per method: the median Dice of the
registered projection to the true vessel mask inside the registration window (both paths, and their
difference), the median of the first and last thirds of each run (a run that drifts loses accuracy
towards its end), failed frames and frames per second.

    .venv/bin/python benchmarks/run_accuracy.py PHANTOM/index.csv [--methods cnn,cnn+refine] [--json]
"""

import argparse
import csv
import json
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "TAVIRegistration"))

from TAVIRegistrationLib.fluoro import read_fluoro  # noqa: E402
from TAVIRegistrationLib.mesh import load_model  # noqa: E402
from TAVIRegistrationLib.pipeline import RegistrationPipeline  # noqa: E402
from TAVIRegistrationLib.synthetic.phantom import frame_truth  # noqa: E402


def window_dice(registered: np.ndarray, truth: np.ndarray, window) -> float:
    """Dice of two frame masks inside the registration window (clipped to the frame)."""
    y0, x0 = max(window.y0, 0), max(window.x0, 0)
    y1, x1 = min(window.y0 + window.side, truth.shape[0]), min(window.x0 + window.side, truth.shape[1])
    a, b = registered[y0:y1, x0:x1] > 0, truth[y0:y1, x0:x1] > 0
    total = int(a.sum() + b.sum())
    return 2.0 * float((a & b).sum()) / total if total else float("nan")


def runs_of(index_csv: Path):
    """``{image: [rows with contrast, in frame order]}`` of a phantom index."""
    with open(index_csv, newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if int(r.get("opacified_px") or 0) > 0]
    runs = defaultdict(list)
    for r in rows:
        runs[r["image"]].append(r)
    return {k: sorted(v, key=lambda r: int(r["frame"])) for k, v in runs.items() if len(v) >= 3}


def evaluate_run(root: Path, rows, method: str):
    truths = {int(r["frame"]): frame_truth(root, r) for r in rows}
    best = max(rows, key=lambda r: int(r["opacified_px"]))
    roi = truths[int(best["frame"])].user_roi()
    frames = sorted(truths)
    model = load_model(root / Path(best["case"]).parent / "model.vtk")
    series = read_fluoro(root / best["image"])
    iso = tuple(float(v) for v in best["isocenter_lps"].split(";"))
    out = {"run": [], "single": [], "run_failed": 0, "single_failed": 0}
    with RegistrationPipeline(model, series, isocenter_lps=iso) as pipe:
        t0 = time.perf_counter()
        for fr in pipe.iter_run(frames, roi, method=method, device="cpu"):
            if fr.registered:
                out["run"].append(window_dice(fr.registration.registered_mask, truths[fr.index].mask,
                                              fr.registration.result.window))
            else:
                out["run"].append(float("nan"))
                out["run_failed"] += 1
        out["run_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        for i in frames:
            pipe.forget()
            try:
                reg = pipe.register(i, roi, method=method, device="cpu")
                ok = reg.valid
            except Exception:  # noqa: BLE001 - a failed frame is counted
                ok = False
            if ok:
                out["single"].append(window_dice(reg.registered_mask, truths[i].mask, reg.result.window))
            else:
                out["single"].append(float("nan"))
                out["single_failed"] += 1
        out["single_s"] = time.perf_counter() - t0
    return out


def _median(values):
    finite = [v for v in values if v == v]
    return statistics.median(finite) if finite else None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("index", type=Path, help="index.csv of a tavireg phantom data set")
    p.add_argument("--methods", default="cnn,cnn+refine")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    root = args.index.parent
    runs = runs_of(args.index)
    result = {"index": str(args.index), "runs": len(runs), "methods": {}}
    for method in args.methods.split(","):
        per = [evaluate_run(root, rows, method) for rows in runs.values()]
        run_all = [v for o in per for v in o["run"]]
        one_all = [v for o in per for v in o["single"]]
        first = [v for o in per for v in o["run"][:max(1, len(o["run"]) // 3)]]
        last = [v for o in per for v in o["run"][-max(1, len(o["run"]) // 3):]]
        n = len(run_all)
        result["methods"][method] = {
            "frames": n,
            "median_dice_run": _median(run_all), "median_dice_single": _median(one_all),
            "median_dice_run_first_third": _median(first), "median_dice_run_last_third": _median(last),
            "failed_run": sum(o["run_failed"] for o in per), "failed_single": sum(o["single_failed"] for o in per),
            "fps_run": n / sum(o["run_s"] for o in per), "fps_single": n / sum(o["single_s"] for o in per),
        }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{result['runs']} runs of {args.index}")
        for method, m in result["methods"].items():
            print(f"  {method}: {m['frames']} frames; median Dice to the truth: run {m['median_dice_run']:.4f}, "
                  f"one at a time {m['median_dice_single']:.4f}; run first third {m['median_dice_run_first_third']:.4f}, "
                  f"last third {m['median_dice_run_last_third']:.4f}; failed {m['failed_run']} / {m['failed_single']}; "
                  f"{m['fps_run']:.1f} / {m['fps_single']:.1f} frames/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
