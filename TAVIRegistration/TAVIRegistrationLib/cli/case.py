"""``tavireg info``, ``project``, ``register`` and ``gui``: the commands on one case (a fluoroscopy file
and a vessel model), over ``pipeline.RegistrationPipeline``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional, Tuple

from ..errors import InputError
from ..fluoro import frame_argument
from .common import (EXIT_OK, add_geometry_overrides, add_model_arguments, emit_warnings, floats, geometry_from_args,
                     geometry_overrides_from_args, isocenter_from_args, load_model_from_args, print_json)


def add_info_parser(sub) -> None:
    p = sub.add_parser("info", help="geometry and image facts of a fluoroscopy DICOM file")
    p.add_argument("fluoro", type=Path, help="XA or RF DICOM file")
    p.add_argument("--frame", type=int, default=0, help="frame whose geometry is reported (default 0)")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    add_geometry_overrides(p)


def run_info(args) -> int:
    from ..fluoro import read_fluoro
    from ..geometry import view_label

    series = read_fluoro(args.fluoro, load_pixels=False, **geometry_overrides_from_args(args).as_kwargs())
    info = series.info_dict(args.frame)
    if args.json:
        print_json(info)
        return EXIT_OK
    emit_warnings(info.get("warnings", []))
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


def add_project_parser(sub) -> None:
    p = sub.add_parser("project", help="binary C-arm projection of a surface model")
    add_model_arguments(p)
    p.add_argument("--fluoro", type=Path, help="take the geometry from this XA/RF DICOM file")
    p.add_argument("--frame", type=int, default=0, help="frame of --fluoro (default 0)")
    g = add_geometry_overrides(p, "manual geometry (all of them without --fluoro; with it, they override the file)")
    g.add_argument("--rows", type=int, help="image rows")
    g.add_argument("--cols", type=int, help="image columns")
    p.add_argument("--out", type=Path, required=True, help="output PNG (0/255 mask at the frame's size)")
    p.add_argument("--depth", type=Path, help="also write a depth picture (near = bright) to this PNG")
    p.add_argument("--export", type=Path, metavar="DIR", help="also write the projection export to this folder "
                   "(projection.png, overlay.png over the frame, projection.json; needs --fluoro)")
    p.add_argument("--json", action="store_true", help="print a JSON summary")


def run_project(args) -> int:
    from ..outputs import OutputSet, image_png_writer, mask_png_writer
    from ..projection import render_projection

    if args.export is not None and args.fluoro is None:
        raise InputError("--export draws the projection over the frame: it needs --fluoro")
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
        if args.export is not None:
            _projection_export(args, model, geom, proj, warnings).add_to(outs, args.export)
    emit_warnings(warnings)
    if args.json:
        print_json({
            "out": str(args.out),
            "geometry": geom.to_dict(),
            "orthographic": bool(args.orthographic),
            "projection_matrix": proj.matrix.tolist(),
            "area_px": proj.area_px,
            "warnings": warnings,
        })
    return EXIT_OK


def _projection_export(args, model, geom, proj, warnings: List[str]):
    """The projection export of ``tavireg project --export`` (``export.ProjectionExport``): the frame of
    --fluoro with the projection drawn, the default ROI."""
    from ..export import ProjectionExport
    from ..fluoro import read_fluoro
    from ..pipeline import FrameProjection
    from ..roi import bounding_roi

    frame = read_fluoro(args.fluoro, **geometry_overrides_from_args(args).as_kwargs()).frame(args.frame)
    return ProjectionExport(
        frame=frame, frame_projection=FrameProjection(args.frame, geom, proj, bounding_roi(proj.mask)),
        fluoro=args.fluoro, model=args.model, isocenter_source="given" if args.isocenter else "model centre",
        model_units=model.units_used, model_space=model.space_used, warnings=warnings)


def add_gui_parser(sub) -> None:
    p = sub.add_parser("gui", help="the Qt viewer: projection, ROI, overlay, export")
    add_model_arguments(p, required=False)
    p.add_argument("--fluoro", type=Path, help="fluoroscopy DICOM to open")
    add_geometry_overrides(p)
    p.add_argument("--frame", type=frame_argument, default=0,
                   help="frame to show first (default 0), or 'auto': the one with the most contrast")
    p.add_argument("--demo", action="store_true", help="open the synthetic demo case")
    p.add_argument("--screenshot", type=Path, metavar="OUT.png",
                   help="render the window offscreen to this PNG and exit (no window is shown)")


def run_gui(args) -> int:
    iso = tuple(floats(args.isocenter, 3, "--isocenter")) if args.isocenter else None
    from ..viewer.window import run_viewer

    return run_viewer(args.model, args.fluoro, units=args.units, space=args.space, isocenter=iso,
                      orthographic=args.orthographic, frame=args.frame, screenshot=args.screenshot,
                      demo=args.demo, geometry=geometry_overrides_from_args(args))


def add_register_parser(sub) -> None:
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
    p.add_argument("--whole-model", action="store_true",
                   help="register the whole projection: by default cnn+refine leaves out the vessels beyond "
                   "the contrast front that agrees best with the frame (vessels without contrast in it)")
    p.add_argument("--fov", choices=("auto", "upper", "lower"), default="auto", help="field of view for segmentation")
    p.add_argument("--mode", choices=("contour", "fill"), default="contour", help="overlay drawing")
    p.add_argument("--force-cpu", action="store_true", help="do not use a GPU even when one is present")
    p.add_argument("--anonymize", action="store_true",
                   help="write overlay.dcm without the patient's identity (new study, no link to the source)")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--json", action="store_true", help="print a JSON summary")


def run_register(args) -> int:
    from ..fluoro import read_fluoro
    from ..outputs import read_mask_png
    from ..pipeline import RegistrationPipeline, failure_warnings
    from ..registration import RegistrationFailed
    from .. import report

    warnings: List[str] = []
    model = load_model_from_args(args, warnings)
    # frames decoded when registered: a long run is never held whole
    series = read_fluoro(args.fluoro, stream=True, **geometry_overrides_from_args(args).as_kwargs())
    iso = tuple(floats(args.isocenter, 3, "--isocenter")) if args.isocenter else None
    frames, frame_note = _frame_list(args.frame, series)
    roi = tuple(int(v) for v in floats(args.roi, 4, "--roi")) if args.roi else None
    device = "cpu" if args.force_cpu else None
    with RegistrationPipeline(model, series, isocenter_lps=iso, orthographic=args.orthographic,
                              contrast_front=not args.whole_model) as pipe:
        warnings[:] = pipe.warnings + ([frame_note] if frame_note else [])
        fixed = (read_mask_png(args.fixed_mask, (series.rows, series.cols), "fixed mask")
                 if args.fixed_mask else None)
        if fixed is not None and str(args.frame).strip().lower() == "all":
            raise InputError("--fixed-mask is one frame's mask: it cannot be combined with --frame all")
        record = report.RunRecord(pipe, args.mode, len(frames))
        if len(frames) == 1:
            reg = pipe.register(frames[0], roi, fixed_mask=fixed, method=args.method, fov=args.fov, device=device)
            if not reg.valid:
                raise RegistrationFailed(f"frame {frames[0]}: {reg.result.message} (no overlay written)")
            record.add(reg)
        else:  # a run survives its frames: a failed frame is recorded and the run goes on
            _record_run(pipe, frames, roi, args, device, record)
            warnings.extend(failure_warnings(record.failures))
        summary = report.write_registration_outputs(
            args.out, pipe, record, mode=args.mode, inputs=[args.model, args.fluoro, args.fixed_mask],
            warnings=warnings, anonymize=args.anonymize,
        )
    emit_warnings(summary["warnings"])
    if args.json:
        print_json(summary)
    else:
        for line in report.summary_lines(summary):
            print(line)
    return EXIT_OK


def _record_run(pipe, frames, roi, args, device, record) -> None:
    """``register --frame all``: the run registered frame by frame into ``record`` (with a progress bar);
    RegistrationFailed when no frame registered."""
    from tqdm import tqdm

    from ..registration import RegistrationFailed

    with tqdm(total=len(frames), desc="register", unit="frame", file=sys.stderr, disable=None) as bar:
        for frame in pipe.iter_run(frames, roi, method=args.method, fov=args.fov, device=device):
            if frame.registered:
                record.add(frame.registration)
            else:
                record.fail(frame.index, frame.failure)
            bar.update(1)
    if record.last is None:
        first, why = min(record.failures.items())
        raise RegistrationFailed(f"no frame of the run registered (frame {first}: {why}); nothing written")


def _frame_list(text: str, series) -> Tuple[List[int], Optional[str]]:
    """The frames ``--frame`` names ('all', 'auto' or an index) and, for 'auto', the sentence naming
    the frame chosen."""
    import argparse

    from ..fluoro import frame_argument

    if str(text).strip().lower() == "all":
        return list(range(series.n_frames)), None
    try:
        choice = frame_argument(text)
    except argparse.ArgumentTypeError:
        raise InputError(f"--frame must be an integer, 'auto' or 'all', got {text!r}") from None
    index, note = series.resolve_frame(choice)
    return [index], note


