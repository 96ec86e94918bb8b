"""The registration step: (moving projection mask, fixed frame mask, ROI) in, affine M out.

Step 5 of the data flow. ``register_pair`` takes plain arrays on the fluoroscopy frame's pixel grid
and returns a ``RegistrationResult`` whose ``matrix`` is the affine M: a 3x3 homogeneous matrix
from moving-ROI pixel coordinates ((0, 0) = the ROI's top-left pixel) to frame pixel coordinates,
points as (x = col, y = row), pixel centres at integer coordinates.

Methods (all on identical inputs, so that comparisons are fair):

* ``cnn``: the registration CNN (``regnet.RegNet``, TorchScript weights from the manifest, kind
  ``registration``) predicts the affine in one forward pass;
* ``cnn+refine``: the CNN's affine, then ``refine_steps`` (the network's manifest ``refine_steps``,
  else 40) L-BFGS iterations on the 6 affine parameters minimising the loss the network is trained
  with (``pair_loss``: 1 - soft Dice of the warped moving image against the fixed image, averaged
  over a small blur pyramid, plus ``affine_prior``, whose scale term ``SCALE_WEIGHT`` holds the
  projection's magnification, which the C-arm geometry fixes, against shrinking the ROI onto the
  part of the frame's vessels that matches), half at half resolution, half at full, on 256 x 256
  window images whatever the network's input size. Registering to the DRU-Net segmentation, the
  refinement fits the segmentation's vessel probability rather than its thresholded mask
  (``fixed_probability``): confident vessel pixels weigh more than doubtful ones, and a vessel the
  network marked just below its threshold still counts a little. It
  starts from the network's affine, or from the identity (``init`` when given) where that already
  agrees better with the frame (a warning says so). (L-BFGS rather than Adam: on synthetic vessel
  trees Adam needed ~100 steps and a tuned learning rate to come within 1 px, L-BFGS reaches 0.4 px
  in 40 iterations, about 0.1-0.2 s on a 2-core CPU when it is not shared);
* ``sitk``: an optimisation-based affine registration of the same window images with SimpleITK
  (the paper's "traditional" alternative): Gaussian-blurred masks, mean squares metric restricted
  to the ROI, regular-step gradient descent, three resolutions (shrink 4, 2, 1).

Given the model's path lengths on the frame (``flow``: ``filling.ProjectedFlow``), ``cnn+refine``
registers only the part of the projection up to the contrast front that agrees best with the frame
(``filling.filled_front``): vessels of the model that carry no contrast in the frame would otherwise
be dragged onto the filled ones. ``cnn`` (one network pass, the fast method) and ``sitk`` register
the whole projection.

The registration window (``registration_window``): a square of side ``max(w, h) * (1 + 2 margin)``
frame pixels (margin 0.3 by default: the ROI keeps 62 % of the window, and a shift of up to ~19 %
of the window in any direction, e.g. a 20 mm table move, still lies inside), centred on the ROI and
snapped to whole pixels; where it leaves the frame it is padded with zeros. The moving image is the
projection mask with everything outside the ROI zeroed, the fixed image the frame's vessel mask;
both are cropped to the window and resized to the network's input (256 x 256; area averaging where
it shrinks, bilinear where it grows: ``segmentation.resize_image``) as floats in [0, 1].

Coordinate conventions (fixed here, used by training too):

* ``align_corners=False`` everywhere (``affine_grid``, ``grid_sample``, resizing): normalised
  coordinate u = -1 is the left/top *edge* of the window's first pixel and u = +1 the right/bottom
  edge of its last, at any resolution. For a window with top-left pixel (x0, y0) and side S frame
  pixels, the frame pixel coordinates of a normalised point are
  ``x = S/2 * u + x0 + (S - 1)/2``, ``y = S/2 * v + y0 + (S - 1)/2``, i.e. the 3x3 matrix
  ``A = [[S/2, 0, x0 + (S-1)/2], [0, S/2, y0 + (S-1)/2], [0, 0, 1]]`` (``Window.norm_to_frame``).
* ``theta`` (2x3, completed to the 3x3 Θ) follows ``affine_grid``: it maps *output* (fixed) grid
  points to where the moving image is sampled. The point map from the moving image to the fixed
  one is therefore Θ⁻¹, and in frame pixels
  ``M_frame = A · Θ⁻¹ · A⁻¹``   (frame pixels of the nominal projection -> frame pixels of the truth),
  ``M = M_frame · T_roi``, ``T_roi = [[1, 0, roi_x], [0, 1, roi_y], [0, 0, 1]]``.
  Conversely ``Θ = (A⁻¹ · M_frame · A)⁻¹`` (``frame_matrix_to_theta``).
* SimpleITK: the window images get spacing 2/N and origin -1 + 1/N, so their physical coordinates
  are the normalised ones; SimpleITK's registration transform maps fixed points to moving points,
  which is Θ itself (centre 0).

Agreement metrics (``RegistrationResult.metrics``), on the frame grid, of the registered projection
(``warp_mask``) against the fixed mask: ``dice``, ``precision``, ``recall`` inside the *ROI
footprint* (the frame region the warped ROI covers, clipped to the window: outside it the moving
image says nothing, so frame vessels there are not counted as misses), and ``window_dice``,
``window_precision``, ``window_recall`` over the whole window. ``segmentation.overlap_metrics``
computes them. Where the contrast front left part of the projection out, they judge the part
registered, and ``hidden_share`` says which share of the projection inside the ROI was left out (0
otherwise); the registered mask is always the whole projection.

Bad input raises ``InputError`` (empty moving image in the ROI, empty fixed mask or none of it in
the window, an ROI outside the frame, shapes that differ). A degenerate result (reflection, scale
outside [0.5, 2], anisotropy/shear beyond 1.6, the ROI centre mapped outside the window, no overlap
at all with the fixed mask) is *returned* with ``problems`` filled and ``valid`` False, so that a
front end can say why and show no overlay as if it were valid (``raise_if_invalid`` turns it into a
``RegistrationFailed``, an ``InputError``: exit status 2 and one line in the CLI).

Torch and SimpleITK are imported lazily.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .errors import InputError
from .roi import Roi, validate_roi

METHODS = ("cnn", "cnn+refine", "sitk")
ALIGN_CORNERS = False
DEFAULT_MARGIN = 0.3
NET_SIZE = 256
DEFAULT_REFINE_STEPS = 40
#: a cine frame whose registration gains no more than this in window Dice over the previous frame's
#: affine keeps that affine (``register_pair(hold=...)``): noise does not make a static run creep
RUN_HOLD_DICE = 0.005
#: L-BFGS iterations of ``cnn+refine`` for a cine frame started from the last frame's affine (it starts
#: near the optimum; ``DEFAULT_REFINE_STEPS`` from the network's affine)
RUN_REFINE_STEPS = 16
#: the refinement works on window images of this size whatever the network's input size
REFINE_SIZE = 256
#: check_affine limits
SCALE_RANGE = (0.5, 2.0)
MAX_ANISOTROPY = 1.6
#: below this Dice against the fixed mask (inside the ROI footprint) a registration is flagged as of low
#: agreement, unless the installed registration network's manifest entry gives ``low_agreement_dice``,
#: the threshold chosen on its training patients (``tavireg evaluate reg --split train``)
LOW_AGREEMENT_DICE = 0.3
#: blur pyramid of the loss: levels 0..3 = resolution 1, 1/2, 1/4, 1/8 (each then blurred, sigma 1)
LOSS_LEVELS = 4
#: ``affine_prior``'s weight on the squared log of the mean scale: the C-arm geometry fixes the
#: magnification, so a registration that grows or shrinks the projection much is more likely fitting
#: its ROI onto part of what the frame shows than following the patient
SCALE_WEIGHT = 1.0


class RegistrationFailed(InputError):
    """The registration produced no usable affine; the message says why (one line)."""


# ---------------------------------------------------------------------------------------------
# windows and matrices
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Window:
    """A square window of the frame: top-left pixel (x0, y0), side ``side`` frame pixels.

    It may extend beyond the frame (zero padding there).
    """

    x0: int
    y0: int
    side: int

    def norm_to_frame(self) -> np.ndarray:
        """3x3: normalised window coordinates (align_corners=False) -> frame pixel (x, y)."""
        s = float(self.side)
        return np.array([[s / 2, 0.0, self.x0 + (s - 1) / 2],
                         [0.0, s / 2, self.y0 + (s - 1) / 2],
                         [0.0, 0.0, 1.0]])

    def frame_to_norm(self) -> np.ndarray:
        return np.linalg.inv(self.norm_to_frame())

    def net_to_frame(self, size: int) -> np.ndarray:
        """3x3: pixel (x, y) of the window resized to ``size`` x ``size`` -> frame pixel (x, y)."""
        k = self.side / float(size)
        return np.array([[k, 0.0, self.x0 - 0.5 + 0.5 * k],
                         [0.0, k, self.y0 - 0.5 + 0.5 * k],
                         [0.0, 0.0, 1.0]])

    def slices(self, shape: Sequence[int]) -> Tuple[slice, slice, slice, slice]:
        """(frame rows, frame cols, window rows, window cols) of the part inside a frame of ``shape``."""
        rows, cols = int(shape[0]), int(shape[1])
        fr0, fr1 = max(0, self.y0), min(rows, self.y0 + self.side)
        fc0, fc1 = max(0, self.x0), min(cols, self.x0 + self.side)
        if fr1 <= fr0 or fc1 <= fc0:
            return slice(0, 0), slice(0, 0), slice(0, 0), slice(0, 0)
        return (slice(fr0, fr1), slice(fc0, fc1),
                slice(fr0 - self.y0, fr1 - self.y0), slice(fc0 - self.x0, fc1 - self.x0))

    def to_dict(self) -> Dict[str, int]:
        return {"x0": int(self.x0), "y0": int(self.y0), "side": int(self.side)}


def default_method(warnings: Optional[List[str]] = None, models_directory=None) -> str:
    """``cnn+refine`` when a registration network is installed, else ``sitk`` (named in ``warnings``)."""
    from .networks.weights import installed

    if installed("registration", models_directory):
        return "cnn+refine"
    if warnings is not None:
        warnings.append("no registration network is installed: registering with SimpleITK (--method sitk)")
    return "sitk"


def registration_window(roi: Sequence[int], margin: float = DEFAULT_MARGIN) -> Window:
    """The square window centred on ``roi``: side ``ceil(max(w, h) * (1 + 2 margin))``."""
    if not (0.0 <= float(margin) <= 2.0):
        raise InputError(f"window margin must lie in [0, 2], got {margin}")
    x, y, w, h = (int(v) for v in roi)
    side = int(math.ceil(max(w, h) * (1.0 + 2.0 * float(margin)) - 1e-9))
    x0 = int(math.floor(x + w / 2.0 - side / 2.0 + 0.5))
    y0 = int(math.floor(y + h / 2.0 - side / 2.0 + 0.5))
    return Window(x0, y0, side)


def roi_matrix(roi: Sequence[int]) -> np.ndarray:
    """T_roi (3x3): ROI pixel (x, y) -> frame pixel (x, y)."""
    return np.array([[1.0, 0.0, float(roi[0])], [0.0, 1.0, float(roi[1])], [0.0, 0.0, 1.0]])


def _h(theta) -> np.ndarray:
    t = np.asarray(theta, dtype=np.float64)
    if t.shape == (3, 3):
        return t.copy()
    if t.shape != (2, 3):
        raise ValueError(f"theta must be 2x3 or 3x3, got shape {t.shape}")
    return np.vstack([t, [0.0, 0.0, 1.0]])


def theta_to_frame_matrix(theta, window: Window) -> np.ndarray:
    """M_frame = A · Θ⁻¹ · A⁻¹ (frame pixels of the moving image -> frame pixels of the fixed one)."""
    a = window.norm_to_frame()
    big = _h(theta)
    if not np.all(np.isfinite(big)) or abs(np.linalg.det(big[:2, :2])) < 1e-12:
        raise RegistrationFailed("the predicted affine is singular (it collapses the image)")
    return a @ np.linalg.inv(big) @ np.linalg.inv(a)


def frame_matrix_to_theta(frame_matrix, window: Window) -> np.ndarray:
    """Θ (2x3) = (A⁻¹ · M_frame · A)⁻¹, the inverse of ``theta_to_frame_matrix``."""
    a = window.norm_to_frame()
    m = _h(frame_matrix)
    if not np.all(np.isfinite(m)) or abs(np.linalg.det(m[:2, :2])) < 1e-12:
        raise InputError("the affine is singular or not finite")
    return np.linalg.inv(np.linalg.inv(a) @ m @ a)[:2]


def theta_to_matrix(theta, window: Window, roi: Sequence[int]) -> np.ndarray:
    """The affine M (ROI pixels -> frame pixels) of a network theta."""
    return theta_to_frame_matrix(theta, window) @ roi_matrix(roi)


def matrix_to_theta(matrix, window: Window, roi: Sequence[int]) -> np.ndarray:
    """Θ (2x3) of the affine M."""
    return frame_matrix_to_theta(_h(matrix) @ np.linalg.inv(roi_matrix(roi)), window)


def apply_matrix(matrix, points) -> np.ndarray:
    """(n, 2) points (x, y) mapped by a 3x3 homogeneous matrix."""
    p = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    q = np.c_[p, np.ones(len(p))] @ _h(matrix).T
    return q[:, :2] / q[:, 2:3]


def roi_corners(roi: Sequence[int]) -> np.ndarray:
    """The four corner pixel centres of the ROI in ROI pixel coordinates (x, y)."""
    w, h = float(roi[2]) - 1, float(roi[3]) - 1
    return np.array([[0.0, 0.0], [w, 0.0], [w, h], [0.0, h]])


def corner_error(matrix_a, matrix_b, roi: Sequence[int]) -> float:
    """Largest distance (frame pixels) between the ROI's corners mapped by two ROI->frame matrices."""
    c = roi_corners(roi)
    return float(np.max(np.linalg.norm(apply_matrix(matrix_a, c) - apply_matrix(matrix_b, c), axis=1)))


# ---------------------------------------------------------------------------------------------
# images on the window and on the frame
# ---------------------------------------------------------------------------------------------
def crop_window(image: np.ndarray, window: Window, size: Optional[int] = None) -> np.ndarray:
    """``image`` (frame grid) on the window, zero outside the frame, as float32; resized to
    ``size`` x ``size`` when given (area averaging to shrink, bilinear to grow)."""
    arr = np.asarray(image, dtype=np.float32)
    out = np.zeros((window.side, window.side), np.float32)
    fr, fc, wr, wc = window.slices(arr.shape)
    out[wr, wc] = arr[fr, fc]
    if size is None or int(size) == window.side:
        return out
    from .segmentation import resize_image

    return resize_image(out, (int(size), int(size)))


def box_window(roi: Sequence[int], window: Window, size: Optional[int] = None) -> np.ndarray:
    """``crop_window`` of the ROI's box mask (1 inside the ROI), computed from its two 1D profiles:
    area averaging and bilinear resizing act on each axis alone, so the box's window image is the
    outer product of its resized row and column profiles (to float rounding), without building
    and resizing a frame-sized mask."""
    from .segmentation import resize_image

    x, y, w, h = (int(v) for v in roi)
    n = window.side if size is None else int(size)
    profiles = []
    for start, length in ((y - window.y0, h), (x - window.x0, w)):
        line = np.zeros((window.side, 1), np.float32)
        line[max(start, 0):max(start + length, 0)] = 1.0
        profiles.append((resize_image(line, (n, 1)) if n != window.side else line)[:, 0])
    return np.outer(profiles[0], profiles[1]).astype(np.float32)


def warp_mask(source: np.ndarray, matrix, out_shape: Sequence[int], threshold: float = 0.5) -> np.ndarray:
    """Render a mask through an affine: uint8 0/1 of ``out_shape``.

    ``matrix`` (3x3) maps ``source`` pixel coordinates (x, y) to output pixel coordinates: the ROI
    crop with the affine M, or a frame-grid mask with ``M_frame`` (the two give the same picture).
    Bilinear interpolation of the 0/1 mask with zeros beyond its edges, then ``>= threshold`` (a
    value within 1e-6 of it counts as reaching it, so that rounding does not decide ties). Only the
    output's part that the source's non-zero bounding box can reach is computed, by
    ``torch.nn.functional.grid_sample`` in float64 (several times faster than
    ``scipy.ndimage.affine_transform``, and the sample positions exact to ~1e-12 px); an all-ones
    source (a box: the ROI's footprint) in closed form.
    """
    import torch
    import torch.nn.functional as F

    src = np.asarray(source)
    if src.ndim != 2:
        raise InputError(f"mask to warp must be 2D, got shape {src.shape}")
    m = _h(matrix)
    rows, cols = int(out_shape[0]), int(out_shape[1])
    out = np.zeros((rows, cols), np.uint8)
    if not np.all(np.isfinite(m)) or abs(np.linalg.det(m[:2, :2])) < 1e-12:
        raise InputError("cannot warp through a singular or non-finite affine")
    nz_r = np.flatnonzero(src.any(axis=1))
    if nz_r.size == 0:
        return out
    nz_c = np.flatnonzero(src.any(axis=0))
    sr0, sr1, sc0, sc1 = int(nz_r[0]), int(nz_r[-1]) + 1, int(nz_c[0]), int(nz_c[-1]) + 1
    box = np.array([[sc0 - 1, sr0 - 1], [sc1, sr0 - 1], [sc1, sr1], [sc0 - 1, sr1]], float)
    mapped = apply_matrix(m, box)
    c0, r0 = np.floor(mapped.min(axis=0)).astype(int)
    c1, r1 = np.ceil(mapped.max(axis=0)).astype(int) + 1
    c0, r0, c1, r1 = max(c0, 0), max(r0, 0), min(c1, cols), min(r1, rows)
    if c1 <= c0 or r1 <= r0:
        return out
    inv = np.linalg.inv(m)
    xs = np.arange(c0, c1, dtype=np.float64)[None, :]
    ys = np.arange(r0, r1, dtype=np.float64)[:, None]
    if src.all():  # a box (the ROI's footprint): its bilinear value is a product of two 1D ramps
        u = inv[0, 0] * xs + inv[0, 1] * ys + inv[0, 2]
        v = inv[1, 0] * xs + inv[1, 1] * ys + inv[1, 2]
        vals = (np.clip(np.minimum(u + 1.0, src.shape[1] - u), 0.0, 1.0)
                * np.clip(np.minimum(v + 1.0, src.shape[0] - v), 0.0, 1.0))
        out[r0:r1, c0:c1] = vals >= float(threshold) - 1e-6
        return out
    # the source's non-zero bounding box with one pixel of zeros around it (at least 3 x 3)
    sub = np.zeros((sr1 - sr0 + 2, sc1 - sc0 + 2), np.float64)
    sub[1:-1, 1:-1] = src[sr0:sr1, sc0:sc1]
    # output pixel (x, y) -> source pixel (inverse of M) -> padded sub-array pixel -> grid_sample's
    # [-1, 1] with align_corners=True (-1 and +1 are the centres of the first and last pixels)
    h, w = sub.shape
    gx, gy = inv[0] * (2.0 / (w - 1)), inv[1] * (2.0 / (h - 1))
    grid = np.empty((r1 - r0, c1 - c0, 2), np.float64)
    grid[..., 0] = gx[0] * xs + gx[1] * ys + (gx[2] - (sc0 - 1) * 2.0 / (w - 1) - 1.0)
    grid[..., 1] = gy[0] * xs + gy[1] * ys + (gy[2] - (sr0 - 1) * 2.0 / (h - 1) - 1.0)
    vals = F.grid_sample(torch.from_numpy(sub)[None, None], torch.from_numpy(grid)[None], mode="bilinear",
                         padding_mode="zeros", align_corners=True)[0, 0].numpy()
    out[r0:r1, c0:c1] = vals >= float(threshold) - 1e-6  # ties (exact halves) go in, whatever the rounding
    return out


def check_affine(frame_matrix, window: Optional[Window] = None, roi: Optional[Sequence[int]] = None,
                 scale_range: Tuple[float, float] = SCALE_RANGE,
                 max_anisotropy: float = MAX_ANISOTROPY) -> List[str]:
    """Problems of a frame affine (3x3, frame -> frame) that make it implausible; [] when fine.

    A reflection (det <= 0), a scale (singular value) outside ``scale_range``, an anisotropy or
    shear (ratio of the singular values) beyond ``max_anisotropy``, and, with a window, a
    translation that maps the ROI's centre (``roi``, else the window's) outside the window.
    """
    m = _h(frame_matrix)
    if not np.all(np.isfinite(m)):
        return ["the affine holds non-finite values"]
    problems: List[str] = []
    lin = m[:2, :2]
    det = float(np.linalg.det(lin))
    s = np.linalg.svd(lin, compute_uv=False)
    if det <= 0:
        problems.append(f"the affine mirrors the image (determinant {det:.3g} <= 0)")
    if s[-1] < scale_range[0] or s[0] > scale_range[1]:
        problems.append(f"the affine scales by {s[-1]:.2f}-{s[0]:.2f}, outside {scale_range[0]:g}-{scale_range[1]:g}")
    if s[-1] > 0 and s[0] / s[-1] > max_anisotropy:
        problems.append(f"the affine shears or stretches the image {s[0] / s[-1]:.2f}-fold (limit {max_anisotropy:g})")
    if window is not None:
        if roi is not None:
            centre = np.array([roi[0] + (roi[2] - 1) / 2.0, roi[1] + (roi[3] - 1) / 2.0])
        else:
            centre = np.array([window.x0 + (window.side - 1) / 2.0, window.y0 + (window.side - 1) / 2.0])
        cx, cy = apply_matrix(m, centre)[0]
        lo_x, lo_y = window.x0 - 0.5, window.y0 - 0.5
        if not (lo_x <= cx <= lo_x + window.side and lo_y <= cy <= lo_y + window.side):
            problems.append(f"the affine moves the ROI's centre to ({cx:.0f}, {cy:.0f}), outside the registration window")
    return problems


# ---------------------------------------------------------------------------------------------
# the loss (shared with training) and the refinement
# ---------------------------------------------------------------------------------------------
def _pyramid_level(x, level: int):
    import torch.nn.functional as F

    if level == 0:
        return x
    x = F.avg_pool2d(x, 2 ** level, ceil_mode=True)
    k = x.new_tensor([0.0545, 0.2442, 0.4026, 0.2442, 0.0545])  # Gaussian, sigma 1
    c = x.shape[1]
    x = F.conv2d(F.pad(x, (2, 2, 0, 0)), k.view(1, 1, 1, 5).expand(c, 1, 1, 5).contiguous(), groups=c)
    return F.conv2d(F.pad(x, (0, 0, 2, 2)), k.view(1, 1, 5, 1).expand(c, 1, 5, 1).contiguous(), groups=c)


def soft_dice(a, b, eps: float = 1e-6):
    """Per-sample soft Dice 2 Σab / (Σa² + Σb²) of (B, C, H, W) tensors (1 only where a == b)."""
    inter = (a * b).flatten(1).sum(1)
    return (2 * inter + eps) / ((a * a).flatten(1).sum(1) + (b * b).flatten(1).sum(1) + eps)


def warp_images(theta, images):
    """``grid_sample`` of (B, C, H, W) images at ``affine_grid(theta)`` (bilinear, zeros outside)."""
    import torch.nn.functional as F

    grid = F.affine_grid(theta, list(images.shape), align_corners=ALIGN_CORNERS)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=ALIGN_CORNERS)


def affine_prior(theta, max_log_scale: float = math.log(1.5), max_anisotropy: float = 1.3,
                 max_shift: float = 0.8, scale_weight: float = SCALE_WEIGHT):
    """Per-sample penalty (B,) that is small for plausible thetas and grows outside them.

    ``scale_weight`` times the squared log of the mean scale (the projection's magnification is known:
    a 10 % change costs about 0.01 at weight 1, what a 1 % better Dice gains), then zero while the mean
    scale lies within exp(+-``max_log_scale``), the ratio of the singular values within
    ``max_anisotropy`` and the translation within +-``max_shift`` (normalised units; the window spans
    2) and quadratic beyond, plus a term against reflections. It uses no ground truth: it keeps
    training and refinement out of the degenerate corners (a ROI shrunk onto one blob of the blurred
    fixed image, or onto the part of a wrong segmentation that matches, scores well) that
    ``check_affine`` rejects.
    """
    import torch

    lin = theta[:, :, :2]
    det = lin[:, 0, 0] * lin[:, 1, 1] - lin[:, 0, 1] * lin[:, 1, 0]
    fro2 = (lin * lin).sum(dim=(1, 2))
    adet = det.abs().clamp_min(1e-6)
    log_scale = 0.5 * torch.log(adet)
    r = float(max_anisotropy)
    aniso = fro2 / adet - (r + 1.0 / r)  # s1/s2 + s2/s1 = |L|^2 / |det|
    shift = theta[:, :, 2].abs() - float(max_shift)
    return (float(scale_weight) * log_scale ** 2 + torch.relu(log_scale.abs() - float(max_log_scale)) ** 2
            + torch.relu(aniso) ** 2 + (torch.relu(shift) ** 2).sum(1) + torch.relu(-det + 0.1) ** 2)


def pair_loss(theta, moving, fixed, roi_box, levels: Sequence[int] = tuple(range(LOSS_LEVELS)),
              reduce: bool = True, prior_weight: float = 1.0):
    """1 - soft Dice of the warped moving image against the fixed image inside the warped ROI.

    ``moving``, ``fixed``, ``roi_box``: (B, 1, N, N) in [0, 1] on the window (``roi_box`` is 1
    inside the ROI). The moving image and the ROI box are warped with ``theta`` (STN, bilinear);
    the fixed image counts only inside the warped ROI box (outside it the moving image was zeroed,
    so the frame's vessels there are unknown, not missed; this also removes the pull towards
    scaling the ROI up over vessels beyond it). The Dice is averaged over a blur pyramid
    (``levels`` of ``LOSS_LEVELS``: resolution 1/2^k, then a sigma-1 Gaussian) so that the loss
    still has a gradient when thin vessels do not overlap yet; ``prior_weight`` times
    ``affine_prior`` is added (a small cost for a change of scale, zero for other plausible changes).
    Returns the batch mean (or the per-sample values with ``reduce=False``).
    """
    import torch

    warped = warp_images(theta, torch.cat([moving, roi_box], dim=1))
    w, footprint = warped[:, :1], warped[:, 1:2]
    f = fixed * footprint
    per = None
    for lvl in levels:
        d = 1 - soft_dice(_pyramid_level(w, lvl), _pyramid_level(f, lvl))
        per = d if per is None else per + d
    per = per / len(levels)
    if prior_weight:
        per = per + float(prior_weight) * affine_prior(theta)
    return per.mean() if reduce else per


def refine_theta(theta0, moving, fixed, roi_box, steps: int = DEFAULT_REFINE_STEPS):
    """Refine theta (B, 2, 3) by minimising ``pair_loss`` with L-BFGS (strong Wolfe line search).

    Coarse to fine: ``steps // 2`` iterations on the images at half resolution with the whole blur
    pyramid, then the rest at full resolution with the two finest levels (theta does not depend on
    the resolution: align_corners=False). Never returns a theta whose loss is worse than the start's
    (sample by sample). Measured on synthetic vessel trees with a modest affine (rotation 8 deg,
    scale 8 %, shift 10 px): 40 iterations from the identity bring the ROI corners within 0.4 px in
    about 0.1 s on a 2-core CPU.
    """
    import torch
    import torch.nn.functional as F

    theta0 = theta0.detach()
    theta = theta0.clone().requires_grad_(True)
    half = [F.avg_pool2d(x, 2) for x in (moving, fixed, roi_box)] if moving.shape[-1] >= 64 else None
    n1 = int(steps) // 2 if half is not None else 0
    stages = [(half, tuple(range(LOSS_LEVELS - 1)), n1), ((moving, fixed, roi_box), (0, 1), int(steps) - n1)]
    for images, levels, iters in stages:
        if iters <= 0:
            continue
        opt = torch.optim.LBFGS([theta], lr=1.0, max_iter=iters, history_size=10, line_search_fn="strong_wolfe",
                                tolerance_grad=1e-9, tolerance_change=1e-12)

        def closure(images=images, levels=levels, opt=opt):
            opt.zero_grad(set_to_none=True)
            loss = pair_loss(theta, *images, levels)
            loss.backward()
            return loss

        opt.step(closure)
    with torch.no_grad():
        final = pair_loss(theta, moving, fixed, roi_box, (0, 1), reduce=False)
        start = pair_loss(theta0, moving, fixed, roi_box, (0, 1), reduce=False)
        keep = (torch.isfinite(final) & (final <= start)).view(-1, 1, 1) & torch.isfinite(theta).all()
        return torch.where(keep, theta.detach(), theta0)


# ---------------------------------------------------------------------------------------------
# models
# ---------------------------------------------------------------------------------------------
_MODEL_CACHE: Dict[Tuple[str, str, str, str], Tuple[Any, Dict[str, Any]]] = {}


def get_model(model=None, device=None, directory=None, fov: Optional[str] = None):
    """``(module, entry or None, device)`` from a module, a manifest name or None (the default
    registration model: one whose manifest ``fov`` lists ``fov`` when there is one, see
    ``models.find_entry``). A module must be a RegNet (``architecture``) with align_corners False."""
    import torch

    from .networks.weights import find_entry, load_network_with_entry, models_dir, pick_device
    from .segmentation import FOVS

    dev = torch.device(device) if device is not None else pick_device()
    entry = None
    if model is None or isinstance(model, (str, Path)):
        name = str(model) if model is not None else "registration"
        entry = find_entry(name, directory, fov=fov if fov in FOVS else None)
        if entry["kind"] != "registration":
            raise InputError(f"network {entry['name']!r} is a {entry['kind']} network, not a registration network")
        key = (entry["name"], str(directory or models_dir()), str(dev), str(entry["sha256"]))
        if key not in _MODEL_CACHE:
            _MODEL_CACHE[key] = load_network_with_entry(entry["name"], dev, directory)
        model, entry = _MODEL_CACHE[key]
    arch = getattr(model, "architecture", None)
    if arch != "RegNet":
        raise InputError(f"the registration network is a {arch or 'unknown'} network, not a RegNet")
    if bool(getattr(model, "align_corners", False)):
        raise InputError("the registration network was built with align_corners=True; this version uses False")
    return model, entry, dev


def _model_size(model, entry) -> int:
    size = getattr(model, "in_size", None)
    if size is None and entry and entry.get("input_size"):
        size = entry["input_size"][0]
    return int(size or NET_SIZE)


# ---------------------------------------------------------------------------------------------
# results
# ---------------------------------------------------------------------------------------------
@dataclass
class RegistrationResult:
    """Output of ``register_pair``. ``matrix``: the affine M (ROI pixels -> frame pixels; docs/conventions.md).

    When ``valid`` is False (``problems`` says why), ``matrix`` and ``registered_mask`` are kept for
    diagnosis only: front ends show ``message`` and no overlay as if it were a registration.
    """

    matrix: np.ndarray  # 3x3
    frame_matrix: np.ndarray  # 3x3, frame pixels of the moving projection -> frame pixels
    method: str
    seconds: float  # the registration itself (window crop, network/optimiser, conversion)
    metrics: Dict[str, float]
    roi: Roi
    window: Window
    registered_mask: np.ndarray  # uint8 0/1 on the frame grid: the registered projection (ROI part)
    problems: List[str] = field(default_factory=list)  # why the affine is not usable (empty = valid)
    warnings: List[str] = field(default_factory=list)
    #: why a valid result should not be trusted without a look (low agreement); also in ``warnings``
    flags: List[str] = field(default_factory=list)
    model_name: Optional[str] = None
    input_size: int = NET_SIZE

    @property
    def valid(self) -> bool:
        return not self.problems

    @property
    def flagged(self) -> bool:
        return bool(self.flags)

    @property
    def message(self) -> str:
        if self.valid:
            return ""
        return f"{self.method} registration failed: " + "; ".join(self.problems)

    def raise_if_invalid(self) -> "RegistrationResult":
        if self.problems:
            raise RegistrationFailed(self.message + " (no overlay shown)")
        return self

    def to_dict(self) -> Dict[str, Any]:
        """JSON-ready: matrix, frame_matrix, roi, method, seconds, metrics, window, problems, warnings."""
        return {
            "matrix": np.asarray(self.matrix).tolist(),
            "frame_matrix": np.asarray(self.frame_matrix).tolist(),
            "matrix_convention": "3x3 homogeneous, ROI pixel (x=col, y=row; 0,0 = ROI top-left pixel) -> frame pixel",
            "roi": [int(v) for v in self.roi],
            "method": self.method,
            "seconds": float(self.seconds),
            "metrics": {k: float(v) for k, v in self.metrics.items()},
            "window": self.window.to_dict(),
            "input_size": int(self.input_size),
            "model": self.model_name,
            "valid": self.valid,
            "problems": list(self.problems),
            "flagged": self.flagged,
            "flags": list(self.flags),
            "warnings": list(self.warnings),
        }


# ---------------------------------------------------------------------------------------------
# registration
# ---------------------------------------------------------------------------------------------
def _as_mask(arr, what: str) -> np.ndarray:
    a = np.asarray(arr)
    if a.ndim != 2:
        raise InputError(f"{what} must be a 2D mask, got shape {a.shape}")
    if a.dtype == bool:
        return a.astype(np.uint8)
    if not np.issubdtype(a.dtype, np.number):
        raise InputError(f"{what} must hold numbers, got dtype {a.dtype}")
    if not np.all(np.isfinite(a)):
        raise InputError(f"{what} contains NaN or infinite values")
    return (a > (0.5 if np.issubdtype(a.dtype, np.floating) and a.max() <= 1.0 else 0)).astype(np.uint8)


def _as_probability(arr, shape: Sequence[int]) -> Optional[np.ndarray]:
    """A vessel probability map on the frame grid as float32, checked (InputError when unusable);
    None for None."""
    if arr is None:
        return None
    a = np.asarray(arr)
    if a.shape != tuple(shape):
        raise InputError(f"the vessel probability map has shape {a.shape}, the frame {tuple(shape)}")
    if not np.issubdtype(a.dtype, np.floating) or not np.all(np.isfinite(a)) or a.min() < 0 or a.max() > 1:
        raise InputError("the vessel probability map must hold finite floats between 0 and 1")
    return a.astype(np.float32, copy=False)


@dataclass
class MovingMask:
    """The moving projection of a registration, its ROI only, on a canvas ``pad`` pixels larger than the
    frame on every side (frame pixel (x, y) is canvas pixel (x + pad, y + pad)): a registration may
    bring into the frame a part of the model that projects outside it."""

    canvas: np.ndarray
    pad: int = 0

    def crop(self, window: Window, size: Optional[int] = None) -> np.ndarray:
        """``crop_window`` of the canvas on a window given in frame pixels."""
        return crop_window(self.canvas, Window(window.x0 + self.pad, window.y0 + self.pad, window.side), size)

    def roi_crop(self, roi: Sequence[int]) -> np.ndarray:
        """The ROI's pixels (an ROI in frame pixels, which may reach ``pad`` beyond the frame)."""
        x, y, w, h = (int(v) for v in roi)
        p = self.pad
        return self.canvas[y + p:y + p + h, x + p:x + p + w]


def extend_roi(roi: Sequence[int], canvas: np.ndarray, pad: int, rows: int, cols: int) -> Roi:
    """``roi`` (inside the frame) grown past each frame edge it reaches, over the part of the projection
    that goes on beyond that edge (within ``pad``; ``canvas`` as in ``MovingMask``): the user's ROI
    cut by the frame stands for the vessel it covers, not for where the frame ends."""
    x, y, w, h = (int(v) for v in roi)
    p = int(pad)
    if p <= 0:
        return (x, y, w, h)
    cols_span = slice(x + p, x + w + p)
    rows_span = slice(y + p, y + h + p)
    x0, y0, x1, y1 = x, y, x + w, y + h
    if y == 0:
        hit = np.flatnonzero(canvas[:p, cols_span].any(axis=1))
        y0 = int(hit[0]) - p if hit.size else y0
    if y + h == rows:
        hit = np.flatnonzero(canvas[rows + p:, cols_span].any(axis=1))
        y1 = rows + int(hit[-1]) + 1 if hit.size else y1
    if x == 0:
        hit = np.flatnonzero(canvas[rows_span, :p].any(axis=0))
        x0 = int(hit[0]) - p if hit.size else x0
    if x + w == cols:
        hit = np.flatnonzero(canvas[rows_span, cols + p:].any(axis=0))
        x1 = cols + int(hit[-1]) + 1 if hit.size else x1
    return (x0, y0, x1 - x0, y1 - y0)


def prepare_pair(moving_frame_mask, fixed_mask, roi, margin: float = DEFAULT_MARGIN, size: int = NET_SIZE,
                 canvas=None, pad: int = 0):
    """Checked inputs on the window: ``(moving, shown, fixed, roi, window, moving_w, fixed_w, roi_box_w)``;
    the last three float32 (size, size). ``moving`` (a ``MovingMask``): the projection inside ``roi``
    on the frame, which the affine is estimated from (nothing beyond the frame: the frame shows
    nothing there to match); ``shown``: ``(MovingMask, ROI)`` of what the affine moves into the
    registered projection: with ``canvas`` (the projection ``pad`` pixels beyond the frame on every
    side), ``roi`` grown past each frame edge it reaches over the projection there (``extend_roi``),
    so that a part of the vessel outside the frame that the registration brings in is drawn.
    InputError when unusable."""
    moving = _as_mask(moving_frame_mask, "moving projection mask")
    fixed = _as_mask(fixed_mask, "fixed (frame vessel) mask")
    if moving.shape != fixed.shape:
        raise InputError(
            f"the projection ({moving.shape[1]}x{moving.shape[0]}) and the frame mask ({fixed.shape[1]}x{fixed.shape[0]}) "
            "differ in size: both must lie on the frame's pixel grid"
        )
    rows, cols = fixed.shape
    roi = validate_roi(roi, rows, cols)
    x, y, w, h = roi
    roi_only = np.zeros_like(moving)
    roi_only[y:y + h, x:x + w] = moving[y:y + h, x:x + w]
    if not moving.any():
        raise InputError("the model's projection is empty: nothing to register")
    if not roi_only.any():
        raise InputError(f"ROI {x},{y},{w},{h} contains no part of the model's projection (draw it over the projection)")
    if not fixed.any():
        raise InputError("the frame's vessel segmentation is empty: no vessel to register to "
                         "(check the frame, its contrast filling, or the segmentation threshold)")
    window = registration_window(roi, margin)
    fr, fc, _, _ = window.slices(fixed.shape)
    if not fixed[fr, fc].any():
        raise InputError(
            "no overlap between the projection's region and the frame's vessels: the segmentation has no vessel "
            f"inside the registration window around ROI {x},{y},{w},{h}: pick a frame with contrast there, "
            "move the ROI over the filled vessels, or give the frame's vessel mask"
        )
    mov = MovingMask(roi_only)
    shown = (mov, roi)
    if canvas is not None:
        canvas, pad = _as_mask(canvas, "projection canvas"), int(pad)
        if canvas.shape != (rows + 2 * pad, cols + 2 * pad):
            raise InputError(f"the projection canvas is {canvas.shape[1]}x{canvas.shape[0]}, not the frame grown "
                             f"by {pad} pixels on every side")
        grown = extend_roi(roi, canvas, pad, rows, cols)
        if grown != roi:
            gx, gy, gw, gh = grown
            kept = np.zeros_like(canvas)
            kept[gy + pad:gy + pad + gh, gx + pad:gx + pad + gw] = canvas[gy + pad:gy + pad + gh, gx + pad:gx + pad + gw]
            shown = (MovingMask(kept, pad), grown)
    return mov, shown, fixed, roi, window, mov.crop(window, size), crop_window(fixed, window, size), box_window(roi, window, size)


def _frame_metrics(registered: np.ndarray, fixed: np.ndarray, frame_matrix: np.ndarray, roi: Roi,
                   window: Window) -> Dict[str, float]:
    from .segmentation import overlap_metrics

    fr, fc, _, _ = window.slices(fixed.shape)
    box = np.ones((roi[3], roi[2]), np.uint8)
    footprint = warp_mask(box, frame_matrix @ roi_matrix(roi), fixed.shape)[fr, fc].astype(bool)
    reg, fix = registered[fr, fc], fixed[fr, fc]
    inside = overlap_metrics(reg & footprint, fix & footprint)
    whole = overlap_metrics(reg, fix)
    return {"dice": inside["dice"], "precision": inside["precision"], "recall": inside["recall"],
            "window_dice": whole["dice"], "window_precision": whole["precision"], "window_recall": whole["recall"]}


def _shown_warp(shown, frame_matrix: np.ndarray, shape) -> np.ndarray:
    """The registered projection on the frame: ``shown`` = (``MovingMask``, its ROI) moved by the frame
    affine (the part of the vessel beyond the frame that it brings in included)."""
    moving, roi = shown
    return warp_mask(moving.roi_crop(roi), np.asarray(frame_matrix) @ roi_matrix(roi), shape)


def _better_start(shown, fixed, roi: Roi, window: Window, init_m: Optional[np.ndarray],
                  metrics: Dict[str, float], method: str, hold: float = 0.0):
    """``(frame matrix, registered mask, metrics, warning or None)`` of the start (the identity, or
    ``init_m``) when the result of ``metrics`` does not agree better with ``fixed`` by more than
    ``hold`` in Dice over the whole registration window (the same region for both); None when it
    does. The warning says so when the result agrees less than the start; a result that gains less
    than ``hold`` is a frame that did not move, and the start is kept without one."""
    start_m = init_m if init_m is not None else np.eye(3)
    start_reg = _shown_warp(shown, start_m, fixed.shape)
    start_metrics = _frame_metrics(start_reg, fixed, start_m, roi, window)
    if metrics["window_dice"] > start_metrics["window_dice"] + hold or (
            hold == 0.0 and metrics["window_dice"] == start_metrics["window_dice"]):
        return None
    if metrics["window_dice"] >= start_metrics["window_dice"]:
        return start_m, start_reg, start_metrics, None
    start = "initial affine" if init_m is not None else "unregistered projection"
    note = (f"the {method} result agreed less with the frame's vessels than the {start} (Dice "
            f"{metrics['window_dice']:.3f} < {start_metrics['window_dice']:.3f} over the registration window): "
            f"the {start} is kept")
    return start_m, start_reg, start_metrics, note


def _compose_thetas(first, second):
    """Θ of sampling through ``first`` then ``second`` (the affine_grid convention): first · second."""
    import torch

    row = first.new_tensor([[[0.0, 0.0, 1.0]]]).expand(first.shape[0], 1, 3)
    return (torch.cat([first, row], 1) @ torch.cat([second, row], 1))[:, :2]


def register_pair(moving_frame_mask, fixed_mask, roi: Sequence[int], method: str = "cnn", model=None, *,
                  init=None, refine_steps: Optional[int] = None, device=None,
                  margin: Optional[float] = None, models_directory=None,
                  sitk_options: Optional[Dict[str, Any]] = None, passes: Optional[int] = None,
                  fov: Optional[str] = None, keep_better_start: bool = True,
                  hold: float = 0.0, prior=None, canvas=None, pad: int = 0, flow=None,
                  fixed_probability=None) -> RegistrationResult:
    """Register the model's projection (inside ``roi``) to the frame's vessel mask.

    ``moving_frame_mask``: the projection mask on the frame's pixel grid (everything outside ``roi``
    is ignored); ``fixed_mask``: the frame's vessel mask (DRU-Net output or a known mask), same
    shape; ``roi``: (x, y, w, h) frame pixels. ``method``: cnn, cnn+refine or sitk. ``model``: a
    loaded RegNet module, a manifest name, or None (the default registration model; not needed by
    sitk). ``init``: a 3x3 frame affine (``frame_matrix`` of a previous frame) to start from (cine
    warm start): the moving image is pre-warped by it and the result composed with it.
    ``margin``: the window margin (default: the model's ``window_margin`` from the manifest, else
    ``DEFAULT_MARGIN``). ``sitk_options``: keyword arguments of ``sitk_register``. ``passes``: how
    many times the CNN is applied, each pass to the moving image warped by the affine so far and
    composed with it (default: the model's ``cnn_passes`` from the manifest, else 1). ``fov``:
    the frame's field of view (upper, lower; None = unknown), which picks the default network when
    one is installed for that FoV. ``refine_steps``: L-BFGS iterations of ``cnn+refine`` (default:
    the model's ``refine_steps`` from the manifest, else ``DEFAULT_REFINE_STEPS``).
    ``keep_better_start``: a result whose Dice with the fixed mask over the registration window is
    below the start's (the identity, or ``init``) is replaced by the start, with a warning (off only
    for references that must show the loss's own optimum). ``prior``: a frame affine (the last cine
    frame's) standing in for the start in that comparison, not started from. ``hold``: with ``init``
    or ``prior``, that affine is also kept when the result gains no more than ``hold`` in that Dice
    (a cine frame that did not move does not creep: ``RUN_HOLD_DICE``). ``canvas``, ``pad``: see
    ``prepare_pair`` (the projection past the frame's edges, moved into the registered mask).
    ``flow``: the model's path lengths on this frame (``filling.ProjectedFlow``): cnn+refine then
    registers only the part of the projection up to the contrast front that agrees best with the
    frame (``filling.filled_front``: vessels of the model without contrast in this frame are left
    out), named in the warnings; the metrics and the keep-the-start check judge that part, and
    ``metrics["hidden_share"]`` says how much was left out (0 without); the registered mask is the
    whole projection. ``fixed_probability``: the segmentation's probability that ``fixed_mask``
    thresholds, which cnn+refine's refinement fits instead of the mask."""
    if method not in METHODS:
        raise InputError(f"registration method must be one of {', '.join(METHODS)}, got {method!r}")
    module, entry, dev, size = _method_network(method, model, device, models_directory, fov)
    margin, passes, refine_steps = _manifest_settings(entry, margin, passes, refine_steps)
    t0 = time.perf_counter()
    moving, shown, fixed, roi, window, mov_w, fix_w, box_w = prepare_pair(
        moving_frame_mask, fixed_mask, roi, margin, size, canvas, pad)
    probability = _as_probability(fixed_probability, fixed.shape)
    warnings, flags = [], []  # (lists of str)
    init_m, theta_init = _initial_affine(init, window)
    init_m = _initial_affine(prior, window)[0] if prior is not None else init_m  # what the result must beat
    # fitted: what the affine is judged by: the whole projection, or its part up to the contrast front
    if method == "sitk":
        theta, fitted, hidden_share = sitk_register(mov_w, fix_w, box_w, theta_init, **(sitk_options or {})), shown, 0.0
    else:
        theta, registered_part, hidden_share = _network_affine(
            method, (module, dev, passes), flow, moving, fixed, roi, window, (mov_w, fix_w, box_w), theta_init,
            refine_steps, warnings, probability, fov)
        fitted = shown if registered_part is moving else (registered_part, roi)
    frame_matrix, problems = _checked_frame_matrix(theta, window, roi)
    seconds = time.perf_counter() - t0
    if np.all(np.isfinite(frame_matrix)):
        registered = _shown_warp(fitted, frame_matrix, fixed.shape)
        metrics = _frame_metrics(registered, fixed, frame_matrix, roi, window)
        if not problems and keep_better_start:
            kept = _better_start(fitted, fixed, roi, window, init_m, metrics, method,
                                 hold if init_m is not None else 0.0)
            if kept is not None:
                frame_matrix, registered, metrics, note = kept
                warnings.extend([note] if note is not None else [])
        metrics["hidden_share"] = hidden_share
        if fitted is not shown:
            registered = _shown_warp(shown, frame_matrix, fixed.shape)  # the whole projection, as the front ends draw it
        if not problems:
            _check_overlap(registered, fixed, metrics, entry, models_directory, problems, flags, warnings)
    else:
        registered = np.zeros_like(fixed)
        metrics = {}
    matrix = frame_matrix @ roi_matrix(roi)
    return RegistrationResult(
        matrix=matrix, frame_matrix=frame_matrix, method=method, seconds=seconds, metrics=metrics, roi=roi,
        window=window, registered_mask=registered, problems=problems, warnings=warnings, flags=flags,
        model_name=entry["name"] if entry else None, input_size=size,
    )


def _check_overlap(registered, fixed, metrics: Dict[str, float], entry, models_directory, problems: List[str],
                   flags: List[str], warnings: List[str]) -> None:
    """A registered projection that misses the frame's vessels entirely is a problem; one that agrees
    less than the low-agreement threshold is flagged (``flags`` and ``warnings``)."""
    if not (registered & fixed).any():
        problems.append("the registered projection does not overlap the frame's vessels at all")
        return
    flag = _low_agreement_flag(metrics, entry, models_directory)
    if flag is not None:
        flags.append(flag)
        warnings.append(flag)


def _method_network(method: str, model, device, models_directory, fov: Optional[str]):
    """``(module, manifest entry, torch device, input size)`` of a registration method: the loaded
    network for cnn and cnn+refine; for sitk no module, the CPU and the size of the network
    ``model`` names, if any, so that comparisons use identical inputs."""
    import torch

    entry = None
    if method != "sitk":
        module, entry, dev = get_model(model, device, models_directory, fov)
        size = _model_size(module, entry)
    else:
        module, dev, size = None, torch.device("cpu"), NET_SIZE
        if model is not None and not isinstance(model, (str, Path)):
            size = int(getattr(model, "in_size", NET_SIZE))
        elif model is not None:
            from .networks.weights import find_entry

            entry = find_entry(str(model), models_directory)
            size = _model_size(None, entry)
    return module, entry, dev, size


def _manifest_settings(entry: Optional[Dict[str, Any]], margin, passes, refine_steps):
    """``(margin, passes, refine_steps)``: the caller's values, else the manifest entry's, else the
    built-in defaults; InputError when out of range."""
    if margin is None:
        margin = float((entry or {}).get("window_margin", DEFAULT_MARGIN))
    if passes is None:
        passes = int((entry or {}).get("cnn_passes", 1))
    if refine_steps is None:
        refine_steps = int((entry or {}).get("refine_steps", DEFAULT_REFINE_STEPS))
    if int(refine_steps) < 0:
        raise InputError(f"refine steps must be >= 0, got {refine_steps}")
    if not 1 <= int(passes) <= 10:
        raise InputError(f"CNN passes must lie in 1-10, got {passes}")
    return margin, passes, refine_steps


def _initial_affine(init, window: Window) -> Tuple[Optional[np.ndarray], Optional[np.ndarray]]:
    """``(3x3 frame affine, its Θ on the window)`` of ``init``, or (None, None) without one;
    InputError when it is unusable."""
    if init is None:
        return None, None
    init_m = _h(init)
    if init_m.shape != (3, 3):
        raise InputError("init must be a 3x3 frame affine")
    bad = check_affine(init_m)
    if bad:
        raise InputError("the initial affine is unusable: " + "; ".join(bad))
    return init_m, frame_matrix_to_theta(init_m, window)


def _network_theta(module, dev, mov_w, fix_w, box_w, theta_init, passes):
    """``(Θ, start Θ or None, (moving, fixed, box) tensors)`` of ``passes`` network passes: each
    pass sets Θ = Θ_so_far · Θ_net(moving warped by Θ_so_far), starting from ``theta_init``."""
    import torch

    with torch.no_grad():
        mv, fx, bx = (_window_tensor(a, dev) for a in (mov_w, fix_w, box_w))
        th0 = None
        if theta_init is not None:
            th0 = torch.as_tensor(theta_init, dtype=torch.float32, device=dev)[None]
        was_training = bool(getattr(module, "training", False))
        if was_training:  # (eval() walks every submodule: skipped when already in eval mode)
            module.eval()
        try:
            th = th0
            for _ in range(int(passes)):
                net_in = warp_images(th, mv) if th is not None else mv
                step = module(torch.cat([net_in, fx], dim=1)).float()
                th = step if th is None else _compose_thetas(th, step)
        finally:
            if was_training:
                module.train()
    return th, th0, (mv, fx, bx)


def _network_affine(method: str, network, flow, moving: MovingMask, fixed, roi: Roi, window: Window, images,
                    theta_init, refine_steps: int, warnings: List[str], probability=None,
                    fov: Optional[str] = None) -> Tuple[np.ndarray, MovingMask, float]:
    """``(window Θ, the part of the projection registered, the share left out)`` of cnn and cnn+refine:
    ``network`` = (module, device, passes), ``images`` = the window images (moving, fixed, ROI box);
    cnn+refine with ``flow``: the part up to the contrast front (``_filling_front``), named in
    ``warnings``, its tolerance that of the frame's field of view ``fov``; with ``probability`` (the
    segmentation's, on the frame grid), the refinement fits it instead of the fixed mask."""
    module, dev, passes = network
    mov_w, fix_w, box_w = images
    hidden_share = 0.0
    whole = []  # the network's pass on the whole projection, where judging the front needed it

    def network_on_whole():
        whole.append(_network_theta(module, dev, mov_w, fix_w, box_w, theta_init, passes))
        return whole[0][0][0].detach().cpu().double().numpy()

    front = None if flow is None or method != "cnn+refine" else _filling_front(flow, moving, images, window,
                                                                               theta_init, network_on_whole, fov)
    if front is not None:
        moving, front = front
        mov_w, hidden_share = moving.crop(window, mov_w.shape[-1]), front.share
        warnings.append(front.note())
        whole.clear()  # the network sees the part up to the front instead
    th, th0, net_inputs = whole[0] if whole else _network_theta(module, dev, mov_w, fix_w, box_w, theta_init, passes)
    if method == "cnn+refine" and refine_steps > 0:
        refine_fixed = fixed if probability is None else probability
        if mov_w.shape[-1] != REFINE_SIZE:
            net_inputs = _window_tensors(moving, refine_fixed, roi, window, REFINE_SIZE, dev)
        elif probability is not None:  # the network's moving and ROI images, the probability as fixed
            net_inputs = (net_inputs[0], _window_tensor(crop_window(probability, window, REFINE_SIZE), dev),
                          net_inputs[2])
        th = _refined_theta(th, th0, net_inputs, refine_steps, warnings)
    return th[0].detach().cpu().double().numpy(), moving, hidden_share


def _filling_front(flow, moving: MovingMask, window_images, window: Window, theta_init, network_theta,
                   fov: Optional[str] = None) -> Optional[Tuple[MovingMask, Any]]:
    """``(the projection up to the contrast front, the filling.FillingFront)``, or None when the whole
    projection is kept: ``filling.filled_front`` on the window images (moving, fixed, ROI box), judged
    from ``theta_init`` or at the window Θ ``network_theta()`` returns, with the tolerance of the
    frame's field of view ``fov``."""
    from .filling import filled_front, tolerance_for, window_flow

    mov_w, fix_w, box_w = window_images
    front = filled_front(mov_w, fix_w, box_w, window_flow(flow, window, mov_w.shape[-1], mov_w), theta_init,
                         network_theta, tolerance_for(fov))
    if not front.hidden.any():
        return None
    hidden = window_mask_on_frame(front.hidden, window, moving.canvas.shape)
    return MovingMask(np.where(hidden, 0, moving.canvas).astype(moving.canvas.dtype)), front


def window_mask_on_frame(mask_w: np.ndarray, window: Window, shape: Sequence[int]) -> np.ndarray:
    """A mask on the window's grid (N x N) on the frame grid ``shape``: every frame pixel of the window
    takes the window pixel it lies in; False outside the window."""
    n = np.asarray(mask_w).shape[0]
    out = np.zeros((int(shape[0]), int(shape[1])), bool)
    fr, fc, wr, wc = window.slices(shape)
    r = np.minimum((np.arange(wr.start, wr.stop) * n) // window.side, n - 1)
    c = np.minimum((np.arange(wc.start, wc.stop) * n) // window.side, n - 1)
    out[fr, fc] = np.asarray(mask_w, bool)[r[:, None], c[None, :]]
    return out


def _window_tensor(image_w: np.ndarray, dev):
    """A window image (size x size) as a (1, 1, size, size) tensor on ``dev``."""
    import torch

    return torch.from_numpy(image_w)[None, None].to(dev)


def _window_tensors(moving: MovingMask, fixed, roi: Roi, window: Window, size: int, dev):
    """(moving, fixed, ROI box) cropped to the window at ``size`` pixels, as (1, 1, size, size) tensors."""
    return tuple(_window_tensor(a, dev) for a in (
        moving.crop(window, size), crop_window(fixed, window, size), box_window(roi, window, size)))


def _refined_theta(th, th0, inputs, refine_steps: int, warnings: List[str]):
    """Θ after ``refine_steps`` L-BFGS iterations on ``inputs`` (moving, fixed, box), started from
    the network's Θ unless the plain start (``th0`` or the identity) scores better (then named in
    ``warnings``)."""
    import torch

    mv, fx, bx = inputs
    start = th0 if th0 is not None else th.new_tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]])
    with torch.no_grad():
        if float(pair_loss(start, mv, fx, bx)) < float(pair_loss(th, mv, fx, bx)):
            th = start
            warnings.append("refinement started from the " + ("initial affine" if th0 is not None else "identity")
                            + ": it agreed better with the frame than the network's affine")
    with torch.enable_grad():
        return refine_theta(th, mv, fx, bx, steps=refine_steps)


def _checked_frame_matrix(theta, window: Window, roi: Roi) -> Tuple[np.ndarray, List[str]]:
    """``(frame matrix, problems)`` of a window Θ: a NaN matrix when it cannot be converted, and
    what makes the affine unusable (empty = usable)."""
    try:
        frame_matrix = theta_to_frame_matrix(theta, window)
    except RegistrationFailed as exc:
        return np.full((3, 3), np.nan), [str(exc).replace(f"{exc.__class__.__name__}: ", "")]
    return frame_matrix, check_affine(frame_matrix, window, roi)


def _low_agreement_flag(metrics: Dict[str, float], entry: Optional[Dict[str, Any]],
                        models_directory) -> Optional[str]:
    """The LOW AGREEMENT flag when the Dice inside the ROI is below the agreement threshold, else None."""
    threshold, source = agreement_threshold(entry, models_directory)
    if metrics["dice"] < threshold:
        # three decimals: thresholds lie near 0.94, where two would print 'Dice 0.94 ... below 0.94'
        return (f"LOW AGREEMENT: Dice {metrics['dice']:.3f} between the registered projection and "
                f"the frame's vessels inside the ROI, below {threshold:.3f} ({source}); check the "
                "overlay before relying on it")
    return None


def agreement_threshold(entry: Optional[Dict[str, Any]] = None, models_directory=None) -> Tuple[float, str]:
    """``(threshold, where it comes from)`` of the low-agreement flag: the registration network's
    ``low_agreement_dice`` (``entry``, else the installed default registration network), chosen on its
    training patients; else ``LOW_AGREEMENT_DICE``."""
    if entry is None or entry.get("kind") != "registration":
        from .networks.weights import find_entry, installed

        entry = find_entry("registration", models_directory) if installed("registration", models_directory) else None
    value = (entry or {}).get("low_agreement_dice")
    if value is not None:
        return float(value), "threshold chosen on the registration network's training patients"
    return LOW_AGREEMENT_DICE, "built-in threshold: no threshold chosen on training data is installed"


# ---------------------------------------------------------------------------------------------
# SimpleITK (the optimisation-based alternative)
# ---------------------------------------------------------------------------------------------
def sitk_register(moving_w: np.ndarray, fixed_w: np.ndarray, roi_box_w: np.ndarray, theta_init=None, *,
                  blur: float = 1.0, iterations: int = 300, shrink: Sequence[int] = (4, 2, 1),
                  smoothing: Sequence[float] = (2.0, 1.0, 0.0), metric: str = "meansquares",
                  learning_rate: float = 0.05, min_step: float = 1e-4, relaxation: float = 0.7) -> np.ndarray:
    """Affine registration of window images with SimpleITK; returns Θ (2x3, affine_grid convention).

    Both images are Gaussian-blurred (``blur`` window pixels) masks; the metric only samples fixed
    points whose mapped position lies in the moving image's ROI (moving mask). Physical space =
    normalised window coordinates, so SimpleITK's fixed -> moving transform is Θ (centre 0).
    """
    import SimpleITK as sitk

    n = int(moving_w.shape[0])

    def image(a, pixel=sitk.sitkFloat32):
        im = sitk.GetImageFromArray(np.ascontiguousarray(a))
        im = sitk.Cast(im, pixel)
        im.SetSpacing((2.0 / n, 2.0 / n))
        im.SetOrigin((-1.0 + 1.0 / n, -1.0 + 1.0 / n))
        return im

    fixed = image(fixed_w)
    moving = image(moving_w)
    if blur > 0:
        fixed = sitk.SmoothingRecursiveGaussian(fixed, blur * 2.0 / n)
        moving = sitk.SmoothingRecursiveGaussian(moving, blur * 2.0 / n)
    reg = sitk.ImageRegistrationMethod()
    if metric == "meansquares":
        reg.SetMetricAsMeanSquares()
    elif metric == "correlation":
        reg.SetMetricAsCorrelation()
    else:
        raise InputError(f"sitk metric must be meansquares or correlation, got {metric!r}")
    # the moving image was cut at the ROI's border: leave out the band its blur smears there
    inner = roi_box_w >= 0.5
    if blur > 0:
        from scipy import ndimage

        inner = ndimage.binary_erosion(inner, iterations=int(math.ceil(2 * blur)))
    if not inner.any():
        inner = roi_box_w >= 0.5
    reg.SetMetricMovingMask(image(inner.astype(np.uint8), sitk.sitkUInt8))
    reg.SetMetricSamplingStrategy(reg.NONE)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(learningRate=learning_rate, minStep=min_step,
                                                 numberOfIterations=int(iterations), relaxationFactor=float(relaxation),
                                                 gradientMagnitudeTolerance=1e-8)
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel(list(shrink))
    reg.SetSmoothingSigmasPerLevel(list(smoothing))
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    tx = sitk.AffineTransform(2)
    tx.SetCenter((0.0, 0.0))
    if theta_init is not None:
        t = np.asarray(theta_init, float)
        tx.SetMatrix([float(v) for v in t[:2, :2].ravel()])
        tx.SetTranslation([float(t[0, 2]), float(t[1, 2])])
    reg.SetInitialTransform(tx, inPlace=True)
    shown = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)  # ITK prints "no valid points" etc. to stderr
    try:
        reg.Execute(fixed, moving)
    except RuntimeError as exc:
        raise RegistrationFailed("SimpleITK registration failed: " + " ".join(str(exc).split())[-200:]) from None
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(shown)
    a = np.array(tx.GetMatrix(), float).reshape(2, 2)
    c = np.array(tx.GetCenter(), float)
    t = np.array(tx.GetTranslation(), float)
    return np.c_[a, t + c - a @ c]
