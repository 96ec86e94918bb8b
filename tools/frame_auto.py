"""How well ``--frame auto`` picks the frame with the most contrast, on phantom runs with ground truth.

For every run (series) of 5 or more frames in each phantom data set (``tavireg phantom --out DIR``;
every frame of a run is in its ``index.csv`` with its ``opacified_px``), compares the frame chosen by
``fluoro.opacification_scores`` (mean squared darkening), by the plain mean darkening, and frame 0:
how many runs each puts on a frame whose opacified area is within 10 % of the run's largest, and how
many on a frame without contrast. Also the time of the shipped scoring per run.

    .venv/bin/python tools/frame_auto.py PHANTOM [PHANTOM ...] [--json]
"""

import argparse
import collections
import csv
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "TAVIRegistration"))

from TAVIRegistrationLib.fluoro import opacification_scores, read_fluoro  # noqa: E402

MIN_FRAMES = 5
NEAR_MAX = 0.9


def evaluate(root: Path) -> dict:
    runs = collections.defaultdict(dict)
    with open(root / "index.csv", newline="") as fh:
        for r in csv.DictReader(fh):
            runs[r["image"]][int(r["frame"])] = int(r["opacified_px"])
    near = collections.Counter()
    none = collections.Counter()
    seconds = []
    n = 0
    for image, area in sorted(runs.items()):
        series = read_fluoro(root / image)
        if series.n_frames < MIN_FRAMES or len(area) != series.n_frames:
            continue
        n += 1
        v = np.array([area[i] for i in range(series.n_frames)])
        t0 = time.perf_counter()
        auto = series.most_opacified_frame()  # what --frame auto takes
        seconds.append(time.perf_counter() - t0)
        mean_darkening = int(np.argmax(opacification_scores(series.frames, power=1)))
        for name, k in (("auto", auto), ("mean darkening", mean_darkening), ("frame 0", 0)):
            near[name] += int(v[k] >= NEAR_MAX * v.max())
            none[name] += int(v[k] == 0)
    return {"data": str(root), "runs": n, "near_max": dict(near), "no_contrast": dict(none),
            "seconds_median": float(np.median(seconds)) if seconds else None,
            "seconds_max": float(max(seconds)) if seconds else None}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("phantoms", nargs="+", type=Path, help="phantom data set folders (with index.csv)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    results = [evaluate(r) for r in args.phantoms]
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    for r in results:
        print(f"{r['data']}: {r['runs']} runs of >= {MIN_FRAMES} frames; within {100 - 100 * NEAR_MAX:.0f} % of the "
              "most opacified: " + ", ".join(f"{k} {v}" for k, v in r["near_max"].items())
              + "; no contrast: " + ", ".join(f"{k} {v}" for k, v in r["no_contrast"].items())
              + (f"; {r['seconds_median']:.3f} s per run (max {r['seconds_max']:.3f})" if r["seconds_median"] else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
