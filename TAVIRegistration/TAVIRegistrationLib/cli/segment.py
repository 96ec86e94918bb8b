"""``tavireg segment`` and ``tavireg gradcam``: the DRU-Net on one frame (``segmentation``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..fluoro import frame_argument
from ..segmentation import gradcam, heat_overlay, read_image_file, segment_frame
from .common import add_network_argument, emit_warnings, network_from_args, print_json


def _add_common(p) -> None:
    p.add_argument("image", type=Path, help="PNG/JPEG (8-bit grey) or fluoroscopy DICOM file")
    p.add_argument("--frame", type=frame_argument, default=None,
                   help="frame of a multi-frame DICOM (default 0), or 'auto': the one with the most contrast")
    add_network_argument(p, "manifest name of the DRU-Net weights (default: the installed segmentation network)")
    p.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda or cuda:N")
    p.add_argument("--json", action="store_true", help="print a JSON summary")


def add_segment_parser(sub) -> None:
    p = sub.add_parser("segment", help="vessel mask of a fluoroscopy frame (DRU-Net)")
    _add_common(p)
    p.add_argument("--fov", choices=("upper", "lower", "auto"), default="auto",
                   help="field of view: upper (aortic root) or lower (iliac/femoral); auto reads the DICOM header")
    p.add_argument("--threshold", type=float, help="probability threshold (default: the model's, per FoV)")
    p.add_argument("--out", type=Path, required=True, help="output mask PNG (0/255, the input's size)")
    p.add_argument("--prob", type=Path, help="also write the vessel probability (0-255 PNG)")


def add_gradcam_parser(sub) -> None:
    p = sub.add_parser("gradcam", help="Grad-CAM attention map of the segmentation network")
    _add_common(p)
    p.add_argument("--out", type=Path, required=True, help="output map PNG (8-bit grey, 255 = most attention)")
    p.add_argument("--overlay", type=Path, help="also write a colour heat map blended on the frame (PNG)")


def run_segment(args) -> int:
    from ..networks.weights import pick_device
    from ..outputs import OutputSet, image_png_writer, mask_png_writer

    loaded = read_image_file(args.image, args.frame)
    device = pick_device(requested=args.device)
    warnings = list(loaded.notes)
    res = segment_frame(loaded.image, fov=args.fov, model=network_from_args(args, warnings), device=device,
                        fov_hint=loaded.fov_hint, threshold=args.threshold)
    warnings += res.warnings
    with OutputSet(inputs=[args.image]) as outs:
        outs.add(args.out, mask_png_writer(res.mask))
        if args.prob is not None:
            outs.add(args.prob, image_png_writer((res.probability * 255).round().astype(np.uint8)))
    emit_warnings(warnings)
    if args.json:
        print_json({
            "out": str(args.out), "rows": int(res.mask.shape[0]), "cols": int(res.mask.shape[1]),
            "frame": loaded.frame, "fov_used": res.fov_used, "threshold": res.threshold,
            "model": res.model_name, "vessel_fraction": float(res.mask.mean()), "device": str(device),
            "warnings": warnings,
        })
    return 0


def run_gradcam(args) -> int:
    from ..networks.weights import pick_device
    from ..outputs import OutputSet, image_png_writer

    loaded = read_image_file(args.image, args.frame)
    device = pick_device(requested=args.device)
    warnings = list(loaded.notes)
    cam = gradcam(loaded.image, model=network_from_args(args, warnings), device=device)
    if not cam.any():
        warnings.append("the Grad-CAM map is zero everywhere: no bottleneck feature supports the vessel prediction")
    emit_warnings(warnings)
    with OutputSet(inputs=[args.image]) as outs:
        outs.add(args.out, image_png_writer((cam * 255).round().astype(np.uint8)))
        if args.overlay is not None:
            outs.add(args.overlay, image_png_writer(heat_overlay(loaded.image, cam)))
    if args.json:
        print_json({"out": str(args.out), "rows": int(cam.shape[0]), "cols": int(cam.shape[1]),
                "frame": loaded.frame, "device": str(device), "warnings": warnings})
    return 0


