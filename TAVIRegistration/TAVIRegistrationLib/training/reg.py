"""``tavireg train-reg``: training, checkpoints, validation and TorchScript export of the registration CNN.

Training needs no ground-truth transform: a pair's moving image is warped by the predicted affine
through a bilinear spatial-transformer layer (``registration.pair_loss``) and the loss is 1 - soft
Dice against the fixed image (inside the warped ROI, averaged over a small blur pyramid; see
``registration.pair_loss``). The ground-truth affine of synthetic pairs is only *logged* (corner
error on validation pairs), never used by the loss or by model selection.

Data (``--data``, repeatable):

* a folder of vessel masks: ``*_gt.png`` files when there are any (angios40 layout), else every
  ``*.png``; 0/255 (any non-zero = vessel). Each mask is its own patient. Moving image = the mask
  inside an ROI; fixed image = the whole mask warped by a random affine and corrupted like a
  DRU-Net output (below).
* ``synthetic:COUNT``: COUNT random vessel trees (``synthetic_vessel_mask``), made from ``--seed``;
  the same use as a folder (for tests and smoke runs; no files needed).
* a phantom case index CSV (columns ``patient, split, fov, image, frame, mask, projection_true,
  projection_nominal``, paths relative to the CSV; ``test`` rows are never read): moving = the
  nominal projection (PNG) inside an ROI (the optional column ``roi`` = ``X,Y,W,H``, else the ROI
  a user would draw around the contrast-filled vessels, ``phantom.opacified_roi``, as ``tavireg
  evaluate reg`` uses; else ``roi.bounding_roi`` of the nominal projection); fixed = ``mask`` (the opacified ground
  truth), or with probability 0.5 the optional column ``segmentation`` (a DRU-Net output PNG) when
  present; the true projection is kept for monitoring (``val_dice_clean``). A random affine is
  applied on top (augmentation; its ground truth composed with the phantom's unknown
  misregistration is only approximately affine: the corner error logged for these rows uses the
  CSV's ``affine`` column, the phantom's least-squares nominal -> true affine, when present).

Pair generation (``make_pair``; every number random from a numpy generator seeded by
(seed, epoch, rank, batch), so a resumed run repeats an uninterrupted one): left-right flip
(p = 0.5); ROI = the default one (p = 1 - ``--sub-roi``) or a random sub-box of 45-100 % of its
sides that holds vessel, as a user would draw; the registration window of ``registration``
(``--margin``); a random affine about the window centre (rotation +-``--max-rotation`` deg, scale
``--scale-range`` (log-uniform), shear +-``--max-shear``, shift +-``--max-shift`` of the window per
axis), the fixed image taken from a window twice as large so that vessels move in from outside;
then (p = ``--corrupt``) DRU-Net-like corruption of the fixed mask: dropped vessel segments,
dilation or erosion, catheter/guide-wire-like false tubes, speckle, and rarely a whole side missing
(contrast in one limb only).

Validation: ``--val-fraction`` of the patients or fold ``--val-fold K/N`` (``training.split_patients``),
``--val-pairs`` fixed random pairs each (seeded, the same every epoch), evaluated before training
(the identity network) and after every epoch: medians of Dice / precision / recall of the warped
moving image against the fixed one inside the warped ROI (``val_dice`` ...: what a user can
observe), Dice against the clean (uncorrupted) fixed image (``val_dice_clean``), and the mean and
median error of the ROI corners in frame pixels where the ground truth is known (logged only).
``best.pt`` is chosen on the median Dice against the fixed images (no ground truth).

Optimisation: AdamW with a cosine decay (``training.lr_at``); the last (affine) layer learns at
``HEAD_LR_UNITS / fc`` of the rate without weight decay (at the body's rate one Adam step would
move the predicted affine by ~0.5); gradient norm clipped at ``GRAD_CLIP``. The loss adds
``registration.affine_prior``: ``SCALE_WEIGHT`` times the squared log of the scale (the
magnification is known), and zero for other plausible changes (scale within 1.5x, anisotropy 1.3,
shift within 40 % of the window), which keeps training out of degenerate shrink-onto-a-blob
solutions; it uses no ground truth.

The training run is ``training``'s, shared with ``train-seg``: ``DIR/last.pt`` / ``best.pt`` /
``history.json`` written atomically, ``--resume``, ``--max-minutes`` / ``--stop-epoch``, tqdm
progress, torchrun/DDP (batch norm synchronised on GPUs; ``--batch-size`` is global; rank 0
validates, checkpoints and exports), deterministic algorithms, TorchScript export with a manifest
entry (kind ``registration``) with the exact command and the validation metrics.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import InputError
from ..registration import DEFAULT_MARGIN, NET_SIZE, Window, box_window, crop_window, registration_window
from ..outputs import read_mask_png
from ..synthetic.phantom import opacified_roi
from .common import TrainingConfig, TrainingRun, finite_median, natural_key, read_case_index

CHECKPOINT_KIND = "train-reg"
_CSV_COLUMNS = ("patient", "split", "image", "mask", "projection_true", "projection_nominal")
_SYNTH_RE = re.compile(r"^synthetic:(\d+)$")
#: what must agree between a checkpoint and the run that resumes it
RESUME_KEYS = ("width", "fc", "size", "seed", "batch_size", "pairs_per_epoch", "margin", "pool_after", "sub_roi",
               "corrupt", "max_rotation", "max_shear", "max_shift")
#: learning-rate factor of the last (affine) layer is HEAD_LR_UNITS / fc: Adam moves every weight by
#: ~lr per step and each of the 6 outputs sums fc (1024) of them, so at the body's rate the predicted
#: affine would jump by ~0.5 per step; this keeps its step the same for any fc
HEAD_LR_UNITS = 20.0
GRAD_CLIP = 1.0
#: what the manifest says about where the network departs from the paper's Fig. 4
DEVIATIONS = (
    "2x2 max-pooling after convolutions {pool} (the paper: every other layer from the third, i.e. "
    "3, 5, 7, 9, which keeps three convolutions at the input's size: {paper:.2f} G multiply-adds "
    "against {ours:.2f} G at this width and input size); "
    "{pbf}; loss: 1 - soft Dice inside the warped ROI averaged over a 4-level blur pyramid (the "
    "paper: 1 - Dice over the image)"
)


# ---------------------------------------------------------------------------------------------
# configuration
# ---------------------------------------------------------------------------------------------
@dataclass
class RegTrainConfig(TrainingConfig):
    epochs: int = 30
    lr: float = 3e-4
    size: int = NET_SIZE
    pairs_per_epoch: int = 256
    width: float = 1.0
    fc: int = 1024
    #: 1-based convolutions followed by 2x2 max-pooling; None: ``regnet.POOL_AFTER`` (the paper's: 3, 5, 7, 9)
    pool_after: Optional[Tuple[int, ...]] = None
    margin: float = DEFAULT_MARGIN
    val_pairs: int = 4
    sub_roi: float = 0.5
    corrupt: float = 0.8
    max_rotation: float = 10.0
    scale_range: Tuple[float, float] = (0.85, 1.15)
    max_shear: float = 0.05
    max_shift: float = 0.2
    #: phantom frames segmented by the installed DRU-Net become the fixed image of half the pairs
    segment_fixed: bool = False

    SUBCOMMAND = "train-reg"
    COMMAND_OPTIONS = ("epochs", "batch_size", "pairs_per_epoch", "lr", "weight_decay", "seed", "size", "width", "fc",
                       "pool_after", "margin", "val_fraction", "val_pairs", "sub_roi", "corrupt", "max_rotation",
                       "scale_range", "max_shear", "max_shift")

    def __post_init__(self) -> None:
        if self.pool_after is None:
            from ..networks.regnet import POOL_AFTER

            self.pool_after = tuple(POOL_AFTER)
        self.pool_after = tuple(int(p) for p in self.pool_after)

    def check(self) -> None:
        from ..networks.regnet import CHANNELS

        if not self.data:
            raise InputError("train-reg needs at least one --data folder, case index CSV or synthetic:COUNT")
        super().check()
        for name, v, lo in (("--pairs-per-epoch", self.pairs_per_epoch, 1), ("--val-pairs", self.val_pairs, 1),
                            ("--fc", self.fc, 1)):
            if int(v) < lo:
                raise InputError(f"{name} must be >= {lo}, got {v}")
        if not 0.05 <= self.width <= 4:
            raise InputError(f"--width must lie in 0.05-4, got {self.width}")
        if not self.pool_after or len(set(self.pool_after)) != len(self.pool_after) or not all(
                1 <= p <= len(CHANNELS) for p in self.pool_after):
            raise InputError(f"--pool-after must list distinct convolutions 1-{len(CHANNELS)}, got "
                             f"{','.join(str(p) for p in self.pool_after) or 'nothing'}")
        mult = 2 ** len(self.pool_after)
        if self.size < 2 * mult or self.size % mult:
            raise InputError(f"--size must be a multiple of {mult}, at least {2 * mult}, got {self.size}")
        if not 0.0 <= self.margin <= 1.0:
            raise InputError(f"--margin must lie in [0, 1], got {self.margin}")
        for name, v in (("--sub-roi", self.sub_roi), ("--corrupt", self.corrupt)):
            if not 0.0 <= v <= 1.0:
                raise InputError(f"{name} must lie in [0, 1], got {v}")
        lo, hi = self.scale_range
        if not 0.3 <= lo <= 1.0 <= hi <= 3.0:
            raise InputError(f"--scale-range must be LO,HI with 0.3 <= LO <= 1 <= HI <= 3, got {lo},{hi}")
        if not (0 <= self.max_rotation <= 90 and 0 <= self.max_shear <= 0.5 and 0 <= self.max_shift <= 0.5):
            raise InputError("--max-rotation must lie in 0-90, --max-shear in 0-0.5, --max-shift in 0-0.5")

    def command_flags(self) -> List[str]:
        return ["--segment-fixed"] if self.segment_fixed else []


def build_model(config):
    """The RegNet of a configuration (identity output)."""
    from ..networks.regnet import RegNet, scaled_channels

    return RegNet(in_size=config.size, fc=config.fc, pool_before_fc=True, channels=scaled_channels(config.width),
                  pool_after=config.pool_after)


# ---------------------------------------------------------------------------------------------
# synthetic vessel-like masks and tubes
# ---------------------------------------------------------------------------------------------
def _bezier(p0, p1, p2, n: int) -> np.ndarray:
    t = np.linspace(0.0, 1.0, n)[:, None]
    return (1 - t) ** 2 * np.asarray(p0, float) + 2 * (1 - t) * t * np.asarray(p1, float) + t ** 2 * np.asarray(p2, float)


def rasterise_tubes(shape: Sequence[int], curves: Sequence[Tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """uint8 0/1 mask of tubes: each curve is ((n, 2) points (x, y), (n,) radii in pixels)."""
    from scipy import ndimage

    rows, cols = int(shape[0]), int(shape[1])
    radius = np.zeros((rows, cols), np.float32)
    centre = np.zeros((rows, cols), bool)
    for pts, rad in curves:
        pts = np.asarray(pts, float)
        rad = np.broadcast_to(np.asarray(rad, float), (len(pts),))
        c = np.round(pts[:, 0]).astype(int)
        r = np.round(pts[:, 1]).astype(int)
        ok = (c >= 0) & (c < cols) & (r >= 0) & (r < rows)
        np.maximum.at(radius, (r[ok], c[ok]), rad[ok].astype(np.float32))
        centre[r[ok], c[ok]] = True
    if not centre.any():
        return np.zeros((rows, cols), np.uint8)
    dist, (ir, ic) = ndimage.distance_transform_edt(~centre, return_indices=True)
    return (dist <= np.maximum(radius[ir, ic], 0.5)).astype(np.uint8)


def synthetic_vessel_mask(shape: Sequence[int], rng: np.random.Generator) -> np.ndarray:
    """A random vessel-like tree (uint8 0/1): a thick curved trunk in any orientation and 2-5
    thinner branches, some with a sub-branch; sizes relative to the shape."""
    rows, cols = int(shape[0]), int(shape[1])
    side = float(min(rows, cols))
    curves = []
    centre = np.array([cols, rows], float) / 2 + rng.uniform(-0.1, 0.1, 2) * side
    phi = rng.uniform(0, 2 * np.pi)  # any orientation: a trunk along one axis leaves a shift along it ill-posed
    half = rng.uniform(0.3, 0.45) * side * np.array([np.cos(phi), np.sin(phi)])
    p0, p2 = centre - half, centre + half
    p1 = (p0 + p2) / 2 + rng.uniform(-0.25, 0.25, 2) * side
    n = int(2 * (rows + cols))
    trunk = _bezier(p0, p1, p2, n)
    r0 = rng.uniform(0.025, 0.06) * side
    taper = np.linspace(1.0, rng.uniform(0.5, 1.0), n)
    curves.append((trunk, r0 * taper))
    for _ in range(int(rng.integers(2, 6))):
        i = int(rng.integers(n // 10, n - n // 10))
        start = trunk[i]
        direction = rng.normal(size=2)
        direction /= np.linalg.norm(direction) + 1e-9
        length = rng.uniform(0.2, 0.55) * side
        end = start + direction * length
        mid = (start + end) / 2 + rng.normal(size=2) * 0.1 * side
        branch = _bezier(start, mid, end, n // 2)
        rb = r0 * rng.uniform(0.25, 0.6) * np.linspace(1.0, 0.6, len(branch))
        curves.append((branch, rb))
        if rng.random() < 0.5:
            j = int(rng.integers(len(branch) // 4, len(branch)))
            d2 = rng.normal(size=2)
            e2 = branch[j] + d2 / (np.linalg.norm(d2) + 1e-9) * rng.uniform(0.1, 0.3) * side
            sub = _bezier(branch[j], (branch[j] + e2) / 2 + rng.normal(size=2) * 0.05 * side, e2, n // 4)
            curves.append((sub, rb[j] * 0.7 * np.ones(len(sub))))
    return rasterise_tubes((rows, cols), curves)


def corrupt_like_segmentation(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A DRU-Net-like imperfect copy of a vessel mask (uint8 0/1, same shape).

    Each with its own probability: dropped vessel segments (discs cut out along the vessels),
    dilation or erosion by one or two pixels, catheter/guide-wire-like false tubes (thin curves and
    loops), speckle (small blobs), and rarely a whole side missing (contrast in one limb only).
    """
    from scipy import ndimage

    m = np.asarray(mask) > 0
    rows, cols = m.shape
    side = float(min(rows, cols))
    out = m.copy()
    if rng.random() < 0.6 and m.any():  # dropped segments
        rr, cc = np.nonzero(m)
        yy, xx = np.mgrid[0:rows, 0:cols]
        for _ in range(int(rng.integers(1, 5))):
            k = int(rng.integers(len(rr)))
            rad = rng.uniform(0.02, 0.08) * side
            out &= (yy - rr[k]) ** 2 + (xx - cc[k]) ** 2 > rad * rad
    u = rng.random()
    if u < 0.25:
        out = ndimage.binary_dilation(out, iterations=int(rng.integers(1, 3)))
    elif u < 0.45:
        eroded = ndimage.binary_erosion(out, iterations=1)
        if eroded.sum() > 0.4 * out.sum():
            out = eroded
    if rng.random() < 0.6:  # false tubes: catheters, wires, sheath; a pacing-wire-like loop
        curves = []
        for _ in range(int(rng.integers(1, 4))):
            p0 = rng.uniform(0, 1, 2) * [cols, rows]
            p2 = rng.uniform(0, 1, 2) * [cols, rows]
            p1 = rng.uniform(-0.2, 1.2, 2) * [cols, rows]
            curves.append((_bezier(p0, p1, p2, int(2 * (rows + cols))), rng.uniform(0.6, 2.0) * side / 256))
        if rng.random() < 0.3:
            c = rng.uniform(0.2, 0.8, 2) * [cols, rows]
            a = np.linspace(0, rng.uniform(1.2, 2.0) * np.pi, 400) + rng.uniform(0, 2 * np.pi)
            rad = rng.uniform(0.05, 0.15) * side
            curves.append((np.c_[c[0] + rad * np.cos(a), c[1] + rad * np.sin(a)], 1.0 * side / 256))
        out |= rasterise_tubes((rows, cols), curves) > 0
    if rng.random() < 0.5:  # speckle
        noise = ndimage.gaussian_filter(rng.standard_normal((rows, cols)), rng.uniform(1.0, 2.5))
        thr = np.quantile(noise, 1 - rng.uniform(0.001, 0.006))
        out |= noise > thr
    if rng.random() < 0.1:  # one side without contrast
        yy, xx = np.mgrid[0:rows, 0:cols]
        a = rng.uniform(0, 2 * np.pi)
        d = (xx - cols / 2) * np.cos(a) + (yy - rows / 2) * np.sin(a)
        out &= d < rng.uniform(0.1, 0.4) * side
    return out.astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------
@dataclass
class RegSample:
    """One source of pairs: frame-grid masks (bit-packed) and the default ROI (x, y, w, h)."""

    shape: Tuple[int, int]
    moving: np.ndarray  # packed bits: the projection (or vessel mask) the ROI is drawn on
    fixed: np.ndarray  # packed bits: the frame's vessel mask (ground truth)
    truth: Optional[np.ndarray]  # packed bits: the true projection (phantom), None = same as fixed
    segmentation: Optional[np.ndarray]  # packed bits: a DRU-Net output (phantom), optional
    roi: Tuple[int, int, int, int]
    patient: str
    source: str
    split: str = ""
    name: str = ""
    #: 3x3 frame affine moving -> fixed (identity for a mask used as both; the phantom's
    #: least-squares nominal -> true affine; None = unknown). Monitoring only, never the loss.
    affine: Optional[np.ndarray] = None

    def unpack(self, which: str) -> Optional[np.ndarray]:
        packed = getattr(self, which)
        if packed is None:
            return None
        n = self.shape[0] * self.shape[1]
        return np.unpackbits(packed, count=n).reshape(self.shape)


def _pack(mask: np.ndarray) -> np.ndarray:
    return np.packbits((np.asarray(mask) > 0).ravel())


def _default_roi(mask: np.ndarray) -> Tuple[int, int, int, int]:
    from ..roi import bounding_roi

    roi = bounding_roi(mask, margin=0.1, min_size=32)
    if roi is None:
        raise InputError("empty mask")
    return roi


def _mask_sample(mask: np.ndarray, patient: str, source: str, name: str) -> RegSample:
    m = (np.asarray(mask) > 0).astype(np.uint8)
    p = _pack(m)
    return RegSample(m.shape, p, p, None, None, _default_roi(m), patient, source, "", name, np.eye(3))


def load_mask_folder(folder: Path) -> List[RegSample]:
    """``*_gt.png`` masks (else every ``*.png``) of a folder; each mask is its own patient."""
    files = sorted(folder.glob("*_gt.png")) or sorted(folder.glob("*.png"))
    if not files:
        raise InputError(f"{folder} holds no PNG masks (*_gt.png or *.png)")
    out = []
    for f in sorted(files, key=lambda p: natural_key(p.stem)):
        m = read_mask_png(f)
        if m.sum() < 20:
            continue  # an empty mask gives no pair
        out.append(_mask_sample(m, f"{folder.name}:{f.stem}", str(folder), f.name))
    if not out:
        raise InputError(f"every mask in {folder} is empty")
    return out


def synthetic_samples(count: int, seed: int, shape: Tuple[int, int] = (256, 256)) -> List[RegSample]:
    rng = np.random.default_rng([int(seed), 7919])
    return [_mask_sample(synthetic_vessel_mask(shape, rng), f"synthetic:{i}", f"synthetic:{count}", f"tree{i}")
            for i in range(int(count))]


def _parse_roi_text(text: str, where: str) -> Tuple[int, int, int, int]:
    try:
        vals = [int(round(float(v))) for v in text.replace(" ", "").split(",")]
    except ValueError:
        vals = []
    if len(vals) != 4 or vals[2] <= 0 or vals[3] <= 0:
        raise InputError(f"{where}: roi must be X,Y,W,H with positive W and H, got {text!r}")
    return tuple(vals)  # type: ignore[return-value]


def _parse_affine(text: Optional[str]) -> Optional[np.ndarray]:
    """The phantom's ``affine`` column (JSON 3x3, nominal projection px -> true frame px), or None."""
    if not text:
        return None
    try:
        a = np.asarray(json.loads(text), float)
    except (ValueError, TypeError):
        return None
    if a.shape != (3, 3) or not np.all(np.isfinite(a)) or abs(np.linalg.det(a[:2, :2])) < 1e-9:
        return None
    return a


def load_phantom_index(csv_path: Path, segment_cache: Optional[Path] = None,
                       progress: bool = False) -> Tuple[List[RegSample], int]:
    """Rows of a phantom case index (not the ``test`` ones); returns (samples, test rows skipped).

    With ``segment_cache`` (a folder), rows without a ``segmentation`` column get one: the frame
    segmented by the installed DRU-Net (``segmentation.segment_frame``, the row's FoV), read from
    or written to ``segment_cache`` as ``<patient>_<series>_f<frame>.png``."""
    rows, skipped = read_case_index(csv_path, _CSV_COLUMNS,
                                    " (train-reg needs the phantom's projection_true and projection_nominal)")
    base = csv_path.parent
    out: List[RegSample] = []
    series_cache: Dict[str, Any] = {}
    items = rows
    if segment_cache is not None and progress:
        from tqdm import tqdm

        items = tqdm(rows, desc=f"DRU-Net segmentations ({segment_cache})", unit="frame", leave=False)
    for row in items:
        r = row.values
        nominal = read_mask_png(base / r["projection_nominal"])
        shape = nominal.shape
        mask = read_mask_png(base / r["mask"], shape)
        truth = read_mask_png(base / r["projection_true"], shape)
        if r.get("segmentation"):
            seg = read_mask_png(base / r["segmentation"], shape)
        elif segment_cache is not None:
            seg = _cached_segmentation(base, r, row.patient, segment_cache, series_cache, shape)
        else:
            seg = None
        if nominal.sum() < 20 or mask.sum() < 20:
            continue
        affine = _parse_affine(r.get("affine"))
        if r.get("roi"):
            roi = _parse_roi_text(r["roi"], f"{csv_path.name} line {row.line}")
        else:
            roi = (opacified_roi(mask, nominal, affine) if affine is not None else None) or _default_roi(nominal)
        out.append(RegSample(shape, _pack(nominal), _pack(mask), _pack(truth),
                             _pack(seg) if seg is not None else None, roi, row.patient, str(csv_path),
                             row.split, f"{r['mask']}", affine))
    return out, skipped


def _cached_segmentation(base: Path, r: Dict[str, str], patient: str, cache: Path, series_cache: Dict[str, Any],
                         shape: Tuple[int, int]) -> np.ndarray:
    from ..fluoro import read_fluoro
    from ..outputs import OutputSet, mask_png_writer
    from ..segmentation import segment_frame

    frame = int(r.get("frame") or 0)
    name = f"{patient}_{Path(r.get('series') or r['image']).stem}_f{frame:03d}.png"
    path = cache / re.sub(r"[^A-Za-z0-9._-]", "_", name)
    if path.is_file():
        return read_mask_png(path, shape, "cached segmentation")
    image = r["image"]
    if image not in series_cache:
        series_cache.clear()  # one series in memory
        series_cache[image] = read_fluoro(base / image)
    series = series_cache[image]
    seg = segment_frame(series.frame(frame), fov=r.get("fov") or "auto").mask
    if seg.shape != tuple(shape):
        raise InputError(f"{image} frame {frame}: {seg.shape} pixels, its masks {tuple(shape)}")
    with OutputSet() as outs:
        outs.add(path, mask_png_writer(seg))
    return seg


def _segmentation_model_key() -> str:
    """``<name>-<sha256[:12]>`` of the installed default segmentation network (InputError if none)."""
    from ..networks.weights import find_entry

    entry = find_entry("segmentation")
    return f"{entry['name']}-{str(entry['sha256'])[:12]}"


def load_data(config: RegTrainConfig) -> Tuple[List[RegSample], List[Dict[str, Any]]]:
    from ..synthetic.phantom import case_index_version, check_one_version

    samples: List[RegSample] = []
    described = []
    for d in config.data:
        m = _SYNTH_RE.match(str(d))
        path = Path(d)
        if m:
            s = synthetic_samples(int(m.group(1)), config.seed)
            described.append({"path": str(d), "kind": "synthetic vessel trees", "test_rows_skipped": 0})
        elif path.is_dir():
            s = load_mask_folder(path)
            described.append({"path": str(d), "kind": "mask folder", "test_rows_skipped": 0})
        elif path.is_file() and path.suffix.lower() == ".csv":
            cache = None
            if config.segment_fixed:
                cache = Path(config.out) / "segmentations" / _segmentation_model_key()
                cache.mkdir(parents=True, exist_ok=True)
            s, skipped = load_phantom_index(path, cache, config.progress)
            described.append({"path": str(d), "kind": "phantom case index", "test_rows_skipped": skipped,
                              "segmentation_fixed": None if cache is None else f"DRU-Net {cache.name}",
                              "phantom_version": case_index_version(path)})
        else:
            raise InputError(f"--data {d}: not a mask folder, a phantom case index .csv or synthetic:COUNT")
        if not s:
            raise InputError(f"--data {d} gives no training pairs")
        samples.extend(s)
    check_one_version({r["path"]: r["phantom_version"] for r in described if "phantom_version" in r}, "--data")
    return samples, described


# ---------------------------------------------------------------------------------------------
# pairs
# ---------------------------------------------------------------------------------------------
@dataclass
class Pair:
    moving: np.ndarray  # float32 (N, N), ROI-masked projection on the window
    fixed: np.ndarray  # float32 (N, N) 0/1, warped + corrupted
    clean: np.ndarray  # float32 (N, N) 0/1, warped truth without corruption (monitoring)
    roi_box: np.ndarray  # float32 (N, N)
    theta_gt: np.ndarray  # (2, 3) affine_grid theta that aligns moving with fixed (NaN = unknown)
    window: Window
    roi: Tuple[int, int, int, int]


def random_affine(rng: np.random.Generator, max_rotation: float, scale_range: Sequence[float], max_shear: float,
                  max_shift: float) -> np.ndarray:
    """3x3 forward map (moving -> fixed) in normalised window coordinates, about the window centre."""
    a = math.radians(rng.uniform(-max_rotation, max_rotation))
    s = math.exp(rng.uniform(math.log(scale_range[0]), math.log(scale_range[1])))
    sh = rng.uniform(-max_shear, max_shear)
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    lin = s * rot @ np.array([[1.0, sh], [0.0, 1.0]])
    t = rng.uniform(-2 * max_shift, 2 * max_shift, 2)  # a fraction of the window; the window spans 2
    g = np.eye(3)
    g[:2, :2] = lin
    g[:2, 2] = t
    return g


def _choose_roi(moving: np.ndarray, roi, rng: np.random.Generator, p_sub: float):
    x, y, w, h = roi
    if rng.random() < p_sub:
        total = int(moving[y:y + h, x:x + w].sum())
        for _ in range(6):
            ww = max(16, int(round(w * rng.uniform(0.45, 1.0))))
            hh = max(16, int(round(h * rng.uniform(0.45, 1.0))))
            ww, hh = min(ww, w), min(hh, h)
            xx = x + int(rng.integers(0, w - ww + 1))
            yy = y + int(rng.integers(0, h - hh + 1))
            if moving[yy:yy + hh, xx:xx + ww].sum() >= max(20, 0.1 * total):
                return (xx, yy, ww, hh)
    return tuple(int(v) for v in roi)


def make_pair(sample: RegSample, rng: np.random.Generator, config, size: Optional[int] = None) -> Pair:
    """One random (moving, fixed) pair of a sample (see the module docstring)."""
    import torch
    import torch.nn.functional as F

    n = int(size or config.size)
    moving = sample.unpack("moving")
    fixed_src = sample.unpack("fixed")
    if sample.segmentation is not None and rng.random() < 0.5:
        fixed_src = sample.unpack("segmentation")
    separate_truth = sample.truth is not None
    truth = sample.unpack("truth") if separate_truth else fixed_src
    roi = sample.roi
    known = sample.affine
    if rng.random() < 0.5:  # left-right flip of the whole case
        moving, fixed_src, truth = moving[:, ::-1], fixed_src[:, ::-1], truth[:, ::-1]
        roi = (sample.shape[1] - roi[0] - roi[2], roi[1], roi[2], roi[3])
        if known is not None:
            flip = np.array([[-1.0, 0.0, sample.shape[1] - 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
            known = flip @ known @ flip
    roi = _choose_roi(moving, roi, rng, config.sub_roi)
    x, y, w, h = roi
    roi_only = np.zeros(sample.shape, np.float32)
    roi_only[y:y + h, x:x + w] = moving[y:y + h, x:x + w]
    win = registration_window(roi, config.margin)
    mov_w = crop_window(roi_only, win, n)
    box_w = box_window(roi, win, n)
    outer = Window(win.x0 - win.side // 2, win.y0 - win.side // 2, 2 * win.side)
    inner_to_outer = outer.frame_to_norm() @ win.norm_to_frame()
    g = random_affine(rng, config.max_rotation, config.scale_range, config.max_shear, config.max_shift)
    theta_fixed = (inner_to_outer @ np.linalg.inv(g))[:2]
    srcs = [crop_window(fixed_src, outer, 2 * n)]
    if separate_truth:
        srcs.append(crop_window(truth, outer, 2 * n))
    t = torch.from_numpy(np.stack(srcs))[:, None]
    th = torch.as_tensor(theta_fixed, dtype=torch.float32)[None].expand(len(srcs), 2, 3)
    grid = F.affine_grid(th, [len(srcs), 1, n, n], align_corners=False)
    warped = (F.grid_sample(t, grid, mode="bilinear", padding_mode="zeros", align_corners=False)[:, 0] >= 0.5).numpy()
    clean = warped[-1]
    fixed = warped[0]
    if rng.random() < config.corrupt:
        fixed = corrupt_like_segmentation(fixed, rng) > 0
    if known is not None:  # whole forward map in normalised window coordinates: g after the known one
        a = win.norm_to_frame()
        theta_gt = np.linalg.inv(g @ np.linalg.inv(a) @ known @ a)[:2]
    else:
        theta_gt = np.full((2, 3), np.nan)
    return Pair(mov_w.astype(np.float32), fixed.astype(np.float32), clean.astype(np.float32),
                box_w.astype(np.float32), theta_gt, win, roi)


def _batch_tensors(pairs: Sequence[Pair], device):
    import torch

    def stack(name):
        return torch.from_numpy(np.stack([getattr(p, name) for p in pairs]))[:, None].to(device)

    return stack("moving"), stack("fixed"), stack("roi_box"), stack("clean")


# ---------------------------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------------------------
def validation_pairs(samples: Sequence[RegSample], config) -> List[Pair]:
    """``config.val_pairs`` pairs per validation sample, the same for every epoch (seeded)."""
    out = []
    for i, s in enumerate(samples):
        for k in range(int(config.val_pairs)):
            out.append(make_pair(s, np.random.default_rng([int(config.seed), 104729, i, k]), config))
    return out


def predict_thetas(model, pairs: Sequence[Pair], device, batch_size: int = 8) -> np.ndarray:
    import torch

    model.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(pairs), batch_size):
            mv, fx, _, _ = _batch_tensors(pairs[i:i + batch_size], device)
            out.append(model(torch.cat([mv, fx], dim=1)).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 2, 3), np.float32)


def pair_metrics(thetas: np.ndarray, pairs: Sequence[Pair]) -> Dict[str, Any]:
    """Medians over pairs (see the module docstring) and the ROI-corner error in frame pixels."""
    import torch

    from ..registration import apply_matrix, corner_error, roi_matrix, theta_to_frame_matrix, warp_images
    from ..segmentation import overlap_metrics

    dice, prec, rec, dice_clean, corners, centres = [], [], [], [], [], []
    for theta, p in zip(thetas, pairs):
        th = torch.as_tensor(theta, dtype=torch.float32)[None]
        w = warp_images(th, torch.from_numpy(np.stack([p.moving, p.roi_box]))[None])[0]
        reg, foot = (w[0] >= 0.5).numpy(), (w[1] >= 0.5).numpy()
        m = overlap_metrics(reg & foot, (p.fixed > 0) & foot)
        dice.append(m["dice"])
        prec.append(m["precision"])
        rec.append(m["recall"])
        dice_clean.append(overlap_metrics(reg & foot, (p.clean > 0) & foot)["dice"])
        if np.all(np.isfinite(p.theta_gt)):
            try:
                pred = theta_to_frame_matrix(theta, p.window) @ roi_matrix(p.roi)
                gt = theta_to_frame_matrix(p.theta_gt, p.window) @ roi_matrix(p.roi)
                corners.append(corner_error(pred, gt, p.roi))
                centre = np.array([[(p.roi[2] - 1) / 2.0, (p.roi[3] - 1) / 2.0]])
                centres.append(float(np.linalg.norm(apply_matrix(pred, centre) - apply_matrix(gt, centre))))
            except InputError:
                corners.append(float("inf"))
                centres.append(float("inf"))
    c = np.asarray(corners, float)
    cc = np.asarray(centres, float)
    return {
        "median_dice": finite_median(dice), "median_precision": finite_median(prec),
        "median_recall": finite_median(rec), "median_dice_clean": finite_median(dice_clean),
        "mean_corner_error_px": float(np.mean(c)) if c.size else None,
        "median_corner_error_px": float(np.median(c)) if c.size else None,
        "mean_centre_error_px": float(np.mean(cc)) if cc.size else None,
        "n_pairs": len(pairs),
    }


# ---------------------------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------------------------
def train(config: RegTrainConfig) -> Dict[str, Any]:
    """Train (or resume), checkpoint every epoch, export when asked. Returns a summary dict."""
    import torch

    from ..networks.regnet import count_parameters, script_model

    run = TrainingRun(config, CHECKPOINT_KIND)
    device, log = run.device, run.log
    samples, described = load_data(config)
    train_set, val_set = run.split_data(samples, described)
    for d in described:
        key = str(d["path"]) if d["kind"] == "synthetic vessel trees" else str(Path(d["path"]))
        d["train_masks"] = sum(1 for s in train_set if s.source == key)
        d["val_masks"] = sum(1 for s in val_set if s.source == key)
    log.line(f"data: {len(train_set)} training masks, {len(val_set)} validation masks "
             f"({len(val_set) * config.val_pairs} validation pairs)")
    val_pairs = validation_pairs(val_set, config) if run.dist.main and val_set else []

    torch.manual_seed(config.seed)
    model = build_model(config).to(device)
    n_params = count_parameters(model)
    opt = make_optimizer(model, config)
    val_before = None
    if not run.resume(model, opt, RESUME_KEYS) and val_pairs:
        val_before = pair_metrics(predict_thetas(model, val_pairs, device), val_pairs)
        log.line(f"before training (identity): val median Dice {val_before['median_dice']:.3f}, "
                 f"clean {val_before['median_dice_clean']:.3f}, corner error mean "
                 f"{_fmt(val_before['mean_corner_error_px'])} px")
    net, model = run.parallel(model)

    def validate():
        if not val_pairs:
            return None
        metrics = pair_metrics(predict_thetas(model, val_pairs, device), val_pairs)
        return metrics, metrics["median_dice"] or 0.0

    def describe(v) -> str:
        return (f", val median Dice {v['median_dice']:.3f} (clean {v['median_dice_clean']:.3f}, "
                f"P {v['median_precision'] or 0:.3f} R {v['median_recall'] or 0:.3f}), corner error "
                f"mean {_fmt(v['mean_corner_error_px'])} px")

    run.fit(model, net, opt, lambda epoch: _train_epoch(run, net, opt, train_set, epoch), validate, describe,
            n_params, first_record=None if val_before is None else {"val_before": val_before})
    return run.finish(n_params, {"val_before": run.history[0].get("val_before") if run.history else None},
                      build_model=lambda: build_model(config), script_model=script_model,
                      manifest_fields=lambda m, ck: manifest_fields(config, m, ck))


def make_optimizer(model, config):
    """AdamW; the last (affine) layer at ``HEAD_LR_UNITS / fc`` times the rate and without weight
    decay (decay would pull its identity bias towards zero)."""
    import torch

    head_scale = min(1.0, HEAD_LR_UNITS / float(config.fc))
    head = [p for n, p in model.named_parameters() if n.startswith("fc2.")]
    body = [p for n, p in model.named_parameters() if not n.startswith("fc2.")]
    return torch.optim.AdamW([
        {"params": body, "lr": config.lr, "lr_scale": 1.0, "weight_decay": config.weight_decay},
        {"params": head, "lr": config.lr * head_scale, "lr_scale": head_scale, "weight_decay": 0.0},
    ], lr=config.lr, weight_decay=config.weight_decay)


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.1f}"


def _train_epoch(run: TrainingRun, net, opt, train_set: List[RegSample], epoch: int) -> float:
    import torch

    from ..registration import pair_loss

    config, dist = run.config, run.dist
    order = np.random.default_rng([int(config.seed), 31337, epoch]).permutation(config.pairs_per_epoch)
    order = [int(i) % len(train_set) for i in order]

    def prepare(b: int, idx: List[int]):
        rng = np.random.default_rng([int(config.seed), epoch, dist.rank, b])
        return _batch_tensors([make_pair(train_set[i], rng, config) for i in idx], "cpu")[:3]

    def loss_of(_b: int, data):
        mv, fx, box = (t.to(run.device) for t in data)
        return pair_loss(net(torch.cat([mv, fx], dim=1)), mv, fx, box)

    return run.train_epoch(net, opt, epoch, order[dist.rank::dist.world], loss_of, grad_clip=GRAD_CLIP,
                           prepare=prepare)


# ---------------------------------------------------------------------------------------------
# export
# ---------------------------------------------------------------------------------------------
def manifest_fields(config: RegTrainConfig, model, ck: Dict[str, Any]):
    """The registration fields of a manifest entry (``training.TrainingRun.export_with_manifest``):
    ``(fields, metrics, loss)``."""
    from ..networks.regnet import ARCHITECTURE, PAPER_POOL_AFTER, POOLED_SIZE, RegNet, count_parameters, multiply_adds

    best = ck.get("best") or {}
    pool = list(model.pool_after)
    fields = {
        "kind": "registration",
        "architecture": ARCHITECTURE,
        "input_size": [config.size, config.size],
        "params": count_parameters(model),
        "multiply_adds": multiply_adds(model),
        "channels": list(model.channels),
        "pool_after": pool,
        "pool_before_fc": f"adaptive average pooling to {POOLED_SIZE}x{POOLED_SIZE}",
        "fc": config.fc,
        "deviations": DEVIATIONS.format(
            pool=", ".join(map(str, pool)), ours=multiply_adds(model) / 1e9,
            paper=multiply_adds(RegNet(in_size=config.size, fc=config.fc, channels=model.channels,
                                       pool_after=PAPER_POOL_AFTER)) / 1e9,
            pbf=f"adaptive average pooling to {POOLED_SIZE}x{POOLED_SIZE} before the first fully connected layer "
                f"(its weights: {model.fc1.in_features * model.fc1.out_features / 1e6:.1f} M)"),
        "theta_convention": "torch affine_grid, align_corners=False, output (fixed) -> input (moving) sampling",
        "window_margin": config.margin,
        "normalisation": "binary masks cropped to the registration window and area-resized to the input size, "
                         "floats in [0, 1]; channel 0 moving (projection inside the ROI), channel 1 fixed",
    }
    metrics = {
        "validation": best.get("metrics"),
        "validation_before_training": (ck.get("history") or [{}])[0].get("val_before"),
        "evaluated_at": f"network size {config.size}, {config.val_pairs} seeded synthetic pairs per validation "
                        "patient (random affine + DRU-Net-like corruption); Dice inside the warped ROI",
    }
    loss = ("1 - soft Dice of the STN-warped moving image against the fixed image inside the warped ROI, "
            "mean over a 4-level blur pyramid (registration.pair_loss)")
    return fields, metrics, loss
