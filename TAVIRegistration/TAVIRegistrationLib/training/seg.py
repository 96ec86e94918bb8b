"""``tavireg train-seg``: training, checkpoints, validation and TorchScript export of the DRU-Net.

Data (``--data``, repeatable):

* a folder of ``N.png`` + ``N_gt.png`` pairs (angios40 layout: 8-bit grey image, 0/255 mask). These
  carry no patient identity: each image counts as its own patient (``<folder>:<N>``). Their FoV is
  ``--folder-fov``: ``upper`` (the default: coronary angiograms are chest frames), ``lower``, or
  ``unknown``, what ``tavireg segment`` calls an image without a DICOM header: such images then get
  a threshold of their own (the manifest's ``unknown``, chosen on them alone, which is what
  ``segment`` and ``evaluate seg`` apply to header-less images) and train as upper-FoV frames do.
* a case index CSV (written by the phantom generator) with the columns ``patient, split, fov,
  image, frame, mask``: ``image`` is a DICOM file (or a grey PNG) relative to the CSV, ``frame`` its
  frame (empty = 0), ``mask`` a 0/255 PNG of the frame's size relative to the CSV, ``fov``
  ``upper``/``lower``, ``split`` ``train``/``val``/``test`` or empty. ``test`` rows are never
  loaded (they are for ``tavireg evaluate``).

``--val-data`` (repeatable) takes the same two kinds for validation only: every frame of it, ``test``
rows included, validates and none trains (e.g. a phantom generated to choose the thresholds on more
patients than the training phantom's one validation patient).

Patient-wise validation split: rows without a split are assigned by patient, per data set, a
seeded shuffle putting ``--val-fraction`` of the patients (at least one) in validation, or with
``--val-fold K/N`` the K-th of N near-equal folds of that shuffle (cross-validation); a patient
never has frames on both sides (a CSV that says otherwise is refused).

Every frame goes through ``segmentation.preprocess`` (percentile intensity scaling, area/bilinear
resize to ``--size``), exactly as at inference, and is kept in memory (float16). Augmentation per
batch, on the training device, with random numbers drawn from a CPU generator seeded by
(seed, epoch, rank), so it is the same on CPU and GPU and a resumed run repeats an uninterrupted
one: left-right flip (p = 0.5; it turns an LAO appearance into an RAO one, still a plausible frame;
no head-feet flip, which no C-arm produces), small affine (rotation +-10 deg, scale 0.9-1.1, shift
+-5 %), Gaussian blur (p = 0.25, sigma 0.5-1.2 px), gamma 0.7-1.4, contrast 0.8-1.2 and brightness
+-0.08, Gaussian noise (sigma up to 0.03). ``--restyle P`` then draws a share P of the frames anew
around their masks (``appearance``: another frame's background with its vessels painted out, or a
smooth field; the lumen from faint to dense; devices; shutters; gamma, sharpening, noise, bit
depth; a fifth of them without contrast and with an empty mask), so that no one renderer's look
is all the network sees. ``--crop N`` then trains on one random N x N window of each augmented frame
(128 of 256: about 4 times faster per step on a CPU, more steps per minute).

Loss (``--loss``): ``per-fov`` (the paper's: binary cross-entropy for upper-FoV frames, soft Dice for
lower-FoV frames, per sample), ``bce``, ``dice`` or ``combined`` (BCE + Dice). AdamW with a cosine
learning-rate decay over ``--epochs``.

Each epoch: validation (median Dice/precision/recall per FoV at the network's size, with the
probability threshold per FoV chosen on the validation split: ``upper``/``lower`` on that FoV's
frames, ``unknown`` on the ``--folder-fov unknown`` images, or on every frame when there are none),
``DIR/last.pt`` and, when the validation score improves, ``DIR/best.pt`` (atomic writes),
``DIR/history.json``. ``--resume`` continues
from ``DIR/last.pt`` (or a given checkpoint) and gives the same weights as an uninterrupted run.
The score, and the thresholds, weigh each data set once: the mean over data sets of their median
Dice, so that the 8 real validation angiograms count as much as a phantom patient's 100 frames;
frames whose true mask is empty are left out of the medians (as in ``tavireg evaluate seg``).
``--max-minutes`` stops before an epoch that would not fit; the manifest's command then says
``--stop-epoch K`` so that it reproduces the file.

Determinism: ``torch.manual_seed``, seeded generators everywhere, deterministic algorithms (warn
only), cuDNN benchmark off; the data live in memory and no DataLoader workers are used, so there
are no worker seeds to manage. Same seed, same machine, same thread count: the same weights.

Devices: cuda when available (``--device`` to choose), else CPU. Under ``torchrun`` (``WORLD_SIZE``
> 1) the same command runs DistributedDataParallel (NCCL on GPUs, one per process, with synchronised
batch norm; gloo on CPUs); ``--batch-size`` is the global batch; only rank 0 validates, writes
checkpoints and exports.

Export (``--export NAME``): the best (else the last) weights, ``torch.jit.script``-ed, to
``NAME.pt`` in ``--export-dir`` (default ``models.models_dir()``), with a manifest entry (SHA256,
data, validation metrics, thresholds, the exact command).

The training run around the network (options, devices, DDP, schedule, checkpoints, resume, export)
is ``training``'s, shared with ``train-reg``. Torch is imported lazily so that building the CLI's
parser stays cheap.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import InputError
from ..segmentation import (FOVS, UNKNOWN_FOV, preprocess, read_image_file, resize_mask, scores_from_counts,
                           threshold_counts)
from ..outputs import read_mask_png
from .appearance import gaussian_blur, restyle_batch
from .common import TrainingConfig, TrainingRun, finite_median, natural_key, read_case_index, row_fov_and_frame

LOSSES = ("per-fov", "dice", "bce", "combined")
CHECKPOINT_KIND = "train-seg"
THRESHOLDS = tuple(round(t, 2) for t in np.arange(0.05, 0.96, 0.05))
#: ``--folder-fov``: an image/mask folder's frames are upper, lower, or of unknown FoV (header-less images)
FOLDER_FOVS = FOVS + (UNKNOWN_FOV,)
_CSV_COLUMNS = ("patient", "split", "fov", "image", "frame", "mask")
#: what must agree between a checkpoint and the run that resumes it
RESUME_KEYS = ("base_channels", "size", "seed", "loss", "batch_size", "augment", "crop", "restyle")


# ---------------------------------------------------------------------------------------------
# configuration
# ---------------------------------------------------------------------------------------------
@dataclass
class TrainConfig(TrainingConfig):
    epochs: int = 40
    lr: float = 1e-3
    size: int = 256
    base_channels: int = 8
    loss: str = "per-fov"
    folder_fov: str = "upper"
    #: data sets that only validate (every row, test rows included)
    val_data: Optional[List[str]] = None
    augment: bool = True
    #: train on random crop x crop windows of the augmented frames (0: whole frames); validation and
    #: inference always see whole frames (the network is fully convolutional)
    crop: int = 0
    #: zoom of the random affine augmentation, drawn uniformly (> 1 zooms in: vessels drawn wider)
    scale_range: Tuple[float, float] = (0.9, 1.1)
    #: share of the training frames drawn anew around their masks (``appearance.restyle_batch``)
    restyle: float = 0.0

    SUBCOMMAND = "train-seg"
    COMMAND_OPTIONS = ("epochs", "batch_size", "base_channels", "lr", "weight_decay", "loss", "seed", "size",
                       "val_fraction", "folder_fov", "crop", "scale_range", "restyle")

    def check(self) -> None:
        if not self.data:
            raise InputError("train-seg needs at least one --data folder or case index CSV")
        super().check()
        if self.workers:
            raise InputError("--workers applies to train-reg: train-seg augments its batches on the training device")
        if not 1 <= self.base_channels <= 128:
            raise InputError(f"--base-channels must lie in 1-128, got {self.base_channels}")
        if self.loss not in LOSSES:
            raise InputError(f"--loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        check_size(self.size)
        if self.folder_fov not in FOLDER_FOVS:
            raise InputError(f"--folder-fov must be upper, lower or unknown, got {self.folder_fov!r}")
        if self.crop and not (32 <= self.crop <= self.size and self.crop % 16 == 0):
            raise InputError(f"--crop must be 0 or a multiple of 16 in 32-{self.size}, got {self.crop}")
        if not 0.0 <= self.restyle <= 1.0:
            raise InputError(f"--restyle must lie in 0-1, got {self.restyle:g}")
        if self.restyle and not self.augment:
            raise InputError("--restyle is an augmentation: it cannot go with --no-augment")
        lo, hi = (float(v) for v in self.scale_range)
        if not 0.5 <= lo <= hi <= 2.0:
            raise InputError(f"--scale-range must be LO,HI with 0.5 <= LO <= HI <= 2, got {lo:g},{hi:g}")

    def command_flags(self) -> List[str]:
        return [a for d in self.val_data or () for a in ("--val-data", str(d))] + ([] if self.augment else
                                                                                  ["--no-augment"])


# ---------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------
def check_size(size: int) -> None:
    """The DRU-Net's input size: four 2x2 poolings need a multiple of 16."""
    if size < 32 or size % 16:
        raise InputError(f"--size must be a multiple of 16, at least 32, got {size}")


@dataclass
class Sample:
    image: np.ndarray  # float16 (size, size), pre-processed
    mask: np.ndarray  # uint8 0/1 (size, size)
    patient: str
    fov: str
    source: str
    split: str = ""  # "train" | "val" | "" (assigned by the split)
    name: str = ""


def load_folder(folder: Path, size: int, fov: str) -> List[Sample]:
    """``N.png`` + ``N_gt.png`` pairs; each image is its own patient."""
    pairs = []
    for img in sorted(folder.glob("*.png")):
        if img.stem.endswith("_gt"):
            continue
        gt = img.with_name(f"{img.stem}_gt.png")
        if gt.is_file():
            pairs.append((img, gt))
    if not pairs:
        raise InputError(f"{folder} holds no N.png + N_gt.png pairs")
    out = []
    for img, gt in sorted(pairs, key=lambda p: natural_key(p[0].stem)):
        loaded = read_image_file(img)
        x, _ = preprocess(loaded.image, (size, size), what=img.name)
        m = resize_mask(read_mask_png(gt, loaded.image.shape), (size, size))
        out.append(Sample(x.astype(np.float16), m, f"{folder.name}:{img.stem}", fov, str(folder), "", img.name))
    return out


def case_rows(csv_path: Path, size: int, include_test: bool = False):
    """The non-``test`` rows (every row with ``include_test``) of a case index, each read and
    pre-processed at ``size``.

    Returns (an iterator of (row, fov, image, mask, name), the number of rows, the number of test
    rows skipped); ``image`` is ``segmentation.preprocess``'s float32, ``mask`` uint8 0/1."""
    rows, skipped = read_case_index(csv_path, _CSV_COLUMNS, include_test=include_test)

    def read():
        cache: Dict[Path, Any] = {}
        for row in rows:
            r = row.values
            fov, frame = row_fov_and_frame(r, f"{csv_path.name} line {row.line}")
            image = _case_frame((csv_path.parent / r["image"]).resolve(), frame, cache)
            x, _ = preprocess(image, (size, size), what=f"{r['image']} frame {frame}")
            m = resize_mask(read_mask_png(csv_path.parent / r["mask"], image.shape), (size, size))
            yield row, fov, x, m, f"{r['image']}#{frame}"

    return read(), len(rows), skipped


def load_case_index(csv_path: Path, size: int, include_test: bool = False) -> Tuple[List[Sample], int]:
    """Rows of a case index CSV (not the ``test`` ones, unless ``include_test``); returns (samples,
    number of test rows)."""
    rows, _, skipped = case_rows(csv_path, size, include_test)
    samples = [Sample(x.astype(np.float16), m, row.patient, fov, str(csv_path), row.split, name)
               for row, fov, x, m, name in rows]
    return samples, skipped


def _case_frame(path: Path, frame: int, cache: Dict[Path, Any]) -> np.ndarray:
    if path not in cache:
        if len(cache) > 8:  # keep a few series (rows of one file are usually together)
            cache.pop(next(iter(cache)))
        if not path.is_file():
            raise InputError(f"case image {path} does not exist")
        if path.suffix.lower() in (".png", ".jpg", ".jpeg"):
            cache[path] = ("image", read_image_file(path).image)
        else:
            from ..fluoro import read_fluoro

            cache[path] = ("dicom", read_fluoro(path))
    kind, obj = cache[path]
    if kind == "image":
        if frame != 0:
            raise InputError(f"{path.name} is a single-frame image; frame {frame} is out of range")
        return obj
    return obj.frame(frame)


def load_data(config: TrainConfig) -> Tuple[List[Sample], List[Dict[str, Any]]]:
    """All training/validation samples of ``config.data`` and ``config.val_data`` (every sample of the
    latter in validation) and a description of each data set (case indices of one phantom version)."""
    from ..synthetic.phantom import case_index_version, check_one_version

    samples: List[Sample] = []
    described = []
    val_only = [str(d) for d in config.val_data or ()]
    overlap = sorted({str(Path(d).resolve()) for d in config.data} & {str(Path(d).resolve()) for d in val_only})
    if overlap:
        raise InputError(f"{overlap[0]} is given both as --data and as --val-data")
    for d, validation_only in [(str(d), False) for d in config.data] + [(d, True) for d in val_only]:
        option, path = ("--val-data" if validation_only else "--data"), Path(d)
        if path.is_dir():
            s = load_folder(path, config.size, config.folder_fov)
            record = {"path": d, "kind": "image-mask folder", "fov": config.folder_fov, "test_rows_skipped": 0}
        elif path.is_file() and path.suffix.lower() == ".csv":
            s, n_test = load_case_index(path, config.size, include_test=validation_only)
            record = {"path": d, "kind": "case index", "test_rows_skipped": 0 if validation_only else n_test,
                      "phantom_version": case_index_version(path)}
        else:
            raise InputError(f"{option} {d}: not a folder of N.png/N_gt.png pairs nor a case index .csv")
        if not s:
            raise InputError(f"{option} {d} gives no frames")
        if validation_only:
            for sample in s:
                sample.split = "val"
            record["validation_only"] = True
        described.append(record)
        samples.extend(s)
    check_one_version({r["path"]: r["phantom_version"] for r in described if "phantom_version" in r},
                      "--data/--val-data")
    return samples, described


# ---------------------------------------------------------------------------------------------
# augmentation and loss (torch)
# ---------------------------------------------------------------------------------------------
def augment_batch(images, masks, gen, scale_range: Sequence[float] = TrainConfig.scale_range):
    """Randomly augmented copies of a batch ((B, 1, H, W) in [0, 1]; masks 0/1 float): left-right
    flip; with p = 0.7 a rotation (+-10 deg), a zoom drawn uniformly from ``scale_range`` and a shift
    (+-5 % of the size); blur, gamma, contrast, brightness and noise."""
    import torch
    import torch.nn.functional as F

    b = images.shape[0]
    dev = images.device

    def u(lo, hi, n=b):
        return (lo + (hi - lo) * torch.rand(n, generator=gen)).to(dev)

    flip = (torch.rand(b, generator=gen) < 0.5).float().to(dev) * -2 + 1  # -1 flips left-right
    do_aff = (torch.rand(b, generator=gen) < 0.7).float().to(dev)
    ang = u(-10, 10) * math.pi / 180 * do_aff
    scale = 1 + (u(float(scale_range[0]), float(scale_range[1])) - 1) * do_aff
    tx, ty = u(-0.1, 0.1) * do_aff, u(-0.1, 0.1) * do_aff  # normalised units: +-5 % of the size
    cos, sin = torch.cos(ang) / scale, torch.sin(ang) / scale
    theta = torch.stack([torch.stack([cos * flip, -sin, tx], 1), torch.stack([sin * flip, cos, ty], 1)], 1)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    images = F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
    masks = (F.grid_sample(masks, grid, mode="bilinear", padding_mode="zeros", align_corners=False) >= 0.5).float()

    do_blur = (torch.rand(b, generator=gen) < 0.25).tolist()
    sigmas = (0.5 + 0.7 * torch.rand(b, generator=gen)).tolist()
    for i in range(b):
        if do_blur[i]:
            images[i:i + 1] = gaussian_blur(images[i:i + 1], sigmas[i])
    gamma = torch.exp(u(math.log(0.7), math.log(1.4))).view(b, 1, 1, 1)
    contrast = u(0.8, 1.2).view(b, 1, 1, 1)
    bright = u(-0.08, 0.08).view(b, 1, 1, 1)
    noise_sd = u(0.0, 0.03).view(b, 1, 1, 1)
    noise = torch.randn(images.shape, generator=gen).to(dev)
    images = images.clamp(0, 1) ** gamma
    images = (images - 0.5) * contrast + 0.5 + bright + noise * noise_sd
    return images.clamp(0, 1), masks


def random_crops(images, masks, size: int, gen):
    """One random ``size`` x ``size`` window per sample of a batch ((B, 1, H, W) tensors), the same
    window for image and mask; offsets drawn from the CPU generator ``gen``."""
    import torch

    b, _, h, w = images.shape
    ys = torch.randint(0, h - size + 1, (b,), generator=gen).tolist()
    xs = torch.randint(0, w - size + 1, (b,), generator=gen).tolist()
    crop = lambda t: torch.stack([t[i, :, y:y + size, x:x + size] for i, (y, x) in enumerate(zip(ys, xs))])
    return crop(images), crop(masks)


def segmentation_loss(logits, target, lower, mode: str = "per-fov"):
    """Mean over the batch of the per-sample loss; ``lower`` (B,) bool marks lower-FoV samples."""
    import torch
    import torch.nn.functional as F

    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none").mean(dim=(1, 2, 3))
    p = torch.sigmoid(logits)
    inter = (p * target).sum(dim=(1, 2, 3))
    dice = 1 - (2 * inter + 1) / (p.sum(dim=(1, 2, 3)) + target.sum(dim=(1, 2, 3)) + 1)
    if mode == "bce":
        per = bce
    elif mode == "dice":
        per = dice
    elif mode == "combined":
        per = bce + dice
    elif mode == "per-fov":
        per = torch.where(lower, dice, bce)
    else:
        raise ValueError(f"unknown loss {mode!r}")
    return per.mean()


# ---------------------------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------------------------
def predict(model, samples: Sequence[Sample], device, batch_size: int = 8) -> np.ndarray:
    """Vessel probabilities (float16, (N, H, W)) of pre-processed samples."""
    import torch

    model.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(samples), batch_size):
            x = torch.from_numpy(np.stack([s.image for s in samples[i:i + batch_size]]).astype(np.float32))
            out.append(torch.sigmoid(model(x[:, None].to(device)))[:, 0].float().cpu().numpy().astype(np.float16))
    return np.concatenate(out) if out else np.zeros((0, 1, 1), np.float16)


def _mean_of_source_medians(dice: np.ndarray, sources: np.ndarray) -> Tuple[float, Dict[str, float]]:
    """The mean over data sets of their median Dice (each data set counts once, whatever its size)."""
    by_source = {str(src): float(np.median(dice[sources == src])) for src in sorted(set(sources.tolist()))}
    return float(np.mean(list(by_source.values()))), by_source


def validation_metrics(probs: np.ndarray, samples: Sequence[Sample],
                       thresholds: Sequence[float] = THRESHOLDS) -> Dict[str, Any]:
    """Per FoV: the probability threshold that maximises the mean over data sets of their median Dice
    (so that 8 real angiograms weigh as much as 100 phantom frames), with the pooled medians there;
    "unknown" (the threshold for images of unknown FoV) is chosen on the frames of unknown FoV
    (``--folder-fov unknown``), or on every frame when there are none. And ``selection``: each frame
    at its own FoV's threshold, the median Dice of each data set and their mean, the ``score`` that
    picks ``best.pt``.

    Frames whose true mask is empty (a phantom frame before the contrast arrives) are left out of
    every median, as in ``tavireg evaluate seg``: their Dice is 1 or 0, and half of a FoV's frames
    being empty would otherwise choose the threshold that blanks them rather than the one that
    segments vessels best. ``n_empty_gt`` counts them (they are kept only when every frame is empty)."""
    truth = np.stack([s.mask for s in samples]).astype(bool)
    has_vessel = truth.any(axis=(1, 2))
    use = [i for i in range(len(samples)) if has_vessel[i]] or list(range(len(samples)))
    own_unknown = any(s.fov == UNKNOWN_FOV for s in samples)

    def in_group(fov: str, group: str) -> bool:
        return fov == group or (group == UNKNOWN_FOV and not own_unknown)

    n_empty = {g: int(sum(1 for s, v in zip(samples, has_vessel) if not v and in_group(s.fov, g)))
               for g in FOLDER_FOVS}
    samples = [samples[i] for i in use]
    ths = list(thresholds)
    # TP/FP/FN of every frame at every threshold: (frames, thresholds, 3), then the scores
    counts = np.stack([threshold_counts(probs[i], truth[i], ths) for i in use])
    dice_all, prec_all, rec_all = scores_from_counts(counts)
    fovs = np.array([s.fov for s in samples])
    sources = np.array([s.source for s in samples])
    result: Dict[str, Any] = {}
    for group in FOLDER_FOVS:
        sel = np.array([in_group(f, group) for f in fovs], bool)
        if not sel.any():
            continue
        best, best_score, row05 = None, -1.0, None
        for k, th in enumerate(ths):
            dice = dice_all[sel, k]
            score, by_source = _mean_of_source_medians(dice, sources[sel])
            row = {"threshold": float(th), "median_dice": finite_median(dice),
                   "median_precision": finite_median(prec_all[sel, k]), "median_recall": finite_median(rec_all[sel, k]),
                   "n_frames": int(sel.sum()), "n_empty_gt": n_empty[group], "median_dice_by_source": by_source}
            if th == 0.5:
                row05 = dict(row)
            if score > best_score:
                best, best_score = row, score
        best["median_dice_at_0.5"] = row05["median_dice"] if row05 else None
        result[group] = best
    at_fov_threshold = [ths.index(result[f]["threshold"]) for f in fovs]
    score, by_source = _mean_of_source_medians(dice_all[np.arange(len(samples)), at_fov_threshold], sources)
    result["selection"] = {"score": score, "median_dice_by_source": by_source,
                           "rule": "mean over data sets of the median Dice, each frame at its FoV's threshold"}
    return result


# ---------------------------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------------------------
def train(config: TrainConfig) -> Dict[str, Any]:
    """Train (or resume), checkpoint every epoch, export when asked. Returns a summary dict."""
    import torch

    from ..networks.segnet import DRUNet, count_parameters, script_model

    run = TrainingRun(config, CHECKPOINT_KIND, accept_unnamed=True)  # checkpoints before kinds were recorded
    device, log = run.device, run.log
    samples, described = load_data(config)  # bad data fail before anything is written
    train_set, val_set = run.split_data(samples, described)
    for d in described:
        d["train_frames"] = sum(1 for s in train_set if s.source == str(Path(d["path"])))
        d["val_frames"] = sum(1 for s in val_set if s.source == str(Path(d["path"])))
        d["train_patients"] = len({s.patient for s in train_set if s.source == str(Path(d["path"]))})
        d["val_patients"] = len({s.patient for s in val_set if s.source == str(Path(d["path"]))})
    log.line(f"data: {len(train_set)} training frames ({len(run.split['train_patients'])} patients), "
             f"{len(val_set)} validation frames ({len(run.split['val_patients'])} patients)")

    torch.manual_seed(config.seed)
    np.random.seed(config.seed % (2 ** 32))
    model = DRUNet(config.base_channels).to(device)
    n_params = count_parameters(model)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    run.resume(model, opt, RESUME_KEYS, adapt_init=widen_init)
    net, model = run.parallel(model)

    def validate():
        if not val_set:
            return None
        metrics = validation_metrics(predict(model, val_set, device), val_set)
        return metrics, metrics["selection"]["score"]

    own_unknown = any(s.fov == UNKNOWN_FOV for s in val_set)  # "unknown" a group of its own: no pooled figure

    def describe(metrics) -> str:
        by = metrics["selection"]["median_dice_by_source"]
        parts = ", ".join(f"{'/'.join(Path(src).parts[-2:])} {d:.3f}" for src, d in by.items())
        ths = ", ".join(f"{g} {metrics[g]['threshold']:.2f}" for g in FOLDER_FOVS if g in metrics)
        if own_unknown:
            return f"; thresholds {ths}; per data set {parts}; score {metrics['selection']['score']:.3f}"
        v = metrics[UNKNOWN_FOV]
        return (f", val median Dice {v['median_dice']:.3f} at threshold {v['threshold']:.2f} "
                f"(P {v['median_precision'] or 0:.3f} R {v['median_recall'] or 0:.3f}); thresholds {ths}; "
                f"per data set {parts}; score {metrics['selection']['score']:.3f}")

    run.fit(model, net, opt, lambda epoch: _train_epoch(run, net, opt, train_set, epoch), validate, describe,
            n_params)
    fovs_trained = sorted({s.fov for s in train_set})
    return run.finish(n_params, {"fovs_trained": fovs_trained},
                      build_model=lambda: DRUNet(config.base_channels), script_model=script_model,
                      manifest_fields=lambda m, ck: manifest_fields(config, m, ck, fovs_trained))


def widen_init(state: Dict[str, Any], model) -> Tuple[Dict[str, Any], Optional[str]]:
    """``TrainingRun.resume``'s ``adapt_init``: ``--init`` weights narrower than ``--base-channels`` are
    widened without changing what they compute (``segnet.widen_state_dict``); anything else is left
    to ``load_state_dict`` (a wider or different network is refused there)."""
    from ..networks.segnet import state_width, widen_state_dict

    try:
        old = state_width(state)
    except (KeyError, IndexError):
        return state, None
    if old >= model.base_channels:
        return state, None
    return (widen_state_dict(state, model),
            f"widened from {old} to {model.base_channels} base channels (function-preserving: the new "
            f"channels start with no effect on the output)")


def _train_epoch(run: TrainingRun, net, opt, train_set: List[Sample], epoch: int) -> float:
    import torch
    from torch.utils.data.distributed import DistributedSampler

    config, device = run.config, run.device
    sampler = DistributedSampler(range(len(train_set)), num_replicas=run.dist.world, rank=run.dist.rank,
                                 shuffle=True, seed=config.seed, drop_last=False)
    sampler.set_epoch(epoch)
    gen = torch.Generator().manual_seed(config.seed * 1_000_003 + epoch * 1009 + run.dist.rank)

    def loss_of(_b: int, idx: List[int]):
        x = torch.from_numpy(np.stack([train_set[i].image for i in idx]).astype(np.float32))[:, None].to(device)
        y = torch.from_numpy(np.stack([train_set[i].mask for i in idx]).astype(np.float32))[:, None].to(device)
        lower = torch.tensor([train_set[i].fov == "lower" for i in idx], device=device)
        if config.augment:
            x, y = augment_batch(x, y, gen, config.scale_range)
            if config.restyle:
                x, y = restyle_batch(x, y, gen, config.restyle)
        if config.crop and config.crop < config.size:
            x, y = random_crops(x, y, config.crop, gen)
        return segmentation_loss(net(x), y, lower, config.loss)

    return run.train_epoch(net, opt, epoch, list(sampler), loss_of)


# ---------------------------------------------------------------------------------------------
# export
# ---------------------------------------------------------------------------------------------
def manifest_fields(config: TrainConfig, model, ck: Dict[str, Any], fovs_trained: Sequence[str]):
    """The segmentation fields of a manifest entry (``training.TrainingRun.export_with_manifest``):
    ``(fields, metrics, loss)``."""
    from ..networks.segnet import ARCHITECTURE, count_parameters

    metrics = (ck.get("best") or {}).get("metrics") or {}
    thresholds = {k: v["threshold"] for k, v in metrics.items() if k in FOLDER_FOVS}
    fields = {
        "kind": "segmentation",
        "architecture": ARCHITECTURE,
        "base_channels": config.base_channels,
        "input_size": [config.size, config.size],
        "params": count_parameters(model),
        "fov": list(fovs_trained) or list(FOVS),
        "thresholds": thresholds or {UNKNOWN_FOV: 0.5},
        "normalisation": "percentiles 0.5-99.5 -> [0, 1], clipped; area/bilinear resize "
                         "(segmentation.preprocess)",
    }
    validation = {
        "validation": metrics,
        "evaluated_at": f"network size {config.size} x {config.size}, thresholds chosen on the validation split",
    }
    return fields, validation, config.loss
