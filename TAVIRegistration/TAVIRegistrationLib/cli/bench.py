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
    from ..evaluation import bench

    if args.repeats < 1:
        raise InputError("--repeats must be at least 1")
    selected = args.only or list(DEFAULT_BENCHMARKS)
    if args.plot is not None and "run" not in selected:
        raise InputError("--plot is the chart of --only run")
    if "pipeline" in selected and args.repeats < 2:
        raise InputError("the pipeline benchmark needs --repeats of at least 2 frames")
    results = {}
    for name in BENCHMARKS:
        if name in selected:
            results[name] = _MEASURE[name](args, bench)
    if args.json:
        print_json(results)
        return EXIT_OK
    for name, res in results.items():
        _PRINT[name](res)
    return EXIT_OK


def _bar(total, desc: str, unit: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, disable=None)


def _bench_projection(args, bench):
    polydata = None
    if args.model is not None:
        from ..mesh import load_model

        polydata = load_model(args.model).polydata
    sizes = (512, 1024)
    with _bar(len(sizes) * (args.repeats + 2), "projection", "render") as bar:
        return bench.bench_projection(polydata, sizes, args.repeats, progress=bar.update)


def _bench_segmentation(args, bench):
    calls = (len(bench.SEGMENTATION_SIZES) + 1) * (args.repeats + 2)  # each size, then the network alone
    with _bar(calls, "segmentation", "call") as bar:
        return bench.bench_segmentation(repeats=args.repeats, progress=bar.update)


def _bench_pipeline(args, bench):
    """--repeats frames (default 30; at least 20 make a stable median) of a generated one-patient phantom."""
    with _bar(None, "phantom for pipeline", "frame") as gen_bar, _bar(args.repeats, "pipeline", "frame") as bar:
        res = bench.bench_pipeline(getattr(args, "data", None), n_frames=args.repeats,
                                   progress=bar.update, generate_progress=gen_bar.update)
    if args.repeats < 20:
        res["notes"].append(f"{args.repeats} frames: fewer than the 20 a stable median needs")
    return res


def _bench_run(args, bench):
    """``--only run``: the registered run at 512 and 1024 px (and its chart with ``--plot``)."""
    from ..outputs import OutputSet

    if args.run_frames < 2:
        raise InputError("--run-frames must be at least 2")
    if args.plot is not None and args.plot.suffix.lower() != ".png":
        raise InputError(f"--plot must name a .png file, got {args.plot.name}")
    with _bar(2 * len(bench.RUN_SIZES) * 2 * args.run_frames, "run", "frame") as bar:
        res = bench.bench_run(n_frames=args.run_frames, progress=bar.update)
    if args.plot is not None:
        png = bench.run_plot_png(res)
        with OutputSet() as outs:
            outs.add(args.plot, lambda fh: fh.write(png))
    return res


def _print_sizes_bench(name: str, res) -> None:
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


_MEASURE = {"projection": _bench_projection, "segmentation": _bench_segmentation, "pipeline": _bench_pipeline,
            "run": _bench_run}
_PRINT = {"projection": lambda res: _print_sizes_bench("projection", res),
          "segmentation": lambda res: _print_sizes_bench("segmentation", res),
          "pipeline": _print_pipeline_bench, "run": _print_run_bench}
