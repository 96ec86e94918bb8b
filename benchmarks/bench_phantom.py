"""Benchmark of the synthetic-case generator (``tavireg phantom``) on the machine at hand.

    .venv/bin/python benchmarks/bench_phantom.py [--frames 40] [--seed 0] [--json]

Generates one patient (one process) into a temporary folder and reports the patient set-up time
(anatomy, surface, lumen voxels, deformation binding, body model) and the time per frame, split by
field of view and detector size, from a profile of the run. The full data set's figure (10
patients of 100 frames, 2 processes) is measured with the command itself:

    time .venv/bin/tavireg phantom --out /tmp/phantom --patients 10 --seed 0
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "TAVIRegistration"))

from TAVIRegistrationLib.synthetic import phantom  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=40, help="frames of the one patient (default 40)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    stamps = []

    def progress(n):
        stamps.append(time.perf_counter())

    with tempfile.TemporaryDirectory(prefix="bench-phantom-") as tmp:
        cfg = phantom.PhantomConfig(out=Path(tmp) / "out", patients=1, seed=args.seed,
                                    frames_per_patient=args.frames, workers=1)
        t0 = time.perf_counter()
        phantom.generate_dataset(cfg, progress=progress)
        total = time.perf_counter() - t0
        import csv

        with open(Path(tmp) / "out" / "index.csv", newline="") as fh:
            rows = list(csv.DictReader(fh))
    # the first progress stamp comes after the set-up and the first series' background
    per_frame = [b - a for a, b in zip(stamps, stamps[1:])]
    groups = {}
    for r, dt in zip(rows[1:], per_frame):
        groups.setdefault(f"{r['fov']} {r['rows']}px", []).append(dt)
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs (shared)",
        "frames": len(rows),
        "total_s": round(total, 2),
        "setup_and_first_frame_s": round(stamps[0] - t0, 2) if stamps else None,
        "seconds_per_frame_median": round(statistics.median(per_frame), 3) if per_frame else None,
        "by_kind": {k: {"n": len(v), "median_s": round(statistics.median(v), 3)} for k, v in sorted(groups.items())},
        "note": "per-frame times include the series' background (computed at its first frame) and DICOM/PNG writing",
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{result['frames']} frames in {result['total_s']} s on {result['machine']}")
        print(f"  set-up + first frame: {result['setup_and_first_frame_s']} s; median {result['seconds_per_frame_median']} s/frame")
        for k, v in result["by_kind"].items():
            print(f"  {k}: n={v['n']}, median {v['median_s']} s/frame")
    return 0


if __name__ == "__main__":
    sys.exit(main())
