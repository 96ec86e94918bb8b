"""What a registration leaves on disk (step 6 of the data flow): the files of ``tavireg register``.

``DIR/overlay.png``                 the frame with the registered projection drawn over it
``DIR/registered_projection.png``   the registered projection as a 0/255 mask on the frame's grid
``DIR/transform.json``              the 3x3 affine M (ROI pixels -> frame pixels), ROI, metrics
``DIR/overlay.dcm``                 the overlay as a DICOM Secondary Capture in the frame's study
``DIR/metrics.csv``                 per frame, when the fixed mask was given (ground truth known)

A run of several frames (``--frame all``) adds ``DIR/frames.csv`` (per-frame status, transform,
metrics and time; a frame that did not register is a ``failed`` row with its reason) and
``DIR/overlay.gif`` (the overlay movie, at most ``MOVIE_SIDE`` pixels a side, less for a long run; a failed frame shows
without a projection, in a red border); the four single-frame files then show the last frame that
registered, the one a user watching live fluoroscopy sees. A run is recorded frame by frame as it
registers (``RunRecord``): only the last registration, each frame's row and its movie picture are
kept, so a long run does not hold its frames or masks. Everything is written through one
``OutputSet``: all files appear together, or none.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from .export import csv_writer, dicom_writer, json_writer, secondary_capture
from .outputs import OutputSet, check_writable_dir, image_png_writer, mask_png_writer
from .overlay import mark_flagged, overlay_rgb

METRIC_KEYS = ("dice", "precision", "recall", "hidden_share")
#: the overlay movie's largest side in pixels, and the pixels all its pictures may hold together: a long
#: run's movie is drawn smaller (a thousand frames at 256 pixels), so that it does not grow with the run
MOVIE_SIDE = 512
MOVIE_PIXELS = 64 * 2 ** 20


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


class RunRecord:
    """What the files of a registration need, gathered frame by frame as a run registers: each
    frame's row (frames.csv, transform.json) and movie picture, the warnings, and the last frame that
    registered, whose files are written (nothing else of a frame is kept)."""

    def __init__(self, pipe, mode: str = "contour", n_frames: int = 1):
        self.pipe, self.mode = pipe, mode
        self.with_movie = n_frames > 1  # one frame: no movie
        self.movie_side = int(min(MOVIE_SIDE, max(128, (MOVIE_PIXELS / max(1, n_frames)) ** 0.5)))
        self.last = None
        self.rows: Dict[int, Dict[str, object]] = {}
        self.matrices: Dict[int, list] = {}
        self.failures: Dict[int, str] = {}
        self.movie: Dict[int, object] = {}
        self.warnings: List[str] = []
        self.given_mask_rows: List[Dict[str, object]] = []
        self.seconds: List[float] = []
        self.flagged: List[int] = []

    def add(self, reg) -> None:
        """A frame that registered (``pipeline.FrameRegistration``)."""
        i = int(reg.frame_index)
        self.last = reg
        self.rows[i] = _frame_record(reg)
        self.matrices[i] = np.asarray(reg.matrix).tolist()
        self.warnings.extend(w for w in reg.warnings if w not in self.warnings)
        self.seconds.append(float(reg.result.seconds))
        if reg.result.flagged:
            self.flagged.append(i)
        if reg.fixed_source == "given":
            self.given_mask_rows.append(self.rows[i])
        if self.with_movie:
            self.movie[i] = _movie_picture(frame_overlay(self.pipe, reg, self.mode), self.movie_side)

    def fail(self, index: int, why: str) -> None:
        """A frame that did not register, and why: a row, and the frame in a red border in the movie."""
        i = int(index)
        self.failures[i] = why
        frame = self.pipe.frame(i)
        self.movie[i] = _movie_picture(mark_flagged(overlay_rgb(frame, np.zeros(frame.shape, np.uint8))),
                                       self.movie_side)

    @property
    def frames(self) -> int:
        return len(self.rows) + len(self.failures)

    def records(self) -> List[Dict[str, object]]:
        """frames.csv: every frame of the run in order, registered or not."""
        columns = list(next(iter(self.rows.values())).keys())
        rows = dict(self.rows)
        rows.update({i: _failed_record(i, why, columns) for i, why in self.failures.items()})
        return [rows[i] for i in sorted(rows)]


def _movie_picture(rgb: np.ndarray, side: int = MOVIE_SIDE):
    """One frame of the overlay movie: at most ``side`` pixels a side, in a 256-colour palette."""
    from PIL import Image

    picture = Image.fromarray(rgb)
    if max(picture.size) > side:
        scale = side / max(picture.size)
        picture = picture.resize((max(1, round(picture.width * scale)), max(1, round(picture.height * scale))),
                                 Image.BILINEAR)
    return picture.quantize(colors=256, method=Image.Quantize.MEDIANCUT)


def write_registration_outputs(out_dir, pipe, results, *, mode: str = "contour",
                               inputs: Sequence = (), warnings: Sequence[str] = (),
                               anonymize: bool = False, failures: Optional[Dict[int, str]] = None) -> Dict[str, object]:
    """Write the files of one registered frame, or of a run; returns the JSON summary. ``results``:
    a ``RunRecord`` (a run recorded as it registered), or registrations with the ``failures`` of
    the frames that did not register (frames.csv, the movie).

    ``anonymize``: the DICOM Secondary Capture without the patient's identity (``export``); the
    other files hold no patient identifiers either way (no names, IDs or UIDs)."""
    out = Path(out_dir)
    check_writable_dir(out)
    record = results if isinstance(results, RunRecord) else _record(pipe, mode, results, failures or {})
    last = record.last
    all_warnings: List[str] = list(dict.fromkeys(list(warnings) + record.warnings))
    rgb = frame_overlay(pipe, last, mode)
    transform = _transform_record(pipe, last, all_warnings, anonymize)
    is_run = record.frames > 1
    if is_run:
        transform["frames"] = [record.rows[i] | {"matrix": record.matrices[i]} for i in sorted(record.rows)]
        transform["failed_frames"] = {str(i): why for i, why in sorted(record.failures.items())}
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
        if record.given_mask_rows:
            outs.add(out / "metrics.csv", csv_writer(record.given_mask_rows))
        if is_run:
            outs.add(out / "frames.csv", csv_writer(record.records()))
            movie = [record.movie[i] for i in sorted(record.movie)]
            outs.add(out / "overlay.gif", _gif_writer(movie, getattr(pipe.series, "frame_time_ms", None)))
    return {
        "out": str(out),
        "frames": sorted(record.rows),
        "matrix": transform["matrix"],
        "roi": transform["roi"],
        "method": transform["method"],
        "metrics": transform["metrics"],
        "metrics_reference": transform["metrics_reference"],
        "flagged_frames": sorted(record.flagged),
        "failed_frames": sorted(record.failures),
        "median_seconds_per_frame": float(np.median(record.seconds)),
        "warnings": all_warnings,
    }


def _record(pipe, mode: str, results: Sequence, failures: Dict[int, str]) -> RunRecord:
    record = RunRecord(pipe, mode, len(results) + len(failures))
    for reg in sorted(results, key=lambda r: int(r.frame_index)):
        record.add(reg)
    record.last = results[-1]
    for i, why in failures.items():
        record.fail(i, why)
    return record


def _transform_record(pipe, last, warnings: List[str], anonymize: bool) -> Dict[str, object]:
    """transform.json of the frame whose files are written."""
    return {
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
        "geometry": pipe.geometry(last.frame_index).to_dict(),
        "warnings": warnings,
    }


def _gif_writer(pictures: List[object], frame_time_ms) -> object:
    """Writer of the overlay movie from its pictures (``_movie_picture``)."""
    duration = int(frame_time_ms) if frame_time_ms and frame_time_ms > 0 else 100

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
