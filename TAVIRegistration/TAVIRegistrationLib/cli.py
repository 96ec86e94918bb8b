"""The ``tavireg`` command line: a thin front end over the library.

Contract (see the project guide): exit status 0 on success; 2 on bad input or usage with one line
``error: ...`` on stderr and no traceback; 1 on an internal failure. Every fallback a step takes is
printed as ``warning: ...`` on stderr (and listed in ``--json`` output). Outputs are written
atomically (``outputs.OutputSet``): a failed run leaves no partial file and never touches an input.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import traceback
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from .errors import InputError

EXIT_OK, EXIT_INTERNAL, EXIT_INPUT = 0, 1, 2

_COMMANDS: Dict[str, Callable[[argparse.Namespace], int]] = {}


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors as one ``error:`` line and exit status 2."""

    def error(self, message: str):  # noqa: D401 - argparse API
        raise InputError(f"{message} (see '{self.prog} --help')")


def _floats(text: str, n: Optional[int] = None, what: str = "value") -> List[float]:
    try:
        values = [float(t) for t in text.replace(" ", "").split(",") if t != ""]
    except ValueError:
        raise InputError(f"{what} must be comma-separated numbers, got {text!r}") from None
    if n is not None and len(values) != n:
        raise InputError(f"{what} needs {n} comma-separated numbers, got {text!r}")
    return values


def _emit_warnings(warnings: Sequence[str]) -> None:
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)


def _print_json(obj) -> None:
    print(json.dumps(obj, indent=2, sort_keys=False, default=float))


# --------------------------------------------------------------------------------------------
# tavireg info
# --------------------------------------------------------------------------------------------
def add_geometry_overrides(p, title="C-arm geometry (overrides what the fluoroscopy file says, or supplies "
                                     "what it lacks; each one used is named in the warnings)"):
    g = p.add_argument_group(title)
    g.add_argument("--primary", type=float, help="primary angle, deg (+LAO / -RAO)")
    g.add_argument("--secondary", type=float, help="secondary angle, deg (+CRA / -CAU)")
    g.add_argument("--sid", type=float, help="source to detector distance, mm")
    g.add_argument("--sod", type=float, help="source to isocentre distance, mm")
    g.add_argument("--spacing", help="detector pixel spacing, mm: one value or ROW,COL")
    return g


def geometry_overrides_from_args(args):
    """The --primary --secondary --sid --sod --spacing values as ``fluoro.GeometryOverrides``."""
    from .fluoro import GeometryOverrides

    spacing = None
    if args.spacing is not None:
        sp = _floats(args.spacing, what="--spacing")
        if len(sp) not in (1, 2):
            raise InputError("--spacing takes one value or ROW,COL")
        spacing = (sp[0], sp[-1])
    return GeometryOverrides(args.primary, args.secondary, args.sid, args.sod, spacing)


def _add_info(sub) -> None:
    p = sub.add_parser("info", help="geometry and image facts of a fluoroscopy DICOM file")
    p.add_argument("fluoro", type=Path, help="XA or RF DICOM file")
    p.add_argument("--frame", type=int, default=0, help="frame whose geometry is reported (default 0)")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    add_geometry_overrides(p)


def _run_info(args) -> int:
    from .fluoro import read_fluoro
    from .geometry import view_label

    series = read_fluoro(args.fluoro, load_pixels=False, **geometry_overrides_from_args(args).as_kwargs())
    info = series.info_dict(args.frame)
    if args.json:
        _print_json(info)
        return EXIT_OK
    _emit_warnings(info.get("warnings", []))
    rows = [
        ("modality", info["modality"]),
        ("size", f"{info['rows']} x {info['cols']} px, {info['frames']} frame(s)"),
        ("view", view_label(info["primary_angle_deg"], info["secondary_angle_deg"])),
        ("primary angle", f"{info['primary_angle_deg']:+.1f} deg"),
        ("secondary angle", f"{info['secondary_angle_deg']:+.1f} deg"),
        ("SID", f"{info['sid_mm']:.1f} mm"),
        ("SOD", f"{info['sod_mm']:.1f} mm"),
        ("imager pixel spacing", "{:.4f} x {:.4f} mm (row x col)".format(*info["imager_pixel_spacing_mm"])),
        ("magnification", f"{info['magnification']:.3f}"),
    ]
    for key, value in rows:
        print(f"{key:>22}: {value}")
    return EXIT_OK


# --------------------------------------------------------------------------------------------
# tavireg project
# --------------------------------------------------------------------------------------------
_MANUAL_GEOMETRY = ("primary", "secondary", "sid", "sod", "spacing", "rows", "cols")


def add_model_arguments(p, required=True) -> None:
    p.add_argument("--model", type=Path, required=required,
                   help="vessel surface (STL/OBJ/PLY/VTK/VTP) or labelmap (NRRD/NIfTI)")
    p.add_argument("--units", choices=("mm", "cm", "m"), help="units of the model file (default: its header, else mm with a warning)")
    p.add_argument("--space", choices=("LPS", "RAS"), help="coordinate space of the model file (default: its SPACE= header, else LPS with a warning)")
    p.add_argument("--isocenter", metavar="X,Y,Z",
                   help="C-arm isocentre in the model's LPS mm (default: the model's bounding-box centre, with a warning)")
    p.add_argument("--orthographic", action="store_true",
                   help="parallel projection (the paper's Eq. 3) instead of the perspective C-arm")


def _add_project(sub) -> None:
    p = sub.add_parser("project", help="binary C-arm projection of a surface model")
    add_model_arguments(p)
    p.add_argument("--fluoro", type=Path, help="take the geometry from this XA/RF DICOM file")
    p.add_argument("--frame", type=int, default=0, help="frame of --fluoro (default 0)")
    g = add_geometry_overrides(p, "manual geometry (all of them without --fluoro; with it, they override the file)")
    g.add_argument("--rows", type=int, help="image rows")
    g.add_argument("--cols", type=int, help="image columns")
    p.add_argument("--out", type=Path, required=True, help="output PNG (0/255 mask at the frame's size)")
    p.add_argument("--depth", type=Path, help="also write a depth picture (near = bright) to this PNG")
    p.add_argument("--json", action="store_true", help="print a JSON summary")


def geometry_from_args(args, warnings: List[str]):
    """The C-arm geometry of the command: from --fluoro (manual values override), or manual."""
    from .geometry import CArmGeometry

    overrides = geometry_overrides_from_args(args)
    if args.fluoro is not None:
        from .fluoro import read_fluoro

        if args.rows is not None or args.cols is not None:
            raise InputError("--rows/--cols cannot be combined with --fluoro (the frame's size is used)")
        series = read_fluoro(args.fluoro, load_pixels=False, **overrides.as_kwargs())
        warnings.extend(series.warnings)
        return series.geometry(args.frame), series
    missing = [f"--{n}" for n in _MANUAL_GEOMETRY if getattr(args, n) is None]
    if missing:
        raise InputError("without --fluoro the geometry needs " + ", ".join(missing))
    geom = CArmGeometry(args.primary, args.secondary, args.sid, args.sod, overrides.pixel_spacing_mm,
                        args.rows, args.cols)
    return geom, None


def load_model_from_args(args, warnings: List[str]):
    from .mesh import load_model

    model = load_model(args.model, units=args.units, space=args.space)
    warnings.extend(model.warnings)
    return model


def isocenter_from_args(args, model, warnings: List[str]):
    if args.isocenter:
        return tuple(_floats(args.isocenter, 3, "--isocenter"))
    from .pipeline import default_isocenter

    return default_isocenter(model, warnings)


def _run_project(args) -> int:
    from .outputs import OutputSet, image_png_writer, mask_png_writer
    from .projection import render_projection

    warnings: List[str] = []
    geom, _ = geometry_from_args(args, warnings)
    model = load_model_from_args(args, warnings)
    geom = geom.with_isocenter(isocenter_from_args(args, model, warnings))
    proj = render_projection(model.polydata, geom, orthographic=args.orthographic, with_depth=args.depth is not None)
    if proj.area_px == 0:
        hint = f" ({model.extent_problem})" if model.extent_problem else ""
        raise InputError(f"the model projects entirely outside the detector for this geometry and isocentre{hint}")
    inputs = [args.model] + ([args.fluoro] if args.fluoro else [])
    with OutputSet(inputs=inputs) as outs:
        outs.add(args.out, mask_png_writer(proj.mask))
        if args.depth is not None:
            outs.add(args.depth, image_png_writer(proj.depth_display()))
    _emit_warnings(warnings)
    if args.json:
        _print_json({
            "out": str(args.out),
            "geometry": geom.to_dict(),
            "orthographic": bool(args.orthographic),
            "projection_matrix": proj.matrix.tolist(),
            "area_px": proj.area_px,
            "warnings": warnings,
        })
    return EXIT_OK


# --------------------------------------------------------------------------------------------
# tavireg gui
# --------------------------------------------------------------------------------------------
def _add_gui(sub) -> None:
    p = sub.add_parser("gui", help="the Qt viewer: projection, ROI, overlay, export")
    add_model_arguments(p, required=False)
    p.add_argument("--fluoro", type=Path, help="fluoroscopy DICOM to open")
    add_geometry_overrides(p)
    p.add_argument("--frame", type=_lazy("fluoro", "frame_argument"), default=0,
                   help="frame to show first (default 0), or 'auto': the one with the most contrast")
    p.add_argument("--demo", action="store_true", help="open the synthetic demo case")
    p.add_argument("--screenshot", type=Path, metavar="OUT.png",
                   help="render the window offscreen to this PNG and exit (no window is shown)")


def _run_gui(args) -> int:
    iso = tuple(_floats(args.isocenter, 3, "--isocenter")) if args.isocenter else None
    from .viewer import run_viewer

    return run_viewer(args.model, args.fluoro, units=args.units, space=args.space, isocenter=iso,
                      orthographic=args.orthographic, frame=args.frame, screenshot=args.screenshot,
                      demo=args.demo, geometry=geometry_overrides_from_args(args))


# --------------------------------------------------------------------------------------------
# tavireg register
# --------------------------------------------------------------------------------------------
def _add_register(sub) -> None:
    p = sub.add_parser("register", help="register the model's projection to a fluoroscopy frame (or a run)")
    add_model_arguments(p)
    p.add_argument("--fluoro", type=Path, required=True, help="XA/RF DICOM file")
    add_geometry_overrides(p)
    p.add_argument("--frame", default="0", help="frame index, 'auto' (the frame with the most contrast) or 'all' "
                   "(every frame of a run; default 0)")
    p.add_argument("--roi", metavar="X,Y,W,H", help="region of interest on the projection, frame pixels "
                   "(default: the projection's bounding box with a margin)")
    p.add_argument("--fixed-mask", type=Path, help="the frame's vessel mask (PNG, 0/255): skips segmentation")
    p.add_argument("--method", choices=("cnn", "cnn+refine", "sitk"),
                   help="registration CNN, the CNN then a few optimisation steps of its loss, or SimpleITK "
                   "(default: cnn+refine when a registration network is installed, else sitk with a warning)")
    p.add_argument("--fov", choices=("auto", "upper", "lower"), default="auto", help="field of view for segmentation")
    p.add_argument("--mode", choices=("contour", "fill"), default="contour", help="overlay drawing")
    p.add_argument("--force-cpu", action="store_true", help="do not use a GPU even when one is present")
    p.add_argument("--anonymize", action="store_true",
                   help="write overlay.dcm without the patient's identity (new study, no link to the source)")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--json", action="store_true", help="print a JSON summary")


def _run_register(args) -> int:
    from .fluoro import read_fluoro
    from .outputs import read_mask_png
    from .pipeline import RegistrationPipeline
    from .registration import RegistrationFailed
    from . import report

    warnings: List[str] = []
    model = load_model_from_args(args, warnings)
    series = read_fluoro(args.fluoro, **geometry_overrides_from_args(args).as_kwargs())
    iso = tuple(_floats(args.isocenter, 3, "--isocenter")) if args.isocenter else None
    frames, frame_note = _frame_list(args.frame, series)
    roi = tuple(int(v) for v in _floats(args.roi, 4, "--roi")) if args.roi else None
    device = "cpu" if args.force_cpu else None
    with RegistrationPipeline(model, series, isocenter_lps=iso, orthographic=args.orthographic) as pipe:
        warnings[:] = pipe.warnings + ([frame_note] if frame_note else [])
        fixed = (read_mask_png(args.fixed_mask, (series.rows, series.cols), "fixed mask")
                 if args.fixed_mask else None)
        if fixed is not None and str(args.frame).strip().lower() == "all":
            raise InputError("--fixed-mask is one frame's mask: it cannot be combined with --frame all")
        failures = {}
        if len(frames) == 1:
            reg = pipe.register(frames[0], roi, fixed_mask=fixed, method=args.method, fov=args.fov, device=device)
            if not reg.valid:
                raise RegistrationFailed(f"frame {frames[0]}: {reg.result.message} (no overlay written)")
            results = [reg]
        else:  # a run survives its frames: a failed frame is recorded and the run goes on
            run = pipe.register_run(frames, roi, method=args.method, fov=args.fov, device=device)
            if not run.registrations:
                first, why = min(run.failures.items())
                raise RegistrationFailed(f"no frame of the run registered (frame {first}: {why}); nothing written")
            results, failures = run.registrations, run.failures
            warnings.extend(run.failure_warnings())
        summary = report.write_registration_outputs(
            args.out, pipe, results, mode=args.mode, inputs=[args.model, args.fluoro, args.fixed_mask],
            warnings=warnings, anonymize=args.anonymize, failures=failures,
        )
    _emit_warnings(summary["warnings"])
    if args.json:
        _print_json(summary)
    else:
        for line in report.summary_lines(summary):
            print(line)
    return EXIT_OK


def _frame_list(text: str, series) -> Tuple[List[int], Optional[str]]:
    """The frames ``--frame`` names ('all', 'auto' or an index) and, for 'auto', the sentence naming
    the frame chosen."""
    import argparse

    from .fluoro import frame_argument

    if str(text).strip().lower() == "all":
        return list(range(series.n_frames)), None
    try:
        choice = frame_argument(text)
    except argparse.ArgumentTypeError:
        raise InputError(f"--frame must be an integer, 'auto' or 'all', got {text!r}") from None
    index, note = series.resolve_frame(choice)
    return [index], note


# --------------------------------------------------------------------------------------------
# tavireg demo
# --------------------------------------------------------------------------------------------
def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="make a synthetic TAVI case and run the whole pipeline on it")
    p.add_argument("--out", type=Path, default=Path("demo_out"), help="output folder (default demo_out)")
    p.add_argument("--seed", type=int, default=None, help="phantom seed of the case (default: the built-in one)")
    p.add_argument("--method", choices=("cnn", "cnn+refine", "sitk"),
                   help="registration method (default: cnn+refine when a network is installed, else sitk)")
    p.add_argument("--json", action="store_true", help="print a JSON summary")


def _run_demo(args) -> int:
    from .demo import DEMO_SEED, run_demo

    result = run_demo(args.out, seed=DEMO_SEED if args.seed is None else args.seed, method=args.method)
    _emit_warnings(result["warnings"])
    if args.json:
        _print_json(result)
    else:
        print(f"demo case: {result['case']} (frame {result['frame']}), method {result['method']}")
        print("Dice vs ground truth: {} before, {} after registration".format(
            _fmt3(result["dice_before"]), _fmt3(result["dice_vs_truth"])))
        if result["landmark_error_mm"] is not None:
            print(f"landmark error: {result['landmark_error_before_mm']:.1f} mm before, "
                  f"{result['landmark_error_mm']:.1f} mm after")
        print(f"report: {Path(args.out) / 'report.md'}")
    return EXIT_OK


def _fmt3(v) -> str:
    return "n/a" if v is None or v != v else f"{v:.3f}"


# --------------------------------------------------------------------------------------------
# tavireg bench
# --------------------------------------------------------------------------------------------
BENCHMARKS = ("projection", "segmentation", "pipeline", "widths")
#: what ``tavireg bench`` runs without --only (``widths`` sizes a network yet to be trained: asked for by name)
DEFAULT_BENCHMARKS = ("projection", "segmentation", "pipeline")


def _add_bench(sub) -> None:
    p = sub.add_parser("bench", help="measure timings on this machine (medians over repeats)")
    p.add_argument("--only", choices=BENCHMARKS, action="append", help="run only this benchmark (repeatable)")
    p.add_argument("--model", type=Path, help="mesh for the projection benchmark (default: a 200k-triangle sphere)")
    p.add_argument("--repeats", type=int, default=30, help="timed repeats per measurement (default 30)")
    p.add_argument("--widths", help="DRU-Net widths (--base-channels) for --only widths (default 8,12,16,20,24)")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")


def _run_bench(args) -> int:
    from tqdm import tqdm

    from . import bench

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

    def _print_widths_bench(res) -> None:
        lim = res["limits"]
        print(f"DRU-Net widths on {res['device']}: network alone on one {res['inference_input']} frame, one training "
              f"step on {res['train_step_input']} crops; limits {lim['inference_ms']:.0f} ms, {lim['file_mb']:.0f} MB; "
              f"machine {res['machine']}")
        for r in res["widths"]:
            ok = "meets both limits" if r["meets_inference_goal"] and r["meets_file_limit"] else ", ".join(
                what for what, met in (("over the time limit", r["meets_inference_goal"]),
                                       ("over the file limit", r["meets_file_limit"])) if not met)
            print(f"  width {r['base_channels']:>3}: {r['parameters'] / 1e6:.2f} M parameters, {r['file_mb']:.1f} MB; "
                  f"inference median {r['inference']['median_ms']:.1f} ms (p90 {r['inference']['p90_ms']:.1f}); "
                  f"training step {r['train_step']['median_ms']:.0f} ms ({r['train_frames_per_s']:.1f} crops/s); {ok}")

    if args.repeats < 1:
        raise InputError("--repeats must be at least 1")
    results = {}
    selected = args.only or list(DEFAULT_BENCHMARKS)
    if "projection" in selected:
        polydata = None
        if args.model is not None:
            from .mesh import load_model

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
    if "widths" in selected:
        widths = bench.WIDTHS if args.widths is None else _floats(args.widths, what="--widths")
        calls = bench.widths_calls(len(widths), args.repeats)
        with tqdm(total=calls, desc="widths", unit="call", file=sys.stderr, disable=None) as bar:
            results["widths"] = bench.bench_widths(widths, args.repeats, progress=bar.update)
    if args.json:
        _print_json(results)
        return EXIT_OK
    for name, res in results.items():
        if name == "pipeline":
            _print_pipeline_bench(res)
            continue
        if name == "widths":
            _print_widths_bench(res)
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


# --------------------------------------------------------------------------------------------
# entry point
# --------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = _Parser(
        prog="tavireg",
        description="Register a pre-operative CTA vessel model to TAVI fluoroscopy.",
    )
    parser.add_argument("--version", action="version", version=f"tavireg {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for add, name, run in _REGISTRY:
        add(sub)
        _COMMANDS[name] = run
    return parser


def _lazy(module: str, attr: str) -> Callable:
    """A function that imports ``module`` of this package on first call and calls its ``attr``."""

    def call(*args):
        return getattr(importlib.import_module(f".{module}", __package__), attr)(*args)

    return call


_REGISTRY = [
    (_add_info, "info", _run_info),
    (_add_project, "project", _run_project),
    (_add_register, "register", _run_register),
    (_add_demo, "demo", _run_demo),
    (_add_bench, "bench", _run_bench),
    (_lazy("phantom", "add_phantom_parser"), "phantom", _lazy("phantom", "run_phantom")),
    (_add_gui, "gui", _run_gui),
    # commands whose modules are heavy: imported only when the parser is built or the command runs
    (_lazy("segmentation", "add_segment_parser"), "segment", _lazy("segmentation", "run_segment")),
    (_lazy("segmentation", "add_gradcam_parser"), "gradcam", _lazy("segmentation", "run_gradcam")),
    (_lazy("train_seg", "add_train_seg_parser"), "train-seg", _lazy("train_seg", "run_train_seg")),
    (_lazy("train_seg", "add_pack_seg_parser"), "pack-seg", _lazy("train_seg", "run_pack_seg")),
    (_lazy("train_reg", "add_train_reg_parser"), "train-reg", _lazy("train_reg", "run_train_reg")),
    (_lazy("evaluate", "add_evaluate_parser"), "evaluate", _lazy("evaluate", "run_evaluate")),
]


def main(argv: Optional[Sequence[str]] = None) -> int:
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        return _COMMANDS[args.command](args)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INPUT
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except SystemExit as exc:  # --help / --version
        return int(exc.code or 0)
    except Exception as exc:  # noqa: BLE001 - the last line of defence of a clinical tool
        if os.environ.get("TAVIREG_DEBUG"):
            traceback.print_exc()
        msg = " ".join(f"{type(exc).__name__}: {exc}".split())
        print(f"internal error: {msg} (set TAVIREG_DEBUG=1 for the traceback)", file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
