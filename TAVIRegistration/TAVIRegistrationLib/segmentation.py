"""Vessel segmentation of a fluoroscopy frame with the DRU-Net (step 4 of the data flow).

``segment_frame(image)`` takes one 2D grey frame (any bit depth, 32-4096 pixels a side) and returns
a ``SegmentationResult`` with a uint8 0/1 mask and a float32 vessel probability at the input's size.

Pre-processing, shared with training (``preprocess``; one function so that both see the same
numbers):

1. ``normalize_intensity``: percentile scaling, the 0.5th percentile to 0 and the 99.5th to 1,
   clipped. It does not care whether the frame is 8-, 12- or 16-bit or has a rescale applied, and a
   few saturated pixels or collimator bands do not squash the contrast. Polarity is kept (X-ray
   convention: contrast-filled vessels darker; ``fluoro.read_fluoro`` already inverts MONOCHROME1).
2. ``resize_image`` to the network's input size (256 x 256): area averaging along an axis that
   shrinks, bilinear interpolation along one that grows. A non-square frame is stretched (with a
   warning), as in training.

The network's logits are resized back to the input's size (bilinear), a sigmoid gives the
probability, and the FoV's threshold gives the mask.

FoV (upper = aortic root / chest, lower = iliac-femoral / pelvis) and ``fov='auto'``:
one network serves both FoVs (training uses BCE on upper and Dice on lower frames, the paper's
losses); the FoV only picks the probability threshold that training chose on its validation split
for that FoV (and, if the manifest ever lists FoV-specific models, the model). ``'auto'`` reads the
FoV from the DICOM header when there is one (``fov_from_header``: BodyPartExamined, then series,
protocol and study descriptions: iliac/femoral/pelvis/leg/abdomen words mean lower,
heart/chest/thorax/aortic root/valve/TAVI words mean upper). Without a readable hint no image-based
guess is made: the FoV is reported as ``"unknown"``, the manifest's ``unknown`` threshold is used
(``train-seg`` chooses it over both FoVs, or with ``--folder-fov unknown`` on header-less training
images) and a warning says so. Pass ``fov='upper'|'lower'`` to choose.

Grad-CAM (``gradcam``): the gradient of the mean vessel logit over the predicted vessel pixels (all
pixels when nothing is predicted) with respect to the bottleneck features gives one weight per
channel; the ReLU of the weighted sum of the feature maps, resized to the input's size and scaled
to [0, 1], is the attention map.

Torch is imported lazily: importing this module (e.g. to build the CLI's parser) stays cheap.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from .errors import InputError
from .fluoro import AUTO_FRAME

INPUT_SIZE = (256, 256)
MIN_SIDE = 32
MAX_SIDE = 4096
PERCENTILES = (0.5, 99.5)
FOVS = ("upper", "lower")
#: the FoV of an image no header speaks for (``fov='auto'`` without a hint), and its manifest threshold key
UNKNOWN_FOV = "unknown"
DEFAULT_THRESHOLD = 0.5
_ASPECT_WARN = 1.25

#: FoV words of DICOM descriptions, matched from the start of a word: a stem ends in ``\w*`` (FEMORAL,
#: FEMORIS), a word without it must be whole ("TAVI" names the procedure; "TAVIRegistration" the
#: software that wrote the file, which is no hint)
_LOWER_RE = re.compile(r"\b(ILIAC\w*|FEMOR\w*|PELVI\w*|LEGS?|GROIN\w*|ABDOM\w*|RUN-?OFF|LOWER (EXTREM\w*|FOV|FIELD))\b")
_UPPER_RE = re.compile(r"\b(HEART|CARDI\w*|CHEST|THORA\w*|CORONAR\w*|ROOT|VALV\w*|TAVI|TAVR|ASCENDING|VENTRIC\w*"
                       r"|UPPER (FOV|FIELD))\b")


# ---------------------------------------------------------------------------------------------
# results
# ---------------------------------------------------------------------------------------------
@dataclass
class SegmentationResult:
    """Output of ``segment_frame``, all at the input image's size."""

    mask: np.ndarray  # uint8 0/1 (rows, cols)
    probability: np.ndarray  # float32 [0, 1] (rows, cols)
    fov_used: str  # "upper" | "lower" | "unknown"
    threshold: float
    model_name: Optional[str] = None
    warnings: List[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# pre-processing (shared with training)
# ---------------------------------------------------------------------------------------------
def validate_image(image: Any, what: str = "image") -> np.ndarray:
    """The image as a finite float32 2D array, or InputError saying what is wrong with it."""
    try:
        arr = np.asarray(image)
    except Exception:  # noqa: BLE001
        raise InputError(f"{what} is not an array") from None
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise InputError(f"{what} must hold numbers, got dtype {arr.dtype}")
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):
        raise InputError(
            f"{what} has {arr.shape[-1]} colour channels {tuple(arr.shape)}: give one 2D grey frame"
        )
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 2:
        raise InputError(f"{what} must be one 2D grey frame, got an array of shape {tuple(arr.shape)}")
    rows, cols = arr.shape
    if min(rows, cols) < MIN_SIDE:
        raise InputError(f"{what} is too small ({rows} x {cols} px; at least {MIN_SIDE} px a side)")
    if max(rows, cols) > MAX_SIDE:
        raise InputError(f"{what} is too large ({rows} x {cols} px; at most {MAX_SIDE} px a side)")
    arr = arr.astype(np.float32, copy=False)
    if not np.all(np.isfinite(arr)):
        raise InputError(f"{what} contains NaN or infinite values")
    lo, hi = float(arr.min()), float(arr.max())
    if hi <= lo:
        raise InputError(f"{what} is constant (every pixel is {lo:g}): nothing to segment")
    return arr


def normalize_intensity(image: np.ndarray, percentiles: Tuple[float, float] = PERCENTILES) -> np.ndarray:
    """Percentile scaling to [0, 1] (float32), robust to the bit depth and to outliers.

    The low percentile maps to 0 and the high one to 1, clipped; where the two coincide (a mostly
    flat image), the minimum and maximum are used instead.
    """
    arr = np.asarray(image, dtype=np.float32)
    lo, hi = np.percentile(arr, percentiles)
    if not hi > lo:
        lo, hi = float(arr.min()), float(arr.max())
    if not hi > lo:
        return np.zeros(arr.shape, np.float32)
    out = (arr - np.float32(lo)) / np.float32(hi - lo)
    return np.clip(out, 0.0, 1.0, out=out).astype(np.float32, copy=False)


def resize_image(image, size: Sequence[int]):
    """Resize a 2D array (numpy) or an (N, C, H, W) tensor to ``size`` = (rows, cols).

    Area averaging where it shrinks, bilinear (align_corners=False) where it grows; both are
    separable, so when both axes shrink (or both grow) one 2D pass does it (several times faster
    than two), and an axis that shrinks while the other grows is resized alone. Returns the same
    kind it was given (numpy float32 for numpy).
    """
    import torch
    import torch.nn.functional as F

    is_numpy = not isinstance(image, torch.Tensor)
    t = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None] if is_numpy else image
    target = (int(size[0]), int(size[1]))
    for shrink in (True, False):
        new = tuple(n if (n < c if shrink else n > c) else c for n, c in zip(target, t.shape[2:]))
        if new != tuple(t.shape[2:]):
            t = (F.interpolate(t, size=new, mode="area") if shrink
                 else F.interpolate(t, size=new, mode="bilinear", align_corners=False))
    if is_numpy:
        return t[0, 0].numpy().astype(np.float32, copy=False)
    return t


def preprocess(image, size: Sequence[int] = INPUT_SIZE, what: str = "image") -> Tuple[np.ndarray, List[str]]:
    """Validated, intensity-normalised image at the network's size, and warnings. Used by training too."""
    arr = validate_image(image, what)
    warnings: List[str] = []
    r, c = arr.shape
    if max(r, c) / min(r, c) > _ASPECT_WARN:
        warnings.append(
            f"{what} is not square ({r} x {c} px): stretched to {size[0]} x {size[1]} for the network, as in training"
        )
    return resize_image(normalize_intensity(arr), size), warnings


def resize_mask(mask: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """Binary mask (any non-zero = vessel) resized to ``size`` as uint8 0/1 (area/bilinear, then >= 0.5)."""
    m = (np.asarray(mask) > 0).astype(np.float32)
    return (resize_image(m, size) >= 0.5).astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# FoV
# ---------------------------------------------------------------------------------------------
def fov_from_text(*texts: Optional[str]) -> Optional[str]:
    """'lower' or 'upper' from free text (DICOM descriptions), or None when nothing says which."""
    joined = " " + " ".join(str(t) for t in texts if t).upper().replace("_", " ") + " "
    if not joined.strip():
        return None
    if _LOWER_RE.search(joined):
        return "lower"
    if _UPPER_RE.search(joined):
        return "upper"
    return None


def fov_from_header(header: Any) -> Optional[str]:
    """FoV from a DICOM header (pydicom Dataset or a mapping of keywords), or None."""
    if header is None:
        return None
    def get(keyword: str) -> Optional[str]:
        try:
            v = header.get(keyword) if isinstance(header, dict) else getattr(header, keyword, None)
        except Exception:  # noqa: BLE001 - a malformed element is no hint
            return None
        return str(v) if v else None

    # BodyPartExamined first: it is the coded field; then the free-text descriptions together.
    coded = fov_from_text(get("BodyPartExamined"))
    if coded:
        return coded
    return fov_from_text(*(get(k) for k in ("SeriesDescription", "ProtocolName",
                                            "PerformedProcedureStepDescription", "StudyDescription")))


def _resolve_fov(fov: str, fov_hint: Optional[str], warnings: List[str]) -> str:
    f = (fov or "auto").lower()
    if f in FOVS:
        return f
    if f != "auto":
        raise InputError(f"fov must be upper, lower or auto, got {fov!r}")
    if fov_hint in FOVS:
        return fov_hint
    warnings.append(
        "field of view unknown (no DICOM header says it): used the network's threshold for images of unknown "
        "FoV; pass --fov upper|lower to choose"
    )
    return UNKNOWN_FOV


# ---------------------------------------------------------------------------------------------
# models
# ---------------------------------------------------------------------------------------------
_MODEL_CACHE: Dict[Tuple[str, str, str, str], Tuple[Any, Dict[str, Any]]] = {}


def get_model(model=None, device=None, fov: Optional[str] = None, directory=None):
    """``(module, entry or None, device)`` from a module, a manifest name or None (the default)."""
    import torch

    from .networks.weights import find_entry, load_network_with_entry, models_dir, pick_device

    dev = torch.device(device) if device is not None else pick_device()
    if model is not None and not isinstance(model, (str, Path)):
        return model, None, dev
    name = str(model) if model is not None else "segmentation"
    entry = find_entry(name, directory, fov=fov if fov in FOVS else None)
    key = (entry["name"], str(directory or models_dir()), str(dev), str(entry["sha256"]))
    if key not in _MODEL_CACHE:
        _MODEL_CACHE[key] = load_network_with_entry(entry["name"], dev, directory)
    module, entry = _MODEL_CACHE[key]
    if entry["kind"] != "segmentation":
        raise InputError(f"network {entry['name']!r} is a {entry['kind']} network, not a segmentation network")
    return module, entry, dev


def _entry_size(entry: Optional[Dict[str, Any]], input_size) -> Tuple[int, int]:
    if input_size is not None:
        size = input_size
    elif entry and entry.get("input_size"):
        size = entry["input_size"]
    else:
        size = INPUT_SIZE
    if isinstance(size, int):
        size = (size, size)
    return int(size[0]), int(size[1])


def threshold_for(entry: Optional[Dict[str, Any]], fov_used: str) -> float:
    th = (entry or {}).get("thresholds") or {}
    for key in (fov_used, UNKNOWN_FOV, "all"):
        if key in th and th[key] is not None:
            return float(th[key])
    return DEFAULT_THRESHOLD


# ---------------------------------------------------------------------------------------------
# inference
# ---------------------------------------------------------------------------------------------
def segment_frame(image, fov: str = "auto", model=None, device=None, *, fov_hint: Optional[str] = None,
                  threshold: Optional[float] = None, input_size=None, models_directory=None) -> SegmentationResult:
    """Segment the vessels of one 2D grey frame.

    ``model``: None (the manifest's default segmentation model), a manifest name, or a loaded
    module (then ``threshold`` defaults to 0.5 and ``input_size`` to 256 x 256). ``fov_hint``: the
    FoV read from a header (see ``fov_from_header``), used by ``fov='auto'``. ``device``: default
    cuda when available, else cpu.
    """
    return segment_frames([image], fov, model, device, fov_hint=fov_hint, threshold=threshold,
                          input_size=input_size, models_directory=models_directory)[0]


def segment_frames(images: Sequence, fov: str = "auto", model=None, device=None, *, fov_hint: Optional[str] = None,
                   threshold: Optional[float] = None, input_size=None, models_directory=None,
                   batch_size: int = 8) -> List[SegmentationResult]:
    """``segment_frame`` for several frames of one run (one FoV), ``batch_size`` at a time through the
    network: what a run registration does ahead of its frames. One result per image, in order."""
    import torch

    if batch_size < 1:
        raise InputError(f"batch size must be at least 1, got {batch_size}")
    warnings: List[str] = []
    arrays = [validate_image(image) for image in images]
    fov_used = _resolve_fov(fov, fov_hint, warnings)
    module, entry, dev = get_model(model, device, fov_used, models_directory)
    size = _entry_size(entry, input_size)
    if threshold is None:
        threshold = threshold_for(entry, fov_used)
    elif not 0.0 < float(threshold) < 1.0:
        raise InputError(f"threshold must lie between 0 and 1, got {threshold}")
    from .networks.weights import inference_module

    net = inference_module(module)
    results: List[SegmentationResult] = []
    for start in range(0, len(arrays), batch_size):
        batch = arrays[start:start + batch_size]
        inputs = [preprocess(arr, size) for arr in batch]
        with torch.inference_mode():
            logits = net(torch.from_numpy(np.stack([x for x, _ in inputs]))[:, None].to(dev)).float()
            for k, arr in enumerate(batch):
                prob = torch.sigmoid(resize_image(logits[k:k + 1], arr.shape))[0, 0].cpu().numpy().astype(np.float32)
                results.append(SegmentationResult(
                    mask=(prob >= float(threshold)).astype(np.uint8), probability=prob, fov_used=fov_used,
                    threshold=float(threshold), model_name=entry["name"] if entry else None,
                    warnings=warnings + inputs[k][1]))
    return results


def gradcam(image, model=None, device=None, *, input_size=None, models_directory=None) -> np.ndarray:
    """Grad-CAM attention map (float32 in [0, 1], the input's size) on the network's bottleneck."""
    import torch

    arr = validate_image(image)
    module, entry, dev = get_model(model, device, None, models_directory)
    if not hasattr(module, "forward_with_features"):
        raise InputError("this model has no forward_with_features(): Grad-CAM needs a DRU-Net")
    size = _entry_size(entry, input_size)
    x, _ = preprocess(arr, size)
    was_training = bool(getattr(module, "training", False))
    module.eval()
    try:
        with torch.enable_grad():
            t = torch.from_numpy(x)[None, None].to(dev).requires_grad_(True)
            logits, feats = module.forward_with_features(t)
            vessel = (logits.detach() > 0).float()
            if float(vessel.sum()) > 0:
                score = (logits * vessel).sum() / vessel.sum()
            else:
                score = logits.mean()
            (grads,) = torch.autograd.grad(score, feats)
        weights = grads.mean(dim=(2, 3), keepdim=True)
        cam = torch.relu((weights * feats.detach()).sum(dim=1, keepdim=True))
        cam = resize_image(cam, arr.shape)[0, 0].cpu().numpy().astype(np.float32)
    finally:
        if was_training:
            module.train()
    peak = float(cam.max())
    return cam / peak if peak > 0 else np.zeros_like(cam)


# ---------------------------------------------------------------------------------------------
# image files (PNG/JPEG or DICOM) for the front ends
# ---------------------------------------------------------------------------------------------
@dataclass
class LoadedImage:
    image: np.ndarray  # float32 (rows, cols)
    fov_hint: Optional[str]
    source: str  # "png" | "jpeg" | "dicom"
    frame: int
    n_frames: int
    notes: List[str] = field(default_factory=list)  # e.g. which frame --frame auto chose


def _is_dicom(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return head[128:132] == b"DICM" or path.suffix.lower() in (".dcm", ".dicom")


def read_image_file(path: Union[str, Path], frame: Union[int, str, None] = None) -> LoadedImage:
    """One grey frame from a PNG/JPEG file (8-bit grey only) or a fluoroscopy DICOM file.

    DICOM goes through ``fluoro.read_fluoro`` (frame default 0, or ``"auto"``: the frame with the most
    contrast, named in ``notes``; out of range is an InputError); its header gives the FoV hint.
    PNG/JPEG (one frame: ``"auto"`` is frame 0): colour, 16-bit and 1-bit images are refused.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"image {path} does not exist")
    if not path.is_file():
        raise InputError(f"image {path} is not a file")
    if _is_dicom(path):
        from .fluoro import read_fluoro

        series = read_fluoro(path, require_geometry=False)  # segmentation needs the pixels only
        idx, note = series.resolve_frame(frame)
        return LoadedImage(validate_image(series.frame(idx), path.name), fov_from_header(series.header), "dicom",
                           int(idx), int(series.n_frames), [note] if note else [])
    from PIL import Image, UnidentifiedImageError

    try:
        im = Image.open(path)
    except UnidentifiedImageError:
        raise InputError(f"{path.name} is neither a PNG/JPEG image nor a DICOM file") from None
    except OSError as exc:
        raise InputError(f"cannot read {path.name}: {exc}") from None
    with im:
        fmt = (im.format or "").upper()
        if fmt not in ("PNG", "JPEG"):
            raise InputError(f"{path.name} is a {fmt or 'unknown'} image; give PNG, JPEG or DICOM")
        n = int(getattr(im, "n_frames", 1) or 1)
        if frame not in (None, 0, AUTO_FRAME):
            raise InputError(f"frame {frame} is out of range: {path.name} is a single-frame {fmt} image (frame 0 only)")
        cols, rows = im.size
        mode = im.mode
        if mode in ("CMYK", "YCbCr", "LAB", "HSV"):
            raise InputError(f"{path.name} is a colour image (mode {mode}); give an 8-bit grey image or the DICOM file")
        if mode.startswith("I;16") or mode in ("I", "F"):
            raise InputError(
                f"{path.name} is a {'16-bit' if mode.startswith('I;16') else '32-bit'} image (mode {mode}); "
                "give an 8-bit grey PNG/JPEG or the DICOM file (its header says how to read high bit depths)"
            )
        if mode == "1":
            raise InputError(f"{path.name} is a 1-bit (binary) image, a mask rather than an X-ray frame")
        if mode != "L" and mode not in _COLOUR_CONTAINERS:
            raise InputError(f"{path.name} has unsupported pixel mode {mode}; give an 8-bit grey image")
        if min(rows, cols) < MIN_SIDE:  # checked before decoding: a huge file is never loaded
            raise InputError(f"{path.name} is too small ({rows} x {cols} px; at least {MIN_SIDE} px a side)")
        if max(rows, cols) > MAX_SIDE:
            raise InputError(f"{path.name} is too large ({rows} x {cols} px; at most {MAX_SIDE} px a side)")
        notes: List[str] = []
        try:
            data = _grey_pixels(im, path.name, notes) if mode in _COLOUR_CONTAINERS else np.asarray(im, dtype=np.uint8)
        except (OSError, ValueError) as exc:
            raise InputError(f"cannot decode {path.name}: {exc}") from None
    return LoadedImage(validate_image(data, path.name), None, "png" if fmt == "PNG" else "jpeg", 0, n, notes)


#: PNG/JPEG pixel modes that may hold a grey picture (R = G = B, an opaque alpha): how most exports and
#: papers ship X-ray frames. Their grey content is read; real colour or transparency is refused.
_COLOUR_CONTAINERS = ("RGB", "RGBA", "RGBa", "P", "PA", "LA", "La")
#: largest difference between the colour channels of a pixel still taken for grey (lossy encoders)
GREY_CHANNEL_TOLERANCE = 2


def _grey_pixels(im, name: str, notes: List[str]) -> np.ndarray:
    """The grey (rows, cols) uint8 content of a colour or alpha PIL image; InputError when it is not grey."""
    rgba = np.asarray(im.convert("RGBA"), dtype=np.uint8)
    if (rgba[..., 3] < 255).any():
        raise InputError(f"{name} has transparent pixels (mode {im.mode}); give an opaque grey image or the DICOM file")
    channels = rgba[..., :3].astype(np.int16)
    spread = int((channels.max(axis=-1) - channels.min(axis=-1)).max())
    if spread > GREY_CHANNEL_TOLERANCE:
        raise InputError(f"{name} is a colour image (mode {im.mode}, colour channels differ by up to {spread}); "
                         "give an 8-bit grey image or the DICOM file")
    notes.append(f"{name} stores a grey picture as {im.mode} (colour channels equal within {spread}): read as grey")
    return np.round(channels.mean(axis=-1)).astype(np.uint8)


def colorize_map(values: np.ndarray) -> np.ndarray:
    """uint8 RGB heat map (dark blue - cyan - yellow - red) of values in [0, 1]."""
    v = np.clip(np.asarray(values, np.float32), 0, 1)
    stops = np.array([0.0, 0.35, 0.65, 1.0], np.float32)
    colours = np.array([[0, 0, 128], [0, 200, 255], [255, 230, 0], [220, 0, 0]], np.float32)
    rgb = np.stack([np.interp(v, stops, colours[:, k]) for k in range(3)], axis=-1)
    return rgb.round().astype(np.uint8)


def heat_overlay(image: np.ndarray, cam: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    grey = normalize_intensity(image)[..., None] * 255.0
    blend = (1 - alpha * cam[..., None]) * grey + alpha * cam[..., None] * colorize_map(cam).astype(np.float32)
    return np.clip(blend.round(), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# overlap metrics (training validation and evaluation)
# ---------------------------------------------------------------------------------------------
def threshold_counts(response: np.ndarray, truth: np.ndarray, thresholds: Sequence[float]) -> np.ndarray:
    """(len(thresholds), 3) array of TP, FP, FN of ``response >= t`` against ``truth`` for every t
    (one sort instead of one comparison of the whole image per threshold)."""
    r = np.asarray(response, np.float32).ravel()
    t = np.asarray(truth).ravel() > 0
    th = np.asarray(thresholds, np.float32)
    all_sorted = np.sort(r)
    true_sorted = np.sort(r[t])
    n_pred = r.size - np.searchsorted(all_sorted, th, side="left")
    tp = true_sorted.size - np.searchsorted(true_sorted, th, side="left")
    return np.stack([tp, n_pred - tp, true_sorted.size - tp], axis=1).astype(np.int64)


def scores_from_counts(counts: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(dice, precision, recall) arrays of TP/FP/FN counts (last axis), with ``overlap_metrics``'
    conventions: Dice 1 where both masks are empty, precision/recall NaN where undefined."""
    tp, fp, fn = (counts[..., i].astype(float) for i in range(3))
    with np.errstate(divide="ignore", invalid="ignore"):
        denom = 2 * tp + fp + fn
        dice = np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 1.0)
        precision = np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1), np.nan)
        recall = np.where(tp + fn > 0, tp / np.maximum(tp + fn, 1), np.nan)
    return dice, precision, recall


def overlap_metrics(pred: np.ndarray, truth: np.ndarray) -> Dict[str, float]:
    """Dice, precision and recall of a binary prediction against a binary truth.

    Undefined ratios (nothing predicted / nothing true) are NaN, except Dice of two empty masks = 1.
    """
    p = np.asarray(pred) > 0
    t = np.asarray(truth) > 0
    tp = float(np.count_nonzero(p & t))
    fp = float(np.count_nonzero(p & ~t))
    fn = float(np.count_nonzero(~p & t))
    denom = 2 * tp + fp + fn
    return {
        "dice": 2 * tp / denom if denom > 0 else 1.0,
        "precision": tp / (tp + fp) if tp + fp > 0 else float("nan"),
        "recall": tp / (tp + fn) if tp + fn > 0 else float("nan"),
    }
