"""``tavireg train-seg``: training, checkpoints, validation and TorchScript export of the DRU-Net.

Data (``--data``, repeatable):

* a folder of ``N.png`` + ``N_gt.png`` pairs (angios40 layout: 8-bit grey image, 0/255 mask). These
  carry no patient identity: each image counts as its own patient (``<folder>:<N>``). Their FoV is
  ``--folder-fov`` (default ``upper``: coronary angiograms are chest frames).
* a case index CSV (written by the phantom generator) with the columns ``patient, split, fov,
  image, frame, mask``: ``image`` is a DICOM file (or a grey PNG) relative to the CSV, ``frame`` its
  frame (empty = 0), ``mask`` a 0/255 PNG of the frame's size relative to the CSV, ``fov``
  ``upper``/``lower``, ``split`` ``train``/``val``/``test`` or empty. ``test`` rows are never
  loaded (they are for ``tavireg evaluate``).

Patient-wise validation split: rows without a split are assigned by patient, per data set, a
seeded shuffle putting ``--val-fraction`` of the patients (at least one) in validation; a patient
never has frames on both sides (a CSV that says otherwise is refused).

Every frame goes through ``segmentation.preprocess`` (percentile intensity scaling, area/bilinear
resize to ``--size``), exactly as at inference, and is kept in memory (float16). Augmentation per
batch, on the training device, with random numbers drawn from a CPU generator seeded by
(seed, epoch, rank), so it is the same on CPU and GPU and a resumed run repeats an uninterrupted
one: left-right flip (p = 0.5; it turns an LAO appearance into an RAO one, still a plausible frame;
no head-feet flip, which no C-arm produces), small affine (rotation +-10 deg, scale 0.9-1.1, shift
+-5 %), Gaussian blur (p = 0.25, sigma 0.5-1.2 px), gamma 0.7-1.4, contrast 0.8-1.2 and brightness
+-0.08, Gaussian noise (sigma up to 0.03).

Loss (``--loss``): ``per-fov`` (the paper's: binary cross-entropy for upper-FoV frames, soft Dice for
lower-FoV frames, per sample), ``bce``, ``dice`` or ``combined`` (BCE + Dice). AdamW with a cosine
learning-rate decay over ``--epochs``.

Each epoch: validation (median Dice/precision/recall per FoV at the network's size, with the
probability threshold per FoV chosen on the validation split), ``DIR/last.pt`` and, when
validation improves, ``DIR/best.pt`` (atomic writes), ``DIR/history.json``. ``--resume`` continues
from ``DIR/last.pt`` (or a given checkpoint) and gives the same weights as an uninterrupted run.
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

Torch is imported lazily so that building the CLI's parser stays cheap.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import shlex
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .errors import InputError
from .segmentation import FOVS, preprocess, read_image_file, resize_mask

LOSSES = ("per-fov", "dice", "bce", "combined")
CHECKPOINT_FORMAT = 1
THRESHOLDS = tuple(round(t, 2) for t in np.arange(0.05, 0.96, 0.05))
_CSV_COLUMNS = ("patient", "split", "fov", "image", "frame", "mask")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


# ---------------------------------------------------------------------------------------------
# configuration
# ---------------------------------------------------------------------------------------------
@dataclass
class TrainConfig:
    data: List[str]
    out: str
    epochs: int = 40
    batch_size: int = 8
    base_channels: int = 8
    lr: float = 1e-3
    weight_decay: float = 1e-4
    loss: str = "per-fov"
    seed: int = 0
    size: int = 256
    val_fraction: float = 0.2
    folder_fov: str = "upper"
    augment: bool = True
    device: str = "auto"
    max_minutes: Optional[float] = None
    stop_epoch: Optional[int] = None
    resume: Optional[str] = None  # None, "last" or a checkpoint path
    export: Optional[str] = None
    export_dir: Optional[str] = None
    progress: bool = True

    def check(self) -> None:
        if not self.data:
            raise InputError("train-seg needs at least one --data folder or case index CSV")
        if self.epochs < 1:
            raise InputError(f"--epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise InputError(f"--batch-size must be >= 1, got {self.batch_size}")
        if not 1 <= self.base_channels <= 128:
            raise InputError(f"--base-channels must lie in 1-128, got {self.base_channels}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise InputError(f"--lr must be a positive number, got {self.lr}")
        if self.loss not in LOSSES:
            raise InputError(f"--loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        if self.size < 32 or self.size % 16:
            raise InputError(f"--size must be a multiple of 16, at least 32, got {self.size}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise InputError(f"--val-fraction must lie in [0, 1), got {self.val_fraction}")
        if self.folder_fov not in FOVS:
            raise InputError(f"--folder-fov must be upper or lower, got {self.folder_fov!r}")
        if self.max_minutes is not None and not self.max_minutes > 0:
            raise InputError(f"--max-minutes must be positive, got {self.max_minutes}")
        if self.stop_epoch is not None and not 1 <= self.stop_epoch <= self.epochs:
            raise InputError(f"--stop-epoch must lie in 1-{self.epochs}, got {self.stop_epoch}")
        if self.export is not None and not _NAME_RE.match(self.export):
            raise InputError(f"--export name {self.export!r} must be letters, digits, '.', '_' or '-' (up to 64)")

    def command(self, world_size: int = 1) -> str:
        """The command line that reproduces this run's weights (resume and time limit left out)."""
        parts = ["train-seg"]
        for d in self.data:
            parts += ["--data", str(d)]
        parts += ["--epochs", str(self.epochs), "--batch-size", str(self.batch_size),
                  "--base-channels", str(self.base_channels), "--lr", f"{self.lr:g}",
                  "--weight-decay", f"{self.weight_decay:g}", "--loss", self.loss, "--seed", str(self.seed),
                  "--size", str(self.size), "--val-fraction", f"{self.val_fraction:g}",
                  "--folder-fov", self.folder_fov]
        if not self.augment:
            parts.append("--no-augment")
        if self.stop_epoch is not None:
            parts += ["--stop-epoch", str(self.stop_epoch)]
        parts += ["--out", str(self.out)]
        if self.export:
            parts += ["--export", self.export]
        if self.export_dir:
            parts += ["--export-dir", str(self.export_dir)]
        prefix = ["tavireg"] if world_size <= 1 else [
            "torchrun", f"--nproc_per_node={world_size}", "-m", "TAVIRegistrationLib.cli"]
        return shlex.join(prefix + parts)


# ---------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------
@dataclass
class Sample:
    image: np.ndarray  # float16 (size, size), pre-processed
    mask: np.ndarray  # uint8 0/1 (size, size)
    patient: str
    fov: str
    source: str
    split: str = ""  # "train" | "val" | "" (assigned by the split)
    name: str = ""


def _read_mask(path: Path, shape: Tuple[int, int]) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        raise InputError(f"mask {path} does not exist")
    try:
        with Image.open(path) as im:
            m = np.asarray(im.convert("L"))
    except (UnidentifiedImageError, OSError) as exc:
        raise InputError(f"cannot read mask {path}: {exc}") from None
    if m.shape != tuple(shape):
        raise InputError(f"mask {path.name} is {m.shape[0]} x {m.shape[1]} px but its image is {shape[0]} x {shape[1]}")
    return (m > 127).astype(np.uint8)


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
    for img, gt in sorted(pairs, key=lambda p: _natural_key(p[0].stem)):
        loaded = read_image_file(img)
        x, _ = preprocess(loaded.image, (size, size), what=img.name)
        m = resize_mask(_read_mask(gt, loaded.image.shape), (size, size))
        out.append(Sample(x.astype(np.float16), m, f"{folder.name}:{img.stem}", fov, str(folder), "", img.name))
    return out


def load_case_index(csv_path: Path, size: int) -> Tuple[List[Sample], int]:
    """Rows of a case index CSV (not the ``test`` ones); returns (samples, number of test rows skipped)."""
    try:
        with open(csv_path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            cols = [c.strip() for c in (reader.fieldnames or [])]
            rows = [{(k or "").strip(): (v or "").strip() for k, v in r.items()} for r in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"cannot read case index {csv_path}: {exc}") from None
    missing = [c for c in _CSV_COLUMNS if c not in cols]
    if missing:
        raise InputError(f"case index {csv_path.name} lacks the column(s) {', '.join(missing)}")
    base = csv_path.parent
    samples: List[Sample] = []
    skipped = 0
    cache: Dict[Path, Any] = {}
    sides: Dict[str, set] = {}
    for i, r in enumerate(rows, start=2):
        split = r["split"].lower()
        if split not in ("", "auto", "train", "val", "test"):
            raise InputError(f"{csv_path.name} line {i}: split must be train, val, test or empty, got {r['split']!r}")
        if not r["patient"]:
            raise InputError(f"{csv_path.name} line {i}: empty patient")
        patient = f"{csv_path.stem}:{r['patient']}"
        sides.setdefault(patient, set()).add(split if split in ("train", "val", "test") else "auto")
        if split == "test":
            skipped += 1
            continue
        fov = r["fov"].lower()
        if fov not in FOVS:
            raise InputError(f"{csv_path.name} line {i}: fov must be upper or lower, got {r['fov']!r}")
        try:
            frame = int(r["frame"]) if r["frame"] else 0
        except ValueError:
            raise InputError(f"{csv_path.name} line {i}: frame must be an integer, got {r['frame']!r}") from None
        img_path = (base / r["image"]).resolve()
        image = _case_frame(img_path, frame, cache)
        x, _ = preprocess(image, (size, size), what=f"{r['image']} frame {frame}")
        m = resize_mask(_read_mask(base / r["mask"], image.shape), (size, size))
        samples.append(Sample(x.astype(np.float16), m, patient, fov, str(csv_path),
                              split if split in ("train", "val") else "", f"{r['image']}#{frame}"))
    for patient, s in sides.items():
        if len(s & {"train", "val", "test"}) > 1 or ("auto" in s and len(s) > 1):
            raise InputError(
                f"case index {csv_path.name}: patient {patient.split(':', 1)[1]!r} has frames in several splits "
                f"({', '.join(sorted(s))}); the split must be patient-wise"
            )
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
            from .fluoro import read_fluoro

            cache[path] = ("dicom", read_fluoro(path))
    kind, obj = cache[path]
    if kind == "image":
        if frame != 0:
            raise InputError(f"{path.name} is a single-frame image; frame {frame} is out of range")
        return obj
    return obj.frame(frame)


def _natural_key(s: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]


def load_data(config: TrainConfig) -> Tuple[List[Sample], List[Dict[str, Any]]]:
    """All training/validation samples of ``config.data`` and a description of each data set."""
    samples: List[Sample] = []
    described = []
    for d in config.data:
        path = Path(d)
        if path.is_dir():
            s = load_folder(path, config.size, config.folder_fov)
            described.append({"path": str(d), "kind": "image-mask folder", "fov": config.folder_fov,
                              "test_rows_skipped": 0})
        elif path.is_file() and path.suffix.lower() == ".csv":
            s, skipped = load_case_index(path, config.size)
            described.append({"path": str(d), "kind": "case index", "test_rows_skipped": skipped})
        else:
            raise InputError(f"--data {d}: not a folder of N.png/N_gt.png pairs nor a case index .csv")
        if not s:
            raise InputError(f"--data {d} gives no training frames")
        samples.extend(s)
    return samples, described


def split_patients(samples: List[Sample], val_fraction: float, seed: int) -> Tuple[List[Sample], List[Sample]]:
    """Patient-wise (train, val): given splits kept, the rest split per data set by a seeded shuffle."""
    rng = np.random.default_rng(seed)
    val_patients = set()
    for source in sorted({s.source for s in samples}):
        free = sorted({s.patient for s in samples if s.source == source and not s.split}, key=_natural_key)
        if not free or val_fraction <= 0:
            continue
        n_val = max(1, int(round(val_fraction * len(free)))) if len(free) > 1 else 0
        order = rng.permutation(len(free))
        val_patients.update(free[i] for i in order[:n_val])
    train, val = [], []
    for s in samples:
        is_val = s.split == "val" or (not s.split and s.patient in val_patients)
        (val if is_val else train).append(s)
    if not train:
        raise InputError("the validation split took every patient: lower --val-fraction or add data")
    return train, val


# ---------------------------------------------------------------------------------------------
# augmentation and loss (torch)
# ---------------------------------------------------------------------------------------------
def augment_batch(images, masks, gen):
    """Randomly augmented copies of a batch ((B, 1, H, W) in [0, 1]; masks 0/1 float)."""
    import torch
    import torch.nn.functional as F

    b = images.shape[0]
    dev = images.device

    def u(lo, hi, n=b):
        return (lo + (hi - lo) * torch.rand(n, generator=gen)).to(dev)

    flip = (torch.rand(b, generator=gen) < 0.5).float().to(dev) * -2 + 1  # -1 flips left-right
    do_aff = (torch.rand(b, generator=gen) < 0.7).float().to(dev)
    ang = u(-10, 10) * math.pi / 180 * do_aff
    scale = 1 + u(-0.1, 0.1) * do_aff
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
            images[i:i + 1] = _gaussian_blur(images[i:i + 1], sigmas[i])
    gamma = torch.exp(u(math.log(0.7), math.log(1.4))).view(b, 1, 1, 1)
    contrast = u(0.8, 1.2).view(b, 1, 1, 1)
    bright = u(-0.08, 0.08).view(b, 1, 1, 1)
    noise_sd = u(0.0, 0.03).view(b, 1, 1, 1)
    noise = torch.randn(images.shape, generator=gen).to(dev)
    images = images.clamp(0, 1) ** gamma
    images = (images - 0.5) * contrast + 0.5 + bright + noise * noise_sd
    return images.clamp(0, 1), masks


def _gaussian_blur(x, sigma: float):
    import torch
    import torch.nn.functional as F

    r = max(1, int(math.ceil(2.5 * sigma)))
    k = torch.arange(-r, r + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-0.5 * (k / sigma) ** 2)
    k = k / k.sum()
    x = F.pad(x, (r, r, r, r), mode="replicate")
    x = F.conv2d(x, k.view(1, 1, 1, -1))
    return F.conv2d(x, k.view(1, 1, -1, 1))


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


def _median(values: Sequence[float]) -> Optional[float]:
    v = np.asarray(values, float)
    v = v[np.isfinite(v)]
    return float(np.median(v)) if v.size else None


def validation_metrics(probs: np.ndarray, samples: Sequence[Sample],
                       thresholds: Sequence[float] = THRESHOLDS) -> Dict[str, Any]:
    """Per FoV (and "unknown" = all): the threshold with the best median Dice and the medians there."""
    truth = np.stack([s.mask for s in samples]).astype(bool)
    fovs = np.array([s.fov for s in samples])
    result: Dict[str, Any] = {}
    for group in list(FOVS) + ["unknown"]:
        sel = np.ones(len(samples), bool) if group == "unknown" else fovs == group
        if not sel.any():
            continue
        p, t = probs[sel].astype(np.float32), truth[sel]
        best, row05 = None, None
        for th in thresholds:
            pred = p >= th
            tp = (pred & t).sum(axis=(1, 2)).astype(float)
            fp = (pred & ~t).sum(axis=(1, 2)).astype(float)
            fn = (~pred & t).sum(axis=(1, 2)).astype(float)
            with np.errstate(divide="ignore", invalid="ignore"):
                denom = 2 * tp + fp + fn
                dice = np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 1.0)
                prec = np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1), np.nan)
                rec = np.where(tp + fn > 0, tp / np.maximum(tp + fn, 1), np.nan)
            row = {"threshold": float(th), "median_dice": _median(dice), "median_precision": _median(prec),
                   "median_recall": _median(rec), "n_frames": int(sel.sum())}
            if th == 0.5:
                row05 = dict(row)
            if best is None or (row["median_dice"] or 0) > (best["median_dice"] or 0):
                best = row
        best["median_dice_at_0.5"] = row05["median_dice"] if row05 else None
        result[group] = best
    return result


# ---------------------------------------------------------------------------------------------
# checkpoints
# ---------------------------------------------------------------------------------------------
def _save_atomic(obj, path: Path) -> None:
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    from .models import file_mode

    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    os.close(fd)
    try:
        os.chmod(tmp, file_mode())
        if isinstance(obj, (dict, list)) and path.suffix == ".json":
            Path(tmp).write_text(json.dumps(obj, indent=2, default=_json_default) + "\n", encoding="utf-8")
        else:
            torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(type(o).__name__)


def _load_checkpoint(path: Path) -> Dict[str, Any]:
    import torch

    if not path.is_file():
        raise InputError(f"checkpoint {path} does not exist (nothing to resume)")
    try:
        ck = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"checkpoint {path} cannot be read: {' '.join(str(exc).split())[:160]}") from None
    if not isinstance(ck, dict) or ck.get("format") != CHECKPOINT_FORMAT or "model" not in ck:
        raise InputError(f"{path} is not a train-seg checkpoint")
    return ck


# ---------------------------------------------------------------------------------------------
# distributed set-up
# ---------------------------------------------------------------------------------------------
@dataclass
class _Dist:
    world: int = 1
    rank: int = 0
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def _setup(config: TrainConfig):
    import torch

    from .models import pick_device

    dist_info = _Dist(int(os.environ.get("WORLD_SIZE", "1") or 1), int(os.environ.get("RANK", "0") or 0),
                      int(os.environ.get("LOCAL_RANK", "0") or 0))
    device = pick_device(requested=config.device)
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    torch.use_deterministic_algorithms(True, warn_only=True)
    if dist_info.world > 1:
        import torch.distributed as dist

        if device.type == "cuda":
            torch.cuda.set_device(dist_info.local_rank)
            device = torch.device("cuda", dist_info.local_rank)
        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return dist_info, device


def _lr_at(config: TrainConfig, epoch: int) -> float:
    """Cosine decay from lr to lr/20 over the planned epochs."""
    return config.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * epoch / config.epochs)))


# ---------------------------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------------------------
def train(config: TrainConfig) -> Dict[str, Any]:
    """Train (or resume), checkpoint every epoch, export when asked. Returns a summary dict."""
    import torch

    from .outputs import check_writable_dir
    from .segnet import DRUNet, count_parameters

    config.check()
    t_start = time.monotonic()
    out_dir = Path(config.out)
    dinfo, device = _setup(config)
    log = _Logger(config.progress and dinfo.main)

    samples, described = load_data(config)  # bad data fail before anything is written
    if config.resume:
        _load_checkpoint(out_dir / "last.pt" if config.resume == "last" else Path(config.resume))
    check_writable_dir(out_dir)
    train_set, val_set = split_patients(samples, config.val_fraction, config.seed)
    split = {"train_patients": sorted({s.patient for s in train_set}, key=_natural_key),
             "val_patients": sorted({s.patient for s in val_set}, key=_natural_key)}
    for d in described:
        d["train_frames"] = sum(1 for s in train_set if s.source == str(Path(d["path"])))
        d["val_frames"] = sum(1 for s in val_set if s.source == str(Path(d["path"])))
        d["train_patients"] = len({s.patient for s in train_set if s.source == str(Path(d["path"]))})
        d["val_patients"] = len({s.patient for s in val_set if s.source == str(Path(d["path"]))})
    log.line(f"data: {len(train_set)} training frames ({len(split['train_patients'])} patients), "
             f"{len(val_set)} validation frames ({len(split['val_patients'])} patients)")

    torch.manual_seed(config.seed)
    np.random.seed(config.seed % (2 ** 32))
    model = DRUNet(config.base_channels).to(device)
    n_params = count_parameters(model)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    start_epoch, history, best = 0, [], None

    if config.resume:
        ck_path = out_dir / "last.pt" if config.resume == "last" else Path(config.resume)
        ck = _load_checkpoint(ck_path)
        old = ck.get("config", {})
        for key in ("base_channels", "size", "seed", "loss", "batch_size", "augment"):
            if old.get(key) != getattr(config, key):
                raise InputError(f"cannot resume {ck_path}: it was trained with {key}={old.get(key)!r}, "
                                 f"this run asks for {getattr(config, key)!r}")
        if ck.get("split") != split:
            raise InputError(f"cannot resume {ck_path}: the training/validation patients differ from the checkpoint's")
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        start_epoch, history, best = int(ck["epoch"]), list(ck.get("history", [])), ck.get("best")
        log.line(f"resumed from {ck_path} after epoch {start_epoch}")

    net = model
    if dinfo.world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        if device.type == "cuda":
            net = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
            net = DDP(net, device_ids=[device.index])
        else:
            net = DDP(model)
        model = net.module

    last_epoch = config.stop_epoch or config.epochs
    per_rank_batch = max(1, config.batch_size // dinfo.world)
    epoch_times: List[float] = []
    stopped_by_time = False
    epoch = start_epoch
    for epoch in range(start_epoch, last_epoch):
        if config.max_minutes is not None and epoch > start_epoch:
            elapsed = time.monotonic() - t_start
            if elapsed + max(epoch_times[-3:]) > 60 * config.max_minutes:
                stopped_by_time = _agree(True, dinfo)
            else:
                stopped_by_time = _agree(False, dinfo)
            if stopped_by_time:
                break
        t0 = time.monotonic()
        loss_avg = _train_epoch(net, opt, train_set, config, epoch, dinfo, device, per_rank_batch, log)
        epoch_times.append(time.monotonic() - t0)
        record: Dict[str, Any] = {"epoch": epoch + 1, "train_loss": loss_avg, "lr": _lr_at(config, epoch),
                                  "seconds": round(epoch_times[-1], 2)}
        if dinfo.main:
            improved = False
            if val_set:
                metrics = validation_metrics(predict(model, val_set, device), val_set)
                record["val"] = metrics
                score = metrics["unknown"]["median_dice"] or 0.0
                if best is None or score > best["score"]:
                    best = {"epoch": epoch + 1, "score": score, "metrics": metrics}
                    improved = True
            history.append(record)
            ck = {"format": CHECKPOINT_FORMAT, "model": model.state_dict(), "optimizer": opt.state_dict(),
                  "epoch": epoch + 1, "history": history, "best": best, "config": asdict(config),
                  "split": split, "params": n_params, "torch_version": torch.__version__}
            _save_atomic(ck, out_dir / "last.pt")
            if improved:
                _save_atomic({**ck, "optimizer": None}, out_dir / "best.pt")
            _save_atomic({"history": history, "best": best, "split": split, "data": described},
                         out_dir / "history.json")
            val_txt = ""
            if "val" in record:
                v = record["val"]["unknown"]
                val_txt = (f", val median Dice {v['median_dice']:.3f} at threshold {v['threshold']:.2f} "
                           f"(P {v['median_precision'] or 0:.3f} R {v['median_recall'] or 0:.3f})")
            log.line(f"epoch {epoch + 1}/{config.epochs}: loss {loss_avg:.4f}{val_txt} [{epoch_times[-1]:.1f} s]")
        _barrier(dinfo)
    epochs_done = len(history) if dinfo.main else epoch + 1
    summary: Dict[str, Any] = {"out": str(out_dir), "epochs_done": epochs_done, "params": n_params,
                               "device": str(device), "world_size": dinfo.world, "best": best,
                               "stopped_by_time": stopped_by_time,
                               "fovs_trained": sorted({s.fov for s in train_set}),
                               "train_minutes": round((time.monotonic() - t_start) / 60, 2)}
    if stopped_by_time:
        log.line(f"stopped after epoch {epochs_done}: --max-minutes {config.max_minutes:g} reached")
    if config.export and dinfo.main:
        summary["export"] = export_model(config, out_dir, described, split, dinfo.world, epochs_done,
                                         stopped_by_time, summary)
        log.line(f"exported {summary['export']['file']} (sha256 {summary['export']['sha256'][:16]}...) "
                 f"to {summary['export']['models_dir']}")
    _barrier(dinfo)
    if dinfo.world > 1:
        import torch.distributed as dist

        dist.destroy_process_group()
    return summary


def _agree(flag: bool, dinfo: _Dist) -> bool:
    """Rank 0's decision, for every rank."""
    if dinfo.world <= 1:
        return flag
    import torch
    import torch.distributed as dist

    t = torch.tensor([1.0 if flag else 0.0])
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.broadcast(t, 0)
    return bool(t.item() > 0.5)


def _barrier(dinfo: _Dist) -> None:
    if dinfo.world > 1:
        import torch.distributed as dist

        dist.barrier()


def _train_epoch(net, opt, train_set: List[Sample], config: TrainConfig, epoch: int, dinfo: _Dist,
                 device, per_rank_batch: int, log) -> float:
    import torch
    from torch.utils.data.distributed import DistributedSampler

    for group in opt.param_groups:
        group["lr"] = _lr_at(config, epoch)
    sampler = DistributedSampler(range(len(train_set)), num_replicas=dinfo.world, rank=dinfo.rank,
                                 shuffle=True, seed=config.seed, drop_last=False)
    sampler.set_epoch(epoch)
    order = list(sampler)
    gen = torch.Generator().manual_seed(config.seed * 1_000_003 + epoch * 1009 + dinfo.rank)
    net.train()
    batches = [order[i:i + per_rank_batch] for i in range(0, len(order), per_rank_batch)]
    total, count = 0.0, 0
    bar = log.bar(batches, desc=f"epoch {epoch + 1}/{config.epochs}")
    for idx in bar:
        x = torch.from_numpy(np.stack([train_set[i].image for i in idx]).astype(np.float32))[:, None].to(device)
        y = torch.from_numpy(np.stack([train_set[i].mask for i in idx]).astype(np.float32))[:, None].to(device)
        lower = torch.tensor([train_set[i].fov == "lower" for i in idx], device=device)
        if config.augment:
            x, y = augment_batch(x, y, gen)
        loss = segmentation_loss(net(x), y, lower, config.loss)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total += float(loss.detach()) * len(idx)
        count += len(idx)
        if hasattr(bar, "set_postfix"):
            bar.set_postfix(loss=f"{total / count:.4f}")
    return total / max(count, 1)


class _Logger:
    def __init__(self, enabled: bool):
        self.enabled = enabled

    def bar(self, items, desc: str):
        if not self.enabled:
            return items
        from tqdm import tqdm

        return tqdm(items, desc=desc, unit="batch", leave=False, file=sys.stderr, dynamic_ncols=True)

    def line(self, text: str) -> None:
        if self.enabled:
            from tqdm import tqdm

            tqdm.write(text, file=sys.stderr)


# ---------------------------------------------------------------------------------------------
# export
# ---------------------------------------------------------------------------------------------
def export_model(config: TrainConfig, out_dir: Path, described, split, world: int, epochs_done: int,
                 stopped_by_time: bool, summary: Dict[str, Any]) -> Dict[str, Any]:
    """TorchScript file + manifest entry from ``best.pt`` (else ``last.pt``) of ``out_dir``."""
    import torch

    from .models import add_manifest_entry, file_mode, models_dir, sha256_file
    from .outputs import check_writable_dir
    from .segnet import ARCHITECTURE, DRUNet, count_parameters, script_model

    ck_path = out_dir / "best.pt" if (out_dir / "best.pt").is_file() else out_dir / "last.pt"
    ck = _load_checkpoint(ck_path)
    model = DRUNet(config.base_channels)
    model.load_state_dict(ck["model"])
    scripted = script_model(model)
    target_dir = Path(config.export_dir) if config.export_dir else models_dir()
    check_writable_dir(target_dir)
    file_name = f"{config.export}.pt"
    final = target_dir / file_name
    fd, tmp = tempfile.mkstemp(prefix=f".{file_name}.", suffix=".part", dir=target_dir)
    os.close(fd)
    try:
        os.chmod(tmp, file_mode())
        scripted.save(tmp)
        digest = sha256_file(tmp)
        os.replace(tmp, final)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    best = ck.get("best") or {}
    metrics = best.get("metrics") or {}
    thresholds = {k: v["threshold"] for k, v in metrics.items()}
    repro = config
    if stopped_by_time:
        repro = TrainConfig(**{**asdict(config), "stop_epoch": epochs_done, "max_minutes": None})
    entry = {
        "name": config.export,
        "file": file_name,
        "sha256": digest,
        "kind": "segmentation",
        "architecture": ARCHITECTURE,
        "base_channels": config.base_channels,
        "input_size": [config.size, config.size],
        "params": count_parameters(model),
        "fov": summary.get("fovs_trained") or list(FOVS),
        "thresholds": thresholds or {"unknown": 0.5},
        "normalisation": "percentiles 0.5-99.5 -> [0, 1], clipped; area/bilinear resize "
                         "(segmentation.preprocess)",
        "trained_on": described,
        "validation_patients": split["val_patients"],
        "metrics": {
            "validation": metrics,
            "evaluated_at": f"network size {config.size} x {config.size}, thresholds chosen on the validation split",
            "checkpoint_epoch": best.get("epoch", ck.get("epoch")),
            "epochs_trained": epochs_done,
            "train_minutes": summary.get("train_minutes"),
            "device": summary.get("device"),
            "world_size": world,
        },
        "loss": config.loss,
        "seed": config.seed,
        "command": repro.command(world),
        "argv": shlex.join(sys.argv),
        "torch_version": torch.__version__,
    }
    stored = add_manifest_entry(entry, target_dir)
    return {"file": str(final), "sha256": digest, "models_dir": str(target_dir), "entry": stored}


# ---------------------------------------------------------------------------------------------
# command line (the wrappers in cli.py import these lazily)
# ---------------------------------------------------------------------------------------------
def add_train_seg_parser(sub) -> None:
    p = sub.add_parser("train-seg", help="train the DRU-Net vessel segmentation and export TorchScript weights")
    p.add_argument("--data", action="append", required=True, metavar="PATH",
                   help="folder of N.png + N_gt.png pairs, or a case index CSV (repeatable)")
    p.add_argument("--out", type=Path, required=True, help="folder for checkpoints and the training history")
    p.add_argument("--epochs", type=int, default=40, help="planned epochs (the learning-rate schedule spans them)")
    p.add_argument("--batch-size", type=int, default=8, help="global batch size (split across torchrun processes)")
    p.add_argument("--base-channels", type=int, default=8, help="network width (8-16 for CPU use)")
    p.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate")
    p.add_argument("--weight-decay", type=float, default=1e-4, help="AdamW weight decay")
    p.add_argument("--loss", choices=LOSSES, default="per-fov",
                   help="per-fov: BCE for upper, Dice for lower frames (the paper); or dice, bce, combined")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=256, help="network input size (default 256)")
    p.add_argument("--val-fraction", type=float, default=0.2, help="share of patients held out for validation")
    p.add_argument("--folder-fov", choices=FOVS, default="upper", help="FoV of image/mask folders (default upper)")
    p.add_argument("--no-augment", dest="augment", action="store_false", help="switch augmentation off")
    p.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda or cuda:N")
    p.add_argument("--max-minutes", type=float, help="stop before an epoch that would end after this many minutes")
    p.add_argument("--stop-epoch", type=int, help="stop after this epoch (keeps the schedule of --epochs)")
    p.add_argument("--resume", nargs="?", const="last", metavar="CHECKPOINT",
                   help="continue from OUT/last.pt (or the given checkpoint)")
    p.add_argument("--export", metavar="NAME", help="export the best weights as NAME.pt with a manifest entry")
    p.add_argument("--export-dir", type=Path, help="where to export (default: Resources/Models or $TAVIREG_MODELS_DIR)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or per-epoch lines")
    p.add_argument("--json", action="store_true", help="print a JSON summary")


def config_from_args(args) -> TrainConfig:
    return TrainConfig(
        data=list(args.data), out=str(args.out), epochs=args.epochs, batch_size=args.batch_size,
        base_channels=args.base_channels, lr=args.lr, weight_decay=args.weight_decay, loss=args.loss,
        seed=args.seed, size=args.size, val_fraction=args.val_fraction, folder_fov=args.folder_fov,
        augment=args.augment, device=args.device, max_minutes=args.max_minutes, stop_epoch=args.stop_epoch,
        resume=args.resume, export=args.export,
        export_dir=str(args.export_dir) if args.export_dir else None, progress=not args.quiet,
    )


def run_train_seg(args) -> int:
    summary = train(config_from_args(args))
    if args.json and int(os.environ.get("RANK", "0") or 0) == 0:
        s = dict(summary)
        if "export" in s:
            s["export"] = {k: v for k, v in s["export"].items() if k != "entry"}
        print(json.dumps(s, indent=2, default=_json_default))
    return 0
