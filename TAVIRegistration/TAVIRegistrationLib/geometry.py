"""C-arm geometry: the frame's positioner angles and distances as a projection from patient space.

Convention (DICOM PS3.3 C.8.7.5, and the project guide), patient coordinates in LPS millimetres:

* At primary = secondary = 0 the source is posterior and the detector anterior (AP view). Image
  columns grow toward the patient's left (+x) and rows toward the feet (-z).
* Positive primary angle = LAO: the detector turns toward the patient's left (+90 = left lateral);
  negative = RAO. It is a rotation of the whole C-arm about the patient's head-foot axis.
* Positive secondary angle = CRA: the detector tilts toward the head; negative = CAU. It is a
  rotation about the (already rotated) image column axis.
* SID = source to detector, SOD = source to isocentre; magnification at the isocentre = SID/SOD.
* ``pixel_spacing_mm`` is ImagerPixelSpacing (0018,1164): (row spacing, column spacing) measured at
  the detector.

The detector frame is ``u`` (column direction), ``v`` (row direction) and ``d`` (isocentre toward
the detector). Pixel centres sit at integer (col, row); the detector centre is at
((cols-1)/2, (rows-1)/2).

The 3x4 matrix ``P`` maps homogeneous LPS points to homogeneous pixel coordinates (x = col, y = row,
w = distance from the source along ``d``). The paper's Eq. 3 (orthographic ``Rot_z(a)Rot_x(b)``) is
the limit of an infinitely distant source; ``orthographic=True`` gives it with the isocentre
magnification so both models agree at the isocentre.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Sequence, Tuple

import numpy as np

from .errors import InputError

#: Sane bounds, wide enough for every clinical C-arm, narrow enough to catch unit mistakes.
SID_RANGE_MM = (300.0, 2500.0)
PIXEL_SPACING_RANGE_MM = (0.01, 5.0)
MAX_DETECTOR_PIXELS = 8192


@dataclass(frozen=True)
class CArmGeometry:
    """Everything needed to project patient LPS points onto one fluoroscopy frame."""

    primary_angle_deg: float
    secondary_angle_deg: float
    sid_mm: float
    sod_mm: float
    pixel_spacing_mm: Tuple[float, float]  # (row spacing, column spacing) at the detector
    rows: int
    cols: int
    isocenter_lps: Tuple[float, float, float] = (0.0, 0.0, 0.0)

    def __post_init__(self):
        object.__setattr__(self, "pixel_spacing_mm", tuple(float(s) for s in self.pixel_spacing_mm))
        object.__setattr__(self, "isocenter_lps", tuple(float(c) for c in self.isocenter_lps))
        self.validate()

    # -- checks -------------------------------------------------------------------------------
    def validate(self) -> None:
        """Raise InputError for geometry no C-arm can have (catches unit and sign mistakes)."""
        values = {
            "primary angle": self.primary_angle_deg,
            "secondary angle": self.secondary_angle_deg,
            "SID": self.sid_mm,
            "SOD": self.sod_mm,
        }
        for name, value in values.items():
            if not _finite(value):
                raise InputError(f"{name} is not a finite number ({value!r})")
        if not all(_finite(c) for c in self.isocenter_lps) or len(self.isocenter_lps) != 3:
            raise InputError(f"isocentre must be three finite numbers, got {self.isocenter_lps!r}")
        if not -360.0 <= self.primary_angle_deg <= 360.0:
            raise InputError(f"primary angle {self.primary_angle_deg} deg is outside [-360, 360]")
        if not -90.0 <= self.secondary_angle_deg <= 90.0:
            raise InputError(f"secondary angle {self.secondary_angle_deg} deg is outside [-90, 90]")
        lo, hi = SID_RANGE_MM
        if not lo <= self.sid_mm <= hi:
            raise InputError(f"SID {self.sid_mm:g} mm is outside the plausible range {lo:g}-{hi:g} mm")
        if not 0.0 < self.sod_mm < self.sid_mm:
            raise InputError(
                f"SOD {self.sod_mm:g} mm must be positive and smaller than SID {self.sid_mm:g} mm"
            )
        if len(self.pixel_spacing_mm) != 2:
            raise InputError("pixel spacing must have two values (row, column)")
        lo, hi = PIXEL_SPACING_RANGE_MM
        for s in self.pixel_spacing_mm:
            if not _finite(s) or not lo <= s <= hi:
                raise InputError(f"detector pixel spacing {s!r} mm is outside {lo:g}-{hi:g} mm")
        for name, n in (("rows", self.rows), ("columns", self.cols)):
            if int(n) != n or not 1 <= n <= MAX_DETECTOR_PIXELS:
                raise InputError(f"{name} {n!r} must be an integer in 1-{MAX_DETECTOR_PIXELS}")

    # -- derived quantities ---------------------------------------------------------------------
    @property
    def magnification(self) -> float:
        """Geometric magnification at the isocentre, SID/SOD."""
        return self.sid_mm / self.sod_mm

    @property
    def principal_point(self) -> Tuple[float, float]:
        """Detector centre in pixel coordinates (x = col, y = row)."""
        return ((self.cols - 1) / 2.0, (self.rows - 1) / 2.0)

    def axes(self) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Unit vectors (u, v, d) in LPS: column direction, row direction, isocentre -> detector."""
        return carm_axes(self.primary_angle_deg, self.secondary_angle_deg)

    @property
    def source_lps(self) -> np.ndarray:
        _, _, d = self.axes()
        return np.asarray(self.isocenter_lps) - self.sod_mm * d

    @property
    def detector_center_lps(self) -> np.ndarray:
        _, _, d = self.axes()
        return np.asarray(self.isocenter_lps) + (self.sid_mm - self.sod_mm) * d

    def with_isocenter(self, isocenter_lps: Sequence[float]) -> "CArmGeometry":
        return replace(self, isocenter_lps=tuple(float(c) for c in isocenter_lps))

    def to_dict(self) -> dict:
        return {
            "primary_angle_deg": self.primary_angle_deg,
            "secondary_angle_deg": self.secondary_angle_deg,
            "sid_mm": self.sid_mm,
            "sod_mm": self.sod_mm,
            "imager_pixel_spacing_mm": list(self.pixel_spacing_mm),
            "rows": int(self.rows),
            "cols": int(self.cols),
            "isocenter_lps": list(self.isocenter_lps),
            "magnification": self.magnification,
        }

    def projection_matrix(self, orthographic: bool = False) -> np.ndarray:
        return projection_matrix(self, orthographic=orthographic)


def view_label(primary_deg: float, secondary_deg: float, separator: str = ", ") -> str:
    """The C-arm view as a clinician says it: ``'LAO 30.0°, CRA 10.0°'`` (positive primary = LAO,
    negative = RAO; positive secondary = CRA, negative = CAU)."""
    p, s = float(primary_deg), float(secondary_deg)
    side = "LAO" if p >= 0 else "RAO"
    tilt = "CRA" if s >= 0 else "CAU"
    return f"{side} {abs(p):.1f}\u00b0{separator}{tilt} {abs(s):.1f}\u00b0"


def _finite(x) -> bool:
    try:
        return math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def carm_axes(primary_deg: float, secondary_deg: float) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Detector axes (u = column direction, v = row direction, d = isocentre -> detector) in LPS.

    AP (0, 0): u = +L, v = -S (feet), d = -P (anterior). The primary angle rotates the C-arm about
    the patient's S axis (LAO turns d toward +L); the secondary angle then tilts d toward +S (CRA)
    about u.
    """
    a = math.radians(primary_deg)
    b = math.radians(secondary_deg)
    d0 = np.array([math.sin(a), -math.cos(a), 0.0])
    u = np.array([math.cos(a), math.sin(a), 0.0])
    v0 = np.array([0.0, 0.0, -1.0])
    d = math.cos(b) * d0 - math.sin(b) * v0
    v = math.cos(b) * v0 + math.sin(b) * d0
    return u, v, d


def projection_matrix(geom: CArmGeometry, orthographic: bool = False) -> np.ndarray:
    """3x4 matrix from homogeneous LPS millimetres to homogeneous detector pixels (col, row, w).

    Perspective (default): ``w`` is the depth of the point along ``d`` measured from the source, so
    a point at the isocentre has ``w = SOD``. Orthographic (the paper's Eq. 3): parallel rays along
    ``d`` with the isocentre magnification; ``w = 1``.
    """
    u, v, d = geom.axes()
    pr, pc = geom.pixel_spacing_mm
    cx, cy = geom.principal_point
    iso = np.asarray(geom.isocenter_lps, dtype=float)
    if orthographic:
        m = geom.magnification
        P = np.zeros((3, 4))
        P[0, :3] = m / pc * u
        P[1, :3] = m / pr * v
        P[0, 3] = cx - m / pc * u @ iso
        P[1, 3] = cy - m / pr * v @ iso
        P[2, 3] = 1.0
        return P
    K = np.array([[geom.sid_mm / pc, 0.0, cx], [0.0, geom.sid_mm / pr, cy], [0.0, 0.0, 1.0]])
    R = np.vstack([u, v, d])
    s = geom.source_lps
    return K @ np.hstack([R, (-R @ s)[:, None]])


def project_points(P: np.ndarray, points_lps: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Project (N, 3) LPS points with a 3x4 matrix: returns ((N, 2) pixel xy = (col, row), (N,) w)."""
    pts = np.asarray(points_lps, dtype=float).reshape(-1, 3)
    P = np.asarray(P, dtype=float)
    # element by element, not a matrix product: numpy's BLAS threads spin on after one, taking the
    # cores that torch needs next (on 2 cores the registration's network pass that followed took
    # twice as long)
    h = P[:, 3] + pts[:, 0:1] * P[:, 0] + pts[:, 1:2] * P[:, 1] + pts[:, 2:3] * P[:, 2]
    w = h[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        xy = h[:, :2] / w[:, None]
    return xy, w


def project(geom: CArmGeometry, points_lps: np.ndarray, orthographic: bool = False) -> np.ndarray:
    """Pixel coordinates (N, 2) as (x = col, y = row) of LPS points on the frame."""
    return project_points(projection_matrix(geom, orthographic), points_lps)[0]
