"""Synthetic TAVI cases with ground truth: the ``tavireg phantom`` engine.

For each patient (deterministic from ``(seed, patient index)``):

* a pre-operative vessel tree (``anatomy.generate_anatomy``), its closed lumen surface saved as
  ``model.vtk`` (LPS, ``SPACE=LPS``: the file a user loads), and ``anatomy.json`` (centerlines,
  radii, named landmarks, drawn parameters);
* the intra-operative state: ``anatomy.deform_anatomy`` (stiff-wire straightening of the iliacs,
  root displacement), expressed as a displacement of *any* point (``Deformation``) so that surface
  vertices, lumen voxels, landmarks, centerlines and devices all move the same way; per frame a
  periodic cardiac and respiratory motion of the root on top; per series a rigid pose ``T_true``
  (table shift up to 20 mm, rotation up to 3.5 deg about a random axis through the isocentre);
* series of XA frames (multi-frame cine or single frames) in the upper FoV (aortic root views,
  LAO/RAO up to 30 deg, CRA/CAU up to 20 deg; half of them coplanar to the annulus) and the lower
  FoV (iliac/femoral, near AP), with clinical SID/SOD/detector ranges, written as XA DICOM with the
  *nominal* geometry (what registration must recover from);
* ground truth per frame: the vessel mask as opacified in that frame, the true projection of the
  model (VTK silhouette of the deformed, posed surface), the landmarks in frame pixels, and the
  least-squares 2D affine from the nominal to the true projection of the centerline points.

Layout of ``DIR``::

    index.csv                 one row per frame (columns in INDEX_COLUMNS)
    split.json                patient-wise train/val/test split
    contact_sheet.png         (--contact-sheet) synthetic frames next to real angiograms
    patients/P000/model.vtk   pre-operative lumen surface (LPS mm)
    patients/P000/anatomy.json
    patients/P000/case.json   per series: nominal geometry, isocentre, T_true, contrast, imaging,
                              devices, per-frame motion, affine, landmarks
    patients/P000/series_00.dcm
    patients/P000/masks/s00_f000.png                 opacified vessel mask (0/255)
    patients/P000/projections/s00_f000_true.png      true projection of the model
    patients/P000/projections/s00_nominal.png        pre-op model under the nominal geometry

GT mask definition ("as opacified", what a reader would trace): a lumen voxel counts as visibly
opacified when the iodine attenuation across its vessel, ``c * C_I * mu_I * 2 r``, is at least
``VISIBILITY_ATTENUATION`` (about a 6 % intensity drop); the mask is the projection of those
voxels, cut to the true projection's silhouette (so it has the model's sharp outline) and to the
open (collimated) field.
"""

from __future__ import annotations

import csv
import io
import json
import math
import multiprocessing as mp
import os
import shutil
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Dict, List, Optional, Tuple

import numpy as np

from ..errors import InputError
from ..export import strict_json
from ..geometry import CArmGeometry, project

if TYPE_CHECKING:  # for annotations only; imported where used (see below)
    from . import xray

# scipy, VTK and the image-formation module are imported where used: building the ``tavireg``
# parser imports this module and must stay light.

#: procedure stages of an upper-FoV series, in procedure order (``xray.build_upper_devices``); the
#: index's ``stage`` column (empty for the lower FoV)
STAGES = ("wire", "crimped", "deploying", "deployed")
STAGE_PROBABILITIES = (0.35, 0.3, 0.2, 0.15)

FORMAT = "TAVIRegistration.phantom"
#: Version of the generator, in every row of ``index.csv`` (``phantom_version``; absent = 1) and in
#: ``case.json``. 2: the sinuses of Valsalva fill with the aortic root, not under the coronary rule;
#: renal arteries no longer follow an iliac limb's injection (``contrast_rules``).
VERSION = 2
PHANTOM_DATETIME = datetime(2026, 1, 1, 8, 0, 0)  # fixed study date/time: byte-reproducible files
VOXEL_MM = 1.0                 # lumen voxel size of the contrast splat
SURFACE_VOXEL_MM = 1.0         # voxel size of the model surface (about 190k triangles)
VISIBILITY_ATTENUATION = 0.06
MASK_PATH_MM = 0.3             # minimum splatted path length of visible lumen in a mask pixel
CARDIAC_SIGMA_MM = 40.0
RESPIRATORY_SIGMA_MM = 120.0
DEFORM_NEIGHBOURS = 8
DEFORM_TAU_MM = 1.0
INDEX_COLUMNS = (
    "patient", "split", "fov", "series", "image", "frame", "mask", "projection_true",
    "projection_nominal", "case", "affine", "affine_rms_px", "opacified_px", "rows", "cols",
    "primary_deg", "secondary_deg", "sid_mm", "sod_mm", "pixel_spacing_mm", "isocenter_lps",
    "cine", "stage", "phantom_version",
)


# =============================================================================================
# configuration
# =============================================================================================
@dataclass
class PhantomConfig:
    out: Path
    patients: int = 10
    seed: int = 0
    frames_per_patient: int = 100
    workers: int = 0               # 0: min(2, cpu count)
    contact_sheet: bool = False
    real_dir: Optional[Path] = None  # real angiograms (N.png) for the contact sheet
    size: Optional[int] = None     # force square frames of this many pixels (tests)
    overwrite: bool = False
    upper_fraction: float = 0.6

    def validate(self) -> None:
        if not 1 <= int(self.patients) <= 1000:
            raise InputError(f"--patients must be 1-1000, got {self.patients}")
        if not 1 <= int(self.frames_per_patient) <= 2000:
            raise InputError(f"--frames-per-patient must be 1-2000, got {self.frames_per_patient}")
        if self.size is not None and not 64 <= int(self.size) <= 2048:
            raise InputError(f"--size must be 64-2048 pixels, got {self.size}")
        if int(self.seed) < 0:
            raise InputError(f"--seed must be a non-negative integer, got {self.seed}")
        if not 0.0 <= float(self.upper_fraction) <= 1.0:
            raise InputError("upper_fraction must be in [0, 1]")


def patient_name(i: int) -> str:
    return f"P{i:03d}"


def split_patients(n: int, seed: int) -> Dict[str, str]:
    """Patient-wise split like the paper's (whole patients held out): about 70 % train, 10 % val,
    20 % test (10 patients: 7/1/2); deterministic by seed."""
    names = [patient_name(i) for i in range(n)]
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x5B117]))
    order = [names[i] for i in rng.permutation(n)]
    n_test = max(1, int(round(0.2 * n))) if n >= 2 else 0
    n_val = max(1, int(round(0.1 * n))) if n >= 3 else 0
    out = {}
    for k, name in enumerate(order):
        out[name] = "test" if k < n_test else ("val" if k < n_test + n_val else "train")
    return {name: out[name] for name in names}


# =============================================================================================
# deformation of arbitrary points
# =============================================================================================
@dataclass
class Binding:
    idx: np.ndarray  # (N, k) centerline sample indices
    w: np.ndarray    # (N, k) weights (rows sum to 1)

    @property
    def owner(self) -> np.ndarray:
        return self.idx[np.arange(len(self.idx)), np.argmax(self.w, axis=1)]


class Deformation:
    """The intra-operative deformation of ``deform_anatomy`` as a displacement of any point.

    Wire straightening is known per centerline sample (``wire_only - pre``); a point takes the
    displacement of the samples that "own" it, a soft arg-max of ``r_i - |x - c_i|`` over its
    ``DEFORM_NEIGHBOURS`` nearest samples (the lumen is the union of those spheres), so a wall
    point moves with its own vessel. Then the root displacement ``g(y) D`` of ``deform_anatomy``
    (Gaussian about the annulus) and, per frame, cardiac and respiratory root motion
    (Gaussians of ``CARDIAC_SIGMA_MM`` and ``RESPIRATORY_SIGMA_MM``)."""

    def __init__(self, pre, wire_only, deformation_params: dict):
        from scipy.spatial import cKDTree
        names = list(pre.centerlines)
        self.names = names
        self.P = np.concatenate([np.asarray(pre.centerlines[n], float) for n in names])
        self.r = np.concatenate([np.asarray(pre.radii[n], float) for n in names])
        self.W = np.concatenate([np.asarray(wire_only.centerlines[n], float) - np.asarray(pre.centerlines[n], float)
                                 for n in names])
        self.segment = np.concatenate([np.full(len(pre.centerlines[n]), k) for k, n in enumerate(names)])
        self.tree = cKDTree(self.P)
        self.center = np.asarray(pre.landmarks["annulus_center"], float)
        self.D = np.asarray(deformation_params.get("root_motion_vector_mm", (0, 0, 0)), float)
        self.sigma = float(deformation_params.get("root_motion_sigma_mm", 40.0))

    def bind(self, x: np.ndarray) -> Binding:
        x = np.asarray(x, float).reshape(-1, 3)
        k = min(DEFORM_NEIGHBOURS, len(self.P))
        d, idx = self.tree.query(x, k=k)
        if k == 1:
            d, idx = d[:, None], idx[:, None]
        score = self.r[idx] - d
        score -= score.max(axis=1, keepdims=True)
        w = np.exp(score / DEFORM_TAU_MM)
        w /= w.sum(axis=1, keepdims=True)
        return Binding(idx.astype(np.int64), w.astype(np.float64))

    def apply(self, x: np.ndarray, binding: Optional[Binding] = None,
              cardiac_mm=(0.0, 0.0, 0.0), respiratory_mm=(0.0, 0.0, 0.0)) -> np.ndarray:
        """Intra-operative positions (pre-op frame, before the rigid pose) of pre-op points."""
        x = np.asarray(x, float).reshape(-1, 3)
        b = binding if binding is not None else self.bind(x)
        y = x + np.einsum("nk,nkj->nj", b.w, self.W[b.idx])
        for vec, sig in ((self.D, self.sigma), (np.asarray(cardiac_mm, float), CARDIAC_SIGMA_MM),
                         (np.asarray(respiratory_mm, float), RESPIRATORY_SIGMA_MM)):
            if not np.any(vec):
                continue
            g = np.exp(-np.sum((y - self.center) ** 2, axis=1) / (2.0 * sig * sig))
            y = y + g[:, None] * vec[None, :]
        return y


def pose_matrix(isocenter, axis, angle_deg: float, shift_mm) -> np.ndarray:
    """4x4 rigid transform: rotation by ``angle_deg`` about ``axis`` through ``isocenter``, then
    a shift."""
    from . import xray
    R = xray.rotation_about(axis, math.radians(angle_deg))
    c = np.asarray(isocenter, float)
    T = np.eye(4)
    T[:3, :3] = R
    T[:3, 3] = c - R @ c + np.asarray(shift_mm, float)
    return T


def true_points(deformation: Deformation, T: np.ndarray, points, frame: dict,
                binding: Optional[Binding] = None) -> np.ndarray:
    """Pre-op points -> intra-op LPS of one frame (deformation, frame motion, rigid pose)."""
    from . import xray
    y = deformation.apply(points, binding, frame.get("cardiac_mm", (0, 0, 0)),
                          frame.get("respiratory_mm", (0, 0, 0)))
    return xray.apply_pose(T, y)


def load_case(patient_dir) -> Tuple[object, dict, Deformation]:
    """(pre-op Anatomy, case dict, Deformation) of a generated patient folder: everything needed
    to re-derive the ground truth from the files."""
    from .anatomy import anatomy_from_json, deform_anatomy

    patient_dir = Path(patient_dir)
    pre = anatomy_from_json(json.loads((patient_dir / "anatomy.json").read_text()))
    case = json.loads((patient_dir / "case.json").read_text())
    dp = case["deformation"]
    wire_only = deform_anatomy(pre, 0, wire_straightening=dict(dp["wire_straightening"]),
                               root_motion_mm=0.0, access_side=dp["access_side"])
    return pre, case, Deformation(pre, wire_only, dp)


def series_geometry(series: dict) -> CArmGeometry:
    g = series["geometry"]
    return CArmGeometry(g["primary_angle_deg"], g["secondary_angle_deg"], g["sid_mm"], g["sod_mm"],
                        tuple(g["imager_pixel_spacing_mm"]), g["rows"], g["cols"], tuple(g["isocenter_lps"]))


# =============================================================================================
# contrast
# =============================================================================================
def _segment_flow_distance(pre) -> Dict[str, np.ndarray]:
    """Per centerline sample: distance (mm) along the vessel tree from the aortic root."""
    from scipy.spatial import cKDTree
    from .anatomy import CHAINS

    out: Dict[str, np.ndarray] = {}

    def arclen(p):
        return np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(p, axis=0), axis=1))])

    aorta_pts, _ = pre.chain("aorta")
    s_aorta = arclen(aorta_pts)
    tree_a = cKDTree(aorta_pts)
    k = 0
    for name in CHAINS["aorta"]:
        p = pre.centerlines[name]
        start = k if k == 0 else k - 1
        out[name] = s_aorta[start:start + len(p)]
        k = start + len(p)
    s_bif = s_aorta[-1]
    chain_trees = {}
    for side in ("left", "right"):
        pts, _ = pre.chain(f"{side}_iliofemoral")
        s = s_bif + arclen(pts)
        chain_trees[side] = (cKDTree(pts), s)
        k = 0
        for name in CHAINS[f"{side}_iliofemoral"]:
            p = pre.centerlines[name]
            start = k if k == 0 else k - 1
            out[name] = s[start:start + len(p)]
            k = start + len(p)
    for name, p in pre.centerlines.items():
        if name in out:
            continue
        if name.startswith("sinus_"):
            out[name] = np.zeros(len(p))
            continue
        side = "left" if name.startswith("left_") else "right"
        if name.endswith("internal_iliac") or name.endswith("profunda_femoris"):
            tr, s = chain_trees[side]
            _, i = tr.query(p[0])
            out[name] = s[i] + arclen(p)
        else:
            _, i = tree_a.query(p[0])
            out[name] = s_aorta[i] + arclen(p)
    return out


def bolus(t, rise_s: float, duration_s: float, washout_s: float):
    """Relative iodine concentration at the injection site ``t`` seconds after injection start."""
    t = np.asarray(t, float)
    up = np.clip(t / rise_s, 0.0, 1.0)
    up = up * up * (3 - 2 * up)
    down = np.where(t > duration_s, np.exp(-(t - duration_s) / washout_s), 1.0)
    return np.where(t < 0, 0.0, up * down)


def contrast_rules() -> Dict[str, Tuple[str, ...]]:
    """Which vessel segments each contrast rule of ``ContrastModel`` applies to (exact segment names)."""
    from .anatomy import AORTA_SEGMENTS, SINUS_SEGMENTS, iliofemoral_segments

    return {
        # filled by a root injection from the annulus on; the sinuses of Valsalva belong to the root
        "aorta": AORTA_SEGMENTS + SINUS_SEGMENTS,
        # filled briefly and partly, in a time window of their own (upper FoV)
        "coronary": ("left_coronary", "right_coronary"),
        # filled at a fraction of the arch's concentration (upper FoV)
        "arch branches": ("brachiocephalic_trunk", "left_common_carotid", "left_subclavian"),
        # one iliac-femoral axis with its branches: what a one-limb injection fills (lower FoV)
        "left limb": iliofemoral_segments("left") + ("left_internal_iliac", "left_profunda_femoris"),
        "right limb": iliofemoral_segments("right") + ("right_internal_iliac", "right_profunda_femoris"),
    }


def index_version(row: Dict[str, str]) -> Optional[int]:
    """The generator version of an ``index.csv`` row: its ``phantom_version``; 1 for a phantom row
    written before that column existed (it names its ``case.json``); None for a row not made here,
    including one that names the generator that made it in ``source`` (``tavireg foreign``)."""
    text = (row.get("phantom_version") or "").strip()
    if text.isdigit():
        return int(text)
    if (row.get("source") or "").strip():
        return None
    return 1 if (row.get("case") or "").strip() else None


def rows_version(rows, name: str) -> Optional[int]:
    """The generator version of a case index's rows (None: not a phantom's; InputError when they disagree)."""
    versions = {index_version(r) for r in rows}
    if len(versions) > 1:
        raise InputError(f"case index {name} mixes phantom versions "
                         f"{', '.join(str(v or 'none') for v in sorted(versions, key=str))}: "
                         "regenerate it with one version")
    return versions.pop() if versions else None


def case_index_version(csv_path) -> Optional[int]:
    """``rows_version`` of the case index file ``csv_path``."""
    try:
        with open(csv_path, newline="", encoding="utf-8") as fh:
            return rows_version(csv.DictReader(fh), Path(csv_path).name)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"cannot read case index {csv_path}: {exc}") from None


def check_one_version(versions: Dict[str, Optional[int]], what: str) -> None:
    """InputError when data sets made by different phantom versions would be used together (data sets
    not made by the phantom, version None, go with any)."""
    stated = {name: v for name, v in versions.items() if v is not None}
    if len(set(stated.values())) > 1:
        listed = ", ".join(f"{name} (version {v})" for name, v in stated.items())
        raise InputError(f"{what} mixes phantom versions: {listed}; regenerate the older data sets with "
                         f"'tavireg phantom' (version {VERSION})")


class ContrastModel:
    """Per-sample concentration c in [0, 1] for one series, as a function of time."""

    def __init__(self, pre, deformation: Deformation, fov: str, rng: np.random.Generator,
                 access_side: str):
        U = lambda a, b: float(rng.uniform(a, b))  # noqa: E731
        flow = _segment_flow_distance(pre)
        names = deformation.names
        self.s = np.concatenate([flow[n] for n in names])
        seg_of = np.array(names)[deformation.segment]
        self.velocity = U(250.0, 550.0)
        self.rise, self.duration, self.washout = U(0.2, 0.5), U(1.0, 3.0), U(0.5, 1.3)
        self.fov = fov
        self.params: dict = {"velocity_mm_s": self.velocity, "rise_s": self.rise,
                             "injection_s": self.duration, "washout_s": self.washout}
        n = len(self.s)
        self.delay = np.zeros(n)   # arrival delay (s) per sample
        self.gain = np.zeros(n)    # steady-state dilution per sample
        rule = {name: np.isin(seg_of, segments) for name, segments in contrast_rules().items()}
        self.coronary = rule["coronary"]
        # streaming/layering of contrast with unopacified blood: smooth random modulation along s
        ph = rng.uniform(0, 2 * math.pi, 3)
        wl = rng.uniform(30, 120, 3)
        self.modulation = 1.0 - 0.25 * np.mean([0.5 + 0.5 * np.sin(2 * math.pi * self.s / wl[i] + ph[i])
                                                for i in range(3)], axis=0)
        aorta = rule["aorta"]
        if fov == "upper":
            s_arch_end = float(flow["aortic_arch"][-1])
            lam = U(60.0, 220.0)
            self.params.update(mode="aortic root injection (pigtail)", fade_mm=lam)
            self.gain = np.where(self.s <= s_arch_end, 1.0, np.exp(-(self.s - s_arch_end) / lam))
            self.gain[rule["arch branches"]] *= U(0.5, 1.0)
            self.coronary_gain = U(0.3, 1.0) if rng.uniform() < 0.6 else 0.0
            self.coronary_window = (U(0.0, 0.8), U(0.4, 1.5))  # start offset, length (s)
            self.params.update(coronary_gain=self.coronary_gain, coronary_window_s=list(self.coronary_window))
            self.gain[self.coronary] *= self.coronary_gain
            self.delay = self.s / self.velocity
        else:
            r = rng.uniform()
            other = "left" if access_side == "right" else "right"
            s_bif = float(flow["abdominal_aorta"][-1])
            lam = U(80.0, 250.0)
            if r < 0.35:
                s_inj = s_bif - U(20.0, 80.0)
                self.params.update(mode="distal aortic injection (both limbs)", fade_mm=lam)
                down = self.s >= s_inj
                split = {side: U(0.6, 1.0) for side in ("left", "right")}
                self.gain = np.where(down, np.exp(-(self.s - s_inj) / lam), np.exp(-(s_inj - self.s) / 15.0))
                for side, f in split.items():
                    self.gain[rule[f"{side} limb"]] *= f
                self.gain[~aorta & ~rule["left limb"] & ~rule["right limb"]] *= 0.3
                self.delay = np.abs(self.s - s_inj) / self.velocity
            else:
                side = access_side if r < 0.75 else other
                s_side = rule[f"{side} limb"]
                s_inj = s_bif + U(30.0, 90.0)
                self.params.update(mode=f"{side} iliac injection (one limb)", fade_mm=lam, side=side)
                g = np.where(self.s >= s_inj, np.exp(-(self.s - s_inj) / lam),
                             U(0.4, 0.8) * np.exp(-(s_inj - self.s) / U(20.0, 60.0)))
                self.gain = np.where(s_side, g, 0.0)
                # reflux into the aorta and a trace in the other limb
                self.gain[aorta] = U(0.0, 0.15) * np.exp(-np.maximum(s_bif - self.s[aorta], 0) / 25.0)
                self.delay = np.abs(self.s - s_inj) / self.velocity
            self.coronary_gain = 0.0
        self.gain = np.clip(self.gain * self.modulation, 0.0, 1.0)

    def concentration(self, t: float) -> np.ndarray:
        c = self.gain * bolus(t - self.delay, self.rise, self.duration, self.washout)
        if self.fov == "upper" and self.coronary_gain > 0:
            t0, length = self.coronary_window
            on = float(np.clip(min(t - t0, t0 + length - t) / 0.15 + 0.5, 0.0, 1.0))
            c[self.coronary] *= on
        return np.clip(c, 0.0, 1.0)

    def injecting(self, t: float) -> float:
        return float(bolus(t, self.rise, self.duration, 0.05))


# =============================================================================================
# series plan and geometry
# =============================================================================================
def plan_series(rng: np.random.Generator, frames: int, upper_fraction: float) -> List[dict]:
    """Series of one patient: (fov, number of frames, cine?) adding up to ``frames``."""
    n_upper = int(round(frames * upper_fraction))
    if frames >= 2:
        n_upper = min(max(n_upper, 1), frames - 1)
    plan = []
    for fov, n in (("upper", n_upper), ("lower", frames - n_upper)):
        left = n
        while left > 0:
            if left >= 6 and rng.uniform() < 0.7:
                k = int(min(left, rng.integers(8, 21)))
                if 0 < left - k < 3:
                    k = left
                plan.append({"fov": fov, "frames": k, "cine": True})
            elif left >= 2 and rng.uniform() < 0.3:
                plan.append({"fov": fov, "frames": left if left <= 4 else 2, "cine": True})
            else:
                plan.append({"fov": fov, "frames": 1, "cine": False})
            left -= plan[-1]["frames"]
    return plan


def draw_geometry(rng: np.random.Generator, fov: str, pre, size: Optional[int]) -> dict:
    """Nominal C-arm angles and distances, detector size and pitch (clinical ranges)."""
    U = lambda a, b: float(rng.uniform(a, b))  # noqa: E731
    n = np.asarray(pre.annulus_normal, float)
    coplanar = False
    if fov == "upper":
        prim = U(-30.0, 30.0)
        sec = U(-20.0, 20.0)
        if rng.uniform() < 0.5:
            # coplanar view: the central ray perpendicular to the annulus normal
            a = math.radians(prim)
            d0 = np.array([math.sin(a), -math.cos(a), 0.0])
            b = math.degrees(math.atan2(-(d0 @ n), n[2]))
            b = (b + 180.0) % 360.0 - 180.0
            if b > 90:
                b -= 180
            if b < -90:
                b += 180
            if abs(b) <= 20.0:
                sec, coplanar = b, True
        cols = size or (512 if rng.uniform() < 0.6 else 1024)
        width = U(150.0, 205.0) if cols == 512 or size else U(155.0, 260.0)
    else:
        prim = U(-12.0, 12.0)
        sec = U(-10.0, 10.0)
        cols = size or (512 if rng.uniform() < 0.65 else 1024)
        width = U(170.0, 205.0) if cols == 512 or size else U(200.0, 300.0)
    pitch = round(width / cols, 4)
    return {
        "primary_angle_deg": round(prim, 1), "secondary_angle_deg": round(sec, 1),
        "sid_mm": round(U(900.0, 1200.0), 1), "sod_mm": round(U(700.0, 850.0), 1),
        "pixel_spacing_mm": (pitch, pitch), "rows": int(cols), "cols": int(cols), "coplanar": coplanar,
    }


def draw_isocenter(rng: np.random.Generator, fov: str, pre, access_side: str) -> Tuple[np.ndarray, str]:
    L = pre.landmarks
    if fov == "upper":
        n = np.asarray(pre.annulus_normal, float)
        if rng.uniform() < 0.5:
            return np.asarray(L["annulus_center"], float), "annulus_center"
        h = float(rng.uniform(15.0, 25.0))
        return np.asarray(L["annulus_center"], float) + h * n, f"annulus_center + {h:.1f} mm along the root axis"
    choice = rng.uniform()
    side = access_side
    if choice < 0.35:
        p = (np.asarray(L["bifurcation"]) + np.asarray(L["left_inguinal"]) + np.asarray(L["right_inguinal"])) / 3
        return p, "pelvis (bifurcation and both inguinal points)"
    if choice < 0.7:
        p = 0.5 * (np.asarray(L["bifurcation"]) + np.asarray(L[f"{side}_inguinal"]))
        return p, f"{side} iliac axis (bifurcation to inguinal point)"
    p = 0.5 * (np.asarray(L[f"{side}_inguinal"]) + np.asarray(L[f"{side}_femoral_bifurcation"]))
    return p, f"{side} common femoral region"


def draw_pose(rng: np.random.Generator, isocenter) -> dict:
    from . import xray
    axis = xray._unit(rng.normal(size=3) * np.array([0.6, 0.6, 1.0]))
    angle = float(rng.uniform(0.5, 3.5))
    direction = xray._unit(rng.normal(size=3))
    shift = direction * float(rng.uniform(3.0, 20.0))
    T = pose_matrix(isocenter, axis, angle, shift)
    return {"T_true": T.tolist(), "rotation_axis": axis.tolist(), "rotation_deg": angle,
            "shift_mm": shift.tolist(), "about": "isocenter_lps"}


def region_mask_pre(pre, fov: str, points: np.ndarray) -> np.ndarray:
    z = points[:, 2]
    if fov == "upper":
        return z >= float(pre.landmarks["mid_descending_aorta"][2])
    return z <= float(pre.landmarks["aortic_hiatus"][2])


def fit_affine(src: np.ndarray, dst: np.ndarray) -> Tuple[np.ndarray, float]:
    """Least-squares 2D affine (3x3) mapping ``src`` (N, 2) onto ``dst``, and its RMS residual."""
    A = np.hstack([src, np.ones((len(src), 1))])
    X, *_ = np.linalg.lstsq(A, dst, rcond=None)
    M = np.eye(3)
    M[:2, :] = X.T
    res = A @ X - dst
    return M, float(np.sqrt(np.mean(np.sum(res * res, axis=1))))


# =============================================================================================
# one patient
# =============================================================================================
def _png_bytes(arr: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        fh.write(data)


def _uid(*parts) -> str:
    from pydicom.uid import generate_uid

    return generate_uid(entropy_srcs=[str(p) for p in parts])


class _Patient:
    """Everything of one patient that does not change between series."""

    def __init__(self, index: int, config: PhantomConfig, folder: Path):
        from . import xray
        from .anatomy import anatomy_surface, deform_anatomy, generate_anatomy, lumen_field
        from ..mesh import load_model, model_file_writer

        self.index = index
        self.name = patient_name(index)
        self.config = config
        self.folder = folder
        ss = np.random.SeedSequence([int(config.seed), int(index)])
        s_anat, s_deform, s_body, s_series = ss.spawn(4)
        self.anat_seed = int(s_anat.generate_state(1)[0] & 0x7FFFFFFF)
        self.rng = np.random.default_rng(s_series)
        self.pre = generate_anatomy(self.anat_seed)
        surface = anatomy_surface(self.pre, SURFACE_VOXEL_MM)
        model_path = folder / "model.vtk"
        with open(model_path, "wb") as fh:
            model_file_writer(surface, ".vtk", "LPS")(fh)
        # use the model exactly as a user (and the tests) will load it
        self.model = load_model(model_path).polydata
        self.intra = deform_anatomy(self.pre, np.random.default_rng(s_deform))
        dp = self.intra.params["deformation"]
        self.deformation_params = dp
        wire_only = deform_anatomy(self.pre, 0, wire_straightening=dict(dp["wire_straightening"]),
                                   root_motion_mm=0.0, access_side=dp["access_side"])
        self.deform = Deformation(self.pre, wire_only, dp)
        self.access_side = dp["access_side"]
        # lumen voxels (partial-volume weighted) for the contrast splat
        fld, origin, spacing = lumen_field(self.pre, VOXEL_MM)
        h = float(spacing[0])
        frac = np.clip(fld / h + 0.5, 0.0, 1.0)
        kk, jj, ii = np.nonzero(frac > 0)
        self.vox = origin + h * np.stack([ii, jj, kk], axis=1).astype(float)
        self.vox_vol = (frac[kk, jj, ii] * h ** 3).astype(np.float64)
        self.vox_bind = self.deform.bind(self.vox)
        self.vox_owner = self.vox_bind.owner
        self.surf_pts = _points(self.model)
        self.surf_bind = self.deform.bind(self.surf_pts)
        self.body = xray.build_body(self.pre, np.random.default_rng(s_body))
        self.lm_names = list(self.pre.landmarks)
        self.lm_pre = np.array([self.pre.landmarks[k] for k in self.lm_names])
        self.lm_bind = self.deform.bind(self.lm_pre)
        from .anatomy import SINUS_SEGMENTS
        cl = [(n, np.asarray(p, float)) for n, p in self.pre.centerlines.items() if n not in SINUS_SEGMENTS]
        self.cl_pre = np.concatenate([p for _, p in cl])
        self.cl_bind = self.deform.bind(self.cl_pre)
        self.study_uid = _uid(FORMAT, config.seed, index, "study")


def _points(polydata) -> np.ndarray:
    from vtkmodules.util.numpy_support import vtk_to_numpy

    return vtk_to_numpy(polydata.GetPoints().GetData()).astype(np.float64).copy()


def _set_points(polydata, pts: np.ndarray) -> None:
    from vtkmodules.util.numpy_support import vtk_to_numpy

    arr = vtk_to_numpy(polydata.GetPoints().GetData())
    arr[:] = pts.astype(arr.dtype)
    polydata.GetPoints().Modified()
    polydata.Modified()


def _frame_times(rng, n: int, cine: bool, contrast: ContrastModel) -> Tuple[List[float], float]:
    if cine:
        ft = float(rng.choice([1000.0 / 15.0, 1000.0 / 7.5, 1000.0 / 30.0], p=[0.6, 0.25, 0.15]))
        span = (n - 1) * ft / 1000.0
        # start before the contrast arrives in some runs, mid-injection in others
        t0 = float(rng.uniform(-0.35, max(contrast.duration - 0.5 * span, 0.0)))
        return [t0 + k * ft / 1000.0 for k in range(n)], ft
    if rng.uniform() < 0.04:
        return [float(rng.uniform(-1.0, -0.2))], None  # before injection: no contrast
    return [float(rng.uniform(0.4, contrast.duration + 0.6))], None


def _generate_patient(index: int, config: PhantomConfig, folder: Path,
                      progress: Optional[Callable[[int], None]] = None) -> dict:
    """Generate one patient into ``folder`` (created); returns its index rows and case summary."""
    from ..projection import ProjectionRenderer
    from .anatomy import anatomy_to_json

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "masks").mkdir(exist_ok=True)
    (folder / "projections").mkdir(exist_ok=True)
    pt = _Patient(index, config, folder)
    anat_doc = anatomy_to_json(pt.pre)
    _write(folder / "anatomy.json", json.dumps(anat_doc).encode())
    plan = plan_series(pt.rng, int(config.frames_per_patient), float(config.upper_fraction))
    true_model = _copy_polydata(pt.model)
    r_true = ProjectionRenderer(true_model)
    r_nom = ProjectionRenderer(pt.model)
    rows_out: List[dict] = []
    series_docs = []
    try:
        for si, spec in enumerate(plan):
            series = _draw_series(pt, si, spec)
            doc = _generate_series(pt, series, true_model, r_true, r_nom, progress)
            series_docs.append(doc)
            rows_out.extend(_index_rows(pt, series, doc))
    finally:
        r_true.close()
        r_nom.close()
    _write(folder / "case.json", json.dumps(strict_json(_case_doc(pt, series_docs)), indent=1).encode())
    return {"patient": pt.name, "rows": rows_out}


@dataclass
class _RootMotion:
    """Periodic cardiac and respiratory motion of the aortic root during one series."""

    hr: float                # heart rate (bpm)
    card_amp: float          # cardiac amplitude (mm)
    card_dir: np.ndarray
    resp_amp: float          # respiratory amplitude (mm)
    resp_dir: np.ndarray
    resp_period: float       # s
    resp_phase: float        # rad

    @staticmethod
    def draw(rng: np.random.Generator, apex_dir) -> "_RootMotion":
        """Draw the motion: cardiac along the heart's long axis, respiratory mostly head-foot."""
        from . import xray

        hr = float(rng.uniform(55.0, 95.0))
        card_amp = float(rng.uniform(0.8, 3.0))
        card_dir = xray._unit(np.asarray(apex_dir) + rng.normal(0, 0.4, 3))
        resp_amp = float(rng.uniform(0.3, 3.0))
        resp_dir = xray._unit(np.array([0.0, -0.3, 1.0]) + rng.normal(0, 0.2, 3))
        resp_period, resp_phase = float(rng.uniform(3.0, 5.5)), float(rng.uniform(0, 2 * math.pi))
        return _RootMotion(hr, card_amp, card_dir, resp_amp, resp_dir, resp_period, resp_phase)

    def at(self, t: float, fov: str) -> dict:
        """Time and root displacements (mm) of a frame at ``t`` s; no motion in the lower FoV."""
        motion = {"time_s": float(t)}
        if fov == "upper":
            ph = 2 * math.pi * (t * self.hr / 60.0)
            motion["cardiac_mm"] = (self.card_amp * 0.5 * (1 - math.cos(ph)) * self.card_dir).tolist()
            motion["respiratory_mm"] = (self.resp_amp * math.sin(2 * math.pi * t / self.resp_period + self.resp_phase)
                                        * self.resp_dir).tolist()
        else:
            motion["cardiac_mm"] = [0.0, 0.0, 0.0]
            motion["respiratory_mm"] = [0.0, 0.0, 0.0]
        return motion

    def to_dict(self) -> dict:
        """The ``motion`` entry of a series in case.json."""
        return {"heart_rate_bpm": self.hr, "cardiac_amplitude_mm": self.card_amp,
                "cardiac_direction": self.card_dir.tolist(), "cardiac_sigma_mm": CARDIAC_SIGMA_MM,
                "respiratory_amplitude_mm": self.resp_amp, "respiratory_direction": self.resp_dir.tolist(),
                "respiratory_period_s": self.resp_period, "respiratory_sigma_mm": RESPIRATORY_SIGMA_MM}


@dataclass
class _Series:
    """What is drawn for one series: its plan entry, nominal C-arm geometry and isocentre, true
    rigid pose, imaging, contrast, root motion, procedure stage, devices and frame times."""

    index: int
    spec: dict               # plan entry: fov, frames, cine
    g: dict                  # draw_geometry's result
    geom: CArmGeometry
    iso: np.ndarray
    iso_name: str
    pose: dict
    T: np.ndarray            # pose["T_true"] as an array
    im: "xray.Imaging"
    contrast: ContrastModel
    iodine: float            # mg/ml
    motion: _RootMotion
    stage: Optional[str]     # upper FoV only
    devices: "xray.DeviceSet"
    times: List[float]
    ft: Optional[float]      # frame time (ms) of a cine series

    @property
    def fov(self) -> str:
        return self.spec["fov"]

    @property
    def sid(self) -> str:
        return f"s{self.index:02d}"


def _draw_series(pt: _Patient, si: int, spec: dict) -> _Series:
    """Draw series ``si`` of the patient's plan from the patient's series stream (fixed order)."""
    from . import xray

    rng, fov = pt.rng, spec["fov"]
    g = draw_geometry(rng, fov, pt.pre, pt.config.size)
    iso, iso_name = draw_isocenter(rng, fov, pt.pre, pt.access_side)
    iso = np.round(iso, 3)
    geom = CArmGeometry(g["primary_angle_deg"], g["secondary_angle_deg"], g["sid_mm"], g["sod_mm"],
                        g["pixel_spacing_mm"], g["rows"], g["cols"], tuple(iso))
    pose = draw_pose(rng, iso)
    T = np.asarray(pose["T_true"])
    im = xray.draw_imaging(rng, geom.cols, fov, spec["cine"])
    contrast = ContrastModel(pt.pre, pt.deform, fov, rng, pt.access_side)
    iodine = float(rng.uniform(30.0, 70.0) if fov == "upper" else rng.uniform(80.0, 200.0))
    motion = _RootMotion.draw(rng, pt.body.info["heart"]["apex_dir"])
    stage, devices = _draw_devices(pt, fov)
    times, ft = _frame_times(rng, spec["frames"], spec["cine"], contrast)
    return _Series(si, spec, g, geom, iso, iso_name, pose, T, im, contrast, iodine, motion, stage, devices,
                   times, ft)


def _draw_devices(pt: _Patient, fov: str) -> Tuple[Optional[str], "xray.DeviceSet"]:
    """The procedure stage (upper FoV; None in the lower) and the devices in view."""
    from . import xray

    rng = pt.rng
    stage = None
    if fov == "upper":
        stage = str(rng.choice(list(STAGES), p=list(STAGE_PROBABILITIES)))
        devices = xray.build_upper_devices(pt.pre, rng, stage, pt.body.info["heart"])
        if stage == "deployed" and rng.uniform() < 0.2:
            devices.moving = [d for d in devices.moving if not d.name.startswith("pigtail")]
    else:
        devices = xray.build_lower_devices(pt.pre, rng, pt.access_side)
    return stage, devices


def _generate_series(pt: _Patient, s: _Series, true_model, r_true, r_nom,
                     progress: Optional[Callable[[int], None]]) -> dict:
    """Render and write one series (nominal projection, frames with their ground truth, the XA
    DICOM); returns its entry for case.json."""
    from . import xray

    grid = xray.RayGrid(s.geom)
    # static background of the series
    static = xray.solid_path_lengths(pt.body.solids, grid, s.T)
    xray.tube_path_lengths(pt.body.tubes + s.devices.static, grid, s.T, out=static)
    mu_static = xray.static_attenuation(static, grid, pt.rng, float(pt.rng.uniform(0.01, 0.03)),
                                        float(pt.rng.uniform(0.02, 0.06)))
    frames = _SeriesFrames(pt, s, grid, mu_static, true_model, r_true)
    nominal = r_nom.render(s.geom, with_depth=False).mask
    nom_rel = f"projections/{s.sid}_nominal.png"
    _write(pt.folder / nom_rel, _png_bytes(nominal * 255))
    frames_u = []
    frame_docs = []
    for k, t in enumerate(s.times):
        frame, doc = frames.render(k, t)
        frames_u.append(frame)
        frame_docs.append(doc)
        if progress is not None:
            progress(1)
    dcm_rel, ts = _write_series_dicom(pt, s, np.stack(frames_u))
    gdoc = s.geom.to_dict()
    gdoc["coplanar"] = bool(s.g["coplanar"])
    return {
        "series": s.sid, "fov": s.fov, "file": dcm_rel, "cine": bool(s.spec["cine"]),
        "frame_time_ms": s.ft, "transfer_syntax": ts, "geometry": gdoc,
        "isocenter_lps": s.iso.tolist(), "isocenter_from": s.iso_name,
        "pose": s.pose, "stage": s.stage, "iodine_mg_ml": s.iodine,
        "contrast": strict_json(s.contrast.params), "imaging": s.im.to_dict(),
        "devices": sorted({d.name for d in s.devices.moving + s.devices.static}),
        "device_info": strict_json(s.devices.info),
        "motion": s.motion.to_dict(),
        "projection_nominal": nom_rel, "frames": frame_docs,
    }


class _SeriesFrames:
    """Renders the frames of one series: the X-ray image, the ground-truth mask and true
    projection (written as PNG), the landmarks and the nominal-to-true affine of each frame."""

    def __init__(self, pt: _Patient, s: _Series, grid: "xray.RayGrid", mu_static: np.ndarray,
                 true_model, r_true):
        self.pt, self.s, self.grid, self.mu_static = pt, s, grid, mu_static
        self.true_model, self.r_true = true_model, r_true
        self.last_true: Optional[np.ndarray] = None
        self.mov_bind = [pt.deform.bind(d.points) for d in s.devices.moving]
        # lumen voxels that can reach the detector in this series
        xy, _w = grid.project_posed(pt.vox, s.T)
        h, w = grid.shape
        mg = 60.0 / grid.factor
        vsel = np.flatnonzero((xy[:, 0] > -mg) & (xy[:, 0] < w + mg) & (xy[:, 1] > -mg) & (xy[:, 1] < h + mg))
        self.vbind = xray_binding_subset(pt.vox_bind, vsel)
        self.v_owner = pt.vox_owner[vsel]
        self.v_pts, self.v_vol = pt.vox[vsel], pt.vox_vol[vsel]
        self.v_r = pt.deform.r[self.v_owner]
        self.cf = _coarse_factor(grid)
        self.cl_nom = project(s.geom, pt.cl_pre)
        self.lm_nom = project(s.geom, pt.lm_pre)
        self.region = region_mask_pre(pt.pre, s.fov, pt.cl_pre)

    def render(self, k: int, t: float) -> Tuple[np.ndarray, dict]:
        """Frame ``k`` at time ``t`` s: the image, and its entry for case.json (PNGs written)."""
        from . import xray

        pt, s = self.pt, self.s
        motion = s.motion.at(t, s.fov)
        frame_rng = np.random.default_rng(np.random.SeedSequence([int(pt.config.seed), pt.index, s.index, k, 7]))
        true_mask = self._true_projection(motion)
        vp, A, visible = self._contrast(t, motion, true_mask)
        mu = self._attenuation(t, motion, A)
        frame, open_field = xray.form_image(mu, self.grid, s.im, frame_rng)
        gt = self._gt_mask(vp, visible, true_mask, open_field)
        mask_rel = f"masks/{s.sid}_f{k:03d}.png"
        true_rel = f"projections/{s.sid}_f{k:03d}_true.png"
        _write(pt.folder / mask_rel, _png_bytes(gt.astype(np.uint8) * 255))
        _write(pt.folder / true_rel, _png_bytes(true_mask * 255))
        doc = dict(motion)
        doc.update({
            "index": k, "mask": mask_rel, "projection_true": true_rel,
            "opacified_px": int(gt.sum()), "bolus": float(s.contrast.injecting(t)),
        })
        doc.update(self._landmarks_and_affine(motion))
        return frame, doc

    def _true_projection(self, motion: dict) -> np.ndarray:
        """The true projection of the deformed, moved, posed model (rendered once per lower-FoV
        series: nothing moves there)."""
        pt, s = self.pt, self.s
        if self.last_true is None or s.fov == "upper":
            sp = true_points(pt.deform, s.T, pt.surf_pts, motion, pt.surf_bind)
            _set_points(self.true_model, sp)
            self.last_true = self.r_true.render(s.geom, with_depth=False).mask
        return self.last_true

    def _contrast(self, t: float, motion: dict,
                  true_mask: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Contrast in the lumen: the voxels' true positions, their splatted iodine path lengths
        (sharpened to the true silhouette) and which voxels are visibly opacified."""
        from . import xray

        pt, s, grid = self.pt, self.s, self.grid
        c_samp = s.contrast.concentration(t)
        c_vox = c_samp[self.v_owner]
        vp = true_points(pt.deform, s.T, self.v_pts, motion, self.vbind)
        A = xray.splat_volume(vp, self.v_vol * c_vox, grid, VOXEL_MM)
        sil = xray.downsample_mean(true_mask.astype(np.float32), grid.factor)
        A = xray.sharpen_with_silhouette(A, sil, self.cf)
        visible = c_vox * s.iodine * xray.MU_IODINE_PER_MG_ML * 2.0 * self.v_r >= VISIBILITY_ATTENUATION
        return vp, A, visible

    def _attenuation(self, t: float, motion: dict, A: np.ndarray) -> np.ndarray:
        """Line integral of mu per work pixel: the static background, the moving devices (the
        pigtail's lumen only while injecting) and the iodine."""
        from . import xray

        pt, s = self.pt, self.s
        moved = []
        inj = s.contrast.injecting(t) if s.fov == "upper" else 0.0
        for d, b in zip(s.devices.moving, self.mov_bind):
            dd = d.moved(true_points(pt.deform, s.T, d.points, motion, b))
            if d.name == "pigtail lumen":
                dd.weight = inj
                if inj <= 0.01:
                    continue
            moved.append(dd)
        mats = xray.tube_path_lengths(moved, self.grid, s.T, points_are_posed=True)
        mu = self.mu_static.copy()
        for m, L in mats.items():
            mu += np.float32(xray.MU_PER_MM[m]) * L
        mu += np.float32(s.iodine * xray.MU_IODINE_PER_MG_ML) * A
        np.maximum(mu, 0.0, out=mu)
        return mu

    def _gt_mask(self, vp: np.ndarray, visible: np.ndarray, true_mask: np.ndarray,
                 open_field: np.ndarray) -> np.ndarray:
        """The ground-truth mask as opacified: the projection of the visible voxels, cut to the
        true silhouette and the open field."""
        from scipy import ndimage

        from . import xray

        geom, grid = self.s.geom, self.grid
        if visible.any():
            B = xray.splat_volume(vp[visible], self.v_vol[visible], grid, VOXEL_MM)
            Bn = xray.upsample(B, grid.factor, (geom.rows, geom.cols)) if grid.factor > 1 else B
            gt = Bn > MASK_PATH_MM
            gt = ndimage.binary_dilation(gt, iterations=max(1, self.cf * grid.factor // 2))
            gt &= true_mask > 0
            gt &= open_field > 0.5
        else:
            gt = np.zeros((geom.rows, geom.cols), bool)
        return gt

    def _landmarks_and_affine(self, motion: dict) -> dict:
        """The frame's landmarks (true and nominal pixels) and the least-squares affine from the
        nominal to the true projection of the centerline points in the FoV's region."""
        pt, s, geom = self.pt, self.s, self.s.geom
        lm_true = project(geom, true_points(pt.deform, s.T, pt.lm_pre, motion, pt.lm_bind))
        cl_true = project(geom, true_points(pt.deform, s.T, pt.cl_pre, motion, pt.cl_bind))
        inside = self.region & _inside(self.cl_nom, geom) & _inside(cl_true, geom)
        if inside.sum() >= 6:
            M, rms = fit_affine(self.cl_nom[inside], cl_true[inside])
        else:
            M, rms = np.eye(3), float("nan")
        return {
            "affine": M.tolist(), "affine_rms_px": None if not math.isfinite(rms) else rms,
            "affine_points": int(inside.sum()),
            "landmarks_px": {n: [float(x), float(y)] for n, (x, y) in zip(pt.lm_names, lm_true)},
            "landmarks_nominal_px": {n: [float(x), float(y)] for n, (x, y) in zip(pt.lm_names, self.lm_nom)},
            "landmarks_in_frame": [n for n, p in zip(pt.lm_names, lm_true) if _inside(p[None], geom)[0]],
        }


def _write_series_dicom(pt: _Patient, s: _Series, arr: np.ndarray) -> Tuple[str, str]:
    """Write the series' frames as XA DICOM with the nominal geometry; returns the file (relative
    to the patient folder) and the transfer syntax."""
    from ..fluoro import write_fluoro_dicom

    config, index, si, fov = pt.config, pt.index, s.index, s.fov
    dcm_rel = f"series_{si:02d}.dcm"
    ts = "explicit"
    if arr.dtype == np.uint8 and len(arr) == 1 and pt.rng.uniform() < 0.5:
        ts = "jpeg-lossless"
    write_fluoro_dicom(
        pt.folder / dcm_rel, arr, s.geom, modality="XA", transfer_syntax=ts,
        frame_time_ms=s.ft if s.spec["cine"] else None,
        patient_name=f"Phantom^{pt.name}", patient_id=f"TAVIREG-{pt.name}",
        study_instance_uid=pt.study_uid, series_instance_uid=_uid(FORMAT, config.seed, index, si),
        series_description=f"TAVIRegistration phantom {fov} FoV {'cine' if s.spec['cine'] else 'single'}",
        bits_stored=s.im.bits_stored, intensifier_size_mm=None,
        sop_instance_uid=_uid(FORMAT, config.seed, index, si, "sop"),
        content_datetime=PHANTOM_DATETIME,
    )
    return dcm_rel, ts


def _index_rows(pt: _Patient, s: _Series, series_doc: dict) -> List[dict]:
    """The index.csv rows (without the split) of the frames of one written series."""
    geom, iso, dcm_rel, nom_rel = s.geom, s.iso, series_doc["file"], series_doc["projection_nominal"]
    rows = []
    for doc in series_doc["frames"]:
        rows.append({
            "patient": pt.name, "fov": s.fov, "series": s.sid,
            "image": f"patients/{pt.name}/{dcm_rel}", "frame": doc["index"],
            "mask": f"patients/{pt.name}/{doc['mask']}",
            "projection_true": f"patients/{pt.name}/{doc['projection_true']}",
            "projection_nominal": f"patients/{pt.name}/{nom_rel}",
            "case": f"patients/{pt.name}/case.json",
            "affine": json.dumps([[round(v, 6) for v in row] for row in doc["affine"]]),
            "affine_rms_px": "" if doc["affine_rms_px"] is None else f"{doc['affine_rms_px']:.4f}",
            "opacified_px": doc["opacified_px"], "rows": geom.rows, "cols": geom.cols,
            "primary_deg": geom.primary_angle_deg, "secondary_deg": geom.secondary_angle_deg,
            "sid_mm": geom.sid_mm, "sod_mm": geom.sod_mm,
            "pixel_spacing_mm": geom.pixel_spacing_mm[0],
            "isocenter_lps": ";".join(f"{c:.3f}" for c in iso),
            "cine": int(s.spec["cine"]), "stage": s.stage or "", "phantom_version": VERSION,
        })
    return rows


def _case_doc(pt: _Patient, series_docs: List[dict]) -> dict:
    """The patient's case.json document (before ``_jsonable``)."""
    return {
        "format": FORMAT, "version": VERSION, "patient": pt.name, "seed": int(pt.config.seed),
        "anatomy_seed": pt.anat_seed, "coordinate_system": "LPS", "units": "mm",
        "model": "model.vtk", "anatomy": "anatomy.json",
        "deformation": strict_json(pt.deformation_params),
        "deformation_model": {"neighbours": DEFORM_NEIGHBOURS, "tau_mm": DEFORM_TAU_MM,
                              "cardiac_sigma_mm": CARDIAC_SIGMA_MM,
                              "respiratory_sigma_mm": RESPIRATORY_SIGMA_MM},
        "landmarks_pre_lps": {k: np.asarray(v, float).tolist() for k, v in pt.pre.landmarks.items()},
        "gt_mask": {"visibility_attenuation": VISIBILITY_ATTENUATION, "min_path_mm": MASK_PATH_MM,
                    "voxel_mm": VOXEL_MM},
        "conventions": {
            "T_true": "4x4, pre-op LPS (after the deformation) -> intra-op LPS; the C-arm geometry is the nominal one",
            "affine": "3x3, nominal projection pixels (x=col, y=row) -> true frame pixels",
        },
        "series": series_docs,
    }


def xray_binding_subset(b: Binding, sel: np.ndarray) -> Binding:
    return Binding(b.idx[sel], b.w[sel])


def _coarse_factor(grid: xray.RayGrid) -> int:
    g = grid.geom
    px_iso = grid.pitch_work * g.sod_mm / g.sid_mm
    return max(1, int(round(VOXEL_MM / px_iso)))


def _inside(xy: np.ndarray, geom: CArmGeometry) -> np.ndarray:
    return (xy[:, 0] >= 0) & (xy[:, 0] <= geom.cols - 1) & (xy[:, 1] >= 0) & (xy[:, 1] <= geom.rows - 1) \
        & np.all(np.isfinite(xy), axis=1)


def _copy_polydata(pd):
    from vtkmodules.vtkCommonDataModel import vtkPolyData

    out = vtkPolyData()
    out.DeepCopy(pd)
    return out


# =============================================================================================
# the data set
# =============================================================================================
def _worker(args):
    index, config, tmp, queue = args
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    def prog(n):
        if queue is not None:
            queue.put(n)

    res = _generate_patient(index, config, Path(tmp), prog)
    return index, res


def _publish_dir(tmp: Path, final: Path) -> None:
    """Move a finished patient folder into place (replacing an older one)."""
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.replace(final, old)
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _drain_progress(queue, progress) -> None:
    """Pass every frame count the worker processes have reported so far to ``progress``."""
    import queue as queue_module

    while True:
        try:
            k = queue.get_nowait()
        except queue_module.Empty:
            return
        if progress is not None:
            progress(k)


def generate_dataset(config: PhantomConfig, progress=None) -> dict:
    """Generate ``config.patients`` patients into ``config.out``; returns a summary.

    ``progress``: optional callable(n) called with the number of frames just finished."""
    from ..outputs import check_writable_dir
    from ..projection import probe_rendering

    config.validate()
    out = Path(config.out)
    check_writable_dir(out)
    if (out / "index.csv").exists() and not config.overwrite:
        raise InputError(f"{out} already holds a phantom data set (index.csv): pass --overwrite to replace it")
    probe_rendering()
    (out / "patients").mkdir(exist_ok=True)
    t0 = time.perf_counter()
    n = int(config.patients)
    workers = config.workers or min(2, os.cpu_count() or 1)
    workers = max(1, min(workers, n))
    results = _generate_patients(config, out, workers, progress)
    if config.overwrite:  # patients of an older, larger data set must not linger in the folder
        keep = {patient_name(i) for i in range(n)}
        for d in (out / "patients").iterdir():
            if d.is_dir() and d.name.startswith("P") and d.name[1:].isdigit() and d.name not in keep:
                shutil.rmtree(d, ignore_errors=True)
    split = split_patients(n, int(config.seed))
    rows = []
    for i in range(n):
        for r in results[i]["rows"]:
            r = dict(r)
            r["split"] = split[r["patient"]]
            rows.append(r)
    elapsed = time.perf_counter() - t0
    counts = {s: sorted(p for p, v in split.items() if v == s) for s in ("train", "val", "test")}
    summary = {
        "out": str(out), "patients": n, "frames": len(rows), "seed": int(config.seed),
        "frames_per_fov": {f: sum(1 for r in rows if r["fov"] == f) for f in ("upper", "lower")},
        "split": counts, "workers": workers, "seconds": round(elapsed, 1),
    }
    _write_index_files(config, out, rows, split, counts)
    if config.contact_sheet:
        summary["contact_sheet"] = str(out / "contact_sheet.png")
    return summary


def _generate_patients(config: PhantomConfig, out: Path, workers: int, progress) -> Dict[int, dict]:
    """Generate every patient into a temporary folder and publish it under ``out/patients`` when
    done (in ``workers`` processes when more than one); returns each patient's result by index."""
    n = int(config.patients)
    tmps = {i: out / "patients" / f".{patient_name(i)}.partial-{os.getpid()}" for i in range(n)}
    for p in tmps.values():
        shutil.rmtree(p, ignore_errors=True)
    results: Dict[int, dict] = {}
    try:
        if workers == 1:
            for i in range(n):
                results[i] = _generate_patient(i, config, tmps[i], progress)
                _publish_dir(tmps[i], out / "patients" / patient_name(i))
        else:
            results = _generate_in_pool(config, out, tmps, workers, progress)
    finally:
        for p in tmps.values():
            shutil.rmtree(p, ignore_errors=True)
    return results


def _generate_in_pool(config: PhantomConfig, out: Path, tmps: Dict[int, Path], workers: int,
                      progress) -> Dict[int, dict]:
    """Generate the patients in a pool of spawned processes, publishing each as it finishes and
    passing the workers' frame counts on to ``progress``; returns each patient's result by index."""
    n = len(tmps)
    results: Dict[int, dict] = {}
    ctx = mp.get_context("spawn")
    with ctx.Manager() as manager:
        queue = manager.Queue()
        with ctx.Pool(workers, maxtasksperchild=1) as pool:
            pending = pool.imap_unordered(_worker, [(i, config, str(tmps[i]), queue) for i in range(n)])
            done = 0
            it = iter(pending)
            while done < n:
                _drain_progress(queue, progress)  # while waiting for patients
                try:
                    i, res = it.next(timeout=0.2)
                except mp.TimeoutError:
                    continue
                results[i] = res
                _publish_dir(tmps[i], out / "patients" / patient_name(i))
                done += 1
            _drain_progress(queue, progress)
    return results


def _write_index_files(config: PhantomConfig, out: Path, rows: List[dict], split: Dict[str, str],
                       counts: Dict[str, List[str]]) -> None:
    """Write index.csv, split.json and (when asked) contact_sheet.png, all or none."""
    from ..outputs import OutputSet

    split_doc = {"format": FORMAT, "seed": int(config.seed), "patients": split, "by_split": counts,
                 "rule": "patient-wise: about 70 % train, 10 % val, 20 % test (10 patients: 7/1/2)"}
    buf = io.StringIO()
    wr = csv.DictWriter(buf, fieldnames=list(INDEX_COLUMNS), lineterminator="\n")
    wr.writeheader()
    for r in rows:
        wr.writerow({k: r.get(k, "") for k in INDEX_COLUMNS})
    with OutputSet() as outs:
        outs.add(out / "index.csv", lambda fh: fh.write(buf.getvalue().encode()))
        outs.add(out / "split.json", lambda fh: fh.write(json.dumps(split_doc, indent=1).encode()))
        if config.contact_sheet:
            sheet = contact_sheet(out, rows, config.real_dir, int(config.seed))
            outs.add(out / "contact_sheet.png", lambda fh: fh.write(_png_bytes(sheet)))


# =============================================================================================
# contact sheet
# =============================================================================================
def default_real_dir() -> Optional[Path]:
    """``../shared/data/angios40`` beside the checkout (or ``TAVIREG_SHARED_DATA``), if there."""
    env = os.environ.get("TAVIREG_SHARED_DATA")
    cands = [Path(env) / "angios40"] if env else []
    cands.append(Path(__file__).resolve().parents[3].parent / "shared" / "data" / "angios40")
    for c in cands:
        if c.is_dir():
            return c
    return None


def _tile(img: np.ndarray, size: int = 300) -> np.ndarray:
    from PIL import Image

    a = img.astype(np.float32)
    if a.max() > 255:
        a = a / a.max() * 255.0
    return np.asarray(Image.fromarray(a.clip(0, 255).astype(np.uint8)).resize((size, size), Image.BILINEAR))


def contact_sheet(out: Path, rows: List[dict], real_dir: Optional[Path], seed: int, n_cols: int = 6) -> np.ndarray:
    """RGB sheet: synthetic upper-FoV frames, lower-FoV frames, the same with the GT mask outline
    (red) and the nominal projection (cyan), and real angiograms (``real_dir``/train/N.png)."""
    from scipy import ndimage
    from PIL import Image

    from ..fluoro import read_fluoro

    rng = np.random.default_rng(seed + 99)
    tiles_rows = []
    for fov in ("upper", "lower"):
        cand = [r for r in rows if r["fov"] == fov and int(r["opacified_px"]) > 0]
        if not cand:
            continue
        pick = [cand[i] for i in sorted(rng.choice(len(cand), size=min(n_cols, len(cand)), replace=False))]
        plain, over = [], []
        for r in pick:
            fr = read_fluoro(out / r["image"]).frame(int(r["frame"]))
            fr8 = (fr - fr.min()) / max(float(fr.max() - fr.min()), 1e-6) * 255
            t = _tile(fr8)
            plain.append(np.stack([t] * 3, -1))
            m = np.asarray(Image.open(out / r["mask"]).resize((300, 300), Image.NEAREST)) > 0
            nm = np.asarray(Image.open(out / r["projection_nominal"]).resize((300, 300), Image.NEAREST)) > 0
            rgb = np.stack([t] * 3, -1).astype(np.float32)
            edge = m & ~ndimage.binary_erosion(m)
            nedge = nm & ~ndimage.binary_erosion(nm)
            rgb[nedge] = (0, 220, 255)
            rgb[edge] = (255, 40, 40)
            over.append(rgb.astype(np.uint8))
        tiles_rows.append(plain)
        tiles_rows.append(over)
    real = []
    if real_dir is not None:
        real_dir = Path(real_dir)
        files = sorted((real_dir / "train").glob("[0-9]*.png")) or sorted(real_dir.glob("[0-9]*.png"))
        files = [f for f in files if not f.stem.endswith("_gt")]
        for f in files[: 2 * n_cols]:
            t = _tile(np.asarray(Image.open(f).convert("L")))
            real.append(np.stack([t] * 3, -1))
    for k in range(0, len(real), n_cols):
        tiles_rows.append(real[k:k + n_cols])
    blank = np.zeros((300, 300, 3), np.uint8)
    lines = []
    for tr in tiles_rows:
        tr = list(tr) + [blank] * (n_cols - len(tr))
        lines.append(np.concatenate([np.pad(t, ((2, 2), (2, 2), (0, 0))) for t in tr], axis=1))
    return np.concatenate(lines, axis=0) if lines else np.zeros((8, 8, 3), np.uint8)


# =============================================================================================
# command line
# =============================================================================================
# =============================================================================================
# ground truth of one frame, for evaluation and the demo
# =============================================================================================
def pulled_back(mask: np.ndarray, affine) -> np.ndarray:
    """bool: the frame mask ``mask`` pulled back onto the nominal projection's grid through the
    phantom's nominal -> true ``affine`` (a nominal pixel is set where its true position is)."""
    from scipy import ndimage

    A = np.asarray(affine, float)
    # output (nominal) pixel (row, col) samples the true mask at A applied to (col, row)
    rc = np.array([[A[1, 1], A[1, 0]], [A[0, 1], A[0, 0]]])
    return ndimage.affine_transform(np.asarray(mask).astype(np.float32), rc, offset=(A[1, 2], A[0, 2]), order=0) > 0.5


def opacified_roi(mask: np.ndarray, projection_nominal: np.ndarray, affine, margin: float = 0.08
                  ) -> Optional[Tuple[int, int, int, int]]:
    """The ROI a user would draw on the projection: around the part of the model that is
    contrast-filled in the frame (the opacified ``mask`` pulled back through the phantom's
    nominal -> true ``affine`` onto the nominal projection), grown by ``margin`` of its size. None
    when nothing is opacified. (A user sees where the contrast is; the affine only stands in for
    that look.)"""
    sel = pulled_back(mask, affine) & (np.asarray(projection_nominal) > 0)
    if not sel.any():
        return None
    ys, xs = np.nonzero(sel)
    x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
    mx, my = int(round(margin * (x1 - x0))), int(round(margin * (y1 - y0)))
    rows, cols = np.asarray(mask).shape
    x0, y0 = max(0, x0 - mx), max(0, y0 - my)
    x1, y1 = min(cols, x1 + mx), min(rows, y1 + my)
    return (int(x0), int(y0), int(x1 - x0), int(y1 - y0))


@dataclass
class FrameTruth:
    """What the phantom knows about one frame (from ``index.csv`` and ``case.json``)."""

    mask: np.ndarray  # uint8 0/1: the vessels as opacified in this frame
    projection_nominal: np.ndarray  # uint8 0/1: the pre-op model under the nominal geometry
    affine: np.ndarray  # 3x3 frame pixels: nominal projection -> true projection
    landmarks_px: Dict[str, np.ndarray]  # true landmark positions in the frame
    landmarks_nominal_px: Dict[str, np.ndarray]  # the same landmarks projected nominally
    landmarks_in_frame: List[str]
    mm_per_px_at_isocenter: float
    isocenter_lps: Tuple[float, float, float]
    #: uint8 0/1: the pre-op model's own vessels under the true geometry and motion, every one drawn as if
    #: filled (the frame's content matched to the model's); None where the index row names none
    projection_true: Optional[np.ndarray] = None

    def user_roi(self, margin: float = 0.08) -> Optional[Tuple[int, int, int, int]]:
        """The ROI a user would draw on the projection (``opacified_roi`` of this frame)."""
        return opacified_roi(self.mask, self.projection_nominal, self.affine, margin)

    def filled_region(self, radius: int = 3) -> np.ndarray:
        """bool, frame grid: where the nominal projection's vessels are contrast-filled in this frame
        (the opacified mask pulled back through the affine, grown by ``radius`` pixels for the
        affine's residual): what a registration would register if it knew which vessels are filled."""
        from scipy import ndimage

        back = pulled_back(self.mask, self.affine)
        return ndimage.binary_dilation(back, iterations=int(radius)) if radius > 0 else back

    def landmark_errors_mm(self, frame_matrix: np.ndarray, roi=None) -> np.ndarray:
        """Target registration error (mm at the isocentre) of the landmarks inside the frame (and
        inside ``roi`` when given): the registration's frame affine applied to the nominal landmark
        pixels, against the true ones."""
        M = np.asarray(frame_matrix, float)
        errs = []
        for name in self.landmarks_in_frame:
            p = np.asarray(self.landmarks_nominal_px[name], float)
            if roi is not None:
                x, y, w, h = roi
                if not (x <= p[0] < x + w and y <= p[1] < y + h):
                    continue
            q = M[:2, :2] @ p + M[:2, 2]
            errs.append(float(np.hypot(*(q - np.asarray(self.landmarks_px[name], float)))))
        return np.asarray(errs) * self.mm_per_px_at_isocenter


def frame_truth(root, row: Dict[str, str]) -> FrameTruth:
    """The ground truth of the frame of ``index.csv`` row ``row`` in the data set at ``root``."""
    from ..outputs import read_mask_png

    root = Path(root)
    case = json.loads((root / row["case"]).read_text())
    series = next(s for s in case["series"] if s["series"] == row["series"])
    frame = next(f for f in series["frames"] if int(f["index"]) == int(row["frame"]))
    geom = series_geometry(series)
    mask = read_mask_png(root / row["mask"])
    nominal = read_mask_png(root / row["projection_nominal"], mask.shape, "nominal projection")
    projection_true = (read_mask_png(root / row["projection_true"], mask.shape, "true projection")
                       if row.get("projection_true") else None)
    return FrameTruth(
        mask=mask, projection_nominal=nominal, affine=np.asarray(frame["affine"], float),
        landmarks_px={k: np.asarray(v, float) for k, v in frame["landmarks_px"].items()},
        landmarks_nominal_px={k: np.asarray(v, float) for k, v in frame["landmarks_nominal_px"].items()},
        landmarks_in_frame=list(frame["landmarks_in_frame"]),
        mm_per_px_at_isocenter=float(np.mean(geom.pixel_spacing_mm)) / geom.magnification,
        isocenter_lps=tuple(float(v) for v in series["isocenter_lps"]),
        projection_true=projection_true,
    )
