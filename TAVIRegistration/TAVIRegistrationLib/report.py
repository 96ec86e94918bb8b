"""What a registration leaves on disk (step 6 of the data flow): the files of ``tavireg register``.

``DIR/overlay.png``                 the frame with the registered projection drawn over it
``DIR/registered_projection.png``   the registered projection as a 0/255 mask on the frame's grid
``DIR/transform.json``              the 3x3 affine M (ROI pixels -> frame pixels), ROI, metrics
``DIR/overlay.dcm``                 the overlay as a DICOM Secondary Capture in the frame's study
``DIR/metrics.csv``                 per frame, when the fixed mask was given (ground truth known)

A run of several frames (``--frame all``) adds ``DIR/frames.csv`` (per-frame status, transform,
metrics and time; a frame that did not register is a ``failed`` row with its reason) and
``DIR/overlay.gif`` (the overlay movie; a failed frame shows without a projection, in a red border);
the four single-frame files then show the last frame that registered, the one a user watching live
fluoroscopy sees. Everything is written through one
``OutputSet``: all files appear together, or none.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from .export import csv_writer, dicom_writer, json_writer, secondary_capture
from .outputs import OutputSet, check_writable_dir, image_png_writer, mask_png_writer
from .overlay import mark_flagged, overlay_rgb

METRIC_KEYS = ("dice", "precision", "recall")


def frame_overlay(pipe, reg, mode: str = "contour") -> np.ndarray:
    """RGB picture of the frame with the registered projection; TP/FP/FN when the mask was given;
    a red border when the registration is flagged (low agreement), so that the picture alone says so."""
    reference = reg.fixed_mask if reg.fixed_source == "given" else None
    rgb = overlay_rgb(pipe.frame(reg.frame_index), reg.registered_mask, reference=reference, mode=mode)
    return mark_flagged(rgb) if reg.result.flagged else rgb


def _frame_record(reg) -> Dict[str, object]:
    m = np.asarray(reg.matrix)
    rec: Dict[str, object] = {"frame": reg.frame_index, "status": "flagged" if reg.result.flagged else "registered",
                              "method": reg.result.method, "seconds": round(float(reg.result.seconds), 4)}
    for i in range(2):
        for j in range(3):
            rec[f"m{i}{j}"] = float(m[i, j])
    for k in METRIC_KEYS:
        rec[k] = float(reg.metrics.get(k, float("nan")))
    rec["fixed_mask"] = reg.fixed_source
    rec["flagged"] = bool(reg.result.flagged)
    rec["problem"] = ""
    return rec


def _failed_record(frame: int, why: str, columns: Sequence[str]) -> Dict[str, object]:
    rec: Dict[str, object] = {k: None for k in columns}
    rec.update(frame=int(frame), status="failed", flagged=False, problem=why)
    return rec


def _run_records(results: Sequence, failures: Dict[int, str]) -> List[Dict[str, object]]:
    """frames.csv: every frame of the run in order, registered or not."""
    records = {int(r.frame_index): _frame_record(r) for r in results}
    columns = list(next(iter(records.values())).keys())
    records.update({int(i): _failed_record(i, why, columns) for i, why in failures.items()})
    return [records[i] for i in sorted(records)]


def write_registration_outputs(out_dir, pipe, results: Sequence, *, mode: str = "contour",
                               inputs: Sequence = (), warnings: Sequence[str] = (),
                               anonymize: bool = False, failures: Optional[Dict[int, str]] = None) -> Dict[str, object]:
    """Write the files of one registered frame, or of a run; returns the JSON summary.
    ``failures``: frames of the run that did not register, with the reason (frames.csv, the movie).

    ``anonymize``: the DICOM Secondary Capture without the patient's identity (``export``); the
    other files hold no patient identifiers either way (no names, IDs or UIDs)."""
    out = Path(out_dir)
    check_writable_dir(out)
    last = results[-1]
    all_warnings: List[str] = list(dict.fromkeys(list(warnings) + [w for r in results for w in r.warnings]))
    rgb = frame_overlay(pipe, last, mode)
    geom = pipe.geometry(last.frame_index)
    transform = {
        "matrix": np.asarray(last.matrix).tolist(),
        "matrix_convention": "3x3 homogeneous: moving-ROI pixel (x=col, y=row; 0,0 = ROI top-left) -> frame pixel",
        "roi": [int(v) for v in last.roi],
        "frame": int(last.frame_index),
        "method": last.result.method,
        "fixed_mask": last.fixed_source,
        "metrics": {k: float(v) for k, v in last.metrics.items()},
        "metrics_reference": "the given fixed mask" if last.fixed_source == "given" else "the DRU-Net segmentation",
        "seconds": float(last.result.seconds),
        "valid": bool(last.valid),
        "flagged": bool(last.result.flagged),
        "flags": list(last.result.flags),
        "anonymized_dicom": bool(anonymize),
        "geometry": geom.to_dict(),
        "warnings": all_warnings,
    }
    failures = dict(failures or {})
    is_run = len(results) + len(failures) > 1
    if is_run:
        transform["frames"] = [_frame_record(r) | {"matrix": np.asarray(r.matrix).tolist()} for r in results]
        transform["failed_frames"] = {str(i): why for i, why in sorted(failures.items())}
    comments = (f"TAVIRegistration {last.result.method} registration, frame {last.frame_index}, "
                f"Dice {last.metrics.get('dice', float('nan')):.3f} vs {transform['metrics_reference']}. "
                + ("FLAGGED: low agreement, check before relying on it. " if last.result.flagged else "")
                + "Research use only.")
    with OutputSet(inputs=[p for p in inputs if p is not None]) as outs:
        outs.add(out / "overlay.png", image_png_writer(rgb))
        outs.add(out / "registered_projection.png", mask_png_writer(last.registered_mask))
        outs.add(out / "transform.json", json_writer(transform))
        outs.add(out / "overlay.dcm", dicom_writer(secondary_capture(
            rgb, getattr(pipe.series, "header", None), frame_index=last.frame_index, comments=comments,
            anonymize=anonymize)))
        if any(r.fixed_source == "given" for r in results):
            outs.add(out / "metrics.csv", csv_writer([_frame_record(r) for r in results]))
        if is_run:
            outs.add(out / "frames.csv", csv_writer(_run_records(results, failures)))
            pictures = {int(r.frame_index): frame_overlay(pipe, r, mode) for r in results}
            for i in failures:  # the frame as it is, in the red border: nothing registered there
                pictures[int(i)] = mark_flagged(overlay_rgb(pipe.frame(i), np.zeros_like(last.registered_mask)))
            movie = [pictures[i] for i in sorted(pictures)]
            outs.add(out / "overlay.gif", _gif_writer(movie, getattr(pipe.series, "frame_time_ms", None)))
    times = [float(r.result.seconds) for r in results]
    return {
        "out": str(out),
        "frames": [int(r.frame_index) for r in results],
        "matrix": transform["matrix"],
        "roi": transform["roi"],
        "method": transform["method"],
        "metrics": transform["metrics"],
        "metrics_reference": transform["metrics_reference"],
        "flagged_frames": [int(r.frame_index) for r in results if r.result.flagged],
        "failed_frames": sorted(int(i) for i in failures),
        "median_seconds_per_frame": float(np.median(times)),
        "warnings": all_warnings,
    }


def _gif_writer(frames: List[np.ndarray], frame_time_ms) -> object:
    from PIL import Image

    duration = int(frame_time_ms) if frame_time_ms and frame_time_ms > 0 else 100
    pictures = [Image.fromarray(f) for f in frames]

    def write(fh):
        pictures[0].save(fh, format="GIF", save_all=True, append_images=pictures[1:], duration=duration, loop=0)

    return write


def summary_lines(summary: Dict[str, object]) -> List[str]:
    m = summary["metrics"]
    lines = []
    if summary.get("flagged_frames"):
        lines.append("FLAGGED (low agreement, check the overlay before relying on it): frame(s) "
                     + ", ".join(str(f) for f in summary["flagged_frames"]))
    if summary.get("failed_frames"):
        lines.append("NOT REGISTERED (see the warnings and frames.csv): frame(s) "
                     + ", ".join(str(f) for f in summary["failed_frames"]))
    lines.append(f"registered frame(s) {', '.join(str(f) for f in summary['frames'])} with {summary['method']}")
    if m:
        lines.append("agreement with {}: Dice {:.3f}, precision {:.3f}, recall {:.3f}".format(
            summary["metrics_reference"], m.get("dice", float("nan")), m.get("precision", float("nan")),
            m.get("recall", float("nan"))))
    lines.append(f"median registration time per frame: {1000 * summary['median_seconds_per_frame']:.0f} ms")
    lines.append(f"outputs in {summary['out']}")
    return lines
