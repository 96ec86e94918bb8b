"""Synthetic TAVI patients: a pre-operative vessel tree with exact ground truth, and its deformation.

The paper's patients are private, so the project builds its own: a patient-specific vessel tree
(aortic root to femoral arteries) as centerlines with radii, drawn from a seed, turned into one
closed lumen surface (the "pre-operative CTA model"), and deformed into the intra-operative state
(stiff guidewire in the iliofemoral arteries, root motion with heart and breath).

Coordinates: DICOM patient LPS millimetres (x -> patient Left, y -> Posterior, z -> Superior).
Placement: the aortic annulus centre (the centre of the virtual basal ring through the three cusp
nadirs) is the origin. The body midline (spine centre) lies at ``x = midline_x_mm`` (0-20 mm to
the patient's right of the annulus, like in real chests; it follows from the ascending aorta, whose
top lies 15-30 mm right of the midline). From there:

* the aortic root axis (normal of the annulus plane, pointing from the left ventricle into the
  aorta) is tilted ``root_angulation_deg`` (30-70 deg) away from the head-foot axis, toward the
  patient's right and somewhat anterior: its anterior part is set by ``coplanar_ap_caudal_deg``
  (5-30 deg), the caudal angle of the coplanar (annulus-perpendicular) C-arm view at primary 0;
  the tilt direction in the axial plane (from patient right toward anterior) is recorded as
  ``root_azimuth_deg``. The coplanar views then run from LAO (less caudal or cranial) through
  AP-caudal to RAO-caudal, as in real TAVI planning (RAO-caudal is where the cusp-overlap view
  lies);
* three sinuses of Valsalva at 120 deg about the root axis: right coronary sinus anterior, left
  coronary sinus left-posterior, non-coronary sinus right-posterior, with coronary ostia stubs from
  the left and right sinuses;
* the ascending aorta rises up, right and forward; the arch runs from right-anterior to
  left-posterior and carries the brachiocephalic trunk, left common carotid and left subclavian
  stubs; the descending aorta runs down left of the spine midline and anterior to the spine, the
  abdominal aorta comes forward with the lumbar lordosis (renal stubs) and bifurcates at about L4,
  ``bifurcation_depth_mm`` (290-360 mm) below the annulus;
* common iliacs diverge laterally (and posteriorly into the pelvis), the external iliacs run
  forward and down over the pelvic brim to the inguinal ligament, the common femorals run down
  the front of the thigh to the femoral bifurcation (profunda stub), the superficial femorals go
  on to about 120 mm below the inguinal level. Internal iliac stubs at the iliac bifurcations.

Every drawn parameter and the range it is drawn from is in ``PARAM_RANGES`` (uniform draws) and
``ARCH_TYPES`` (the arch type and its branch drop). Any of them can be fixed with
``generate_anatomy(seed, name=value)``.

Segments (keys of ``Anatomy.centerlines``) are listed in ``SEGMENTS``; consecutive segments of one
vessel share their end points and form the chains in ``CHAINS``. The three ``sinus_*`` segments
are not vessels: they are the skeletons of the sinus bulges (spheres swept along a short curve
inside the root); a consumer that wants vessel centerlines only skips ``SINUS_SEGMENTS``.

The lumen is the union of the spheres swept along the centerlines (radius ``radii[name][i]`` at
point ``centerlines[name][i]``), blended smoothly where different chains meet, and cut flat 3 mm
below the annulus (the aortic root segment starts with that short piece of left ventricular
outflow tract).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
from scipy.interpolate import CubicSpline
from scipy.ndimage import gaussian_filter1d, maximum_filter1d
from scipy.spatial import cKDTree

from ..errors import InputError
from ..export import strict_json

#: Centerline sample spacing (mm) of generated anatomies.
SAMPLE_SPACING_MM = 0.5
#: Length of left ventricular outflow tract kept below the annulus (mm); the surface is cut there.
LVOT_MM = 3.0
JSON_FORMAT = "TAVIRegistration.anatomy"
JSON_VERSION = 1

SIDES = ("left", "right")  # left = +x in LPS
AORTA_SEGMENTS = ("aortic_root", "ascending_aorta", "aortic_arch", "descending_aorta", "abdominal_aorta")
SINUS_SEGMENTS = ("sinus_right_coronary", "sinus_left_coronary", "sinus_noncoronary")


def iliofemoral_segments(side: str) -> Tuple[str, ...]:
    """The segments of one iliofemoral axis, proximal to distal."""
    return (f"{side}_common_iliac", f"{side}_external_iliac", f"{side}_common_femoral",
            f"{side}_superficial_femoral")


#: Chains: vessels made of consecutive segments that share end points.
CHAINS: Dict[str, Tuple[str, ...]] = {
    "aorta": AORTA_SEGMENTS,
    "left_iliofemoral": iliofemoral_segments("left"),
    "right_iliofemoral": iliofemoral_segments("right"),
}

BRANCH_SEGMENTS = (
    "left_coronary", "right_coronary", "brachiocephalic_trunk", "left_common_carotid",
    "left_subclavian", "left_renal", "right_renal", "left_internal_iliac", "right_internal_iliac",
    "left_profunda_femoris", "right_profunda_femoris",
)
#: Every segment a generated anatomy has.
SEGMENTS = AORTA_SEGMENTS + SINUS_SEGMENTS + iliofemoral_segments("left") + \
    iliofemoral_segments("right") + BRANCH_SEGMENTS

#: Landmarks a generated anatomy has (all LPS mm points).
LANDMARKS = (
    "annulus_center", "right_coronary_cusp_nadir", "left_coronary_cusp_nadir",
    "noncoronary_cusp_nadir", "left_coronary_ostium", "right_coronary_ostium",
    "sinotubular_junction", "brachiocephalic_origin", "left_common_carotid_origin",
    "left_subclavian_origin", "arch_top", "mid_descending_aorta", "aortic_hiatus",
    "left_renal_origin", "right_renal_origin", "bifurcation", "left_iliac_bifurcation",
    "right_iliac_bifurcation", "left_inguinal", "right_inguinal", "left_femoral_bifurcation",
    "right_femoral_bifurcation", "left_femoral_end", "right_femoral_end",
)

#: Uniformly drawn parameters: name -> (low, high, meaning). Lengths in mm, angles in degrees,
#: radii are lumen radii. ``left_``/``right_`` parameters are drawn for each side independently.
PARAM_RANGES: Dict[str, Tuple[float, float, str]] = {
    "annulus_radius_mm": (11.0, 14.0, "radius of the aortic annulus (virtual basal ring)"),
    "sinus_ratio": (1.25, 1.45, "sinus radius / annulus radius (result clipped to 14-18 mm)"),
    "stj_ratio": (1.0, 1.15, "sinotubular junction radius / annulus radius (clipped to 12-16 mm,"
                  " and at least 2 mm below the sinus radius)"),
    "sinus_height_mm": (17.0, 24.0, "height of the sinotubular junction above the annulus"),
    "root_angulation_deg": (30.0, 70.0, "angle between annulus plane and horizontal plane"),
    "coplanar_ap_caudal_deg": (5.0, 30.0, "caudal angle of the coplanar (annulus-perpendicular) "
                               "C-arm view at primary angle 0; sets the anterior tilt of the root"),
    "sinus_rotation_deg": (-20.0, 20.0, "rotation of the sinuses about the root axis (0 = RCC anterior)"),
    "coronary_ostium_height_mm": (9.0, 15.0, "height of the coronary ostia above the annulus"),
    "left_coronary_radius_mm": (2.0, 2.5, "left main coronary stub radius"),
    "right_coronary_radius_mm": (2.0, 2.5, "right coronary stub radius"),
    "left_coronary_length_mm": (10.0, 15.0, "left coronary stub length outside the sinus wall"),
    "right_coronary_length_mm": (10.0, 15.0, "right coronary stub length outside the sinus wall"),
    "ascending_radius_mm": (14.0, 18.0, "ascending aorta radius"),
    "arch_radius_ratio": (0.8, 0.95, "arch radius / ascending radius"),
    "ascending_axis_length_mm": (8.0, 25.0, "ascending aorta: straight length along the root axis"),
    "ascending_bend_radius_mm": (28.0, 45.0, "ascending aorta: bend radius from the root axis upward"),
    "ascending_lean_deg": (0.0, 15.0, "ascending aorta: final direction, tilt from vertical toward "
                           "right-anterior"),
    "ascending_rise_mm": (35.0, 60.0, "ascending top (arch start) height above the STJ"),
    "ascending_right_of_midline_mm": (15.0, 30.0, "ascending top right of the body midline (sets "
                                      "midline_x_mm, clipped so the midline is 0-20 mm right of "
                                      "the annulus)"),
    "descending_dx_mm": (15.0, 28.0, "descending aorta top: distance left of the midline"),
    "descending_y_mm": (40.0, 62.0, "descending aorta top: y (posterior)"),
    "descending_drop_mm": (0.0, 15.0, "descending aorta top below the ascending top"),
    "arch_height_ratio": (0.85, 1.15, "arch height / arch half width"),
    "arch_skew": (0.85, 1.2, "arch apex shift (exponent of the arch parameter; 1 = symmetric)"),
    "brachiocephalic_radius_mm": (5.0, 7.0, "brachiocephalic trunk radius"),
    "left_common_carotid_radius_mm": (3.2, 4.2, "left common carotid radius"),
    "left_subclavian_radius_mm": (3.8, 5.0, "left subclavian radius"),
    "brachiocephalic_length_mm": (30.0, 40.0, "stub length outside the arch wall"),
    "left_common_carotid_length_mm": (30.0, 40.0, "stub length outside the arch wall"),
    "left_subclavian_length_mm": (30.0, 40.0, "stub length outside the arch wall"),
    "carotid_gap_mm": (2.0, 8.0, "wall gap between brachiocephalic and left carotid origins"),
    "subclavian_gap_mm": (3.0, 10.0, "wall gap between left carotid and left subclavian origins"),
    "descending_radius_mm": (11.0, 13.5, "descending aorta radius below the isthmus"),
    "bifurcation_radius_mm": (8.0, 10.5, "abdominal aorta radius just above the bifurcation"),
    "bifurcation_depth_mm": (290.0, 360.0, "aortic bifurcation below the annulus (about L4)"),
    "bifurcation_y_mm": (10.0, 40.0, "aortic bifurcation y (the aorta comes forward with lordosis)"),
    "bifurcation_dx_mm": (0.0, 8.0, "aortic bifurcation left of the midline"),
    "renal_height_mm": (80.0, 110.0, "renal origins above the aortic bifurcation"),
    "hiatus_height_mm": (30.0, 50.0, "aortic hiatus (T12) above the renal origins"),
    "aortic_tortuosity": (0.0, 1.0, "descending/abdominal aorta tortuosity (0 straight, 1 tortuous)"),
    "left_renal_dz_mm": (-5.0, 10.0, "left renal origin height offset"),
    "right_renal_dz_mm": (-10.0, 5.0, "right renal origin height offset"),
    "left_renal_radius_mm": (2.5, 3.2, "renal stub radius"),
    "right_renal_radius_mm": (2.5, 3.2, "renal stub radius"),
    "left_renal_length_mm": (25.0, 40.0, "renal stub length outside the aortic wall"),
    "right_renal_length_mm": (25.0, 40.0, "renal stub length outside the aortic wall"),
}
for _side in SIDES:
    PARAM_RANGES.update({
        f"{_side}_iliac_half_angle_deg": (18.0, 35.0, "common iliac angle from the midline"),
        f"{_side}_common_iliac_length_mm": (35.0, 60.0, "common iliac length"),
        f"{_side}_common_iliac_radius_mm": (4.5, 6.0, "common iliac radius"),
        f"{_side}_external_iliac_radius_mm": (4.0, 5.2, "external iliac radius"),
        f"{_side}_common_femoral_radius_mm": (4.0, 5.0, "common femoral radius"),
        f"{_side}_superficial_femoral_radius_mm": (3.0, 4.0, "superficial femoral radius"),
        f"{_side}_internal_iliac_radius_mm": (2.8, 3.8, "internal iliac stub radius"),
        f"{_side}_profunda_radius_mm": (2.8, 3.8, "profunda femoris stub radius"),
        f"{_side}_inguinal_depth_mm": (110.0, 150.0, "inguinal ligament level below the bifurcation"),
        f"{_side}_inguinal_half_width_mm": (60.0, 85.0, "inguinal point distance from the midline"),
        f"{_side}_inguinal_anterior_mm": (35.0, 65.0, "inguinal point anterior of the bifurcation"),
        f"{_side}_external_iliac_sag_mm": (0.0, 12.0, "posterior-inferior sag of the external iliac"),
        f"{_side}_common_femoral_length_mm": (30.0, 50.0, "inguinal ligament to femoral bifurcation"),
        f"{_side}_femoral_length_mm": (110.0, 130.0, "femoral end below the inguinal point"),
        f"{_side}_iliac_tortuosity": (0.0, 1.0, "iliofemoral tortuosity (0 straight, 1 tortuous)"),
    })
del _side

#: Arch type (Myla classification): vertical distance from the arch top (centerline) down to the
#: brachiocephalic origin. Type I: branches from the top of the arch; III: from the ascending limb.
ARCH_TYPES: Dict[str, Tuple[float, float]] = {"I": (0.0, 6.0), "II": (8.0, 14.0), "III": (16.0, 26.0)}
ARCH_TYPE_PROBABILITIES = {"I": 0.4, "II": 0.4, "III": 0.2}

#: Deformation ranges (drawn by ``deform_anatomy`` when not given).
WIRE_STRAIGHTENING_RANGE = (0.2, 0.6)   # access side; the contralateral side gets 20-50 % of it
ROOT_MOTION_RANGE_MM = (1.0, 5.0)
ROOT_MOTION_SIGMA_MM = 40.0             # Gaussian decay of the root displacement field

SeedLike = Union[int, np.random.Generator]


@dataclass
class Anatomy:
    """A vessel tree in LPS mm: centerlines with lumen radii, landmarks, drawn parameters.

    ``state`` is ``"pre-operative"`` for a generated anatomy and ``"intra-operative"`` after
    ``deform_anatomy``; point ``i`` of a centerline keeps its meaning through the deformation.
    """

    centerlines: Dict[str, np.ndarray]
    radii: Dict[str, np.ndarray]
    landmarks: Dict[str, np.ndarray]
    params: dict
    seed: Optional[int] = None
    state: str = "pre-operative"

    def copy(self) -> "Anatomy":
        import copy as _copy
        return Anatomy(
            centerlines={k: v.copy() for k, v in self.centerlines.items()},
            radii={k: v.copy() for k, v in self.radii.items()},
            landmarks={k: v.copy() for k, v in self.landmarks.items()},
            params=_copy.deepcopy(self.params), seed=self.seed, state=self.state)

    def chain(self, name: str) -> Tuple[np.ndarray, np.ndarray]:
        """Points and radii of a chain of ``CHAINS`` (or of one segment), joints not repeated."""
        segments = CHAINS.get(name, (name,))
        return _concatenate([(self.centerlines[s], self.radii[s]) for s in segments
                             if s in self.centerlines])

    @property
    def annulus_normal(self) -> np.ndarray:
        """Unit normal of the annulus plane, from the left ventricle into the aorta."""
        root = self.centerlines["aortic_root"]
        s = _arclength(root)
        j = int(np.searchsorted(s, min(LVOT_MM + 5.0, s[-1])))
        return _unit(root[min(j, len(root) - 1)] - root[0])

    def bounds(self) -> Tuple[np.ndarray, np.ndarray]:
        """(min, max) corners of the lumen's bounding box (LPS mm)."""
        lo = np.min([np.min(p - r[:, None], axis=0) for p, r in
                     zip(self.centerlines.values(), self.radii.values())], axis=0)
        hi = np.max([np.max(p + r[:, None], axis=0) for p, r in
                     zip(self.centerlines.values(), self.radii.values())], axis=0)
        return lo, hi


# ---------------------------------------------------------------------------------------------
# small geometry helpers
# ---------------------------------------------------------------------------------------------
def _unit(v) -> np.ndarray:
    v = np.asarray(v, dtype=float)
    n = np.linalg.norm(v)
    if n == 0:
        raise ValueError("zero vector")
    return v / n


def _arclength(p: np.ndarray) -> np.ndarray:
    if len(p) < 2:
        return np.zeros(len(p))
    return np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(p, axis=0), axis=1))])


def _tangents(p: np.ndarray) -> np.ndarray:
    t = np.gradient(p, axis=0)
    return t / np.maximum(np.linalg.norm(t, axis=1, keepdims=True), 1e-12)


def tortuosity_index(points: np.ndarray) -> float:
    """Path length / chord length - 1 (0 for a straight line)."""
    p = np.asarray(points, dtype=float)
    chord = np.linalg.norm(p[-1] - p[0])
    return float(_arclength(p)[-1] / max(chord, 1e-9) - 1.0)


def _resample(p: np.ndarray, spacing: float, track: Sequence[int] = ()) -> Tuple[np.ndarray, List[int]]:
    """Uniform arclength resampling; returns the new points and the new indices of ``track``."""
    s = _arclength(p)
    n = max(int(round(s[-1] / spacing)), 1) + 1
    t = np.linspace(0.0, s[-1], n)
    out = np.column_stack([np.interp(t, s, p[:, k]) for k in range(3)])
    new_idx = [int(np.clip(round(s[i] / s[-1] * (n - 1)), 0, n - 1)) for i in track]
    return out, new_idx


def _hermite(p0, t0, p1, t1, n: int = 400, scale: float = 1.0) -> np.ndarray:
    p0, p1 = np.asarray(p0, float), np.asarray(p1, float)
    L = np.linalg.norm(p1 - p0) * scale
    m0, m1 = _unit(t0) * L, _unit(t1) * L
    u = np.linspace(0.0, 1.0, n)[:, None]
    h00 = 2 * u ** 3 - 3 * u ** 2 + 1
    h10 = u ** 3 - 2 * u ** 2 + u
    h01 = -2 * u ** 3 + 3 * u ** 2
    h11 = u ** 3 - u ** 2
    return h00 * p0 + h10 * m0 + h01 * p1 + h11 * m1


def _spline(points: Sequence, t_start, t_end, n_per_mm: float = 4.0) -> Tuple[np.ndarray, List[int]]:
    """Clamped cubic spline through ``points`` (chord-length parameter); dense samples and the
    sample indices of the control points."""
    pts = np.asarray(points, dtype=float)
    u = _arclength(pts)
    cs = CubicSpline(u, pts, axis=0, bc_type=((1, _unit(t_start)), (1, _unit(t_end))))
    n = max(int(u[-1] * n_per_mm), 8)
    uu = np.linspace(0.0, u[-1], n)
    idx = [int(round(ui / u[-1] * (n - 1))) for ui in u]
    return cs(uu), idx


def _line(p0, p1, spacing: float = SAMPLE_SPACING_MM) -> np.ndarray:
    p0, p1 = np.asarray(p0, float), np.asarray(p1, float)
    n = max(int(math.ceil(np.linalg.norm(p1 - p0) / spacing)), 1) + 1
    return p0 + np.linspace(0.0, 1.0, n)[:, None] * (p1 - p0)


def _profile(s: np.ndarray, knots_s: Sequence[float], knots_r: Sequence[float],
             sigma_mm: float = 0.0, spacing: float = SAMPLE_SPACING_MM) -> np.ndarray:
    r = np.interp(s, knots_s, knots_r)
    if sigma_mm > 0:
        r = gaussian_filter1d(r, sigma_mm / spacing, mode="nearest")
    return r


def _perturb(p: np.ndarray, rng: np.random.Generator, amplitude: float,
             wavelengths: Tuple[float, float], window: np.ndarray, n_modes: int = 4) -> np.ndarray:
    """Smooth random displacement perpendicular to the curve (sum of sinusoids in arclength).
    Always consumes the same number of random draws."""
    s = _arclength(p)
    t = _tangents(p)
    disp = np.zeros_like(p)
    for k in range(n_modes):
        lam = rng.uniform(*wavelengths)
        phase = rng.uniform(0.0, 2 * math.pi)
        v = _unit(rng.normal(size=3))
        a = amplitude * rng.uniform(0.6, 1.0) / (k + 1.0)
        vp = v[None, :] - (t @ v)[:, None] * t
        disp += a * np.sin(2 * math.pi * s / lam + phase)[:, None] * vp
    return p + disp * window[:, None]


def _ramp(s: np.ndarray, s0: float, s1: float) -> np.ndarray:
    """0 before s0, 1 after s1, smooth (cosine) in between; decreasing when s1 < s0."""
    x = np.clip((s - s0) / (s1 - s0), 0.0, 1.0)
    return 0.5 - 0.5 * np.cos(math.pi * x)


def _concatenate(parts: Iterable[Tuple[np.ndarray, np.ndarray]]) -> Tuple[np.ndarray, np.ndarray]:
    pts, rad = [], []
    for p, r in parts:
        if pts and np.allclose(pts[-1][-1], p[0]):
            p, r = p[1:], r[1:]
        pts.append(p)
        rad.append(r)
    return np.concatenate(pts), np.concatenate(rad)


def _rng(seed: SeedLike) -> Tuple[np.random.Generator, Optional[int]]:
    if isinstance(seed, np.random.Generator):
        return seed, None
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InputError(f"seed must be a non-negative integer or a numpy Generator, got {seed!r}")
    return np.random.default_rng(int(seed)), int(seed)


# ---------------------------------------------------------------------------------------------
# parameters
# ---------------------------------------------------------------------------------------------
class _Draw:
    """Draws parameters in a fixed order (the random stream does not depend on the overrides)."""

    def __init__(self, rng: np.random.Generator, overrides: dict):
        self.rng = rng
        self.over = dict(overrides)
        self.values: dict = {}

    def uniform(self, name: str) -> float:
        lo, hi, _ = PARAM_RANGES[name]
        value = float(self.rng.uniform(lo, hi))
        if name in self.over:
            value = self.over.pop(name)
            if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
                    or not math.isfinite(float(value)):
                raise InputError(f"anatomy parameter {name} must be a finite number, got {value!r}")
            value = float(value)
        self.values[name] = value
        return value

    def derived(self, name: str, value):
        if name in self.over:
            given = self.over.pop(name)
            if name == "arch_type":
                value = given
            elif name == "noise_seed":
                if isinstance(given, bool) or not isinstance(given, (int, np.integer)) or given < 0:
                    raise InputError(f"noise_seed must be a non-negative integer, got {given!r}")
                value = int(given)
            else:
                if isinstance(given, bool) or not isinstance(given, (int, float, np.integer,
                                                                     np.floating)) \
                        or not math.isfinite(float(given)):
                    raise InputError(f"anatomy parameter {name} must be a finite number, got {given!r}")
                value = float(given)
        self.values[name] = value
        return value

    def finish(self) -> dict:
        if self.over:
            raise InputError("unknown anatomy parameter(s): " + ", ".join(sorted(self.over)))
        return self.values


def _draw_params(rng: np.random.Generator, overrides: dict) -> dict:
    d = _Draw(rng, overrides)
    for name in PARAM_RANGES:
        d.uniform(name)
    v = d.values
    # arch type: one draw, then the drop from that type's range (a fixed number of draws)
    u_type, u_drop = float(rng.uniform()), float(rng.uniform())
    cum, arch_type = 0.0, "III"
    for name, p in ARCH_TYPE_PROBABILITIES.items():
        cum += p
        if u_type < cum:
            arch_type = name
            break
    arch_type = d.derived("arch_type", arch_type)
    if arch_type not in ARCH_TYPES:
        raise InputError(f"arch_type must be one of {', '.join(ARCH_TYPES)}, got {arch_type!r}")
    lo, hi = ARCH_TYPES[arch_type]
    d.derived("arch_branch_drop_mm", lo + u_drop * (hi - lo))
    d.derived("midline_x_mm", None)  # computed from the ascending aorta unless given
    noise_seed = int(rng.integers(0, 2 ** 31 - 1))
    d.derived("noise_seed", noise_seed)
    # derived radii (clipped to the brief's anatomical ranges)
    ra = v["annulus_radius_mm"]
    rs = d.derived("sinus_radius_mm", float(np.clip(ra * v["sinus_ratio"], 14.0, 18.0)))
    d.derived("stj_radius_mm", float(np.clip(min(ra * v["stj_ratio"], rs - 2.0), 12.0, 16.0)))
    d.derived("arch_radius_mm", v["ascending_radius_mm"] * v["arch_radius_ratio"])
    values = d.finish()
    if values["sinus_radius_mm"] <= ra + 0.5:
        raise InputError("sinus_radius_mm must exceed annulus_radius_mm by more than 0.5 mm")
    if not 0.0 < values["coronary_ostium_height_mm"] < values["sinus_height_mm"] - 1.0:
        raise InputError("coronary_ostium_height_mm must lie inside the sinus (below the STJ)")
    return values


# ---------------------------------------------------------------------------------------------
# generation
# ---------------------------------------------------------------------------------------------
def generate_anatomy(seed: SeedLike, **overrides) -> Anatomy:
    """A synthetic patient's vessel tree (pre-operative state) drawn from ``seed``.

    ``seed``: non-negative int (reproducible; stored in ``Anatomy.seed``) or a numpy Generator.
    ``overrides``: fix any parameter of ``PARAM_RANGES``, ``arch_type`` ('I', 'II', 'III'),
    ``arch_branch_drop_mm``, ``sinus_radius_mm``, ``stj_radius_mm``, ``arch_radius_mm``,
    ``midline_x_mm`` or ``noise_seed`` (the seed of the smooth random perturbations); the other
    parameters are drawn exactly as without the override. ``params`` also records derived values
    (``root_azimuth_deg``, ``midline_x_mm``, ``arch_type_measured_drop_mm``). Takes ~30 ms.
    """
    rng, seed_int = _rng(seed)
    P = _draw_params(rng, overrides)
    tree = _Tree(np.random.default_rng(P["noise_seed"]))
    n, e_ant, e_left = _root_frame(P)
    aorta = _build_aorta(P, n, tree.noise)
    i_bct, i_isthmus = _arch_branches(P, aorta, tree)
    _renal_stubs(P, aorta, tree)
    _split_aorta(aorta, i_bct, i_isthmus, tree)
    sinus_dirs = _sinuses(P, n, e_ant, e_left, tree)
    _coronary_stubs(P, aorta, n, sinus_dirs, tree)
    B = aorta.points[-1].copy()
    for side, sgn in (("left", 1.0), ("right", -1.0)):
        _iliofemoral_axis(P, side, sgn, B, tree)
    _aorta_landmarks(aorta, B, tree)
    P["arch_type_measured_drop_mm"] = float(aorta.points[aorta.arch_apex, 2] - aorta.points[i_bct, 2])
    return tree.anatomy(P, seed_int)


class _Tree:
    """A vessel tree under construction: centerlines, radii and landmarks by name, and the noise
    stream of its smooth random perturbations."""

    def __init__(self, noise: np.random.Generator):
        self.noise = noise
        self.centerlines: Dict[str, np.ndarray] = {}
        self.radii: Dict[str, np.ndarray] = {}
        self.landmarks: Dict[str, np.ndarray] = {}

    def jitter(self) -> np.ndarray:
        """A small random direction offset (three fixed draws from the noise stream)."""
        return self.noise.uniform(-0.12, 0.12, size=3)

    def stub(self, origin, d0, d1, length, radius, name, parent, landmark=None) -> np.ndarray:
        """A branch stub from ``origin`` (inside the parent lumen), leaving along d0 and turning to
        d1, cut ``length`` mm (along the branch) beyond the point where it leaves the parent lumen
        (the union of the spheres of ``parent`` = (points, radii)); that point is the landmark."""
        origin = np.asarray(origin, float)
        ppts, prad = parent
        total = float(prad.max()) + length + 20.0
        pts = _hermite(origin, d0, origin + total * _unit(d1), d1, n=1600, scale=0.6)
        pts, _ = _resample(pts, SAMPLE_SPACING_MM)
        near = np.linalg.norm(ppts - origin, axis=1) < total + prad
        outside = np.min(np.linalg.norm(pts[:, None, :] - ppts[near][None], axis=2)
                         - prad[near][None], axis=1) >= 0.0
        if not outside.any():
            raise RuntimeError(f"branch {name} does not leave its parent vessel")
        i_exit = int(np.argmax(outside))
        sb = _arclength(pts)
        pts = pts[: int(np.searchsorted(sb, sb[i_exit] + length)) + 1]
        self.centerlines[name] = pts
        self.radii[name] = np.full(len(pts), float(radius))
        if landmark is not None:
            self.landmarks[landmark] = pts[i_exit].copy()
        return pts

    def anatomy(self, P: dict, seed: Optional[int]) -> Anatomy:
        """The finished Anatomy: segments in ``SEGMENTS`` order, landmarks in ``LANDMARKS`` order."""
        L = {k: self.landmarks[k] for k in LANDMARKS}
        C = {k: self.centerlines[k] for k in SEGMENTS}
        R = {k: self.radii[k] for k in SEGMENTS}
        return Anatomy(centerlines=C, radii=R, landmarks=L, params=strict_json(P), seed=seed)


@dataclass
class _Aorta:
    """The aorta from the LVOT to the bifurcation as one resampled centerline with its radii,
    arclength and the sample indices of its key points."""

    points: np.ndarray
    radii: np.ndarray
    s: np.ndarray
    i_stj: int
    i_asc_top: int
    i_desc_top: int
    i_hiatus: int
    i_renal: int
    arch_apex: int
    z_renal: float

    def step_along(self, i0: int, dist: float) -> int:
        """Index of the sample ``dist`` mm further along than sample ``i0`` (clamped at the end)."""
        j = int(np.searchsorted(self.s, self.s[i0] + dist))
        return min(j, len(self.s) - 1)


def _root_frame(P: dict) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Annulus normal ``n`` and the unit directions ``e_ant``, ``e_left`` in the annulus plane
    (anterior and toward the patient's left); records ``root_azimuth_deg`` in ``P``."""
    # annulus normal: angle th from the head-foot axis; its anterior part makes the coplanar
    # view at primary 0 caudal by coplanar_ap_caudal_deg (tan = -n_y / n_z), the rest points right
    th = math.radians(P["root_angulation_deg"])
    n_y = -min(math.cos(th) * math.tan(math.radians(P["coplanar_ap_caudal_deg"])),
               0.95 * math.sin(th))
    n = np.array([-math.sqrt(max(math.sin(th) ** 2 - n_y ** 2, 0.0)), n_y, math.cos(th)])
    P["root_azimuth_deg"] = math.degrees(math.atan2(-n[1], -n[0]))
    ant = np.array([0.0, -1.0, 0.0])
    e_ant = _unit(ant - (ant @ n) * n)
    e_left = np.cross(n, e_ant)  # completes the frame; check it points toward patient left
    if e_left[0] < 0:
        e_left = -e_left
    return n, e_ant, e_left


def _build_aorta(P: dict, n: np.ndarray, noise: np.random.Generator) -> _Aorta:
    """The aorta: root, ascending aorta, arch and descending/abdominal aorta joined into one
    centerline, shaped (``_shape_aorta``) and given its radius profile."""
    root_pts, asc_pts, asc_top, u_up = _ascending_aorta(P, n)
    arch_pts, desc_top = _aortic_arch(P, asc_top, u_up)
    desc_pts, desc_idx, z_renal = _descending_aorta(P, desc_top)
    points = np.concatenate([root_pts, asc_pts[1:], arch_pts[1:], desc_pts[1:]])
    i_stj = len(root_pts) - 1
    i_asc_top = i_stj + len(asc_pts) - 1
    i_desc_top = i_asc_top + len(arch_pts) - 1
    i_hiatus = i_desc_top + desc_idx[2]
    i_renal = i_desc_top + desc_idx[3]
    points, track = _shape_aorta(P, points, [i_stj, i_asc_top, i_desc_top, i_hiatus, i_renal], noise)
    i_stj, i_asc_top, i_desc_top, i_hiatus, i_renal = track
    s = _arclength(points)
    arch_apex = i_asc_top + int(np.argmax(points[i_asc_top:i_desc_top + 1, 2]))
    radii = _aorta_radii(P, s, track, arch_apex)
    return _Aorta(points, radii, s, i_stj, i_asc_top, i_desc_top, i_hiatus, i_renal, arch_apex, z_renal)


def _ascending_aorta(P: dict, n: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The root (LVOT to STJ along the annulus normal) and the ascending aorta: straight along the
    root axis, a circular bend of bounded radius, then (nearly) straight up. Returns (root points,
    ascending points, the ascending aorta's top, its unit upward direction)."""
    ez = np.array([0.0, 0.0, 1.0])
    A = np.zeros(3)
    stj = A + P["sinus_height_mm"] * n
    root_pts = _line(A - LVOT_MM * n, stj, 0.1)
    asc_mid = stj + P["ascending_axis_length_mm"] * n
    lean = math.radians(P["ascending_lean_deg"])
    u_up = _unit(ez + math.tan(lean) * _unit([-1.0, -0.3, 0.0]))
    turn = math.acos(float(np.clip(n @ u_up, -1.0, 1.0)))
    phis = np.linspace(0.0, turn, 400)
    if turn > 1e-6:
        k_ax = _unit(np.cross(n, u_up))
        tang = (np.cos(phis)[:, None] * n + np.sin(phis)[:, None] * np.cross(k_ax, n)
                + (1 - np.cos(phis))[:, None] * (k_ax @ n) * k_ax)
    else:
        tang = np.repeat(n[None], len(phis), axis=0)
    dphi = turn / (len(phis) - 1) if turn > 1e-6 else 0.0
    arc = asc_mid + np.concatenate([[np.zeros(3)], np.cumsum(
        0.5 * (tang[1:] + tang[:-1]) * P["ascending_bend_radius_mm"] * dphi, axis=0)])
    up_len = max(stj[2] + P["ascending_rise_mm"] - arc[-1, 2], 10.0) / u_up[2]
    asc_top = arc[-1] + up_len * u_up
    asc_pts = np.concatenate([_line(stj, asc_mid, 0.1)[:-1], arc[:-1], _line(arc[-1], asc_top, 0.1)])
    return root_pts, asc_pts, asc_top, u_up


def _aortic_arch(P: dict, asc_top: np.ndarray, u_up: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """The arch from the top of the ascending aorta to the top of the descending aorta (left of
    the body midline, which is set here from the ascending aorta unless given); returns (arch
    points, descending top)."""
    ez = np.array([0.0, 0.0, 1.0])
    if P["midline_x_mm"] is None:
        P["midline_x_mm"] = float(np.clip(asc_top[0] + P["ascending_right_of_midline_mm"], -20.0, 0.0))
    mid_x = P["midline_x_mm"]
    desc_top = np.array([mid_x + P["descending_dx_mm"], P["descending_y_mm"],
                         asc_top[2] - P["descending_drop_mm"]])
    half_width = 0.5 * np.linalg.norm((desc_top - asc_top)[:2])
    b = P["arch_height_ratio"] * half_width
    tau = np.linspace(0.0, 1.0, 900)
    phi = math.pi * tau ** P["arch_skew"]
    w1 = (0.5 - 0.5 * np.cos(phi))[:, None]
    arch_pts = asc_top * (1 - w1) + desc_top * w1 + (b * np.sin(phi))[:, None] * ez
    # start along the ascending direction (the lean), fading into the planar arch
    arch_pts += (np.sin(phi) * np.exp(-3.0 * phi))[:, None] * (b * (u_up - ez))
    return arch_pts, desc_top


def _descending_aorta(P: dict, desc_top: np.ndarray) -> Tuple[np.ndarray, List[int], float]:
    """The descending and abdominal aorta down to the bifurcation (a spline through the hiatus
    and the renal level); returns (points, sample indices of the control points, renal height)."""
    ez = np.array([0.0, 0.0, 1.0])
    mid_x = P["midline_x_mm"]
    z_bif = -P["bifurcation_depth_mm"]
    z_renal = z_bif + P["renal_height_mm"]
    z_hiatus = z_renal + P["hiatus_height_mm"]
    y_bif = P["bifurcation_y_mm"]
    y_hiatus = max(0.5 * (P["descending_y_mm"] + y_bif) + 5.0, y_bif + 5.0)
    dx_top = P["descending_dx_mm"]
    ctrl = [
        desc_top,
        [mid_x + 0.95 * dx_top, P["descending_y_mm"] + 4.0, 0.5 * (desc_top[2] + z_hiatus)],
        [mid_x + 0.5 * dx_top + 3.0, y_hiatus, z_hiatus],
        [mid_x + 0.5 * (0.5 * dx_top + 3.0 + P["bifurcation_dx_mm"]), 0.5 * (y_hiatus + y_bif),
         z_renal],
        [mid_x + P["bifurcation_dx_mm"], y_bif, z_bif],
    ]
    desc_pts, desc_idx = _spline(ctrl, -ez, [0.0, -0.15, -1.0])
    return desc_pts, desc_idx, z_renal


def _shape_aorta(P: dict, points: np.ndarray, track: List[int],
                 noise: np.random.Generator) -> Tuple[np.ndarray, List[int]]:
    """Resample the joined aorta, smooth the joints of its pieces and add tortuosity; returns the
    points and the new indices of ``track`` (STJ, ascending top, descending top, hiatus, renal)."""
    aorta, track = _resample(points, SAMPLE_SPACING_MM, track)
    # smooth the joints of the pieces (bounded curvature); the root stays straight and exact and
    # the bifurcation stays in place
    i_stj = track[0]
    s = _arclength(aorta)
    smooth = gaussian_filter1d(aorta, 8.0 / SAMPLE_SPACING_MM, axis=0, mode="nearest")
    blend = _ramp(s, s[i_stj], s[i_stj] + 15.0) * _ramp(s, s[-1], s[-1] - 40.0)
    aorta = aorta + blend[:, None] * (smooth - aorta)
    aorta, track = _resample(aorta, SAMPLE_SPACING_MM, track)
    s = _arclength(aorta)
    amp = 1.0 + 5.0 * P["aortic_tortuosity"]
    # tortuosity of the descending/abdominal aorta; the arch and the bifurcation stay in place
    i_desc_top = track[2]
    window = _ramp(s, s[i_desc_top] + 10.0, s[i_desc_top] + 70.0) * _ramp(s, s[-1], s[-1] - 30.0)
    aorta = _perturb(aorta, noise, amp, (90.0, 220.0), window)
    return _resample(aorta, SAMPLE_SPACING_MM, track)


def _aorta_radii(P: dict, s: np.ndarray, track: Sequence[int], arch_apex: int) -> np.ndarray:
    """Lumen radius along the aorta (arclength ``s``): annulus, STJ, ascending, arch, descending
    and bifurcation radii blended smoothly; the root (up to the STJ) is kept exact."""
    i_stj, i_asc_top, i_desc_top, i_hiatus, i_renal = track
    ra, rstj = P["annulus_radius_mm"], P["stj_radius_mm"]
    rasc, rarch = P["ascending_radius_mm"], P["arch_radius_mm"]
    i_ann = int(round(LVOT_MM / SAMPLE_SPACING_MM))
    r_desc, r_bif = P["descending_radius_mm"], P["bifurcation_radius_mm"]
    r_aorta = _profile(
        s,
        [0.0, s[i_ann], s[i_stj], s[i_stj] + 15.0, s[i_asc_top], s[arch_apex], s[i_desc_top] + 30.0,
         s[i_hiatus], s[i_renal], s[-1]],
        [ra, ra, rstj, rasc, rasc, rarch, r_desc, 0.5 * (r_desc + r_bif) + 0.5, 0.5 * (r_desc + r_bif),
         r_bif], sigma_mm=4.0)
    # keep the root exact (no smoothing across the annulus)
    root_mask = s <= s[i_stj]
    r_aorta[root_mask] = np.interp(s[root_mask], [0.0, s[i_ann], s[i_stj]], [ra, ra, rstj])
    return r_aorta


def _outer_side(tangents: np.ndarray, curvature: np.ndarray, i: int) -> np.ndarray:
    """Unit direction at sample ``i`` perpendicular to the curve, away from its centre of
    curvature (upward where the curve is straight)."""
    k = curvature[i]
    out = -k if np.linalg.norm(k) > 1e-6 else np.array([0.0, 0.0, 1.0])
    out = out - (out @ tangents[i]) * tangents[i]
    return _unit(out)


def _arch_branches(P: dict, aorta: _Aorta, tree: _Tree) -> Tuple[int, int]:
    """Brachiocephalic trunk, left common carotid and left subclavian stubs from the outer side of
    the arch; returns the aorta sample indices of the arch's start (brachiocephalic origin) and end
    (isthmus, 20 mm beyond the left subclavian)."""
    pts = aorta.points
    z_top = pts[aorta.arch_apex, 2]
    cand = np.arange(aorta.i_stj + 10, aorta.arch_apex + 1)
    below = cand[pts[cand, 2] <= z_top - P["arch_branch_drop_mm"]]
    i_bct = int(below[-1]) if len(below) else int(aorta.arch_apex)
    r_bct = P["brachiocephalic_radius_mm"]
    r_lcc = P["left_common_carotid_radius_mm"]
    r_lsa = P["left_subclavian_radius_mm"]
    i_lcc = aorta.step_along(i_bct, r_bct + r_lcc + P["carotid_gap_mm"])
    i_lsa = aorta.step_along(i_lcc, r_lcc + r_lsa + P["subclavian_gap_mm"])
    t_aorta = _tangents(pts)
    curv = np.gradient(t_aorta, axis=0)
    for i_o, target, r_b, key, lm in (
        (i_bct, [-0.45, -0.2, 1.0], r_bct, "brachiocephalic", "brachiocephalic_origin"),
        (i_lcc, [0.05, -0.1, 1.0], r_lcc, "left_common_carotid", "left_common_carotid_origin"),
        (i_lsa, [0.45, 0.15, 1.0], r_lsa, "left_subclavian", "left_subclavian_origin"),
    ):
        d1 = _unit(np.asarray(target) + tree.jitter())
        d0 = _unit(_outer_side(t_aorta, curv, i_o) + d1)
        name = "brachiocephalic_trunk" if key == "brachiocephalic" else key
        tree.stub(pts[i_o], d0, d1, P[f"{key}_length_mm"], r_b, name, (pts, aorta.radii), lm)
    return i_bct, aorta.step_along(i_lsa, r_lsa + 20.0)


def _renal_stubs(P: dict, aorta: _Aorta, tree: _Tree) -> None:
    """Left and right renal artery stubs from the abdominal aorta near the renal level."""
    pts = aorta.points
    for side, sgn in (("left", 1.0), ("right", -1.0)):
        zr = aorta.z_renal + P[f"{side}_renal_dz_mm"]
        seg = np.arange(aorta.i_hiatus, len(pts))
        i_r = int(seg[np.argmin(np.abs(pts[seg, 2] - zr))])
        d = _unit(np.array([sgn, 0.35, -0.15]) + tree.jitter())
        tree.stub(pts[i_r], d, d, P[f"{side}_renal_length_mm"], P[f"{side}_renal_radius_mm"],
                  f"{side}_renal", (pts, aorta.radii), f"{side}_renal_origin")


def _split_aorta(aorta: _Aorta, i_bct: int, i_isthmus: int, tree: _Tree) -> None:
    """Cut the aorta into the named segments of ``AORTA_SEGMENTS`` (shared end points)."""
    bounds = [0, aorta.i_stj, i_bct, i_isthmus, aorta.i_hiatus, len(aorta.points) - 1]
    for name, a0, a1 in zip(AORTA_SEGMENTS, bounds[:-1], bounds[1:]):
        tree.centerlines[name] = aorta.points[a0:a1 + 1].copy()
        tree.radii[name] = aorta.radii[a0:a1 + 1].copy()


def _sinus_outer_radius(P: dict, h):
    """Outer radius of a sinus (distance of its wall from the root axis) at height ``h`` above the
    annulus: the root base radius plus a bump that rises quadratically from the annulus (so the
    swept spheres do not widen the annulus), peaks at the sinus radius half way up, and comes back
    to the STJ radius just below the STJ."""
    h_stj = P["sinus_height_mm"]
    ra, rs, rstj = P["annulus_radius_mm"], P["sinus_radius_mm"], P["stj_radius_mm"]
    h_pk, h_end = 0.5 * h_stj, h_stj - 0.5

    def base_r(height):
        return np.interp(height, [0.0, h_stj], [ra, rstj])

    hh = np.asarray(h, dtype=float)
    x = np.where(hh < h_pk, np.clip(hh / h_pk, 0.0, 1.0),
                 np.clip((h_end - hh) / (h_end - h_pk), 0.0, 1.0))
    bump = np.where(x < 0.5, 2 * x * x, 1.0 - 2 * (1.0 - x) ** 2)
    return base_r(h) + (rs - base_r(h_pk)) * bump


def _sinuses(P: dict, n: np.ndarray, e_ant: np.ndarray, e_left: np.ndarray,
             tree: _Tree) -> Dict[str, np.ndarray]:
    """The three sinuses of Valsalva (skeletons of the bulges) and the cusp nadirs; returns the
    unit direction of each sinus from the root axis."""
    A = np.zeros(3)
    ra = P["annulus_radius_mm"]
    rot = math.radians(P["sinus_rotation_deg"])
    sinus_dirs = {}
    for name, ang in (("right_coronary", 0.0), ("left_coronary", 120.0), ("noncoronary", -120.0)):
        a = rot + math.radians(ang)
        sinus_dirs[name] = math.cos(a) * e_ant + math.sin(a) * e_left
    h_end = P["sinus_height_mm"] - 0.5
    hs = np.arange(0.0, h_end + 1e-9, 0.25)
    Rh = _sinus_outer_radius(P, hs)
    rho = 0.45 * Rh
    for name, e in sinus_dirs.items():
        pts = A + hs[:, None] * n + (Rh - rho)[:, None] * e
        tree.centerlines[f"sinus_{name}"] = pts
        tree.radii[f"sinus_{name}"] = rho.copy()
        tree.landmarks[f"{name}_cusp_nadir"] = A + ra * e
    return sinus_dirs


def _coronary_stubs(P: dict, aorta: _Aorta, n: np.ndarray, sinus_dirs: Dict[str, np.ndarray],
                    tree: _Tree) -> None:
    """Left main and right coronary stubs from their sinuses at the ostium height."""
    A = np.zeros(3)
    # the left main runs leftward (and a little anterior and down), the right coronary forward,
    # right and down toward the atrioventricular groove
    course = {"left": np.array([0.7, -0.3, -0.2]), "right": np.array([-0.4, -0.5, -0.3])}
    i_stj = aorta.i_stj
    root_union = _concatenate([(aorta.points[: i_stj + 1], aorta.radii[: i_stj + 1])]
                              + [(tree.centerlines[f"sinus_{k}"], tree.radii[f"sinus_{k}"])
                                 for k in sinus_dirs])
    for side in ("left", "right"):
        e = sinus_dirs[f"{side}_coronary"]
        h = P["coronary_ostium_height_mm"]
        Rw = float(_sinus_outer_radius(P, h))
        origin = A + h * n + 0.3 * Rw * e
        d1 = _unit(e + course[side] + 0.5 * tree.jitter())
        if d1 @ e < 0.3:  # keep the stub leaving the sinus wall
            d1 = _unit(d1 + (0.3 - d1 @ e) * 1.5 * e)
        tree.stub(origin, e, d1, P[f"{side}_coronary_length_mm"], P[f"{side}_coronary_radius_mm"],
                  f"{side}_coronary", root_union, f"{side}_coronary_ostium")


def _iliofemoral_centerline(P: dict, side: str, sgn: float, B: np.ndarray,
                            noise: np.random.Generator) -> Tuple[np.ndarray, List[int]]:
    """Centerline of one iliofemoral axis from the aortic bifurcation ``B`` to the end of the
    superficial femoral; returns the points and the sample indices of the bifurcation, the iliac
    bifurcation, the pelvic brim, the inguinal point, the femoral bifurcation and the end."""
    p = lambda k: P[f"{side}_{k}"]  # noqa: E731
    mid_x = P["midline_x_mm"]
    g = math.radians(p("iliac_half_angle_deg"))
    d_cia = _unit([sgn * math.sin(g), noise.uniform(0.1, 0.35), -math.cos(g)])
    IB = B + p("common_iliac_length_mm") * d_cia
    IN = np.array([mid_x + sgn * p("inguinal_half_width_mm"), B[1] - p("inguinal_anterior_mm"),
                   B[2] - p("inguinal_depth_mm")])
    sag = p("external_iliac_sag_mm")
    # the external iliac bows laterally over the pelvic brim and reaches the groin steeply,
    # so that it joins the common femoral with a gentle bend
    EM = 0.5 * (IB + IN) + np.array([0.25 * (IN[0] - IB[0]), sag, -0.6 * sag - 10.0])
    d_fem = _unit([-sgn * noise.uniform(0.05, 0.2), noise.uniform(0.05, 0.25), -1.0])
    END = IN + p("femoral_length_mm") * d_fem
    dense, idx = _spline([B, IB, EM, IN, END], d_cia, d_fem)
    chain, idx = _resample(dense, SAMPLE_SPACING_MM, idx)
    # the femoral bifurcation: common_femoral_length_mm along the vessel below the inguinal point
    idx = idx[:4] + [idx[3] + int(round(p("common_femoral_length_mm") / SAMPLE_SPACING_MM)),
                     idx[4]]
    sc = _arclength(chain)
    amp = 1.0 + 6.0 * p("iliac_tortuosity")
    win = _ramp(sc, 5.0, 25.0) * (1.0 - 0.8 * _ramp(sc, sc[idx[3]] - 15.0, sc[idx[3]] + 5.0))
    chain = _perturb(chain, noise, amp, (60.0, 140.0), win)
    chain, idx = _resample(chain, SAMPLE_SPACING_MM, idx)
    chain[0] = B
    return chain, idx


def _iliofemoral_axis(P: dict, side: str, sgn: float, B: np.ndarray, tree: _Tree) -> None:
    """One side's iliofemoral segments (common and external iliac, common and superficial
    femoral) with their radii and landmarks, and the internal iliac and profunda stubs."""
    p = lambda k: P[f"{side}_{k}"]  # noqa: E731
    chain, idx = _iliofemoral_centerline(P, side, sgn, B, tree.noise)
    sc = _arclength(chain)
    r_cia, r_eia = p("common_iliac_radius_mm"), p("external_iliac_radius_mm")
    r_cfa, r_sfa = p("common_femoral_radius_mm"), p("superficial_femoral_radius_mm")
    rc = _profile(sc, [0.0, sc[idx[1]], sc[idx[3]], sc[idx[4]], sc[-1]],
                  [r_cia, 0.5 * (r_cia + r_eia), 0.5 * (r_eia + r_cfa), r_cfa, 0.95 * r_sfa],
                  sigma_mm=3.0)
    # smooth start: the common iliac leaves the aorta at the aortic radius's neighbourhood
    names = iliofemoral_segments(side)
    cuts = [0, idx[1], idx[3], idx[4], len(chain) - 1]
    for name, a0, a1 in zip(names, cuts[:-1], cuts[1:]):
        tree.centerlines[name] = chain[a0:a1 + 1].copy()
        tree.radii[name] = rc[a0:a1 + 1].copy()
    tree.landmarks[f"{side}_iliac_bifurcation"] = chain[idx[1]].copy()
    tree.landmarks[f"{side}_inguinal"] = chain[idx[3]].copy()
    tree.landmarks[f"{side}_femoral_bifurcation"] = chain[idx[4]].copy()
    tree.landmarks[f"{side}_femoral_end"] = chain[-1].copy()
    tc = _tangents(chain)
    # internal iliac: posterior and inferior into the pelvis
    d = _unit(np.array([0.05 * sgn, 0.75, -0.65]) + tree.jitter())
    tree.stub(chain[idx[1]], d, d, 30.0, p("internal_iliac_radius_mm"), f"{side}_internal_iliac",
              (chain, rc))
    # profunda femoris: posterior-lateral, then down, diverging from the superficial femoral
    d0 = _unit(np.array([0.6 * sgn, 0.8, -0.3]) + tree.jitter())
    d0h = _unit(d0 - (d0 @ tc[idx[4]]) * tc[idx[4]])
    d1 = _unit(0.7 * d0h + tc[idx[4]])
    tree.stub(chain[idx[4]], d0, d1, 30.0, p("profunda_radius_mm"), f"{side}_profunda_femoris",
              (chain, rc))


def _aorta_landmarks(aorta: _Aorta, B: np.ndarray, tree: _Tree) -> None:
    """Landmarks on the aorta: annulus centre, STJ, arch top, mid descending aorta, hiatus and
    bifurcation."""
    pts = aorta.points
    desc = tree.centerlines["descending_aorta"]
    tree.landmarks.update({
        "annulus_center": np.zeros(3),
        "sinotubular_junction": pts[aorta.i_stj].copy(),
        "arch_top": pts[aorta.arch_apex].copy(),
        "mid_descending_aorta": desc[np.searchsorted(_arclength(desc), 0.5 * _arclength(desc)[-1])].copy(),
        "aortic_hiatus": pts[aorta.i_hiatus].copy(),
        "bifurcation": B.copy(),
    })


# ---------------------------------------------------------------------------------------------
# intra-operative deformation
# ---------------------------------------------------------------------------------------------
def deform_anatomy(anatomy: Anatomy, rng: SeedLike, *,
                   wire_straightening: Union[None, float, Tuple[float, float], Dict[str, float]] = None,
                   root_motion_mm: Optional[float] = None,
                   access_side: Optional[str] = None,
                   root_motion_sigma_mm: float = ROOT_MOTION_SIGMA_MM) -> Anatomy:
    """The intra-operative state of ``anatomy`` (a new Anatomy; the input is not changed).

    * Stiff guidewire: on each side the iliofemoral axis from the aortic bifurcation to the femoral
      access point (common femoral artery, half way between the inguinal point and the femoral
      bifurcation) is blended toward the straight line between those two points, point by point at
      equal arclength fraction, by a fraction f (tapered smoothly to 0 over the last 25/30 mm at
      the two ends, so no kink appears). ``wire_straightening``: one float for both sides, a
      (left, right) pair or a dict; None draws f in ``WIRE_STRAIGHTENING_RANGE`` for the access
      side (``access_side``, drawn when None) and 20-50 % of it for the contralateral side (pigtail
      catheter). The bifurcation, the access point and everything distal to it do not move;
      branch stubs move rigidly with their origin.
    * Root motion: every point moves by ``D * exp(-|x - annulus|^2 / (2 sigma^2))`` with |D| =
      ``root_motion_mm`` (drawn in ``ROOT_MOTION_RANGE_MM`` when None; direction random, weighted
      toward head-foot like breathing). The annulus moves by exactly |D|, nothing moves more.

    Radii are unchanged and centerline point ``i`` keeps its identity. Rigid table motion is not
    applied here. What was applied is recorded in ``params['deformation']``.
    """
    gen, _ = _rng(rng)
    out = anatomy.copy()
    u_side, u_f, u_c = (float(x) for x in gen.uniform(size=3))
    u_m = float(gen.uniform())
    dvec = gen.normal(size=3) * np.array([0.6, 0.6, 1.0])
    if access_side is None:
        access_side = "right" if u_side < 0.7 else "left"
    if access_side not in SIDES:
        raise InputError(f"access_side must be 'left' or 'right', got {access_side!r}")
    fractions = _wire_fractions(wire_straightening, access_side, u_f, u_c)
    root_motion_mm = _root_motion_amplitude(root_motion_mm, u_m)

    # 1. guidewire straightening of the iliofemoral chains
    lm_moves: Dict[str, np.ndarray] = {}
    access_points: Dict[str, np.ndarray] = {}
    for side in SIDES:
        access_point, moves = _straighten_wire(anatomy, out, side, fractions.get(side, 0.0))
        if access_point is not None:
            access_points[side] = access_point
            lm_moves.update(moves)
    for lm, dv in lm_moves.items():
        out.landmarks[lm] = anatomy.landmarks[lm] + dv

    # 2. root motion: smooth field decaying away from the annulus
    D = _unit(dvec) * root_motion_mm if root_motion_mm > 0 else np.zeros(3)
    _move_root(out, anatomy.landmarks["annulus_center"], D, root_motion_sigma_mm)
    out.state = "intra-operative"
    out.params["deformation"] = strict_json({
        "access_side": access_side,
        "wire_straightening": {s: fractions.get(s, 0.0) for s in SIDES},
        "wire_access_points_lps": access_points,
        "root_motion_mm": root_motion_mm,
        "root_motion_vector_mm": D,
        "root_motion_sigma_mm": float(root_motion_sigma_mm),
    })
    return out


def _wire_fractions(wire_straightening, access_side: str, u_f: float, u_c: float) -> Dict[str, float]:
    """Straightening fraction per side: as given, or drawn from the uniform numbers ``u_f`` (access
    side) and ``u_c`` (contralateral share) when ``wire_straightening`` is None."""
    if wire_straightening is None:
        lo, hi = WIRE_STRAIGHTENING_RANGE
        f_acc = lo + u_f * (hi - lo)
        f_con = f_acc * (0.2 + 0.3 * u_c)
        fractions = {access_side: f_acc, ("left" if access_side == "right" else "right"): f_con}
    elif isinstance(wire_straightening, dict):
        fractions = {s: float(wire_straightening.get(s, 0.0)) for s in SIDES}
    elif isinstance(wire_straightening, (tuple, list)):
        fractions = dict(zip(SIDES, (float(x) for x in wire_straightening)))
    else:
        fractions = {s: float(wire_straightening) for s in SIDES}
    for s, f in fractions.items():
        if not 0.0 <= f <= 1.0:
            raise InputError(f"wire straightening fraction for the {s} side must be in [0, 1], got {f}")
    return fractions


def _root_motion_amplitude(root_motion_mm: Optional[float], u_m: float) -> float:
    """|D| of the root motion: as given (checked to lie in [0, 50] mm), or drawn in
    ``ROOT_MOTION_RANGE_MM`` from the uniform number ``u_m`` when None."""
    if root_motion_mm is None:
        lo, hi = ROOT_MOTION_RANGE_MM
        root_motion_mm = lo + u_m * (hi - lo)
    root_motion_mm = float(root_motion_mm)
    if not (math.isfinite(root_motion_mm) and 0.0 <= root_motion_mm <= 50.0):
        raise InputError(f"root_motion_mm must be in [0, 50], got {root_motion_mm}")
    return root_motion_mm


def _straighten_wire(anatomy: Anatomy, out: Anatomy, side: str,
                     f: float) -> Tuple[Optional[np.ndarray], Dict[str, np.ndarray]]:
    """Blend ``side``'s iliofemoral chain of ``anatomy`` toward the wire's straight path by ``f``,
    writing the moved segments and branch stubs into ``out``. Returns the femoral access point
    (None when nothing moves) and the displacement of each of the side's landmarks."""
    names = [n for n in iliofemoral_segments(side) if n in out.centerlines]
    if f == 0.0 or not names:
        return None, {}
    pts, _ = anatomy.chain(f"{side}_iliofemoral")
    tree = cKDTree(pts)
    lms = anatomy.landmarks
    if f"{side}_inguinal" in lms and f"{side}_femoral_bifurcation" in lms:
        i_acc = (int(tree.query(lms[f"{side}_inguinal"])[1])
                 + int(tree.query(lms[f"{side}_femoral_bifurcation"])[1])) // 2
    else:
        i_acc = len(pts) - 1
    disp = _wire_displacement(pts, i_acc, f)
    k = 0
    for j, name in enumerate(names):
        m = len(anatomy.centerlines[name])
        start = k if j == 0 else k - 1
        out.centerlines[name] = anatomy.centerlines[name] + disp[start:start + m]
        k = start + m
    # branch stubs of this side move rigidly with their origin
    for stub in (f"{side}_internal_iliac", f"{side}_profunda_femoris"):
        if stub in out.centerlines:
            _, i0 = tree.query(anatomy.centerlines[stub][0])
            out.centerlines[stub] = anatomy.centerlines[stub] + disp[i0]
    lm_moves: Dict[str, np.ndarray] = {}
    for lm in (f"{side}_iliac_bifurcation", f"{side}_inguinal", f"{side}_femoral_bifurcation",
               f"{side}_femoral_end"):
        if lm in anatomy.landmarks:
            _, i0 = tree.query(anatomy.landmarks[lm])
            lm_moves[lm] = disp[i0]
    return pts[i_acc], lm_moves


def _wire_displacement(pts: np.ndarray, i_acc: int, f: float) -> np.ndarray:
    """Displacement of each chain point: up to the access point ``i_acc``, a fraction of the way
    to the straight line from the first point to the access point; zero beyond it."""
    seg = pts[: i_acc + 1]
    sa = _arclength(seg)
    straight = seg[0] + (sa / sa[-1])[:, None] * (seg[-1] - seg[0])
    # the weight goes smoothly to 0 at both ends: no kink at the bifurcation or the access point
    w = f * _ramp(sa, 0.0, 25.0) * _ramp(sa, sa[-1], sa[-1] - 30.0)
    disp = np.zeros_like(pts)
    disp[: i_acc + 1] = w[:, None] * (straight - seg)
    return disp


def _move_root(out: Anatomy, centre: np.ndarray, D: np.ndarray, sigma_mm: float) -> None:
    """Move every centerline point and landmark of ``out`` by ``D`` weighted with a Gaussian of
    ``sigma_mm`` about ``centre``."""
    sig2 = 2.0 * float(sigma_mm) ** 2

    def move(x):
        w = np.exp(-np.sum((x - centre) ** 2, axis=-1) / sig2)
        return x + w[..., None] * D

    out.centerlines = {k: move(v) for k, v in out.centerlines.items()}
    out.landmarks = {k: move(v) for k, v in out.landmarks.items()}


# ---------------------------------------------------------------------------------------------
# JSON
# ---------------------------------------------------------------------------------------------
def anatomy_to_json(anatomy: Anatomy) -> dict:
    """A JSON-serialisable dict (LPS mm) that ``anatomy_from_json`` turns back into the Anatomy."""
    return {
        "format": JSON_FORMAT,
        "version": JSON_VERSION,
        "coordinate_system": "LPS",
        "units": "mm",
        "seed": anatomy.seed,
        "state": anatomy.state,
        "centerlines": {k: np.asarray(v, float).tolist() for k, v in anatomy.centerlines.items()},
        "radii": {k: np.asarray(v, float).tolist() for k, v in anatomy.radii.items()},
        "landmarks": {k: np.asarray(v, float).tolist() for k, v in anatomy.landmarks.items()},
        "params": strict_json(anatomy.params),
    }


def anatomy_from_json(data: dict) -> Anatomy:
    """Inverse of ``anatomy_to_json``; raises InputError on anything malformed."""
    if not isinstance(data, dict) or data.get("format") != JSON_FORMAT:
        raise InputError(f"not a {JSON_FORMAT} document")
    if data.get("version") != JSON_VERSION:
        raise InputError(f"unsupported anatomy version {data.get('version')!r}")
    if data.get("coordinate_system", "LPS") != "LPS" or data.get("units", "mm") != "mm":
        raise InputError("anatomy must be in LPS millimetres")
    try:
        C = {str(k): np.asarray(v, dtype=float).reshape(-1, 3) for k, v in data["centerlines"].items()}
        R = {str(k): np.asarray(v, dtype=float).reshape(-1) for k, v in data["radii"].items()}
        L = {str(k): np.asarray(v, dtype=float).reshape(3) for k, v in data["landmarks"].items()}
    except (KeyError, ValueError, TypeError, AttributeError) as exc:
        raise InputError(f"malformed anatomy document: {exc}") from None
    if set(C) != set(R) or any(len(C[k]) != len(R[k]) or len(C[k]) == 0 for k in C):
        raise InputError("anatomy centerlines and radii do not match")
    arrays = list(C.values()) + list(R.values()) + list(L.values())
    if not all(np.all(np.isfinite(a)) for a in arrays) or any(np.any(r <= 0) for r in R.values()):
        raise InputError("anatomy has non-finite coordinates or non-positive radii")
    seed = data.get("seed")
    return Anatomy(centerlines=C, radii=R, landmarks=L, params=dict(data.get("params", {})),
                   seed=None if seed is None else int(seed),
                   state=str(data.get("state", "pre-operative")))


# ---------------------------------------------------------------------------------------------
# surface
# ---------------------------------------------------------------------------------------------
_BLOCK = 8
_SUB = 4


def _region_box(anatomy: Anatomy, region) -> Optional[Tuple[np.ndarray, np.ndarray]]:
    if region is None:
        return None
    big = 1e9
    if isinstance(region, str):
        lm = anatomy.landmarks
        if region == "upper":
            return (np.array([-big, -big, lm["mid_descending_aorta"][2]]), np.array([big, big, big]))
        if region == "lower":
            return (np.array([-big, -big, -big]), np.array([big, big, lm["aortic_hiatus"][2]]))
        raise InputError(f"region must be 'upper', 'lower', a (min, max) box or None, got {region!r}")
    try:
        lo, hi = (np.asarray(c, dtype=float).reshape(3) for c in region)
    except (TypeError, ValueError):
        raise InputError(f"region must be 'upper', 'lower', a (min, max) box or None, got {region!r}") \
            from None
    if not np.all(lo < hi):
        raise InputError("region box minimum must be below its maximum on every axis")
    return lo, hi


def _field_sources(anatomy: Anatomy, box) -> List[Tuple[str, np.ndarray, np.ndarray]]:
    """Chains (joined segments) and loose segments, cut to the region box (one run per piece)."""
    sources, used = [], set()
    for chain_name, segs in CHAINS.items():
        present = [s for s in segs if s in anatomy.centerlines]
        if present:
            p, r = _concatenate([(anatomy.centerlines[s], anatomy.radii[s]) for s in present])
            sources.append((chain_name, p, r))
            used.update(present)
    for name in anatomy.centerlines:
        if name not in used:
            sources.append((name, np.asarray(anatomy.centerlines[name], float),
                            np.asarray(anatomy.radii[name], float)))
    if box is None:
        return sources
    lo, hi = box
    cut = []
    for name, p, r in sources:
        inside = np.all((p >= lo) & (p <= hi), axis=1)
        if not inside.any():
            continue
        edges = np.flatnonzero(np.diff(np.concatenate([[0], inside.astype(np.int8), [0]])))
        for a, b in zip(edges[::2], edges[1::2]):
            cut.append((name, p[a:b], r[a:b]))
    return cut


class _Source:
    """One centerline run for the field: points, radii, KD-tree and per-sample search windows."""

    def __init__(self, points: np.ndarray, radii: np.ndarray, margin: float):
        self.points = np.asarray(points, dtype=float)
        self.radii = np.asarray(radii, dtype=float)
        self.tree = cKDTree(self.points)
        n = len(self.points)
        s = _arclength(self.points)
        spacing = max(s[-1] / max(n - 1, 1), 1e-6)
        if n >= 3 and s[-1] > 0:
            slope = np.abs(np.gradient(self.radii, s))
            # how far along the centerline the maximiser of r_i - |x - c_i| can sit from the
            # nearest sample: about |dr/ds| * distance (plus one sample of slack)
            w = np.ceil(slope * (self.radii + margin) / spacing).astype(int) + 1
            w = maximum_filter1d(w, size=int(2 * np.max(w) + 1), mode="nearest")
        else:
            w = np.ones(n, dtype=int)
        self.windows = np.clip(w, 1, 60)
        # for the active-block test: the largest radius within reach of each sample
        reach = int(math.ceil(2.0 * (self.radii.max() + margin) / spacing))
        self.local_rmax = maximum_filter1d(self.radii, size=2 * reach + 1, mode="nearest")

    def values(self, xyz: np.ndarray) -> np.ndarray:
        """max_i (r_i - |x - c_i|) for query points ``xyz`` (N, 3): the nearest sample by KD-tree,
        then the neighbouring samples along the centerline within that sample's window."""
        n = len(self.points)
        d, idx = self.tree.query(xyz, workers=-1)
        best = self.radii[idx] - d
        w = self.windows[idx]
        for off in range(1, int(w.max()) + 1 if len(w) else 1):
            sel = np.flatnonzero(w >= off)
            if len(sel) == 0:
                break
            ii, x = idx[sel], xyz[sel]
            for j in (np.minimum(ii + off, n - 1), np.maximum(ii - off, 0)):
                v = self.radii[j] - np.linalg.norm(x - self.points[j], axis=1)
                best[sel] = np.maximum(best[sel], v)
        return best


def _smooth_max(a: np.ndarray, b: np.ndarray, k: float) -> np.ndarray:
    if k <= 0:
        return np.maximum(a, b)
    h = np.clip(k - np.abs(a - b), 0.0, None) / k
    return np.maximum(a, b) + 0.25 * k * h * h


def lumen_field(anatomy: Anatomy, voxel_mm: float = 1.0, region=None, blend_mm: float = 2.0):
    """The implicit lumen field on a voxel grid: positive inside, 0 on the wall, about the signed
    distance near the wall (clamped far away).

    Returns ``(field, origin, spacing)``: ``field`` is float32 indexed [k, j, i] (z, y, x) and voxel
    (i, j, k) is at ``origin + spacing * (i, j, k)`` in LPS mm."""
    h = float(voxel_mm)
    if not (math.isfinite(h) and 0.2 <= h <= 10.0):
        raise InputError(f"voxel_mm must be in [0.2, 10] mm, got {voxel_mm!r}")
    box = _region_box(anatomy, region)
    sources = _field_sources(anatomy, box)
    if not sources:
        raise InputError("the region contains no vessel")
    margin = max(blend_mm, 2.0 * h) + 0.5
    grid = _BlockGrid(sources, h, margin)
    first = True
    for name, pts, rad in sources:
        # the first source and the sinus bulges are merged without a fillet
        k = 0.0 if (first or name in SINUS_SEGMENTS) else blend_mm
        if grid.add(_Source(pts, rad, margin), k):
            first = False
    _cut_lvot(anatomy, grid.field, grid.origin, h, grid.nvox, box)
    return grid.field, grid.origin, np.array([h, h, h])


class _BlockGrid:
    """The lumen field's voxel grid, filled source by source in two-level blocks: coarse blocks
    (_BLOCK voxels a side) find where a source can matter, fine blocks (_SUB voxels) are then
    skipped when far outside or deep inside (only the sign matters there; the field is
    1-Lipschitz), the rest is computed voxel by voxel."""

    def __init__(self, sources: List[Tuple[str, np.ndarray, np.ndarray]], h: float, margin: float):
        self.h, self.margin = h, margin
        lo = np.min([np.min(p - r[:, None], axis=0) for _, p, r in sources], axis=0) - margin
        hi = np.max([np.max(p + r[:, None], axis=0) for _, p, r in sources], axis=0) + margin
        self.origin = origin = np.floor(lo / h) * h
        nvox = np.ceil((hi - origin) / h).astype(int) + 1
        B1, B2 = _BLOCK, _SUB
        nb1 = -(-nvox // B1)  # coarse blocks per axis (x, y, z)
        self.nvox = nvox = nb1 * B1
        self.field = np.full((nvox[2], nvox[1], nvox[0]), -margin, dtype=np.float32)
        self.f6 = self.field.reshape(nvox[2] // B2, B2, nvox[1] // B2, B2, nvox[0] // B2, B2)  # a view
        bz, by, bx = np.meshgrid(np.arange(nb1[2]), np.arange(nb1[1]), np.arange(nb1[0]), indexing="ij")
        self.bidx1 = np.stack([bz.ravel(), by.ravel(), bx.ravel()], axis=1)  # (z, y, x)
        self.cent1 = origin + h * (B1 * self.bidx1[:, ::-1] + (B1 - 1) / 2.0)
        self.hd1 = h * (B1 - 1) * math.sqrt(3) / 2.0
        self.hd2 = h * (B2 - 1) * math.sqrt(3) / 2.0
        self.ratio = r = B1 // B2
        cz, cy, cx = np.meshgrid(np.arange(r), np.arange(r), np.arange(r), indexing="ij")
        self.children = np.stack([cz.ravel(), cy.ravel(), cx.ravel()], axis=1)
        oz, oy, ox = np.meshgrid(np.arange(B2), np.arange(B2), np.arange(B2), indexing="ij")
        self.offs = h * np.stack([ox.ravel(), oy.ravel(), oz.ravel()], axis=1)  # (B2^3, 3) xyz
        self.chunk = max(1, 262144 // B2 ** 3)

    def _fine_blocks(self, src: _Source) -> Optional[Tuple[np.ndarray, np.ndarray]]:
        """Fine blocks (z, y, x indices) of ``src``: those deep inside its lumen and those that need
        voxel values; None when no coarse block is within its reach."""
        margin, h, B2 = self.margin, self.h, _SUB
        reach = src.radii.max() + margin + self.hd1
        d1, i1 = src.tree.query(self.cent1, distance_upper_bound=reach, workers=-1)
        ok = np.flatnonzero(np.isfinite(d1))
        act1 = ok[d1[ok] < src.local_rmax[i1[ok]] + margin + self.hd1]
        if len(act1) == 0:
            return None
        sub = (self.ratio * self.bidx1[act1][:, None, :] + self.children[None]).reshape(-1, 3)
        cent2 = self.origin + h * (B2 * sub[:, ::-1] + (B2 - 1) / 2.0)
        d2, i2 = src.tree.query(cent2, distance_upper_bound=reach, workers=-1)
        ok = np.isfinite(d2)
        near = np.zeros(len(sub), dtype=bool)
        near[ok] = d2[ok] < src.local_rmax[i2[ok]] + margin + self.hd2
        deep = np.zeros(len(sub), dtype=bool)
        deep[ok] = src.radii[i2[ok]] - d2[ok] - self.hd2 > margin
        return sub[deep], sub[near & ~deep]

    def add(self, src: _Source, k: float) -> bool:
        """Merge ``src`` into the field (smooth maximum with fillet ``k``); returns False when no
        block is within its reach."""
        blocks = self._fine_blocks(src)
        if blocks is None:
            return False
        blk, todo = blocks
        f6, margin, B2 = self.f6, self.margin, _SUB
        if len(blk):
            zi, yi, xi = blk[:, 0], blk[:, 1], blk[:, 2]
            f6[zi, :, yi, :, xi, :] = np.maximum(f6[zi, :, yi, :, xi, :], np.float32(margin))
        for c0 in range(0, len(todo), self.chunk):
            blk = todo[c0:c0 + self.chunk]
            xyz = (self.origin + self.h * B2 * blk[:, ::-1])[:, None, :] + self.offs[None, :, :]
            vals = src.values(xyz.reshape(-1, 3))
            vals = np.maximum(vals, -margin).astype(np.float32).reshape(len(blk), B2, B2, B2)
            zi, yi, xi = blk[:, 0], blk[:, 1], blk[:, 2]
            cur = f6[zi, :, yi, :, xi, :]
            f6[zi, :, yi, :, xi, :] = _smooth_max(cur, vals, k)
        return True


def _cut_lvot(anatomy: Anatomy, field: np.ndarray, origin: np.ndarray, h: float, nvox: np.ndarray,
              box) -> None:
    """Flat cut of the left ventricular outflow tract in ``field``: only inside a short cylinder
    about the root axis below the annulus, so that nothing else (descending aorta) is touched."""
    if "aortic_root" not in anatomy.centerlines:
        return
    root = anatomy.centerlines["aortic_root"]
    p0 = root[0]
    if not (box is None or np.all((p0 >= box[0]) & (p0 <= box[1]))):
        return
    t0 = anatomy.annulus_normal
    rcyl = max(float(np.max(anatomy.radii[s])) + float(np.max(np.linalg.norm(
        np.cross(anatomy.centerlines[s] - p0, t0), axis=1)))
        for s in ("aortic_root",) + SINUS_SEGMENTS if s in anatomy.centerlines) + 3.0
    reach = rcyl + LVOT_MM + 2.0
    i0 = np.clip(np.floor((p0 - reach - origin) / h).astype(int), 0, nvox - 1)
    i1 = np.clip(np.ceil((p0 + reach - origin) / h).astype(int) + 1, 0, nvox)
    zz, yy, xx = np.meshgrid(*(origin[a] + h * np.arange(i0[a], i1[a]) for a in (2, 1, 0)),
                             indexing="ij")
    rel = np.stack([xx, yy, zz], axis=-1) - p0
    axial = rel @ t0
    radial = np.linalg.norm(rel - axial[..., None] * t0, axis=-1)
    sub = field[i0[2]:i1[2], i0[1]:i1[1], i0[0]:i1[0]]
    inside = (radial < rcyl) & (axial < LVOT_MM) & (axial > -rcyl)
    sub[inside] = np.minimum(sub[inside], axial[inside].astype(np.float32))


def anatomy_surface(anatomy: Anatomy, voxel_mm: float = 1.0, region=None, *,
                    target_triangles: int = 250_000, smoothing_iterations: int = 12,
                    blend_mm: float = 2.0, timings: Optional[dict] = None):
    """One closed, manifold triangle surface of the whole lumen (vtkPolyData, LPS mm).

    The lumen field (``lumen_field``) is contoured at 0 with vtkFlyingEdges3D, lightly smoothed
    (windowed sinc), decimated to ``target_triangles`` when above it, and given outward point
    normals. ``region``: None (everything), 'upper' (root to the middle of the descending aorta),
    'lower' (abdominal aorta from the hiatus to the femorals) or a ((xmin, ymin, zmin),
    (xmax, ymax, zmax)) box; vessels leaving the region end in round caps. ``blend_mm``: fillet
    size where different vessels meet. ``timings``: optional dict that receives seconds per step.
    """
    import vtk
    from vtk.util import numpy_support

    t0 = time.perf_counter()
    field, origin, spacing = lumen_field(anatomy, voxel_mm, region, blend_mm)
    t1 = time.perf_counter()
    img = vtk.vtkImageData()
    img.SetDimensions(field.shape[2], field.shape[1], field.shape[0])
    img.SetOrigin(*origin)
    img.SetSpacing(*spacing)
    arr = numpy_support.numpy_to_vtk(field.ravel(), deep=True, array_type=vtk.VTK_FLOAT)
    arr.SetName("lumen")
    img.GetPointData().SetScalars(arr)
    fe = vtk.vtkFlyingEdges3D()
    fe.SetInputData(img)
    fe.SetValue(0, 0.0)
    fe.ComputeNormalsOff()
    fe.ComputeGradientsOff()
    fe.ComputeScalarsOff()
    fe.Update()
    poly = fe.GetOutput()
    t2 = time.perf_counter()
    if smoothing_iterations > 0:
        sm = vtk.vtkWindowedSincPolyDataFilter()
        sm.SetInputData(poly)
        sm.SetNumberOfIterations(int(smoothing_iterations))
        sm.SetPassBand(0.1)
        sm.BoundarySmoothingOff()
        sm.FeatureEdgeSmoothingOff()
        sm.NonManifoldSmoothingOff()
        sm.NormalizeCoordinatesOn()
        sm.Update()
        poly = sm.GetOutput()
    t3 = time.perf_counter()
    n_tri = poly.GetNumberOfCells()
    if target_triangles and n_tri > target_triangles:
        dec = vtk.vtkQuadricDecimation()
        dec.SetInputData(poly)
        dec.SetTargetReduction(1.0 - target_triangles / n_tri)
        dec.VolumePreservationOn()
        dec.Update()
        poly = dec.GetOutput()
    t4 = time.perf_counter()
    nm = vtk.vtkPolyDataNormals()
    nm.SetInputData(poly)
    nm.SplittingOff()
    nm.ConsistencyOn()
    nm.AutoOrientNormalsOn()
    nm.ComputePointNormalsOn()
    nm.ComputeCellNormalsOff()
    nm.Update()
    out = vtk.vtkPolyData()
    out.DeepCopy(nm.GetOutput())
    t5 = time.perf_counter()
    if timings is not None:
        timings.update({"field_s": t1 - t0, "contour_s": t2 - t1, "smooth_s": t3 - t2,
                        "decimate_s": t4 - t3, "normals_s": t5 - t4, "total_s": t5 - t0,
                        "voxels": int(field.size), "triangles_contour": int(n_tri),
                        "triangles": int(out.GetNumberOfCells())})
    return out


def lumen_distance(anatomy: Anatomy, points) -> np.ndarray:
    """Distance (mm) of ``points`` (N, 3) to the union of the centerline spheres: negative inside
    the lumen, positive outside (no blending, no LVOT cut)."""
    xyz = np.asarray(points, dtype=float).reshape(-1, 3)
    best = np.full(len(xyz), -np.inf)
    for _name, p, r in _field_sources(anatomy, None):
        np.maximum(best, _Source(p, r, 2.0).values(xyz), out=best)
    return -best
