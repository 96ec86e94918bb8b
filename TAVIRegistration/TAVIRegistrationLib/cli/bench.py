"""``tavireg bench``: speed of projection, segmentation and the whole pipeline (``evaluation.bench``)."""

from __future__ import annotations

import sys
from pathlib import Path

from ..errors import InputError
from .common import EXIT_OK, print_json


#: what ``tavireg bench`` runs without --only; ``run`` (a registered run, minutes) when named
DEFAULT_BENCHMARKS = ("projection", "segmentation", "pipeline")
BENCHMARKS = DEFAULT_BENCHMARKS + ("run",)


def add_bench_parser(sub) -> None:
    p = sub.add_parser("bench", help="measure timings on this machine (medians over repeats)")
    p.add_argument("--only", choices=BENCHMARKS, action="append", help="run only this benchmark (repeatable)")
    p.add_argument("--model", type=Path, help="mesh for the projection benchmark (default: a 200k-triangle sphere)")
    p.add_argument("--repeats", type=int, default=30, help="timed repeats per measurement (default 30)")
    p.add_argument("--run-frames", type=int, default=60,
                   help="frames of the registered run of --only run (default 60)")
    p.add_argument("--plot", type=Path, metavar="PNG",
                   help="with --only run: also write its frames-per-second chart to this PNG")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")


def run_bench(args) -> int:
    from tqdm import tqdm

    from ..evaluation import bench

    def _print_pipeline_bench(res) -> None:
        def line(label, s):
            if isinstance(s, dict):
                print(f"  {label:>22}: median {s['median_ms']:.1f} ms, p90 {s['p90_ms']:.1f} ms (n={s['n']})")
            else:
                print(f"  {label:>22}: {s if s is not None else 'n/a'}")

        print(f"pipeline: {res['frames']} frames ({', '.join(res['frame_sizes'])}) of {res['data']}; "
              f"fixed image: {res['fixed_image']}")
        for stage, s in res["stages"].items():
            if stage == "register":
                for m, sm in s.items():
                    line(f"register {m}", sm)
                if res.get("register_network_only"):
                    line(f"cnn network {res['register_network_only']['input']}", res["register_network_only"])
            else:
                line(stage, s)
        for m, s in res["whole_frame"].items():
            line(f"whole frame {m}", s)
        print(f"  {'median Dice vs fixed':>22}: " + ", ".join(f"{m} {v:.3f}" for m, v in res["dice"].items() if v is not None))
        if res.get("speed_ratio_sitk_over_cnn") is not None:
            print(f"  {'sitk / cnn time':>22}: {res['speed_ratio_sitk_over_cnn']:.1f}x")
        for n in res.get("notes", []):
            print(f"  note: {n}")

    if args.repeats < 1:
        raise InputError("--repeats must be at least 1")
    results = {}
    selected = args.only or list(DEFAULT_BENCHMARKS)
    if "projection" in selected:
        polydata = None
        if args.model is not None:
            from ..mesh import load_model

            polydata = load_model(args.model).polydata
        sizes = (512, 1024)
        with tqdm(total=len(sizes) * (args.repeats + 2), desc="projection", unit="render",
                  file=sys.stderr, disable=None) as bar:
            results["projection"] = bench.bench_projection(polydata, sizes, args.repeats, progress=bar.update)
    if "segmentation" in selected:
        calls = (len(bench.SEGMENTATION_SIZES) + 1) * (args.repeats + 2)  # each size, then the network alone
        with tqdm(total=calls, desc="segmentation", unit="call", file=sys.stderr, disable=None) as bar:
            results["segmentation"] = bench.bench_segmentation(repeats=args.repeats, progress=bar.update)
    if "pipeline" in selected:
        # --repeats frames (default 30; at least 20 make a stable median) of a generated one-patient phantom
        if args.repeats < 2:
            raise InputError("the pipeline benchmark needs --repeats of at least 2 frames")
        with tqdm(desc="phantom for pipeline", unit="frame", file=sys.stderr, disable=None) as gen_bar, \
                tqdm(total=args.repeats, desc="pipeline", unit="frame", file=sys.stderr, disable=None) as bar:
            results["pipeline"] = bench.bench_pipeline(getattr(args, "data", None), n_frames=args.repeats,
                                                       progress=bar.update, generate_progress=gen_bar.update)
        if args.repeats < 20:
            results["pipeline"]["notes"].append(f"{args.repeats} frames: fewer than the 20 a stable median needs")
    if "run" in selected:
        _bench_run(args, bench, results)
    elif args.plot is not None:
        raise InputError("--plot is the chart of --only run")
    if args.json:
        print_json(results)
        return EXIT_OK
    for name, res in results.items():
        if name == "pipeline":
            _print_pipeline_bench(res)
            continue
        if name == "run":
            _print_run_bench(res)
            continue
        if name == "segmentation":
            print(f"segmentation: {res['model']} on {res['device']} (segment_frame per frame size), machine {res['machine']}")
        else:
            print(f"{name}: {res.get('triangles', '')} triangles, machine {res['machine']}")
        rows = dict(res["sizes"])
        if "network_only" in res:
            rows[f"network alone, {res['network_only']['input']}"] = res["network_only"]
        for size, summary in rows.items():
            label = size if not size.isdigit() else f"{size}x{size}"
            print(f"  {label}: median {summary['median_ms']:.1f} ms, p90 {summary['p90_ms']:.1f} ms (n={summary['n']})")
    return EXIT_OK




def _bench_run(args, bench, results) -> None:
    """``--only run``: the registered run at 512 and 1024 px (and its chart with ``--plot``)."""
    from tqdm import tqdm

    from ..outputs import OutputSet

    if args.run_frames < 2:
        raise InputError("--run-frames must be at least 2")
    if args.plot is not None and args.plot.suffix.lower() != ".png":
        raise InputError(f"--plot must name a .png file, got {args.plot.name}")
    total = 2 * len(bench.RUN_SIZES) * 2 * args.run_frames
    with tqdm(total=total, desc="run", unit="frame", file=sys.stderr, disable=None) as bar:
        results["run"] = bench.bench_run(n_frames=args.run_frames, progress=bar.update)
    if args.plot is not None:
        png = bench.run_plot_png(results["run"])
        with OutputSet() as outs:
            outs.add(args.plot, lambda fh: fh.write(png))


def _print_run_bench(res) -> None:
    def num(v, spec):
        return "n/a" if v is None else format(v, spec)

    print(f"run: {res['frames']} frames on {res['device']}, machine {res['machine']}")
    for size, entry in res["sizes"].items():
        for method, m in entry["methods"].items():
            stages = ", ".join(f"{k} {v:.0f}" for k, v in m["run_stages_ms"].items())
            print(f"  {size} px {method:>10}: {m['run_fps']:.1f} frames/s ({stages} ms); one frame at a time "
                  f"{m['single_fps']:.1f} frames/s; median Dice {num(m['median_dice_run'], '.3f')} (one at a time "
                  f"{num(m['median_dice_single'], '.3f')}); drift {num(m['drift_px'], '.2f')} px; "
                  f"failed {m['failed_frames']}")
