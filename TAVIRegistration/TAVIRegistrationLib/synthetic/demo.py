"""The built-in demo case (``tavireg demo``): one synthetic TAVI patient run through the pipeline.

``make_demo_case`` makes a small phantom case (``phantom.generate_dataset``, one patient, an
upper-FoV aortic-root frame) and returns the files a user would have: the pre-operative vessel
model and an XA DICOM frame, plus the C-arm isocentre and the ground truth. ``run_demo`` runs the
same pipeline object as the CLI, the viewer and the Slicer module on it, and writes pictures and a
Markdown report. The same case serves the viewer's ``--demo`` and the Slicer self-test.
"""

from __future__ import annotations

import csv
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

from ..errors import InputError

DEMO_SEED = 2  # a case on which the shipped networks register validly
DEMO_SIZE = 512


@dataclass
class DemoCase:
    directory: Path
    model_path: Path
    fluoro_path: Path
    frame_index: int
    isocenter_lps: Tuple[float, float, float]
    fov: str
    row: Dict[str, str] = field(default_factory=dict)  # the frame's row of the phantom's index.csv

    def truth(self):
        """The phantom's ground truth of the frame (``phantom.FrameTruth``)."""
        from .phantom import frame_truth

        return frame_truth(self.directory, self.row)


def make_demo_case(directory, seed: int = DEMO_SEED, frames: int = 4, size: int = DEMO_SIZE) -> DemoCase:
    """Make (or reuse, if already made with the same settings) the demo case in ``directory``."""
    from .phantom import PhantomConfig, generate_dataset

    directory = Path(directory)
    index = directory / "index.csv"
    stamp = directory / "demo.json"
    settings = {"seed": int(seed), "frames": int(frames), "size": int(size)}
    if not (index.exists() and stamp.exists() and json.loads(stamp.read_text()) == settings):
        config = PhantomConfig(out=directory, patients=1, seed=seed, frames_per_patient=frames,
                               size=size, upper_fraction=1.0, workers=1, overwrite=True)
        generate_dataset(config)
        stamp.write_text(json.dumps(settings))
    with open(index, newline="") as fh:
        rows = list(csv.DictReader(fh))
    upper = [r for r in rows if r["fov"] == "upper"] or rows
    if not upper:
        raise InputError(f"the demo case in {directory} has no frames")
    # the frame with the most contrast: the clearest picture for a first look
    row = max(upper, key=lambda r: int(r.get("opacified_px") or 0))
    return DemoCase(
        directory=directory,
        model_path=directory / Path(row["case"]).parent / "model.vtk",
        fluoro_path=directory / row["image"],
        frame_index=int(row["frame"]),
        isocenter_lps=tuple(float(v) for v in row["isocenter_lps"].split(";")),
        fov=row["fov"],
        row=row,
    )


def run_demo(out_dir, seed: int = DEMO_SEED, method: Optional[str] = None) -> Dict[str, object]:
    """Make the demo case and register it; write pictures, the registration files and report.md."""
    from ..fluoro import read_fluoro
    from ..mesh import load_model
    from ..outputs import OutputSet, check_writable_dir, image_png_writer
    from ..overlay import overlay_rgb
    from ..pipeline import RegistrationPipeline
    from ..evaluation.reg import before_overlap, window_overlap
    from ..networks.weights import installed
    from ..registration import default_method
    from ..report import write_registration_outputs

    out = Path(out_dir)
    check_writable_dir(out)
    t0 = time.perf_counter()
    case = make_demo_case(out / "case", seed=seed)
    truth = case.truth()
    warnings: List[str] = []
    model = load_model(case.model_path)
    series = read_fluoro(case.fluoro_path)
    roi = truth.user_roi()
    if roi is None:
        raise InputError("the demo frame shows no contrast-filled vessel")
    seg_ready = installed("segmentation")
    if method is None:
        method = default_method(warnings)
    if not seg_ready:
        warnings.append("no segmentation network is installed: the demo uses the ground-truth vessel mask")
    i = case.frame_index
    with RegistrationPipeline(model, series, isocenter_lps=case.isocenter_lps) as pipe:
        fp = pipe.project(i)
        reg = pipe.register(i, roi, fixed_mask=None if seg_ready else truth.mask, method=method)
        if not reg.valid:
            raise InputError(f"demo registration failed: {reg.result.message}")
        summary = write_registration_outputs(out / "registration", pipe, [reg], inputs=[case.model_path, case.fluoro_path],
                                             warnings=pipe.warnings + warnings)
        frame = pipe.frame(i)
        before = overlay_rgb(frame, fp.projection.mask)
        after_truth = overlay_rgb(frame, reg.registered_mask, reference=truth.mask, mode="fill", opacity=0.45)
        seg_pic = overlay_rgb(frame, reg.fixed_mask, mode="fill", opacity=0.45, color=(0, 200, 255))
        with OutputSet(inputs=[case.model_path, case.fluoro_path]) as outs:
            outs.add(out / "frame_with_unregistered_projection.png", image_png_writer(before))
            outs.add(out / "fixed_mask.png", image_png_writer(seg_pic))
            outs.add(out / "registered_vs_truth.png", image_png_writer(after_truth))
        vs_truth = window_overlap(reg.registered_mask, truth.mask, reg.result.window)
        before_truth = before_overlap(fp.projection.mask, roi, truth.mask, reg.result.window)
        tre = truth.landmark_errors_mm(reg.result.frame_matrix, roi)
        tre0 = truth.landmark_errors_mm(np.eye(3), roi)
        result = {
            "case": str(case.directory), "frame": i, "roi": list(roi), "method": method,
            "segmentation": "DRU-Net" if seg_ready else "ground truth",
            "dice_vs_truth": vs_truth["dice"], "recall_vs_truth": vs_truth["recall"],
            "precision_vs_truth": vs_truth["precision"], "dice_before": before_truth["dice"],
            "landmark_error_mm": float(np.median(tre)) if tre.size else None,
            "landmark_error_before_mm": float(np.median(tre0)) if tre0.size else None,
            "registration_ms": 1000 * float(reg.result.seconds),
            "flagged": bool(reg.result.flagged),
            "total_s": time.perf_counter() - t0,
            "warnings": summary["warnings"],
        }
        geom = fp.geometry
    report_md = _report_markdown(result, geom, case)
    with OutputSet() as outs:
        outs.add(out / "report.md", lambda fh: fh.write(report_md.encode()))
        outs.add(out / "demo.json", lambda fh: fh.write((json.dumps(result, indent=2, default=float) + "\n").encode()))
    return result


def _fmt(v, spec: str = ".3f") -> str:
    return "n/a" if v is None or (isinstance(v, float) and not np.isfinite(v)) else format(v, spec)


def _report_markdown(r: Dict[str, object], geom, case: DemoCase) -> str:
    from ..geometry import view_label

    lines = [
        "# TAVIRegistration demo",
        "",
        "A synthetic TAVI patient (`tavireg phantom`): the pre-operative vessel model "
        f"(`{case.model_path.relative_to(case.directory.parent)}`) and an intra-operative aortography frame "
        f"(`{case.fluoro_path.relative_to(case.directory.parent)}`, frame {r['frame']}), "
        f"{view_label(geom.primary_angle_deg, geom.secondary_angle_deg)}, "
        f"SID {geom.sid_mm:.0f} mm, SOD {geom.sod_mm:.0f} mm, {geom.cols}x{geom.rows} px. "
        "The patient lies shifted and rotated against the pre-operative model and the vessels are deformed, "
        "as during a procedure; the DICOM angles are nominal. Research use only.",
        "",
        f"The region of interest ({', '.join(str(v) for v in r['roi'])}; x, y, w, h) is the one a user would "
        "draw: around the contrast-filled part of the model.",
        "",
        "| | before registration | after registration |",
        "| --- | --- | --- |",
        f"| Dice vs ground truth (in the registration window) | {_fmt(r['dice_before'])} | {_fmt(r['dice_vs_truth'])} |",
        f"| landmark error, mm at the isocentre (median) | {_fmt(r['landmark_error_before_mm'], '.1f')} | "
        f"{_fmt(r['landmark_error_mm'], '.1f')} |",
        "",
        f"Method: `{r['method']}`; fixed mask: {r['segmentation']}; registration time {r['registration_ms']:.0f} ms; "
        f"whole demo {r['total_s']:.1f} s."
        + (" **Flagged: low agreement with the vessel mask (red border); check before relying on it.**"
           if r.get("flagged") else ""),
        "",
        "## Pictures",
        "",
        "The model's projection under the frame's nominal geometry, before registration:",
        "",
        "![before](frame_with_unregistered_projection.png)",
        "",
        "The fixed image: the vessel mask the projection is registered to:",
        "",
        "![fixed](fixed_mask.png)",
        "",
        "After registration, against the ground truth (yellow: agree, magenta: registered projection only, "
        "cyan: truth only):",
        "",
        "![after](registered_vs_truth.png)",
        "",
        "The overlay a user gets (`registration/overlay.png`; also `registration/overlay.dcm`, "
        "`registration/transform.json`):",
        "",
        "![overlay](registration/overlay.png)",
        "",
    ]
    if r["warnings"]:
        lines += ["## Warnings", ""] + [f"- {w}" for w in r["warnings"]] + [""]
    return "\n".join(lines)
