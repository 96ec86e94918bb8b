"""What the contrast front costs: ``cnn+refine`` with and without it on the same phantom frames.

    .venv/bin/python benchmarks/bench_contrast_front.py --data PHANTOM_DIR [--frames 48] [--json]

For frames spread over a ``tavireg phantom`` data set (its true vessel masks as fixed images, the
ROI of ``evaluate reg``, the frame's field of view), ``registration.register_pair`` runs alternately
with the model's path lengths (``filling``) and without them, twice each, in one process, so that
both see the same frames, the same warm caches and the same machine load. Reported: the median time per frame of each
(what ``RegistrationResult.seconds`` measures plus projecting the vertices on the frame), and the
one-off time per model of ``filling.vessel_flow``.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "TAVIRegistration"))

from TAVIRegistrationLib import filling, registration  # noqa: E402
from TAVIRegistrationLib.evaluation.reg import eligible_rows, spread  # noqa: E402
from TAVIRegistrationLib.geometry import projection_matrix  # noqa: E402
from TAVIRegistrationLib.mesh import load_model  # noqa: E402
from TAVIRegistrationLib.synthetic.phantom import frame_truth, series_geometry  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True, help="a tavireg phantom folder (with index.csv)")
    ap.add_argument("--frames", type=int, default=48, help="frames spread over the data set (default 48)")
    ap.add_argument("--json", action="store_true", help="print machine-readable JSON")
    args = ap.parse_args(argv)
    with open(args.data / "index.csv", newline="") as fh:
        rows = spread(eligible_rows(list(csv.DictReader(fh)), "all"), args.frames)
    times = {"front": [], "whole": []}
    flow_s, cases = [], {}
    for row in rows:
        if row["patient"] not in cases:
            model = load_model(args.data / Path(row["case"]).parent / "model.vtk")
            t0 = time.perf_counter()
            flow = filling.vessel_flow(model)
            flow_s.append(time.perf_counter() - t0)
            case = json.loads((args.data / row["case"]).read_text())
            cases[row["patient"]] = flow, {s["series"]: s for s in case["series"]}
        flow, series = cases[row["patient"]]
        truth = frame_truth(args.data, row)
        roi = truth.user_roi()
        if roi is None:
            continue
        if not times["whole"]:  # the networks loaded outside the timing
            registration.register_pair(truth.projection_nominal, truth.mask, roi, "cnn+refine", fov=row["fov"])
        for kind in ("whole", "front", "front", "whole"):
            t0 = time.perf_counter()
            projected = None
            if kind == "front":
                projected = flow.project(projection_matrix(series_geometry(series[row["series"]])))
            registration.register_pair(truth.projection_nominal, truth.mask, roi, "cnn+refine", fov=row["fov"],
                                       flow=projected)
            times[kind].append(time.perf_counter() - t0)
    result = {"frames": len(times["front"]) // 2,
              "median_ms_front": 1000 * statistics.median(times["front"]),
              "median_ms_whole": 1000 * statistics.median(times["whole"]),
              "vessel_flow_s_per_model": [round(s, 2) for s in flow_s]}
    result["ratio"] = result["median_ms_front"] / result["median_ms_whole"]
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{result['frames']} frames: cnn+refine {result['median_ms_front']:.0f} ms with the contrast front, "
              f"{result['median_ms_whole']:.0f} ms without (ratio {result['ratio']:.2f}); path lengths "
              f"{', '.join(f'{s:.1f}' for s in result['vessel_flow_s_per_model'])} s per model")
    return 0


if __name__ == "__main__":
    sys.exit(main())
