"""``tavireg evaluate {seg,reg}``: held-out evaluation, with the paper's tables and figures.

``tavireg evaluate seg`` (this file) measures vessel segmentation against ground-truth masks, the
paper's Table / Fig. 5 / Fig. 6 for segmentation, for two methods side by side:

* ``DRU-Net``: ``segmentation.segment_frame`` with the installed network (or ``--model``), the FoV
  taken from the data (so its per-FoV threshold from the manifest is used); the mask at the
  frame's own size.
* ``Frangi``: the classical baseline a user would try first. ``skimage.filters.frangi`` with
  ``black_ridges=True`` (contrast-filled vessels are dark) on exactly the image the network sees
  (``segmentation.preprocess``: one percentile normalisation, resized to 256 x 256, where coronary
  arteries are about 3-10 px wide and the aortic root up to about 70 px); the response is resized
  back to the frame's size (bilinear, like the network's logits) and thresholded. Its two
  parameters are chosen per FoV to maximise the median Dice on the **training** data given by
  ``--frangi-train`` only (index rows with split ``train``, and/or image folders such as
  ``angios40/train``): the scale set among ``FRANGI_SIGMA_SETS`` (1-8 px in steps of 1, and three
  octave sets 2-16, 3-24, 4-32 px; ``--frangi-sigmas`` fixes one) and the threshold on a fixed
  log-spaced grid (1e-5 .. 1, 20 steps a decade), at the network's size (as ``train-seg`` chooses
  the network's thresholds on validation). Which training frames: those of the **same data set**
  and FoV when ``--frangi-train`` has them (the train rows of the same index CSV; a sibling folder,
  e.g. ``angios40/train`` for ``angios40/test``) — a user tunes a filter on images like the ones
  it will see, and pooling coronary angiograms with far more numerous phantom frames would tune
  it to the phantom; else all training frames of that FoV; else all training frames (with a
  warning). Frangi training data that overlap the evaluated data
  (same image frame, or the same index patient) are refused. Without ``--frangi-train`` the
  baseline is skipped, with a warning: it is never tuned on test data.

Data (``--data``, repeatable):

* a case index CSV (``tavireg phantom``'s ``index.csv``; columns ``patient, split, fov, image,
  frame, mask``): **only rows with split == "test" are evaluated** (held-out patients; the number
  of other rows skipped is reported); ``--split val|train|all`` takes another split, or every row
  (a phantom generated only to validate on), for every ``--data`` or, given once per ``--data``, for
  each in turn. FoV per row. Data set label: the CSV's folder name.
* a folder of ``N.png`` + ``N_gt.png`` pairs (angios40 layout): FoV ``upper`` in the tables
  (coronary angiograms are chest frames), every pair is evaluated. Label: ``<parent>/<folder>``,
  e.g. ``angios40/test``. DRU-Net segments these images as ``tavireg segment IMAGE.png`` does: a
  PNG has no DICOM header, so its FoV is unknown to the tool (``fov='auto'``) and the network's
  ``unknown`` threshold applies (``FrameRef.header_fov`` False); a case index row's FoV stands for
  the one its DICOM header gives.

Metrics per frame at the frame's size (``segmentation.overlap_metrics``): Dice (DSC), precision,
recall. Rules for the medians:

* frames whose ground-truth mask is empty (nothing opacified, e.g. before the bolus arrives) are
  **excluded from every median** — there Dice is 1 or 0 depending only on whether anything was
  predicted and recall is undefined — and counted separately (``n_empty_gt``; with
  ``empty_gt_clean``: how many of them the method left empty);
* a frame where the method predicts nothing has precision undefined: it is left out of the
  precision median only (its Dice and recall, 0, count) and counted as ``n_no_pred``.

Each median DSC comes with a 95 % confidence interval from a bootstrap over **patients** (all frames
of a drawn patient together; ``median_ci``), and the project's goals are checked against DRU-Net's
rows (``check_goals``: phantom indices 0.90 per FoV, image folders 0.75 and above Frangi, the
latter with the paired interval of the median difference), each verdict saying whether the whole
interval agrees with the median.

Outputs in ``--out DIR`` (written atomically, all or nothing): ``table.csv`` and ``table.md``
(data set x FoV x method: n, patients, medians, quartiles and CI of DSC, median precision and
recall, the threshold used; ``table.md`` and ``summary.json`` also the goal check),
``per_frame.csv``, ``boxplots.png`` (Fig. 5 style), ``samples.png`` (Fig. 6 style: best / median /
worst frame by DRU-Net Dice per data set and FoV, TP yellow, FP magenta, FN cyan, DRU-Net and
Frangi side by side) and ``summary.json`` (everything above plus the model,
its SHA256, the Frangi parameters and thresholds with their training data, the command, timings).

The registration counterpart is ``evaluation.reg``; both commands are in ``cli.evaluate``.

Heavy imports (torch, skimage, matplotlib) happen inside the functions that need them.
"""

from __future__ import annotations

import csv
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import InputError
from ..outputs import read_mask_png
from ..segmentation import FOVS, UNKNOWN_FOV, scores_from_counts, threshold_counts
from ..training.common import row_fov_and_frame
from .tables import figure_png, filled_boxplot, finite, markdown_table, number_cell, percentile_of, reaches

FOLDER_FOV = "upper"
INDEX_COLUMNS = ("patient", "split", "fov", "image", "frame", "mask")
EVAL_SPLIT = "test"
TRAIN_SPLIT = "train"
#: ``--split all``: every row of a case index (e.g. a phantom generated only to validate on)
ALL_SPLITS = "all"
EVAL_SPLITS = ("test", "val", "train", ALL_SPLITS)
METHOD_DRUNET = "DRU-Net"
CASE_INDEX = "case index"  # DataSet.kind of a case index CSV (else "image-mask folder")
METHOD_FRANGI = "Frangi"
METHODS = (METHOD_DRUNET, METHOD_FRANGI)
#: candidate Frangi scale sets, px of the 256 x 256 network input; the first is the textbook choice.
#: (skimage's frangi sets its structuredness constant from the first scale, so the set matters as
#: a whole: on training frames the octave sets starting at 3-4 px beat 1-8 px by 0.05-0.19 Dice)
FRANGI_SIGMA_SETS = (
    (1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0),
    (2.0, 4.0, 8.0, 16.0),
    (3.0, 6.0, 12.0, 24.0),
    (4.0, 8.0, 16.0, 32.0),
)
FRANGI_SIGMAS = FRANGI_SIGMA_SETS[0]
#: candidate Frangi thresholds: fixed, log-spaced (20 a decade), independent of any data
FRANGI_THRESHOLDS = tuple(float(t) for t in np.round(np.logspace(-5, 0, 101), 10))
SAMPLE_KINDS = ("best", "median", "worst")
_THUMB = 384  # longest side of a sample picture, px

PER_FRAME_COLUMNS = ("dataset", "fov", "method", "frame", "patient", "stage", "rows", "cols", "gt_px", "pred_px",
                     "tp", "fp", "fn", "dice", "precision", "recall", "empty_gt", "threshold", "sigmas")
TABLE_COLUMNS = ("dataset", "fov", "method", "n", "n_patients", "n_empty_gt", "empty_gt_clean", "n_no_pred",
                 "median_dice", "dice_q1", "dice_q3", "dice_ci_low", "dice_ci_high", "median_precision",
                 "median_recall", "threshold", "sigmas")
#: the same medians per procedure stage (case indices with a ``stage`` column: the phantom's upper FoV)
STAGE_COLUMNS = TABLE_COLUMNS[:2] + ("stage",) + TABLE_COLUMNS[2:]
#: the confidence interval of a median DSC: percentile bootstrap over patients (all frames of a patient
#: drawn together: frames of one cine are not independent), seeded, so a table is reproducible
CI_LEVEL = 0.95
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0
#: the project's goals for DRU-Net's median DSC: each FoV of held-out phantom patients (case indices),
#: and real angiograms (image-mask folders), where it must also be above the Frangi baseline
GOAL_PHANTOM_DICE = 0.90
GOAL_REAL_DICE = 0.75


# ---------------------------------------------------------------------------------------------
# data sets
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FrameRef:
    """One frame with ground truth: where to read it and what it is."""

    dataset: str
    fov: str
    name: str  # shown in tables, e.g. "P000 s00#3" or "12.png"
    image: Path  # resolved
    frame: int
    mask: Path  # resolved
    patient: str  # data-set-qualified patient id ("<csv>:<patient>", or "<folder>:<N>")
    family: str = ""  # the data set it belongs to: the index CSV, or a folder's parent (angios40)
    stage: str = ""  # procedure stage (the index's optional ``stage`` column; phantom.STAGES), else ""
    #: whether the tool would know the FoV (a case index row: its DICOM header); False for a folder's
    #: PNG, which DRU-Net then segments with ``fov='auto'`` (the ``unknown`` threshold), as ``segment`` does
    header_fov: bool = True

    @property
    def drunet_fov(self) -> str:
        """The ``fov`` DRU-Net is run with: the frame's FoV, or ``auto`` when the tool could not know it."""
        return self.fov if self.header_fov else "auto"

    @property
    def key(self) -> Tuple[str, int]:
        return (str(self.image), int(self.frame))


@dataclass
class DataSet:
    label: str
    path: Path
    kind: str  # "case index" | "image-mask folder"
    frames: List[FrameRef]
    info: Dict[str, Any] = field(default_factory=dict)


def _read_index(csv_path: Path) -> List[Dict[str, str]]:
    try:
        with open(csv_path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            cols = [(c or "").strip() for c in (reader.fieldnames or [])]
            rows = [{(k or "").strip(): (v or "").strip() for k, v in r.items() if k is not None} for r in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"cannot read case index {csv_path}: {exc}") from None
    missing = [c for c in INDEX_COLUMNS if c not in cols]
    if missing:
        raise InputError(f"case index {csv_path} lacks the column(s) {', '.join(missing)} "
                         f"(needs {', '.join(INDEX_COLUMNS)})")
    return rows


def _index_label(csv_path: Path) -> str:
    parent = csv_path.resolve().parent.name or "index"
    return parent if csv_path.stem == "index" else f"{parent}/{csv_path.stem}"


def index_frames(csv_path: Path, split: str, label: Optional[str] = None) -> Tuple[List[FrameRef], Dict[str, Any]]:
    """Rows of a case index CSV whose split is ``split`` (``ALL_SPLITS``: every row); and counts of the
    rows per split."""
    csv_path = Path(csv_path)
    rows = _read_index(csv_path)
    label = label or _index_label(csv_path)
    base = csv_path.resolve().parent
    out: List[FrameRef] = []
    per_split: Dict[str, int] = {}
    sides: Dict[str, set] = {}
    for i, r in enumerate(rows, start=2):
        s = r["split"].lower()
        per_split[s or "(empty)"] = per_split.get(s or "(empty)", 0) + 1
        if not r["patient"]:
            raise InputError(f"{csv_path.name} line {i}: empty patient")
        sides.setdefault(r["patient"], set()).add(s)
        if s != split and split != ALL_SPLITS:
            continue
        fov, frame = row_fov_and_frame(r, f"{csv_path.name} line {i}")
        if not r["image"] or not r["mask"]:
            raise InputError(f"{csv_path.name} line {i}: empty image or mask path")
        name = f"{r['patient']} {Path(r['image']).stem}#{frame}"
        out.append(FrameRef(label, fov, name, (base / r["image"]).resolve(), frame, (base / r["mask"]).resolve(),
                            f"{csv_path.resolve()}:{r['patient']}", str(csv_path.resolve()), r.get("stage", "")))
    for patient, s in sides.items():
        if split in s and len(s) > 1:
            raise InputError(f"case index {csv_path.name}: patient {patient!r} has frames in several splits "
                             f"({', '.join(sorted(x or '(empty)' for x in s))}); the split must be patient-wise")
    from ..synthetic.phantom import rows_version

    return out, {"rows": len(rows), "rows_per_split": per_split, "phantom_version": rows_version(rows, csv_path.name)}


def _natural_key(s: str):
    import re

    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]


def folder_frames(folder: Path, fov: str = FOLDER_FOV, label: Optional[str] = None) -> List[FrameRef]:
    """``N.png`` + ``N_gt.png`` pairs of a folder (angios40 layout), in natural order."""
    folder = Path(folder)
    res = folder.resolve()
    label = label or (f"{res.parent.name}/{res.name}" if res.parent.name else res.name)
    out = []
    for img in sorted(folder.glob("*.png"), key=lambda p: _natural_key(p.stem)):
        if img.stem.endswith("_gt"):
            continue
        gt = img.with_name(f"{img.stem}_gt.png")
        if gt.is_file():
            out.append(FrameRef(label, fov, img.name, img.resolve(), 0, gt.resolve(), f"{res}:{img.stem}",
                                str(res.parent), header_fov=False))
    if not out:
        raise InputError(f"{folder} holds no N.png + N_gt.png pairs")
    return out


def open_dataset(path, split: str, what: str = "--data") -> DataSet:
    """A data set from a case index CSV (rows of ``split``) or an image-mask folder (all pairs)."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"{what} {p}: no such file or folder")
    if p.is_dir():
        frames = folder_frames(p)
        return DataSet(frames[0].dataset, p, "image-mask folder", frames, {"fov": FOLDER_FOV})
    if p.is_file() and p.suffix.lower() == ".csv":
        frames, info = index_frames(p, split)
        if not frames:
            raise InputError(f"{what} {p}: no rows with split == {split!r} "
                             f"(rows per split: {', '.join(f'{k} {v}' for k, v in sorted(info['rows_per_split'].items()))})")
        info["split_used"] = split
        info["rows_skipped"] = info["rows"] - len(frames)
        return DataSet(_index_label(p), p, CASE_INDEX, frames, info)
    raise InputError(f"{what} {p}: not a folder of N.png/N_gt.png pairs nor a case index .csv")


def subsample(frames: List[FrameRef], max_frames: Optional[int]) -> List[FrameRef]:
    """At most ``max_frames`` frames, evenly spaced over the list (deterministic); all when None."""
    if max_frames is None or len(frames) <= max_frames:
        return list(frames)
    idx = np.unique(np.linspace(0, len(frames) - 1, int(max_frames)).round().astype(int))
    return [frames[i] for i in idx]


class FrameReader:
    """Reads (image float32, truth uint8 0/1) of a ``FrameRef``; keeps the last few DICOM series."""

    def __init__(self, keep: int = 4):
        self._cache: Dict[Path, Any] = {}
        self._keep = keep

    def read(self, ref: FrameRef) -> Tuple[np.ndarray, np.ndarray]:
        from ..segmentation import _is_dicom, read_image_file, validate_image

        if not ref.image.is_file():
            raise InputError(f"{ref.dataset}: image {ref.image} does not exist")
        if _is_dicom(ref.image):
            if ref.image not in self._cache:
                from ..fluoro import read_fluoro

                if len(self._cache) >= self._keep:
                    self._cache.pop(next(iter(self._cache)))
                self._cache[ref.image] = read_fluoro(ref.image)
            image = validate_image(self._cache[ref.image].frame(ref.frame), f"{ref.image.name} frame {ref.frame}")
        else:
            image = read_image_file(ref.image, ref.frame).image
        return image, read_mask_png(ref.mask, image.shape, "ground-truth mask")


# ---------------------------------------------------------------------------------------------
# the Frangi baseline
# ---------------------------------------------------------------------------------------------
def frangi_response(image: np.ndarray, sigmas: Sequence[float] = FRANGI_SIGMAS) -> np.ndarray:
    """Frangi vesselness (dark ridges) of the network's pre-processed image, float32 at 256 x 256."""
    from ..segmentation import preprocess

    x, _ = preprocess(image)
    return _frangi(x, sigmas)


def _frangi(x: np.ndarray, sigmas: Sequence[float]) -> np.ndarray:
    from skimage.filters import frangi

    r = frangi(x.astype(np.float64), sigmas=list(sigmas), black_ridges=True)
    return np.nan_to_num(r, nan=0.0, posinf=0.0, neginf=0.0).astype(np.float32)


def frangi_segment(image: np.ndarray, threshold: float, sigmas: Sequence[float] = FRANGI_SIGMAS) -> np.ndarray:
    """Frangi mask (uint8 0/1) at the image's size: the response resized back, ``>= threshold``."""
    from ..segmentation import resize_image

    r = resize_image(frangi_response(image, sigmas), np.asarray(image).shape)
    return (r >= float(threshold)).astype(np.uint8)


_WORKER_READER: Optional["FrameReader"] = None


def _worker_init() -> None:
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:  # pragma: no cover
        pass


def _train_frame_counts(ref: FrameRef, sigma_sets, thresholds, reader: Optional[FrameReader] = None):
    """(counts (n_sets, n_thresholds, 3), ground truth empty) of one training frame at 256 x 256."""
    from ..segmentation import INPUT_SIZE, preprocess, resize_mask

    global _WORKER_READER
    if reader is None:
        if _WORKER_READER is None:
            _WORKER_READER = FrameReader()
        reader = _WORKER_READER
    image, truth = reader.read(ref)
    x, _ = preprocess(image)
    t = resize_mask(truth, INPUT_SIZE)
    return np.stack([threshold_counts(_frangi(x, sig), t, thresholds) for sig in sigma_sets]), not truth.any()


def choose_frangi_thresholds(frames: Sequence[FrameRef], reader: Optional[FrameReader] = None,
                             sigma_sets: Sequence[Sequence[float]] = FRANGI_SIGMA_SETS,
                             thresholds: Sequence[float] = FRANGI_THRESHOLDS,
                             progress: Optional[Callable[[], None]] = None, workers: int = 1) -> Dict[str, Any]:
    """Per FoV (and "all"): the scale set and threshold with the best median Dice over the training frames.

    Works at the network's size (the pre-processed 256 x 256 image and the mask resized there);
    frames with an empty mask are left out, as in the evaluation. Ties go to the earlier scale set,
    then the lower threshold. Returns ``{"thresholds": {fov: t}, "sigmas": {fov: [...]},
    "per_fov": {fov: {threshold, sigmas, median_dice, n_frames, n_empty_gt,
    median_dice_per_sigma_set}}, "warnings": [...]}``. ``workers`` > 1 computes the frames in
    that many processes (the result is the same).
    """
    reader = reader or FrameReader()
    sigma_sets = [tuple(float(v) for v in s) for s in sigma_sets]
    if not sigma_sets:
        raise InputError("no Frangi scale set to choose from")
    fovs: List[str] = [ref.fov for ref in frames]
    counts, empty = _training_counts(frames, reader, sigma_sets, thresholds, progress, workers)
    if not counts:
        raise InputError("--frangi-train gives no training frames")
    dice = scores_from_counts(np.stack(counts))[0]  # (n_frames, n_sigma_sets, n_thresholds)
    fov_arr, empty_arr = np.array(fovs), np.array(empty)
    fam_arr = np.array([ref.family for ref in frames])

    def best(sel: np.ndarray) -> Optional[Dict[str, Any]]:
        return _best_frangi(dice, sel, empty_arr, sigma_sets, thresholds)

    per_fov: Dict[str, Any] = {}
    for group in list(FOVS) + ["all"]:
        b = best((fov_arr == group) if group in FOVS else np.ones(len(fovs), bool))
        if b is not None:
            per_fov[group] = b
    per_family: Dict[str, Dict[str, Any]] = {}
    for fam in sorted(set(fam_arr.tolist())):
        for fov in FOVS:
            b = best((fam_arr == fam) & (fov_arr == fov))
            if b is not None:
                per_family.setdefault(fam, {})[fov] = b
    if "all" not in per_fov:
        raise InputError("--frangi-train: every training frame has an empty ground-truth mask")
    chosen, sigmas, warnings = {}, {}, []
    for fov in FOVS:
        src = per_fov.get(fov) or per_fov["all"]
        chosen[fov], sigmas[fov] = src["threshold"], src["sigmas"]
        if fov not in per_fov:
            warnings.append(f"Frangi: no {fov}-FoV training frames; the {fov} FoV uses the parameters "
                            f"chosen over all training frames (sigmas {sigma_label(sigmas[fov])}, "
                            f"threshold {chosen[fov]:.3g})")
    return {"thresholds": chosen, "sigmas": sigmas, "per_fov": per_fov, "per_family": per_family,
            "warnings": warnings}


def _training_counts(frames: Sequence[FrameRef], reader: FrameReader, sigma_sets, thresholds,
                     progress: Optional[Callable[[], None]], workers: int) -> Tuple[List[np.ndarray], List[bool]]:
    """``_train_frame_counts`` of every training frame, in their order (in ``workers`` processes
    when more than one): the counts and whether each frame's ground truth is empty."""
    counts: List[np.ndarray] = []
    empty: List[bool] = []
    if workers > 1 and len(frames) > 1:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor
        from functools import partial

        # spawn, not fork: the parent has torch's thread pools running
        with ProcessPoolExecutor(max_workers=int(workers), mp_context=mp.get_context("spawn"),
                                 initializer=_worker_init) as pool:
            job = partial(_train_frame_counts, sigma_sets=sigma_sets, thresholds=thresholds)
            chunk = max(1, min(16, len(frames) // (4 * int(workers))))  # neighbours share a series file
            for c, e in pool.map(job, frames, chunksize=chunk):
                counts.append(c)
                empty.append(e)
                if progress is not None:
                    progress()
    else:
        for ref in frames:
            c, e = _train_frame_counts(ref, sigma_sets, thresholds, reader)
            counts.append(c)
            empty.append(e)
            if progress is not None:
                progress()
    return counts, empty


def _best_frangi(dice: np.ndarray, sel: np.ndarray, empty: np.ndarray, sigma_sets, thresholds
                 ) -> Optional[Dict[str, Any]]:
    """The scale set and threshold with the best median Dice over the selected frames (``sel``)
    whose ground truth is not ``empty``; the first maximum (earlier set, lower threshold). None when
    no such frame is selected."""
    use = sel & ~empty
    if not use.any():
        return None
    med = np.median(dice[use], axis=0)  # (n_sigma_sets, n_thresholds)
    j, k = np.unravel_index(int(np.argmax(med)), med.shape)  # first maximum: earlier set, lower threshold
    return {"threshold": float(thresholds[k]), "sigmas": list(sigma_sets[j]),
            "median_dice": float(med[j, k]), "n_frames": int(use.sum()),
            "n_empty_gt": int((sel & empty).sum()),
            "median_dice_per_sigma_set": {sigma_label(s): float(med[i].max()) for i, s in enumerate(sigma_sets)}}


def frangi_params_for(chosen: Dict[str, Any], family: str, fov: str) -> Tuple[Dict[str, Any], str]:
    """The Frangi parameters for frames of data set ``family`` and ``fov``, and which training set gave them.

    The same data set's training frames of that FoV when there are any, else all training frames
    of that FoV, else all training frames.
    """
    fam = chosen.get("per_family", {}).get(family, {})
    if fov in fam:
        return fam[fov], "same data set"
    if fov in chosen["per_fov"]:
        return chosen["per_fov"][fov], "all training data of this FoV"
    return chosen["per_fov"]["all"], "all training data"


def sigma_label(sigmas: Sequence[float]) -> str:
    return ",".join(f"{v:g}" for v in sigmas)


# ---------------------------------------------------------------------------------------------
# metrics
# ---------------------------------------------------------------------------------------------
def frame_record(ref: FrameRef, method: str, pred: np.ndarray, truth: np.ndarray, threshold: float) -> Dict[str, Any]:
    from ..segmentation import overlap_metrics

    p, t = np.asarray(pred) > 0, np.asarray(truth) > 0
    m = overlap_metrics(p, t)
    empty = not t.any()
    tp = int(np.count_nonzero(p & t))
    return {
        "dataset": ref.dataset, "fov": ref.fov, "method": method, "frame": ref.name,
        "patient": ref.patient.rsplit(":", 1)[-1], "stage": ref.stage, "rows": int(t.shape[0]), "cols": int(t.shape[1]),
        "gt_px": int(t.sum()), "pred_px": int(p.sum()), "tp": tp, "fp": int(p.sum()) - tp, "fn": int(t.sum()) - tp,
        "dice": float(m["dice"]), "precision": float(m["precision"]), "recall": float(m["recall"]),
        "empty_gt": bool(empty), "threshold": float(threshold),
    }


def bootstrap_medians(values: np.ndarray, patients: Sequence[str], resamples: int = BOOTSTRAP_RESAMPLES,
                      seed: int = BOOTSTRAP_SEED) -> np.ndarray:
    """Medians of the columns of ``values`` (frames x k) over ``resamples`` cluster-bootstrap resamples:
    each draws as many patients as there are, with replacement, and pools their frames. Returns
    (resamples, k). Paired columns (two methods on the same frames) share every resample."""
    values = np.asarray(values, float).reshape(len(patients), -1)
    names, codes = np.unique(np.asarray(patients, dtype=str), return_inverse=True)
    members = [np.flatnonzero(codes == i) for i in range(len(names))]
    rng = np.random.default_rng(seed)
    out = np.empty((resamples, values.shape[1]))
    for b in range(resamples):
        rows = np.concatenate([members[i] for i in rng.integers(0, len(names), len(names))])
        out[b] = np.median(values[rows], axis=0)
    return out


def percentile_interval(samples: np.ndarray) -> Tuple[float, float]:
    """The central ``CI_LEVEL`` interval of bootstrap samples."""
    tail = 50 * (1 - CI_LEVEL)
    lo, hi = np.percentile(samples, (tail, 100 - tail))
    return float(lo), float(hi)


def median_ci(values: Sequence[float], patients: Sequence[str]) -> Tuple[Optional[float], Optional[float]]:
    """The ``CI_LEVEL`` percentile interval of the median of ``values`` by ``bootstrap_medians``."""
    if len(values) == 0:
        return None, None
    return percentile_interval(bootstrap_medians(np.asarray(values, float), patients)[:, 0])


def _stage_order(records: Sequence[Dict[str, Any]]) -> List[str]:
    """The stages present (not ""), the phantom's in procedure order, then any others by name."""
    from ..synthetic.phantom import STAGES

    present = {r.get("stage", "") for r in records} - {""}
    return [s for s in STAGES if s in present] + sorted(present - set(STAGES))


def summarise(records: Sequence[Dict[str, Any]], order: Sequence[str], by_stage: bool = False) -> List[Dict[str, Any]]:
    """Table rows (data set x FoV x method) with the medians under the rules of this module's doc, and
    the median DSC's confidence interval (``median_ci``). ``by_stage``: one row per procedure stage
    too (data set x FoV x stage x method; frames without a stage left out)."""
    rows = []
    stages = _stage_order(records) if by_stage else [None]
    for ds in order:
        for fov in FOVS:
            for stage in stages:
                for method in METHODS:
                    grp = [r for r in records if r["dataset"] == ds and r["fov"] == fov and r["method"] == method
                           and (stage is None or r.get("stage", "") == stage)]
                    if grp:
                        rows.append(_summary_row(grp, ds, fov, method, stage))
    return rows


def _summary_row(grp: Sequence[Dict[str, Any]], ds: str, fov: str, method: str,
                 stage: Optional[str]) -> Dict[str, Any]:
    used = [r for r in grp if not r["empty_gt"]]
    empty = [r for r in grp if r["empty_gt"]]
    ths = sorted({r["threshold"] for r in grp})
    ci = median_ci([r["dice"] for r in used], [r["patient"] for r in used])
    row = {"dataset": ds, "fov": fov, "method": method}
    if stage is not None:
        row["stage"] = stage
    row.update({
        "n": len(used), "n_patients": len({r["patient"] for r in used}), "n_empty_gt": len(empty),
        "empty_gt_clean": sum(1 for r in empty if r["pred_px"] == 0),
        "n_no_pred": sum(1 for r in used if r["pred_px"] == 0),
        "median_dice": percentile_of((r["dice"] for r in used), 50),
        "dice_q1": percentile_of((r["dice"] for r in used), 25),
        "dice_q3": percentile_of((r["dice"] for r in used), 75),
        "dice_ci_low": ci[0], "dice_ci_high": ci[1],
        "median_precision": percentile_of((r["precision"] for r in used), 50),
        "median_recall": percentile_of((r["recall"] for r in used), 50),
        "threshold": ths[0] if len(ths) == 1 else None,
        "sigmas": grp[0].get("sigmas", ""),
    })
    return row


def _fmt(v, digits: int = 3) -> str:
    """A figure of the tables with ``digits`` decimals; ``-`` when missing."""
    return number_cell(v, f".{digits}f", "-")


def table_markdown(rows: Sequence[Dict[str, Any]], notes: Sequence[str] = ()) -> str:
    """The table as markdown; a stage column when the rows are ``summarise(..., by_stage=True)``'s."""
    staged = any("stage" in r for r in rows)
    header = (["data set", "FoV"] + (["stage"] if staged else [])
              + ["method", "n", "DSC median [IQR]", f"{100 * CI_LEVEL:g} % CI (patients)", "precision", "recall",
                 "threshold (sigmas, px)", "empty GT (clean)", "no prediction"])
    lines = markdown_table(header, "l" * len(header), (_table_cells(r, staged) for r in rows))
    if notes:
        lines.append("")
        lines.extend(f"- {n}" for n in notes)
    return "\n".join(lines) + "\n"


def _table_cells(r: Dict[str, Any], staged: bool) -> List[str]:
    """The cells of one row of ``table_markdown``."""
    dsc = (f"{_fmt(r['median_dice'])} [{_fmt(r['dice_q1'], 2)}-{_fmt(r['dice_q3'], 2)}]"
           if r["median_dice"] is not None else "-")
    ci = (f"{_fmt(r['dice_ci_low'])}-{_fmt(r['dice_ci_high'])} ({r['n_patients']})"
          if r.get("dice_ci_low") is not None else "-")
    threshold = number_cell(r["threshold"], ".3g", "-") + (f" ({r['sigmas']})" if r.get("sigmas") else "")
    return ([r["dataset"], r["fov"]] + ([r["stage"]] if staged else [])
            + [r["method"], r["n"], dsc, ci, _fmt(r["median_precision"]), _fmt(r["median_recall"]), threshold,
               f"{r['n_empty_gt']} ({r['empty_gt_clean']})", r["n_no_pred"]])


def _verdict(value: float, lo: float, hi: float, target: float, strict: bool = False) -> str:
    """Whether a median reaches ``target`` (is above it when ``strict``), and whether its confidence
    interval agrees."""
    op = ">" if strict else ">="
    if reaches(value, op, target):
        return "met" if reaches(lo, op, target) else "met by the median, not by the whole CI"
    return "not met by the median, CI reaches it" if reaches(hi, op, target) else "not met"


def check_goals(records: Sequence[Dict[str, Any]], table: Sequence[Dict[str, Any]],
                kinds: Dict[str, str]) -> List[Dict[str, Any]]:
    """The project's goals for DRU-Net, one row per data set and FoV: median DSC >= ``GOAL_PHANTOM_DICE``
    on case indices (held-out phantom patients), >= ``GOAL_REAL_DICE`` on image-mask folders (real
    angiograms) and there also above Frangi (the median difference with its paired patient-bootstrap
    CI: met when the whole CI is above 0). ``kinds``: data set label -> ``DataSet.kind``."""
    out = []
    for row in table:
        if row["method"] != METHOD_DRUNET or row["median_dice"] is None:
            continue
        real = kinds.get(row["dataset"]) == "image-mask folder"
        target = GOAL_REAL_DICE if real else GOAL_PHANTOM_DICE
        lo, hi = row["dice_ci_low"], row["dice_ci_high"]
        out.append({"dataset": row["dataset"], "fov": row["fov"], "goal": f"median DSC >= {target:g}",
                    "value": row["median_dice"], "ci": [lo, hi], "verdict": _verdict(row["median_dice"], lo, hi, target)})
        if not real:
            continue
        pairs: Dict[str, Dict[str, Any]] = {}
        for r in records:
            if r["dataset"] == row["dataset"] and r["fov"] == row["fov"] and not r["empty_gt"]:
                pairs.setdefault(r["frame"], {})[r["method"]] = r
        both = [p for p in pairs.values() if METHOD_DRUNET in p and METHOD_FRANGI in p]
        if not both:
            continue
        dice = np.array([[p[METHOD_DRUNET]["dice"], p[METHOD_FRANGI]["dice"]] for p in both])
        diff = float(np.median(dice[:, 0]) - np.median(dice[:, 1]))
        boot = bootstrap_medians(dice, [p[METHOD_DRUNET]["patient"] for p in both])
        dlo, dhi = percentile_interval(boot[:, 0] - boot[:, 1])
        out.append({"dataset": row["dataset"], "fov": row["fov"], "goal": "median DSC above Frangi's",
                    "value": diff, "ci": [dlo, dhi], "verdict": _verdict(diff, dlo, dhi, 0.0, strict=True)})
    return out


def goals_markdown(goals: Sequence[Dict[str, Any]]) -> str:
    """The goal check as a table (empty when there is nothing to check)."""
    if not goals:
        return ""
    rows = []
    for g in goals:
        lo, hi = g["ci"]
        if "Frangi" in g["goal"]:  # a difference: signed
            value, ci = f"{g['value']:+.3f}", f"{lo:+.3f} to {hi:+.3f}"
        else:
            value, ci = f"{g['value']:.3f}", f"{lo:.3f}-{hi:.3f}"
        rows.append((g["dataset"], g["fov"], g["goal"], value, ci, g["verdict"]))
    lines = ["", f"## Goals (DRU-Net; {100 * CI_LEVEL:g} % CI: bootstrap over patients)", ""]
    return "\n".join(lines + markdown_table(("data set", "FoV", "goal", "value", "CI", "verdict"), "lllrll", rows)) + "\n"


def stage_markdown(rows: Sequence[Dict[str, Any]]) -> str:
    """The by-stage table (``summarise(..., by_stage=True)``) under its heading; empty without stages."""
    if not rows:
        return ""
    return "\n## By procedure stage (frames of case indices with a stage)\n\n" + table_markdown(rows)


# ---------------------------------------------------------------------------------------------
# figures (matplotlib, Agg)
# ---------------------------------------------------------------------------------------------
_METHOD_COLOURS = {METHOD_DRUNET: "#1f77b4", METHOD_FRANGI: "#ff7f0e"}


def boxplot_png(records: Sequence[Dict[str, Any]], order: Sequence[str], by_stage: bool = False) -> bytes:
    """Fig. 5 style: DSC / precision / recall boxes per data set and FoV (and procedure stage when
    ``by_stage``: staged frames only), one colour per method."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    stages = _stage_order(records) if by_stage else [None]

    def members(r, ds, fov, stage):
        return r["dataset"] == ds and r["fov"] == fov and (stage is None or r.get("stage", "") == stage)

    groups = [(ds, fov, st) for ds in order for fov in FOVS for st in stages
              if any(members(r, ds, fov, st) for r in records)]
    methods = [m for m in METHODS if any(r["method"] == m for r in records)]
    width = 0.8 / max(1, len(methods))
    if by_stage:  # many groups: the three panels one above the other, each the figure's width
        fig, axes = plt.subplots(3, 1, figsize=(max(9.0, 2.0 + 1.7 * len(groups)), 11.0), squeeze=False)
        axes = axes.T
    else:
        fig, axes = plt.subplots(1, 3, figsize=(max(9.0, 3.0 + 2.2 * len(groups)), 4.6), squeeze=False)
    for ax, (key, title) in zip(axes[0], (("dice", "DSC"), ("precision", "Precision"), ("recall", "Recall"))):
        for j, method in enumerate(methods):
            data, pos = [], []
            for g, grp in enumerate(groups):
                vals = finite(r[key] for r in records if members(r, *grp) and r["method"] == method
                              and not r["empty_gt"])
                data.append(vals if vals.size else np.array([np.nan]))
                pos.append(g + (j - (len(methods) - 1) / 2) * width)
            filled_boxplot(ax, data, pos, [_METHOD_COLOURS.get(method, "grey")] * len(data), width * 0.85, 0.75,
                           flierprops={"marker": ".", "markersize": 3, "alpha": 0.5},
                           medianprops={"color": "black", "linewidth": 1.5})
        ax.set_title(title)
        ax.set_ylim(-0.02, 1.02)
        ax.set_xticks(range(len(groups)))
        labels = []
        for ds, fov, st in groups:
            n = sum(1 for r in records if members(r, ds, fov, st) and r["method"] == methods[0]
                    and not r["empty_gt"]) if methods else 0
            labels.append(f"{ds}\n{fov}{' ' + st if st else ''} (n={n})")
        ax.set_xticklabels(labels, fontsize=8)
        ax.grid(axis="y", alpha=0.3)
        ax.set_xlim(-0.6, len(groups) - 0.4)
    handles = [Patch(facecolor=_METHOD_COLOURS.get(m, "grey"), alpha=0.75, label=m) for m in methods]
    fig.legend(handles=handles, loc="upper right", bbox_to_anchor=(0.97, 0.995), ncol=len(methods), frameon=False)
    fig.suptitle("Vessel segmentation on held-out data" + (", by procedure stage" if by_stage else "")
                 + " (frames with an empty ground truth excluded)", fontsize=10,
                 x=0.02, ha="left")
    fig.tight_layout(rect=(0, 0, 1, 0.965 if by_stage else 0.93))
    return figure_png(fig, dpi=100)


def _thumb(rgb: np.ndarray, side: int = _THUMB) -> np.ndarray:
    from PIL import Image

    h, w = rgb.shape[:2]
    s = side / max(h, w)
    if s >= 1:
        return rgb
    im = Image.fromarray(rgb).resize((max(1, round(w * s)), max(1, round(h * s))), Image.LANCZOS)
    return np.asarray(im)


def pick_samples(records: Sequence[Dict[str, Any]], order: Sequence[str]) -> List[Dict[str, Any]]:
    """Per data set and FoV, the best, median and worst frame by Dice (of DRU-Net when evaluated)."""
    ranked_by = METHOD_DRUNET if any(r["method"] == METHOD_DRUNET for r in records) else METHOD_FRANGI
    out = []
    for ds in order:
        for fov in FOVS:
            grp = [r for r in records if r["dataset"] == ds and r["fov"] == fov and r["method"] == ranked_by
                   and not r["empty_gt"]]
            if not grp:
                continue
            grp = sorted(grp, key=lambda r: (-r["dice"], r["frame"]))
            picks = {"best": grp[0], "median": grp[(len(grp) - 1) // 2], "worst": grp[-1]}
            seen = set()
            for kind in SAMPLE_KINDS:
                r = picks[kind]
                if r["frame"] in seen:
                    continue
                seen.add(r["frame"])
                out.append({"dataset": ds, "fov": fov, "kind": kind, "frame": r["frame"], "ranked_by": ranked_by})
    return out


def samples_png(panels: Sequence[Dict[str, Any]], methods: Sequence[str]) -> bytes:
    """Fig. 6 style grid: a row per sample frame; the frame, then each method's TP/FP/FN overlay."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    from ..overlay import FN_COLOR, FP_COLOR, TP_COLOR

    ncol = 1 + len(methods)
    nrow = max(1, len(panels))
    cell = 2.9
    fig, axes = plt.subplots(nrow, ncol, figsize=(cell * ncol, cell * nrow + 0.6), squeeze=False)
    for i, p in enumerate(panels):
        axes[i][0].imshow(p["frame_rgb"], interpolation="lanczos")
        axes[i][0].set_title(f"{p['dataset']} {p['fov']}: {p['kind']}\n{p['frame']}", fontsize=8)
        for j, m in enumerate(methods, start=1):
            ax = axes[i][j]
            if m in p["overlays"]:
                rgb, rec = p["overlays"][m]
                ax.imshow(rgb, interpolation="lanczos")
                ax.set_title(f"{m}: DSC {_fmt(rec['dice'], 2)}  P {_fmt(rec['precision'], 2)}  "
                             f"R {_fmt(rec['recall'], 2)}", fontsize=8)
            else:
                ax.text(0.5, 0.5, "not evaluated", ha="center", va="center", transform=ax.transAxes)
    for row in axes:
        for ax in row:
            ax.set_xticks([])
            ax.set_yticks([])
    if not panels:
        axes[0][0].text(0.5, 0.5, "no frame with a non-empty ground truth", ha="center", va="center",
                        transform=axes[0][0].transAxes)
    handles = [Patch(facecolor=np.array(c) / 255.0, label=lab) for c, lab in
               ((TP_COLOR, "true positive"), (FP_COLOR, "false positive"), (FN_COLOR, "false negative"))]
    fig.legend(handles=handles, loc="upper center", ncol=3, frameon=False, fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.45 / (cell * nrow + 0.6)))
    return figure_png(fig, dpi=100)


# ---------------------------------------------------------------------------------------------
# the evaluation
# ---------------------------------------------------------------------------------------------
def _check_no_overlap(train: Sequence[FrameRef], evaluated: Sequence[FrameRef]) -> None:
    keys = {f.key for f in evaluated}
    same = [f for f in train if f.key in keys]
    if same:
        raise InputError(f"--frangi-train overlaps the evaluated data ({len(same)} frame(s), e.g. {same[0].image.name} "
                         f"frame {same[0].frame}): the Frangi threshold must not be tuned on test frames")
    patients = {f.patient for f in evaluated}
    shared = sorted({f.patient for f in train if f.patient in patients})
    if shared:
        raise InputError(f"--frangi-train shares patient(s) with the evaluated data ({', '.join(shared[:3])}): "
                         "the Frangi threshold must be chosen on other patients")


def _bar(total: int, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="frame", file=sys.stderr, disable=None, leave=False)


def pool_members(datasets: Sequence[DataSet], label: str) -> List[str]:
    """The labels of the case indices that ``--pool label`` puts together (InputError: fewer than two,
    or ``label`` already a data set's)."""
    members = [d.label for d in datasets if d.kind == CASE_INDEX]
    if len(members) < 2:
        raise InputError(f"--pool needs at least two case indices among --data (got {len(members)})")
    if label in {d.label for d in datasets}:
        raise InputError(f"--pool label {label!r} is already a data set's label")
    from ..synthetic.phantom import check_one_version

    check_one_version({d.label: d.info.get("phantom_version") for d in datasets if d.kind == CASE_INDEX},
                      f"--pool {label}")
    return members


def pooled_records(records: Sequence[Dict[str, Any]], datasets: Sequence[DataSet], label: str) -> List[Dict[str, Any]]:
    """The records of every case index, relabelled ``label``: one data set of all their patients (e.g.
    every held-out phantom patient, for a goal that a few patients cannot decide). Each patient is
    renamed ``<data set>:<patient>``: two indices' P000 are two patients, each drawn whole by the
    bootstrap."""
    members = set(pool_members(datasets, label))
    return [dict(r, dataset=label, patient=f"{r['dataset']}:{r['patient']}") for r in records
            if r["dataset"] in members]


def evaluate_seg(datasets: Sequence[DataSet], *, model: str = "segmentation", device=None,
                 frangi_train: Sequence[DataSet] = (), frangi_max_frames: Optional[int] = None,
                 frangi_sigma_sets: Sequence[Sequence[float]] = FRANGI_SIGMA_SETS,
                 models_directory=None, progress: bool = True, workers: int = 1,
                 pool: Optional[str] = None) -> Dict[str, Any]:
    """Evaluate DRU-Net and the Frangi baseline on ``datasets`` (their frames as given). ``pool``: the
    label of extra table rows over the case indices' frames together (``pooled_records``).

    Returns ``{"records": per-frame dicts, "table": rows, "samples": panels, "frangi": ..., "model":
    ..., "warnings": [...]}``; nothing is written (see ``run_evaluate_seg``).
    """
    warnings: List[str] = []
    t0 = time.perf_counter()
    model_info, dev = _segmentation_model(model, device, models_directory)  # fails fast: no model installed
    evaluated = [f for d in datasets for f in d.frames]
    reader = FrameReader()

    frangi: Dict[str, Any] = {"evaluated": False, "black_ridges": True,
                              "candidate_sigma_sets_px_at_256": [list(s) for s in frangi_sigma_sets],
                              "candidate_thresholds": "logspace(-5, 0, 101)",
                              "image": "segmentation.preprocess (percentile normalisation, 256 x 256)"}
    if frangi_train:
        frangi.update(_train_frangi(datasets, evaluated, reader, frangi_train, frangi_max_frames, frangi_sigma_sets,
                                    progress, workers))
    else:
        warnings.append("no --frangi-train given: the Frangi baseline is not evaluated (its threshold must be "
                        "chosen on training data, never on the test data)")

    t2 = time.perf_counter()
    records, models_used = _evaluate_frames(evaluated, reader, frangi, model, dev, models_directory, progress,
                                            warnings)
    eval_seconds = time.perf_counter() - t2
    model_info["models_used"] = sorted(str(m) for m in models_used)

    order = [d.label for d in datasets]
    table = summarise(records, order)
    kinds = {d.label: d.kind for d in datasets}
    if pool:
        table += summarise(pooled_records(records, datasets, pool), [pool])
        kinds[pool] = CASE_INDEX
    by_stage = summarise(records, order, by_stage=True) if any(f.stage for f in evaluated) else []
    goals = check_goals(records, table, kinds)
    methods = [m for m in METHODS if any(r["method"] == m for r in records)]
    panels = _sample_panels(records, order, evaluated, methods, reader, frangi, model, dev, models_directory)

    return {"records": records, "table": table, "by_stage": by_stage, "goals": goals, "samples": panels, "methods": methods, "order": order,
            "frangi": frangi, "model": model_info, "warnings": warnings,
            "seconds": {"total": round(time.perf_counter() - t0, 1), "evaluation": round(eval_seconds, 1),
                        "per_frame_all_methods": round(eval_seconds / max(1, len(evaluated)), 3)}}


def _segmentation_model(model: str, device, models_directory) -> Tuple[Dict[str, Any], Any]:
    """``(what summary.json says of the DRU-Net model, the torch device)``; InputError when no model
    is installed."""
    from ..segmentation import get_model, threshold_for

    _module, entry, dev = get_model(model, device, None, models_directory)
    model_info = {"name": entry["name"] if entry else None, "sha256": (entry or {}).get("sha256"),
                  "file": (entry or {}).get("file"),
                  "thresholds": {f: threshold_for(entry, f) for f in FOVS + (UNKNOWN_FOV,)}, "device": str(dev)}
    return model_info, dev


def _train_frangi(datasets: Sequence[DataSet], evaluated: Sequence[FrameRef], reader: FrameReader,
                  frangi_train: Sequence[DataSet], frangi_max_frames: Optional[int],
                  frangi_sigma_sets: Sequence[Sequence[float]], progress: bool, workers: int) -> Dict[str, Any]:
    """The Frangi parameters chosen on ``frangi_train`` (``choose_frangi_thresholds``) and, per
    evaluated data set and FoV, the ones it uses with the training data they come from: the
    ``frangi`` entries of ``evaluate_seg``'s result. InputError when the training data overlap the
    evaluated data."""
    train_frames: List[FrameRef] = []
    sources = []
    for d in frangi_train:
        fr = subsample(d.frames, frangi_max_frames)
        _check_no_overlap(fr, evaluated)
        train_frames.extend(fr)
        sources.append({"path": str(d.path), "label": d.label, "kind": d.kind,
                        "split_used": d.info.get("split_used", "all pairs"), "frames": len(fr)})
    t1 = time.perf_counter()
    with _bar(len(train_frames), "Frangi threshold (train)") as bar:
        chosen = choose_frangi_thresholds(train_frames, reader, frangi_sigma_sets,
                                          progress=(lambda: bar.update(1)) if progress else None,
                                          workers=workers)
    fam_labels: Dict[str, List[str]] = {}
    for d, src in zip(frangi_train, sources):
        for fam in sorted({f.family for f in d.frames}):
            fam_labels.setdefault(fam, []).append(f"{d.label} ({src['split_used']})")
    params: Dict[str, Dict[str, Any]] = {}
    for d in datasets:
        for fov in sorted({f.fov for f in d.frames}, key=FOVS.index):
            fams = sorted({f.family for f in d.frames})
            p, how = frangi_params_for(chosen, fams[0] if len(fams) == 1 else "", fov)
            trained_on = (", ".join(fam_labels.get(fams[0], [])) if how == "same data set"
                          else "every --frangi-train source")
            params.setdefault(d.label, {})[fov] = dict(p, chosen_on=f"{how}: {trained_on}, {fov} FoV")
    return {"evaluated": True, "params": params,
            "pooled_per_fov": {"thresholds": chosen["thresholds"], "sigmas": chosen["sigmas"],
                               "per_fov": chosen["per_fov"]},
            "per_training_data_set": {", ".join(fam_labels.get(k, [k])): v for k, v in chosen["per_family"].items()},
            "training": sources, "seconds": round(time.perf_counter() - t1, 1)}


def _evaluate_frames(evaluated: Sequence[FrameRef], reader: FrameReader, frangi: Dict[str, Any], model: str, dev,
                     models_directory, progress: bool, warnings: List[str]) -> Tuple[List[Dict[str, Any]], set]:
    """``(per-frame records, the DRU-Net models used)``: DRU-Net, and Frangi when trained, on every
    evaluated frame; the segmentation's warnings are added to ``warnings`` once each."""
    from ..segmentation import segment_frame

    records: List[Dict[str, Any]] = []
    models_used: set = set()
    with _bar(len(evaluated), "evaluate") as bar:
        for ref in evaluated:
            image, truth = reader.read(ref)
            seg = segment_frame(image, fov=ref.drunet_fov, model=model, device=dev,
                                models_directory=models_directory)
            models_used.add(seg.model_name)
            for w in seg.warnings:
                if w not in warnings:
                    warnings.append(w)
            records.append(frame_record(ref, METHOD_DRUNET, seg.mask, truth, seg.threshold))
            if frangi["evaluated"]:
                p = frangi["params"][ref.dataset][ref.fov]
                th, sig = p["threshold"], p["sigmas"]
                rec = frame_record(ref, METHOD_FRANGI, frangi_segment(image, th, sig), truth, th)
                rec["sigmas"] = sigma_label(sig)
                records.append(rec)
            if progress:
                bar.update(1)
    return records, models_used


def _sample_panels(records: Sequence[Dict[str, Any]], order: Sequence[str], evaluated: Sequence[FrameRef],
                   methods: Sequence[str], reader: FrameReader, frangi: Dict[str, Any], model: str, dev,
                   models_directory) -> List[Dict[str, Any]]:
    """The sample pictures (``pick_samples``): each picked frame as a thumbnail and each method's
    TP/FP/FN overlay with its record. The frames are read and segmented again (cheaper than keeping
    every frame in memory)."""
    from ..overlay import display_frame, overlay_rgb
    from ..segmentation import segment_frame

    by_name = {(f.dataset, f.name): f for f in evaluated}
    rec_index = {(r["dataset"], r["frame"], r["method"]): r for r in records}
    panels = []
    for pick in pick_samples(records, order):
        ref = by_name[(pick["dataset"], pick["frame"])]
        image, truth = reader.read(ref)
        grey = display_frame(image)
        panel = dict(pick, frame_rgb=_thumb(np.repeat(grey[..., None], 3, axis=2)), overlays={})
        for m in methods:
            if m == METHOD_DRUNET:
                mask = segment_frame(image, fov=ref.drunet_fov, model=model, device=dev,
                                     models_directory=models_directory).mask
            else:
                p = frangi["params"][ref.dataset][ref.fov]
                mask = frangi_segment(image, p["threshold"], p["sigmas"])
            rgb = overlay_rgb(grey, mask, reference=truth, mode="fill", opacity=0.55)
            panel["overlays"][m] = (_thumb(rgb), rec_index[(ref.dataset, ref.name, m)])
        panels.append(panel)
    return panels


RULES = [
    "Only rows with split == 'test' of a case index are evaluated (held-out patients; --split chooses another "
    "split or all rows); image-mask folders are evaluated whole (FoV upper in the tables).",
    "Frames with an empty ground-truth mask are excluded from every median (Dice is trivially 1 or 0 there, recall "
    "undefined) and counted as 'empty GT' (in brackets: how many of them the method left empty).",
    "Precision is undefined where a method predicts nothing: such frames are left out of the precision median "
    "only ('no prediction'); their Dice and recall (0) count.",
    "DRU-Net: the installed network's per-FoV probability threshold (chosen on its validation split); an image "
    "folder's PNGs, which carry no DICOM header, at its threshold for images of unknown FoV, as `tavireg segment` "
    "segments them. Frangi: "
    "skimage frangi, black ridges, on the network's 256 x 256 pre-processed image, response resized to the "
    "frame's size; scale set and threshold maximising the median Dice on --frangi-train training data only "
    "(never on the evaluated data): that of the same data set and FoV when given (the index's train rows; "
    "angios40/train for angios40/test), else all training data of the FoV.",
    "Metrics at each frame's own size.",
    "By procedure stage (case indices with a 'stage' column: the phantom's upper-FoV series, wire / crimped / "
    "deploying / deployed): the same figures per stage, in by_stage.csv, by_stage.png and the last table of "
    "table.md.",
    f"{100 * CI_LEVEL:g} % CI of a median DSC: percentile bootstrap over patients ({BOOTSTRAP_RESAMPLES} resamples, "
    f"seed {BOOTSTRAP_SEED}): each resample draws as many patients as there are, with replacement, with all their "
    "frames (frames of one patient are not independent; an angios40 image is its own patient). With few patients "
    "the interval is wide or degenerate: it says how far the data can carry a claim, not more.",
]
