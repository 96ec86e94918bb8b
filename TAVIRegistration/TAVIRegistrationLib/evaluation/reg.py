"""Registration evaluation on held-out phantom patients: ``tavireg evaluate reg``.

What the paper measured (its Fig. 8: Dice, precision and recall between the registered projection
and the frame's vessels, as box plots) and what it could not (it had no ground truth pose): the
target registration error (TRE) of anatomical landmarks in millimetres at the isocentre, and the
success rate (TRE under ``SUCCESS_MM`` = 5 mm, the clinical requirement), per method and field of
view, on the ``test`` split of a ``tavireg phantom`` data set.

Per frame (rows of ``index.csv`` with ``split == 'test'`` and a non-empty opacified mask):

* ROI: ``phantom.FrameTruth.user_roi()``, the region a user would draw on the projection: around
  the part of the model that is contrast-filled in the frame (the opacified mask pulled back onto
  the nominal projection through the true affine), grown by 8 % of its size;
* fixed mask: the ground-truth opacified vessel mask (``--fixed truth``, default: registration
  alone) or the DRU-Net segmentation (``--fixed segmentation``: the whole chain; needs an installed
  segmentation network);
* each method (``cnn``, ``cnn+refine``, ``sitk``; a method whose network is not installed is
  skipped with a warning) registers through the same ``pipeline.RegistrationPipeline`` as the
  command line, the viewer and the Slicer module: ``cnn+refine`` leaves out the part of the
  projection beyond the contrast front that agrees best with the frame (``filling``; its share is
  ``hidden_share`` in ``per_frame.csv``), unless ``--whole-model``;
* agreement with the truth (``window_overlap``, the demo's definition): Dice, precision and recall
  of the registered projection against the ground-truth mask restricted to the registration window
  (the square the registration saw; vessels outside it cannot be asked of it). "Before" is the same
  for the unregistered projection restricted to the ROI; "truth affine" for the ROI's projection
  moved by the phantom's least-squares nominal-to-true affine, the reference a global 2D affine can
  reach against the deformation (its TRE too); "Dice optimum" for the registration loss's own optimum
  nearest the truth: ``cnn+refine``'s refinement (``registration.refine_theta``, the loss the
  network is trained on) started from that affine, against this run's fixed image
  (``optimum_near_truth``). It tells a network's failure (the optimum succeeds, the method does
  not) from the objective's (the optimum itself lies far from the landmarks: the better a method
  minimises this loss, the closer it comes to that answer, not to the truth); "matched optimum"
  for the same refinement against the phantom's true projection of the model (``projection_true``:
  the model's own vessels under the true geometry and motion, every one as if filled), the content
  the model's ROI holds. The gap between the two optima is what the frame's unfilled vessels (an
  uninjected limb, filling, washout) cost the loss; what is left of the matched optimum's error is
  the 2D affine against the deformation and the loss's own bias; "filling known" for ``cnn+refine``
  itself (the default network, then the refinement) registering only the part of the projection
  that the frame shows filled (``known_filling_reference``): how far the method would get if it knew
  which of the model's vessels carry contrast, the target of any estimate of that;
* TRE: the mean, over the landmarks inside the ROI, of the distance between the registration's
  frame affine applied to the nominally projected landmark and its true position
  (``FrameTruth.landmark_errors_mm``), mm at the isocentre; NaN when no landmark lies in the ROI;
* success: valid result (``RegistrationResult.valid``) and TRE < 5 mm; an invalid result (the
  front ends show no overlay) counts as a failure. Frames without a landmark in the ROI have no
  success value and are left out of the success rate and the TRE statistics (``n_tre``). The
  frames of one run (patient x series) share its geometry (the lower FoV's runs hold still), so
  the table also gives the number of runs (``n_runs``) and the success rate with every run weighted
  equally (``success_rate_by_run``).
  The medians of Dice/precision/recall include invalid results as they are (their diagnostic
  registered mask; empty when the affine is singular).

Outputs (all at once, ``outputs.OutputSet``): ``DIR/per_frame.csv``, ``DIR/table.csv`` and
``DIR/table.md`` (per method x FoV, plus ``all``), ``DIR/boxplots.png`` (Fig. 8 style) and
``DIR/summary.json`` (the table, the project's goals checked per method, settings, warnings).
"""

from __future__ import annotations

import csv
import functools
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import InputError
from .tables import (
    figure_png, filled_boxplot, finite, goal_cell, goal_check, markdown_table, mean_of, median_of, number_cell,
    percent_cell,
)

METHODS = ("cnn", "cnn+refine", "sitk")  # = registration.METHODS (kept light: no torch import here)
FIXED_SOURCES = ("truth", "segmentation")
#: the clinical requirement: a landmark error under this many mm at the isocentre is a success
SUCCESS_MM = 5.0
FOVS = ("upper", "lower", "all")
#: index.csv columns this command reads
REQUIRED_COLUMNS = ("patient", "split", "fov", "series", "image", "frame", "mask", "projection_nominal",
                    "case", "opacified_px", "isocenter_lps")
#: the project's goals (held-out phantom; stated for ``cnn``, checked here for every method)
GOALS = {"median_recall": (">=", 0.95), "median_dice": (">=", 0.85), "median_tre_mm": ("<=", 2.0),
         "success_rate": (">=", 0.95)}

PER_FRAME_COLUMNS = (
    "patient", "fov", "series", "image", "frame", "method", "fixed", "roi", "window",
    "dice", "precision", "recall", "dice_before", "precision_before", "recall_before",
    "dice_truth_affine", "precision_truth_affine", "recall_truth_affine",
    "dice_optimum", "precision_optimum", "recall_optimum",
    "dice_matched_optimum", "precision_matched_optimum", "recall_matched_optimum",
    "dice_known_filling", "precision_known_filling", "recall_known_filling",
    "fixed_dice", "hidden_share", "tre_mm", "tre_before_mm", "tre_truth_affine_mm", "tre_optimum_mm",
    "tre_matched_optimum_mm", "tre_known_filling_mm", "n_landmarks", "success", "success_optimum",
    "success_matched_optimum", "success_known_filling", "seconds", "segment_seconds",
    "valid", "problems", "warnings",
)
TABLE_COLUMNS = (
    "method", "fov", "n", "n_invalid", "n_tre", "median_dice", "median_precision", "median_recall",
    "median_dice_before", "median_dice_truth_affine", "median_dice_optimum", "median_tre_mm", "mean_tre_mm",
    "median_tre_before_mm", "median_tre_truth_affine_mm", "median_tre_optimum_mm", "success_rate", "success_rate_optimum",
    "median_recall_truth_affine", "median_recall_optimum", "median_dice_matched_optimum", "median_recall_matched_optimum",
    "median_tre_matched_optimum_mm", "success_rate_matched_optimum", "n_runs", "success_rate_by_run",
    "median_tre_known_filling_mm", "success_rate_known_filling", "median_ms",
)


# =============================================================================================
# agreement with the ground truth (shared with the demo)
# =============================================================================================
def box_mask(shape: Sequence[int], x: int, y: int, w: int, h: int) -> np.ndarray:
    """uint8 0/1 mask of the box (x, y, w, h) clipped to a frame of ``shape``."""
    m = np.zeros((int(shape[0]), int(shape[1])), np.uint8)
    m[max(0, int(y)):max(0, int(y) + int(h)), max(0, int(x)):max(0, int(x) + int(w))] = 1
    return m


def window_overlap(pred: np.ndarray, truth_mask: np.ndarray, window) -> Dict[str, float]:
    """Dice, precision, recall of ``pred`` against the truth *inside the registration window*.

    ``window``: a ``registration.Window`` (or anything with ``x0``, ``y0``, ``side``). The truth is
    cut to the window (vessels outside it were never shown to the registration); the prediction is
    taken whole. This is the demo's "Dice vs ground truth".
    """
    from ..segmentation import overlap_metrics

    inside = box_mask(np.shape(truth_mask), window.x0, window.y0, window.side, window.side)
    return overlap_metrics(pred, (np.asarray(truth_mask) > 0) & (inside > 0))


def before_overlap(projection_mask: np.ndarray, roi: Sequence[int], truth_mask: np.ndarray, window) -> Dict[str, float]:
    """``window_overlap`` of the unregistered projection restricted to the ROI (the "before" figure)."""
    return window_overlap((np.asarray(projection_mask) > 0) & (box_mask(np.shape(projection_mask), *roi) > 0),
                          truth_mask, window)


def truth_affine_overlap(projection_mask: np.ndarray, roi: Sequence[int], truth, window) -> Dict[str, float]:
    """``window_overlap`` of the ROI's projection moved by the phantom's own affine (the least-squares
    2D affine from the nominal to the true projection): what the best global affine would reach, the
    reference for a registration (the deformation makes it imperfect)."""
    from ..registration import roi_matrix, warp_mask

    x, y, w, h = (int(v) for v in roi)
    crop = (np.asarray(projection_mask)[y:y + h, x:x + w] > 0).astype(np.uint8)
    pred = warp_mask(crop, np.asarray(truth.affine, float) @ roi_matrix(roi), np.shape(truth.mask))
    return window_overlap(pred, truth.mask, window)


def mean_tre_mm(truth, frame_matrix, roi) -> Tuple[float, int]:
    """(mean landmark error in mm at the isocentre over the landmarks inside ``roi``, their number);
    NaN when none lies in the ROI or the affine is not finite."""
    m = np.asarray(frame_matrix, float)
    if not np.all(np.isfinite(m)):
        n = len(truth.landmark_errors_mm(np.eye(3), roi))
        return float("nan"), n
    err = truth.landmark_errors_mm(m, roi)
    return (float(np.mean(err)) if err.size else float("nan")), int(err.size)


# =============================================================================================
# the data set
# =============================================================================================
def load_index(path) -> Tuple[Path, List[Dict[str, str]]]:
    """(root folder, rows) of a phantom ``index.csv``; InputError when it is missing or unusable."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"data index {path} does not exist (a tavireg phantom index.csv is expected)")
    try:
        with open(path, newline="") as fh:
            reader = csv.DictReader(fh)
            rows = list(reader)
            columns = list(reader.fieldnames or [])
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"cannot read {path} as CSV: {exc}") from None
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        raise InputError(f"{path} is not a tavireg phantom index: missing column(s) {', '.join(missing)}")
    return path.parent, rows


def eligible_rows(rows: Sequence[Dict[str, str]], split: str = "test") -> List[Dict[str, str]]:
    """Rows of ``split`` (``all``: every row) whose frame shows contrast (a non-empty opacified mask)."""
    out = []
    for r in rows:
        if (split != "all" and r.get("split") != split) or not r.get("mask"):
            continue
        try:
            if int(float(r.get("opacified_px") or 0)) <= 0:
                continue
        except ValueError:
            continue
        out.append(r)
    return out


def spread(rows: Sequence, n: Optional[int]) -> List:
    """``n`` rows evenly spread over ``rows`` (all when ``n`` is None or large enough): a
    ``--max-frames`` subset still covers every patient, series and FoV in proportion."""
    rows = list(rows)
    if n is None or n >= len(rows):
        return rows
    if n < 1:
        return []
    idx = np.unique(np.round(np.linspace(0, len(rows) - 1, int(n))).astype(int))
    return [rows[i] for i in idx]


def parse_methods(text: Optional[str]) -> List[str]:
    if text is None or not str(text).strip():
        return list(METHODS)
    names = [t.strip() for t in str(text).split(",") if t.strip()]
    bad = [t for t in names if t not in METHODS]
    if bad:
        raise InputError(f"unknown method(s) {', '.join(bad)}: choose from {', '.join(METHODS)}")
    return list(dict.fromkeys(names))


def available_methods(methods: Sequence[str], warnings: List[str], models_directory=None) -> List[str]:
    """The methods that can run here; a network method without an installed network is skipped
    (named in ``warnings``)."""
    from ..networks.weights import installed

    out = []
    for m in methods:
        if m != "sitk" and not installed("registration", models_directory):
            warnings.append(f"method {m} skipped: no registration network is installed")
            continue
        out.append(m)
    return out


# =============================================================================================
# evaluation
# =============================================================================================
@dataclass
class EvaluationResult:
    records: List[Dict[str, object]]
    table: List[Dict[str, object]]
    methods: List[str]
    skipped_frames: List[Dict[str, object]] = field(default_factory=list)
    warnings: List[str] = field(default_factory=list)
    seconds: float = 0.0
    phantom_version: Optional[int] = None


def _fmt_roi(v) -> str:
    return ";".join(str(int(a)) for a in v)


def evaluate_registration(index_csv, methods: Sequence[str] = METHODS, *, fixed: str = "truth",
                          max_frames: Optional[int] = None, split: str = "test",
                          progress: Optional[Callable[[int], None]] = None,
                          on_total: Optional[Callable[[int], None]] = None,
                          models_directory=None, device=None, contrast_front: bool = True) -> EvaluationResult:
    """Register every eligible frame with every available method and measure it (see the module
    docstring); ``contrast_front``: see ``pipeline.RegistrationPipeline``. InputError on unusable input
    (no eligible frame, no method can run, ...)."""
    from ..fluoro import read_fluoro
    from ..mesh import load_model
    from ..synthetic.phantom import rows_version
    from ..pipeline import RegistrationPipeline

    t_start = time.perf_counter()
    warnings: List[str] = []
    root, rows, chosen, run = _frames_and_methods(index_csv, methods, fixed, max_frames, split, models_directory,
                                                  warnings)
    if on_total is not None:
        on_total(len(chosen) * len(run))

    records: List[Dict[str, object]] = []
    skipped: List[Dict[str, object]] = []
    # one model per patient, one series (and pipeline) per DICOM file: group consecutive rows
    groups: Dict[Tuple[str, str, str], List[Dict[str, str]]] = {}
    for r in chosen:
        groups.setdefault((r["case"], r["image"], r["isocenter_lps"]), []).append(r)
    models: Dict[str, object] = {}
    for (case, image, iso), group in groups.items():
        model_path = root / Path(case).parent / "model.vtk"
        if case not in models:
            models.clear()  # keep one patient's model in memory
            models[case] = load_model(model_path)
        model = models[case]
        series = read_fluoro(root / image)
        iso_lps = tuple(float(v) for v in iso.split(";"))
        with RegistrationPipeline(model, series, isocenter_lps=iso_lps, contrast_front=contrast_front) as pipe:
            for r in group:
                _evaluate_frame(pipe, root, r, run, fixed, device, progress, records, skipped)
            for w in pipe.warnings:  # the model's and the file's fallbacks, once each
                if w not in warnings:
                    warnings.append(w)
    if skipped:
        warnings.append(f"{len(skipped)} frame(s) skipped: no contrast-filled part of the model in the frame")
    if not records:
        raise InputError("no frame could be evaluated (every eligible frame was skipped)")
    table = summarize(records, run)
    return EvaluationResult(records, table, run, skipped, warnings, time.perf_counter() - t_start,
                            rows_version(rows, Path(index_csv).name))


def _frames_and_methods(index_csv, methods: Sequence[str], fixed: str, max_frames: Optional[int], split: str,
                        models_directory, warnings: List[str]):
    """``(data root, every index row, the frames to evaluate, the methods that can run)`` of a
    request; InputError when it is unusable. Skipped methods and a ``--max-frames`` subset are named
    in ``warnings``."""
    from ..networks.weights import installed

    if fixed not in FIXED_SOURCES:
        raise InputError(f"--fixed must be one of {', '.join(FIXED_SOURCES)}, got {fixed!r}")
    if max_frames is not None and int(max_frames) < 1:
        raise InputError(f"--max-frames must be at least 1, got {max_frames}")
    root, rows = load_index(index_csv)
    chosen = eligible_rows(rows, split)
    if not chosen:
        raise InputError(f"{index_csv} has no frame of split '{split}' with a contrast-filled vessel mask")
    if fixed == "segmentation" and not installed("segmentation", models_directory):
        raise InputError("--fixed segmentation needs an installed segmentation network (none in the models folder)")
    run = available_methods(methods, warnings, models_directory)
    if not run:
        raise InputError("no requested method can run here (" + "; ".join(warnings) + ")")
    n_all = len(chosen)
    chosen = spread(chosen, None if max_frames is None else int(max_frames))
    if len(chosen) < n_all:
        warnings.append(f"--max-frames: {len(chosen)} of {n_all} eligible frames, evenly spread over the split")
    return root, rows, chosen, run


def _evaluate_frame(pipe, root: Path, r: Dict[str, str], run: Sequence[str], fixed: str, device,
                    progress: Optional[Callable[[int], None]], records: List[Dict[str, object]],
                    skipped: List[Dict[str, object]]) -> None:
    """Every method of ``run`` on the frame of index row ``r``: one record per method appended to
    ``records`` (a failed one when the frame's inputs are unusable), or the frame to ``skipped``
    when no contrast-filled part of the model is in it."""
    from ..registration import registration_window
    from ..synthetic.phantom import frame_truth

    i = int(r["frame"])
    base = {"patient": r["patient"], "fov": r["fov"], "series": r["series"], "image": r["image"],
            "frame": i, "fixed": fixed}
    truth = frame_truth(root, r)
    roi = truth.user_roi()
    if roi is None or not truth.mask.any():
        skipped.append(base | {"reason": "no contrast-filled part of the model in the frame"})
        if progress is not None:
            progress(len(run))
        return
    tre0, n_lm = mean_tre_mm(truth, np.eye(3), roi)
    tre_ref, _ = mean_tre_mm(truth, truth.affine, roi)
    fixed_mask, seg_s = truth.mask, float("nan")
    try:
        projection = pipe.project(i).projection
        proj = projection.mask
        if fixed == "segmentation":
            t0 = time.perf_counter()
            seg = pipe.segment(i, device=device)
            seg_s = time.perf_counter() - t0
            fixed_mask = None  # the pipeline segments (cached)
            if not seg.mask.any():
                raise InputError("the segmentation is empty")
        fixed_now = truth.mask if fixed == "truth" else seg.mask
        optimum = optimum_near_truth(proj, fixed_now, roi, truth, n_lm, canvas=projection.canvas, pad=projection.pad)
        optimum.update(optimum_near_truth(proj, truth.projection_true, roi, truth, n_lm, canvas=projection.canvas,
                                          pad=projection.pad, name="matched_optimum"))
        optimum.update(known_filling_reference(proj, fixed_now, roi, truth, n_lm, r["fov"], device))
    except InputError as exc:
        for m in run:
            records.append(_failed_record(base, m, roi, str(exc), truth, tre0, n_lm, seg_s))
        if progress is not None:
            progress(len(run))
        return
    for m in run:
        try:
            reg = pipe.register(i, roi, fixed_mask=fixed_mask, method=m, device=device)
        except InputError as exc:
            rec = _failed_record(base, m, roi, str(exc), truth, tre0, n_lm, seg_s)
            rec.update(_reference_metrics(proj, roi, truth, registration_window(roi)), tre_truth_affine_mm=tre_ref,
                       **optimum)
            records.append(rec)
        else:
            records.append(_registered_record(base, m, roi, reg, proj, truth, tre0, tre_ref, n_lm, optimum, seg_s))
        if progress is not None:
            progress(1)


def _registered_record(base, method, roi, reg, proj, truth, tre0, tre_ref, n_lm, optimum,
                       seg_s) -> Dict[str, object]:
    """The per-frame record of one registration (``reg``: the pipeline's output for ``method``)."""
    res = reg.result
    after = window_overlap(res.registered_mask, truth.mask, res.window)
    tre, _ = mean_tre_mm(truth, res.frame_matrix, roi)
    valid = bool(res.valid)
    return base | {
        "method": method, "roi": _fmt_roi(roi), "window": _fmt_roi((res.window.x0, res.window.y0, res.window.side)),
        "dice": after["dice"], "precision": after["precision"], "recall": after["recall"],
        **_reference_metrics(proj, roi, truth, res.window),
        "fixed_dice": float(res.metrics.get("dice", float("nan"))),
        "hidden_share": float(res.metrics.get("hidden_share", float("nan"))),
        "tre_mm": tre, "tre_before_mm": tre0, "tre_truth_affine_mm": tre_ref, **optimum,
        "n_landmarks": n_lm,
        "success": _success(valid, tre, n_lm), "seconds": float(res.seconds),
        "segment_seconds": seg_s, "valid": valid, "problems": "; ".join(res.problems),
        "warnings": "; ".join(reg.warnings),
    }


def _reference_metrics(proj, roi, truth, window) -> Dict[str, float]:
    """The "before" and "truth affine" overlaps of one frame (see the module docstring)."""
    out = {}
    for name, m in (("before", before_overlap(proj, roi, truth.mask, window)),
                    ("truth_affine", truth_affine_overlap(proj, roi, truth, window))):
        out.update({f"{k}_{name}": m[k] for k in ("dice", "precision", "recall")})
    return out


@functools.lru_cache(maxsize=1)
def _identity_network():
    """A small untrained RegNet: it outputs the identity (its last layer starts so)."""
    from ..networks.regnet import RegNet, scaled_channels

    return RegNet(channels=scaled_channels(0.125), fc=16).eval()


def optimum_near_truth(proj, fixed_mask, roi, truth, n_landmarks: int, canvas=None, pad: int = 0,
                       name: str = "optimum") -> Dict[str, object]:
    """The "Dice optimum" reference of one frame (see the module docstring): ``cnn+refine`` with a
    network that outputs the identity, warm-started (``init``) from the phantom's least-squares
    affine, so that the refinement alone moves it to the nearest optimum of the registration loss
    against ``fixed_mask`` (window margin ``registration.DEFAULT_MARGIN``), with the projection past
    the frame (``canvas``, ``pad``) as the methods get it. Its overlap with the ground-truth mask,
    TRE and success, as ``dice_<name>``, ``precision_<name>``, ``recall_<name>``, ``tre_<name>_mm``
    and ``success_<name>``; NaN values when the refinement refuses the pair or ``fixed_mask`` is None."""
    from ..registration import register_pair

    res = None
    if fixed_mask is not None:
        try:
            res = register_pair(proj, fixed_mask, roi, "cnn+refine", model=_identity_network(), init=truth.affine,
                                keep_better_start=False, canvas=canvas, pad=pad)
        except InputError:
            pass
    return _reference_record(res, truth, roi, n_landmarks, name)


def known_filling_reference(proj, fixed_mask, roi, truth, n_landmarks: int, fov: Optional[str] = None,
                            device=None) -> Dict[str, object]:
    """The "filling known" reference of one frame (see the module docstring): ``cnn+refine`` with the
    default network, as the methods run it, registering only the part of the projection that the
    frame shows filled (``FrameTruth.filled_region``), as ``dice_known_filling``, ...,
    ``success_known_filling`` (the keys of ``optimum_near_truth``); NaN values when it refuses the pair."""
    from ..registration import register_pair

    res = None
    filled = ((np.asarray(proj) > 0) & truth.filled_region()).astype(np.uint8)
    try:
        res = register_pair(filled, fixed_mask, roi, "cnn+refine", fov=fov, device=device)
    except InputError:
        pass
    return _reference_record(res, truth, roi, n_landmarks, "known_filling")


def _reference_record(res, truth, roi, n_landmarks: int, name: str) -> Dict[str, object]:
    """Overlap with the ground-truth mask, TRE and success of a reference registration ``res`` (None:
    refused), as ``dice_<name>``, ``precision_<name>``, ``recall_<name>``, ``tre_<name>_mm`` and
    ``success_<name>``."""
    nan = float("nan")
    if res is None:
        return {f"dice_{name}": nan, f"precision_{name}": nan, f"recall_{name}": nan, f"tre_{name}_mm": nan,
                f"success_{name}": _success(False, nan, n_landmarks)}
    overlap = window_overlap(res.registered_mask, truth.mask, res.window)
    tre, _ = mean_tre_mm(truth, res.frame_matrix, roi)
    return {f"dice_{name}": overlap["dice"], f"precision_{name}": overlap["precision"],
            f"recall_{name}": overlap["recall"], f"tre_{name}_mm": tre,
            f"success_{name}": _success(bool(res.valid), tre, n_landmarks)}


def _success(valid: bool, tre: float, n_landmarks: int):
    if n_landmarks == 0:
        return None  # no landmark inside the ROI: no verdict
    return bool(valid and math.isfinite(tre) and tre < SUCCESS_MM)


def _failed_record(base, method, roi, message, truth, tre0, n_lm, seg_s) -> Dict[str, object]:
    nan = float("nan")
    return base | {
        "method": method, "roi": _fmt_roi(roi), "window": "", "dice": 0.0, "precision": nan, "recall": 0.0,
        "dice_before": nan, "precision_before": nan, "recall_before": nan, "fixed_dice": nan,
        "hidden_share": nan, "tre_mm": nan, "tre_before_mm": tre0, "n_landmarks": n_lm,
        "success": _success(False, nan, n_lm),
        "seconds": nan, "segment_seconds": seg_s, "valid": False, "problems": message,
    }


# =============================================================================================
# tables
# =============================================================================================
def _values(recs, key) -> np.ndarray:
    """The finite values of column ``key`` of the records."""
    return finite(r.get(key) for r in recs)


def _median(recs, key) -> Optional[float]:
    return median_of(r.get(key) for r in recs)


def _mean(recs, key) -> Optional[float]:
    return mean_of(r.get(key) for r in recs)


def _verdicts(recs, key) -> List[bool]:
    """The success verdicts of column ``key`` (frames without a landmark in the ROI have none)."""
    return [bool(r[key]) for r in recs if r.get(key) is not None]


def _rate(verdicts: Sequence[bool]) -> Optional[float]:
    return (sum(verdicts) / len(verdicts)) if verdicts else None


def _run_key(rec) -> Tuple[str, str]:
    return str(rec["patient"]), str(rec["series"])


def _rate_by_run(recs) -> Optional[float]:
    """The success rate with every run (patient x series) weighted equally: the mean of the runs'
    own rates. A run's frames share a C-arm geometry (the lower FoV's runs hold still), so one run of
    15 frames weighs 15 times a single frame in ``success_rate``; this one counts it once."""
    runs: Dict[Tuple[str, str], List[Dict[str, object]]] = {}
    for r in recs:
        runs.setdefault(_run_key(r), []).append(r)
    rates = [rate for rate in (_rate(_verdicts(run, "success")) for run in runs.values()) if rate is not None]
    return float(np.mean(rates)) if rates else None


def summarize(records: Sequence[Dict[str, object]], methods: Sequence[str]) -> List[Dict[str, object]]:
    """One row per method x FoV (``upper``, ``lower``, ``all``): the medians, TRE mean, success rate."""
    table = []
    for m in methods:
        for fov in FOVS:
            recs = [r for r in records if r["method"] == m and (fov == "all" or r["fov"] == fov)]
            if not recs:
                continue
            verdicts = _verdicts(recs, "success")
            optimum = _verdicts(recs, "success_optimum")
            matched = _verdicts(recs, "success_matched_optimum")
            known = _verdicts(recs, "success_known_filling")
            tre_recs = [r for r in recs if int(r.get("n_landmarks") or 0) > 0]
            med_s = _median(recs, "seconds")
            table.append({
                "method": m, "fov": fov, "n": len(recs),
                "n_invalid": sum(1 for r in recs if not r["valid"]),
                "n_tre": len(tre_recs),
                "median_dice": _median(recs, "dice"), "median_precision": _median(recs, "precision"),
                "median_recall": _median(recs, "recall"), "median_dice_before": _median(recs, "dice_before"),
                "median_dice_truth_affine": _median(recs, "dice_truth_affine"),
                "median_dice_optimum": _median(recs, "dice_optimum"),
                "median_recall_truth_affine": _median(recs, "recall_truth_affine"),
                "median_recall_optimum": _median(recs, "recall_optimum"),
                "median_dice_matched_optimum": _median(recs, "dice_matched_optimum"),
                "median_recall_matched_optimum": _median(recs, "recall_matched_optimum"),
                "median_tre_matched_optimum_mm": _median(tre_recs, "tre_matched_optimum_mm"),
                "median_tre_mm": _median(tre_recs, "tre_mm"), "mean_tre_mm": _mean(tre_recs, "tre_mm"),
                "median_tre_before_mm": _median(tre_recs, "tre_before_mm"),
                "median_tre_truth_affine_mm": _median(tre_recs, "tre_truth_affine_mm"),
                "median_tre_optimum_mm": _median(tre_recs, "tre_optimum_mm"),
                "success_rate": _rate(verdicts), "success_rate_optimum": _rate(optimum),
                "success_rate_matched_optimum": _rate(matched),
                "n_runs": len({_run_key(r) for r in recs}), "success_rate_by_run": _rate_by_run(recs),
                "median_tre_known_filling_mm": _median(tre_recs, "tre_known_filling_mm"),
                "success_rate_known_filling": _rate(known),
                "median_ms": None if med_s is None else 1000.0 * med_s,
            })
    return table


def agreement_analysis(records: Sequence[Dict[str, object]], threshold: Optional[float] = None
                       ) -> Dict[str, Dict[str, object]]:
    """Per method, how the Dice against the fixed mask (``fixed_dice``: what a user can see) separates
    successes (TRE < SUCCESS_MM) from failures among the valid registrations with landmarks.

    Without ``threshold``: the threshold that maximises Youden's J (failures flagged minus successes
    flagged, as fractions) among the midpoints between observed values, the lowest among ties; this is how the low-agreement threshold is chosen
    on training patients (``--split train``). With ``threshold``: what that one does (``--split test``)."""
    out: Dict[str, Dict[str, object]] = {}
    for method in sorted({str(r["method"]) for r in records}):
        recs = [r for r in records if r["method"] == method and r.get("valid") and r.get("success") is not None
                and np.isfinite(float(r.get("fixed_dice", float("nan"))))]
        dice = np.array([float(r["fixed_dice"]) for r in recs])
        ok = np.array([bool(r["success"]) for r in recs])
        n_ok, n_bad = int(ok.sum()), int((~ok).sum())
        if not recs:
            continue

        def rates(t):
            flagged = dice < t
            return (float((flagged & ~ok).sum() / n_bad) if n_bad else float("nan"),
                    float((flagged & ok).sum() / n_ok) if n_ok else float("nan"))

        if threshold is None:
            best_t, best_j = 0.0, -2.0
            values = np.unique(dice)
            for t in np.r_[values[0], (values[1:] + values[:-1]) / 2, values[-1] + 1e-6]:  # midpoints
                tpr, fpr = rates(float(t))
                j = (0.0 if np.isnan(tpr) else tpr) - (0.0 if np.isnan(fpr) else fpr)
                if j > best_j + 1e-12:
                    best_t, best_j = float(t), j
            t = best_t
        else:
            t = float(threshold)
        tpr, fpr = rates(t)
        out[method] = {"threshold": round(t, 4), "failures_flagged": tpr, "successes_flagged": fpr,
                       "n_success": n_ok, "n_failure": n_bad, "chosen_here": threshold is None}
    return out


def agreement_markdown(agreement: Dict[str, Dict[str, object]], split: str) -> str:
    if not agreement:
        return ""
    head = ("\nLow-agreement flag (Dice against the fixed mask below the threshold), " +
            ("threshold chosen on this split (Youden's J):" if split != "test" else
             "the installed threshold on these held-out frames:") + "\n\n")
    lines = markdown_table(
        ("method", "threshold", "failures flagged", "successes flagged", "n success", "n failure"), "lrrrrr",
        ((m, f"{a['threshold']:.3f}", percent_cell(a["failures_flagged"], 0), percent_cell(a["successes_flagged"], 0),
          a["n_success"], a["n_failure"]) for m, a in agreement.items()))
    return head + "".join(line + "\n" for line in lines)


#: the goals' figures of the Dice optimum reference, by goal (the reference is the same for every method)
OPTIMUM_GOAL_KEYS = {"median_recall": "median_recall_optimum", "median_dice": "median_dice_optimum",
                     "median_tre_mm": "median_tre_optimum_mm", "success_rate": "success_rate_optimum"}
OPTIMUM_LABEL = "Dice optimum (reference)"
#: the same for the content-matched optimum (the loss's optimum against the model's own vessels under the truth)
MATCHED_GOAL_KEYS = {key: value.replace("optimum", "matched_optimum") for key, value in OPTIMUM_GOAL_KEYS.items()}
MATCHED_LABEL = "content-matched optimum (reference)"


def check_goals(table: Sequence[Dict[str, object]]) -> Dict[str, Dict[str, object]]:
    """The project's goals against the ``all`` row of each method: {method: {goal: {value, target, met}}};
    and under ``OPTIMUM_LABEL`` the same for the Dice optimum reference, i.e. which goals the
    registration loss itself can reach on these frames, and under ``MATCHED_LABEL`` for the
    content-matched optimum, i.e. which it could reach were every vessel of the model filled."""
    out: Dict[str, Dict[str, object]] = {}

    def check(row, keys):
        return {key: goal_check(row.get(keys.get(key, key)), op, target) for key, (op, target) in GOALS.items()}

    rows = [row for row in table if row["fov"] == "all"]
    for row in rows:
        out[row["method"]] = check(row, {})
    if rows:
        out[OPTIMUM_LABEL] = check(rows[0], OPTIMUM_GOAL_KEYS)
        out[MATCHED_LABEL] = check(rows[0], MATCHED_GOAL_KEYS)
    return out


def goals_markdown(goals: Dict[str, Dict[str, object]]) -> str:
    """The goal check as a table: one row per method (and the Dice optimum), one column per goal."""
    names = {"median_recall": "recall", "median_dice": "Dice", "median_tre_mm": "TRE (mm)", "success_rate": "success"}
    header = [""] + [f"{names.get(k, k)} {op} {t:g}" for k, (op, t) in GOALS.items()]
    rows = []
    for method, res in goals.items():
        cells = [method]
        for key in GOALS:
            g = res[key]
            text = percent_cell(g["value"]) if key == "success_rate" else number_cell(g["value"], ".4g")
            cells.append(goal_cell(text, g["met"]))
        rows.append(cells)
    lines = ["", "Goals (held-out phantom, `all` rows); the Dice optimum's row says which of them the "
             "registration loss itself reaches on these frames, the content-matched optimum's which it would "
             "reach were every vessel of the model filled in the frame.", ""]
    return "\n".join(lines + markdown_table(header, "l" + "r" * len(GOALS), rows)) + "\n"


def _patients_label(split: str) -> str:
    return {"test": "held-out phantom patients", "val": "the validation phantom patients",
            "all": "every patient (case) of the data set"}.get(split, f"phantom patients of the {split!r} split")


def table_markdown(table: Sequence[Dict[str, object]], fixed: str = "truth", split: str = "test") -> str:
    ref = "the ground-truth vessel mask" if fixed == "truth" else "the DRU-Net segmentation"
    lines = [
        f"Registration on {_patients_label(split)} (fixed image: {ref}). Dice / precision / recall: registered "
        "projection vs the ground-truth opacified mask inside the registration window (medians). TRE: mean "
        f"landmark error per frame, mm at the isocentre (landmarks inside the ROI); success: valid and TRE < {SUCCESS_MM:g} mm; "
        "runs equal: the mean of each run's own rate (the frames of a run share its geometry, and the lower FoV's "
        "runs hold still, so a long run would otherwise count many times). "
        "Before: the unregistered projection. Truth affine: the projection moved by the phantom's least-squares "
        "nominal-to-true affine (the best one global 2D affine does against the deformation). Dice optimum: the "
        "registration loss's optimum nearest the truth (the refinement started from the truth affine): what a "
        "perfect minimiser of that loss returns there; a method far below it fails by itself, a frame where "
        "the optimum fails too fails by the loss. Matched optimum: the same against the model's own vessels "
        "under the true geometry, all drawn as if filled (no content mismatch): the gap between the two "
        "optima is what the frame's unfilled vessels cost, the rest is the 2D affine against the deformation. "
        "Filling known: cnn+refine with the default network registering only the part of the projection "
        "that the frame shows filled (known from the phantom): what the method would reach if it knew which "
        "of the model's vessels carry contrast.",
        "",
    ]
    header = ("method", "FoV", "n (runs)", "invalid", "Dice", "precision", "recall", "Dice before", "Dice truth affine",
              "Dice optimum", "TRE median (mm)", "TRE mean (mm)", "TRE before (mm)", "TRE truth affine (mm)",
              "TRE optimum (mm)", "TRE matched optimum (mm)", "TRE filling known (mm)", "success",
              "success, runs equal", "success optimum", "success matched optimum", "success filling known",
              "time (ms)")
    rows = []
    for r in table:
        rows.append([r["method"], r["fov"], f"{r['n']} ({r['n_runs']})", r["n_invalid"]]
                    + [number_cell(r[k], ".3f") for k in _TABLE_DICE_KEYS]
                    + [number_cell(r[k], ".2f") for k in _TABLE_TRE_KEYS]
                    + [f"{percent_cell(r['success_rate'])} (n={r['n_tre']})", percent_cell(r["success_rate_by_run"]),
                       percent_cell(r["success_rate_optimum"]),
                       percent_cell(r["success_rate_matched_optimum"]), percent_cell(r["success_rate_known_filling"]),
                       number_cell(r["median_ms"], ".0f")])
    return "\n".join(lines + markdown_table(header, "ll" + "r" * (len(header) - 2), rows)) + "\n"


#: the Dice and TRE columns of ``table_markdown``, in its order
_TABLE_DICE_KEYS = ("median_dice", "median_precision", "median_recall", "median_dice_before",
                    "median_dice_truth_affine", "median_dice_optimum")
_TABLE_TRE_KEYS = ("median_tre_mm", "mean_tre_mm", "median_tre_before_mm", "median_tre_truth_affine_mm",
                   "median_tre_optimum_mm", "median_tre_matched_optimum_mm", "median_tre_known_filling_mm")


# =============================================================================================
# box plots (the paper's Fig. 8, plus the TRE)
# =============================================================================================
def boxplot_png(records: Sequence[Dict[str, object]], methods: Sequence[str], fixed: str = "truth",
                split: str = "test") -> bytes:
    """PNG bytes: Dice, precision, recall and TRE per FoV, one box per method plus the "before",
    "truth affine", "Dice optimum" and "matched optimum" references (Fig. 8 style)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    panels = (("dice", "Dice"), ("precision", "Precision"), ("recall", "Recall"), ("tre_mm", "landmark error (mm)"))
    fovs = [f for f in ("upper", "lower") if any(r["fov"] == f for r in records)]
    # (group, legend label, column suffix): references first, then the methods
    groups = ([("before", "before registration", "before"), ("truth_affine", "truth affine (reference)", "truth_affine"),
               ("optimum", "Dice optimum (reference)", "optimum"),
               ("matched_optimum", "matched optimum (reference)", "matched_optimum")]
              + [(m, m, "") for m in methods])
    palette = ["#9e9e9e", "#c7e9c0", "#74c476", "#00441b", "#1f77b4", "#ff7f0e", "#d62728", "#9467bd"]
    fig = Figure(figsize=(4.4 * len(panels), 4.6), dpi=100)
    FigureCanvasAgg(fig)
    for k, (key, title) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), k + 1)
        data, pos, colors = [], [], []
        for fi, fov in enumerate(fovs):
            for gi, (g, _, suffix) in enumerate(groups):
                recs = [r for r in records if r["fov"] == fov and r["method"] == (g if not suffix else methods[0])]
                if key == "tre_mm":
                    recs = [r for r in recs if int(r.get("n_landmarks") or 0) > 0]
                    col = f"tre_{suffix}_mm" if suffix else "tre_mm"
                else:
                    col = f"{key}_{suffix}" if suffix else key
                v = _values(recs, col)
                data.append(v if v.size else np.array([np.nan]))
                pos.append(fi * (len(groups) + 1) + gi)
                colors.append(palette[gi % len(palette)])
        filled_boxplot(ax, data, pos, colors, 0.7, 0.8, flierprops={"markersize": 3})
        centers = [fi * (len(groups) + 1) + (len(groups) - 1) / 2 for fi in range(len(fovs))]
        ax.set_xticks(centers)
        ax.set_xticklabels([f"{f} FoV (n={len({(r['image'], r['frame']) for r in records if r['fov'] == f})})"
                            for f in fovs])
        ax.set_title(title)
        if key == "tre_mm":
            ax.axhline(SUCCESS_MM, color="#d62728", lw=1, ls="--")
            finite = np.concatenate([d[np.isfinite(d)] for d in data]) if data else np.zeros(0)
            top = max(4 * SUCCESS_MM, float(np.percentile(finite, 90)) * 1.2) if finite.size else 4 * SUCCESS_MM
            ax.set_ylim(0, top)
            for p_, d in zip(pos, data):  # errors above the axis: counted, not lost
                n_out = int(np.sum(d[np.isfinite(d)] > top))
                if n_out:
                    ax.annotate(f"{n_out}\u2191", (p_, top), xytext=(0, -10), textcoords="offset points",
                                ha="center", fontsize=7)
        else:
            ax.set_ylim(-0.02, 1.02)
        ax.grid(axis="y", alpha=0.3)
    from matplotlib.patches import Patch

    handles = [Patch(facecolor=palette[i % len(palette)], alpha=0.8, label=name) for i, (_, name, _) in enumerate(groups)]
    fig.legend(handles=handles, loc="lower center", ncol=len(groups), frameon=False)
    ref = "ground-truth mask" if fixed == "truth" else "DRU-Net segmentation"
    fig.suptitle(f"Registration vs ground truth, {_patients_label(split)} (fixed image: {ref}); "
                 f"dashed: {SUCCESS_MM:g} mm; n\u2191: errors above the axis", fontsize=10)
    fig.tight_layout(rect=(0, 0.07, 1, 0.95))
    return figure_png(fig)
