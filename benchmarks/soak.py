"""Soak benchmark: many frames registered in one process, memory sampled; does anything grow?

    .venv/bin/python benchmarks/soak.py [--frames 1000] [--method cnn+refine] [--run] [--json] [--plot OUT.png]

The demo case (``demo.make_demo_case``: a phantom cine run) is registered frame after frame as a
long session would: every frame is segmented by DRU-Net and registered with the given method
(default: the library's), and every ``--cycle`` frames the case is closed and opened again (the DICOM
read, a new pipeline, a new VTK renderer), so that per-case resources are created and released
hundreds of times. With ``--run`` the frames are one run instead, registered by the run pipeline
(``RegistrationPipeline.iter_run``: one case, batched segmentation ahead, warm starts), each frame
made when the pipeline asks for it (the demo frame with fresh noise) and dropped once registered, as
a streaming consumer does. The resident set size (``/proc/self/statm``) is sampled after every frame.

Reported: the RSS after the warm-up (the first ``--warmup`` frames: libraries and caches filling),
at the end and at its peak; the slope of a least-squares line through the samples after the
warm-up, in MB per 1000 frames (goal: no growth beyond noise); the time per frame; every failure
(an unexpected exception: exit status 1) and, apart, the registrations the library refused (an
InputError or an invalid affine: correct behaviour, counted). ``--plot`` draws RSS against frame.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "TAVIRegistration"))


def rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


class StreamedRun:
    """A fluoroscopy run of ``n_frames`` whose frames are made when asked for: frame ``frame_index`` of
    ``series`` with +-3 grey levels of noise seeded by the frame's number (nothing held)."""

    def __init__(self, series, frame_index: int, n_frames: int):
        self.base, self.frame_index, self.n_frames = series, int(frame_index), int(n_frames)
        self.rows, self.cols = series.rows, series.cols
        self.warnings, self.header = list(series.warnings), series.header

    def frame(self, index: int) -> np.ndarray:
        noise = np.random.default_rng(int(index)).uniform(-3.0, 3.0, (self.rows, self.cols)).astype(np.float32)
        return self.base.frame(self.frame_index) + noise

    def geometry(self, index: int):
        return self.base.geometry(self.frame_index)


def soak_run(frames: int, method, warmup: int, workdir: Path, progress: bool = True) -> dict:
    """``--run``: one run of ``frames`` frames through ``iter_run``, RSS sampled after every frame."""
    from TAVIRegistrationLib.fluoro import read_fluoro
    from TAVIRegistrationLib.mesh import load_model
    from TAVIRegistrationLib.pipeline import RegistrationPipeline
    from TAVIRegistrationLib.synthetic.demo import make_demo_case

    case = make_demo_case(workdir / "demo")
    run = StreamedRun(read_fluoro(case.fluoro_path), case.frame_index, frames)
    rss, seconds, failures, refused, methods = [], [], [], [], set()
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=frames, desc="soak run", unit="frame", file=sys.stderr)
    with RegistrationPipeline(load_model(case.model_path), run, isocenter_lps=case.isocenter_lps) as pipe:
        t0 = time.perf_counter()
        try:
            for frame in pipe.iter_run(range(frames), case.truth().user_roi(), method=method):
                if frame.registered:
                    methods.add(frame.registration.result.method)
                else:
                    refused.append({"frame": frame.index, "refused": frame.failure})
                seconds.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                rss.append(rss_mb())
                if bar is not None:
                    bar.update(1)
        except Exception as exc:  # noqa: BLE001 - what a soak run is for
            failures.append({"frame": len(rss), "exception": f"{type(exc).__name__}: {exc}"})
        finally:
            if bar is not None:
                bar.close()
    return _summary(rss, seconds, failures, refused, methods, frames, warmup, cycle=None)


def _summary(rss, seconds, failures, refused, methods, frames, warmup, cycle) -> dict:
    """The figures of a soak run from its samples (RSS and seconds per frame)."""
    x = np.arange(len(rss))
    after = slice(min(warmup, len(rss) - 2), None)
    slope = float(np.polyfit(x[after], np.asarray(rss)[after], 1)[0]) * 1000.0
    resid = np.asarray(rss)[after] - np.polyval(np.polyfit(x[after], np.asarray(rss)[after], 1), x[after])
    return {
        "frames": frames, "methods": sorted(methods), "cycle": cycle, "warmup": warmup,
        "rss_mb_after_warmup": round(rss[after.start], 1), "rss_mb_end": round(rss[-1], 1),
        "rss_mb_peak": round(max(rss), 1), "rss_slope_mb_per_1000_frames": round(slope, 2),
        "rss_noise_mb_std": round(float(resid.std()), 2),
        "median_ms_per_frame": round(1000 * float(np.median(seconds)), 1),
        "failures": len(failures), "failure_examples": failures[:10],
        "refused": len(refused), "refused_examples": refused[:5], "rss_mb": [round(v, 1) for v in rss],
    }


def soak(frames: int, method, cycle: int, warmup: int, workdir: Path, progress: bool = True) -> dict:
    from TAVIRegistrationLib.synthetic.demo import make_demo_case
    from TAVIRegistrationLib.errors import InputError
    from TAVIRegistrationLib.fluoro import read_fluoro
    from TAVIRegistrationLib.mesh import load_model
    from TAVIRegistrationLib.pipeline import RegistrationPipeline

    case = make_demo_case(workdir / "demo")
    model = load_model(case.model_path)
    roi = case.truth().user_roi()
    rss, seconds, failures, refused, methods = [], [], [], [], set()
    pipe = None
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=frames, desc="soak", unit="frame", file=sys.stderr)
    try:
        for i in range(frames):
            if pipe is None or i % cycle == 0:
                if pipe is not None:
                    pipe.close()
                series = read_fluoro(case.fluoro_path)
                pipe = RegistrationPipeline(model, series, isocenter_lps=case.isocenter_lps)
            index = i % pipe.n_frames
            t0 = time.perf_counter()
            try:
                pipe.forget(index)  # a new frame each time: nothing served from the caches
                reg = pipe.register(index, roi, method=method)
                methods.add(reg.result.method)
                if not reg.valid:
                    refused.append({"frame": i, "refused": reg.result.message})
            except InputError as exc:
                refused.append({"frame": i, "error": str(exc)})
            except Exception as exc:  # noqa: BLE001 - what a soak run is for
                failures.append({"frame": i, "exception": f"{type(exc).__name__}: {exc}"})
            seconds.append(time.perf_counter() - t0)
            rss.append(rss_mb())
            if bar is not None:
                bar.update(1)
    finally:
        if pipe is not None:
            pipe.close()
        if bar is not None:
            bar.close()
    return _summary(rss, seconds, failures, refused, methods, frames, warmup, cycle)


def main(argv=None) -> int:
    from TAVIRegistrationLib.evaluation.bench import machine_facts

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=1000)
    ap.add_argument("--method", choices=("cnn", "cnn+refine", "sitk"), help="default: the library's")
    ap.add_argument("--cycle", type=int, default=50, help="frames between closing and reopening the case")
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--run", action="store_true", help="one streamed run through the run pipeline (iter_run)")
    ap.add_argument("--plot", type=Path, help="RSS against frame, as a PNG")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="tavireg-soak-") as work:
        if args.run:
            res = soak_run(args.frames, args.method, args.warmup, Path(work), progress=not args.quiet)
        else:
            res = soak(args.frames, args.method, args.cycle, args.warmup, Path(work), progress=not args.quiet)
    res["machine"] = machine_facts()
    res["command"] = "benchmarks/soak.py " + " ".join(argv if argv is not None else sys.argv[1:])
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 3.2), dpi=120)
        ax.plot(res["rss_mb"], lw=1)
        ax.axvline(args.warmup, color="grey", ls=":", lw=1)
        ax.set_xlabel("frame")
        ax.set_ylabel("RSS (MB)")
        ax.set_title(f"soak: {args.frames} frames, slope {res['rss_slope_mb_per_1000_frames']:+.1f} MB/1000 frames")
        fig.tight_layout()
        fig.savefig(args.plot)
    shown = {k: v for k, v in res.items() if k != "rss_mb"}
    if args.json:
        print(json.dumps(shown, indent=2))
    else:
        for k, v in shown.items():
            print(f"{k}: {v}")
    return 1 if res["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
