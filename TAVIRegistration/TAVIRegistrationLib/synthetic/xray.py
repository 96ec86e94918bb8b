"""X-ray image formation for synthetic TAVI fluoroscopy: attenuation, background anatomy, devices,
noise. Pure numpy/scipy: it is given a C-arm geometry and 3D objects and knows no files.

Physics (one effective energy, about 55 keV after the beam hardening of an 80-90 kVp cine beam):
the detected primary intensity of a pixel is ``N0 * exp(-sum_k mu_k * L_k)`` where ``L_k`` is the
path length (mm) of the pixel's ray through material ``k``. Path lengths come from three exact or
near-exact line-integral engines, all evaluated on a *work grid* (the detector, binned to at most
``MAX_WORK_PIXELS`` a side; the final frame is upsampled from it):

* ``Solid``: convex quadrics (ellipsoid, capped elliptic cylinder) with analytic ray intervals, minus
  overlaps with other solids (lungs minus heart, cortical shell = outer minus inner). Vectorised
  over the pixels of the solid's projected bounding box.
* ``LineSet``: tubes along 3D curves (ribs, pulmonary vessels, wires, catheters, sheaths, stent
  struts). The curve is splatted as a line measure (each sample carries its 3D arclength ``ds``)
  and convolved with the disk of the tube's projected radius: for a straight tube this gives the
  exact path length ``2 sqrt(r^2 - rho^2) / sin(theta)`` at any obliquity ``theta`` (also end-on).
  ``inner_radius`` makes it hollow (cortical shells, sheath walls, marker rings).
* ``splat_volume``: voxel point clouds (the opacified lumen): each point adds
  ``volume / pixel_area_at_its_depth`` to its pixel (bilinear), on a grid whose pixel is about one
  voxel at the object, then upsampled; ``sharpen`` re-imposes a sharp silhouette by normalised
  convolution.

Materials are given relative to soft tissue (water) because every object but the body sits inside
the body: bone adds ``mu_bone - mu_water``, lung and gas subtract. Iodine is counted in
"mm of lumen at full concentration" and scaled by the series' iodine concentration.

Coordinates: everything is built in the pre-operative patient frame (LPS mm); a rigid 4x4 pose
``T`` (pre-op -> intra-op table position) is applied to rays, not objects. Non-rigid motion
(guidewire straightening, root motion) is applied by the caller to the points it passes in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Tuple

import numpy as np
from scipy import ndimage
from scipy.fft import irfft2, next_fast_len, rfft2
from scipy.interpolate import CubicSpline

from ..geometry import CArmGeometry, projection_matrix

#: Largest work-grid side: 1024-pixel frames are formed on 512 and upsampled (then noise at 1024).
MAX_WORK_PIXELS = 512

#: Linear attenuation coefficients (1/mm) relative to soft tissue, at the effective energy.
MU_PER_MM: Dict[str, float] = {
    "soft": 0.0200,         # water / soft tissue (absolute: the body outline)
    "lung": -0.0148,        # aerated lung (0.26 g/ml) replacing soft tissue
    "air": -0.0200,         # gas (trachea, bowel, stomach)
    "fat": -0.0020,
    "cancellous": 0.0070,   # trabecular bone
    "cortical": 0.0400,     # cortical bone
    "calcium": 0.0700,      # dense valve / wall calcification
    "catheter": 0.0800,     # polymer with barium sulphate filler
    "sheath": 0.0300,       # introducer sheath wall (weakly radiopaque polymer)
    "pacing": 0.4500,       # pacing lead (coiled conductor in silicone), per mm of lead diameter
    "steel": 1.2000,        # stainless steel wires, ECG snaps, sternal wires
    "nitinol": 1.4000,      # stent frame
    "platinum": 5.0000,     # marker bands, electrodes
}
#: Iodine attenuation per mg/ml of iodine concentration (1/mm).
MU_IODINE_PER_MG_ML = 0.00095
#: Undiluted contrast medium (350 mg/ml) in a catheter lumen during injection.
MU_PER_MM["contrast_medium"] = MU_IODINE_PER_MG_ML * 350.0


# =============================================================================================
# geometry helpers
# =============================================================================================
def _unit(v) -> np.ndarray:
    v = np.asarray(v, float)
    n = float(np.linalg.norm(v))
    return v / n if n > 0 else v


def rotation_about(axis, angle_rad: float) -> np.ndarray:
    """3x3 rotation matrix about ``axis`` (Rodrigues)."""
    k = _unit(axis)
    K = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + math.sin(angle_rad) * K + (1 - math.cos(angle_rad)) * K @ K


def frame_from_axis(axis, hint=(1.0, 0.0, 0.0)) -> np.ndarray:
    """3x3 matrix whose columns are (e1, e2, axis): an orthonormal frame with the given z axis."""
    z = _unit(axis)
    h = np.asarray(hint, float)
    if abs(float(h @ z)) > 0.9:
        h = np.array([0.0, 1.0, 0.0]) if abs(z[1]) < 0.9 else np.array([0.0, 0.0, 1.0])
    x = _unit(h - (h @ z) * z)
    y = np.cross(z, x)
    return np.stack([x, y, z], axis=1)


def resample_polyline(points, spacing: float = 0.5) -> np.ndarray:
    """Points at (about) uniform arclength ``spacing`` along a polyline (ends kept)."""
    p = np.asarray(points, float).reshape(-1, 3)
    if len(p) < 2:
        return p.copy()
    seg = np.linalg.norm(np.diff(p, axis=0), axis=1)
    keep = np.concatenate([[True], seg > 1e-9])
    p = p[keep]
    if len(p) < 2:
        return p.copy()
    s = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(p, axis=0), axis=1))])
    n = max(2, int(math.ceil(s[-1] / spacing)) + 1)
    t = np.linspace(0.0, s[-1], n)
    return np.stack([np.interp(t, s, p[:, k]) for k in range(3)], axis=1)


def spline_curve(control, spacing: float = 0.5) -> np.ndarray:
    """A smooth curve through ``control`` points (natural cubic spline in chord length)."""
    c = np.asarray(control, float).reshape(-1, 3)
    d = np.linalg.norm(np.diff(c, axis=0), axis=1)
    keep = np.concatenate([[True], d > 1e-6])
    c = c[keep]
    if len(c) < 3:
        return resample_polyline(c, spacing)
    s = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(c, axis=0), axis=1))])
    cs = CubicSpline(s, c, bc_type="natural")
    dense = cs(np.linspace(0.0, s[-1], max(8, int(s[-1] / (spacing * 0.25)))))
    return resample_polyline(dense, spacing)


def arclength_weights(points: np.ndarray) -> np.ndarray:
    """Per-sample arclength (mm) of a polyline: half of each adjacent segment."""
    p = np.asarray(points, float)
    if len(p) < 2:
        return np.zeros(len(p))
    seg = np.linalg.norm(np.diff(p, axis=0), axis=1)
    w = np.zeros(len(p))
    w[:-1] += 0.5 * seg
    w[1:] += 0.5 * seg
    return w


def apply_pose(T: np.ndarray, points: np.ndarray) -> np.ndarray:
    p = np.asarray(points, float).reshape(-1, 3)
    return p @ np.asarray(T)[:3, :3].T + np.asarray(T)[:3, 3]


# =============================================================================================
# the detector's rays
# =============================================================================================
class RayGrid:
    """The rays of one frame on a (possibly binned) work grid.

    ``factor``: native pixels per work pixel (1 for frames up to ``MAX_WORK_PIXELS``). Work pixel
    (i, j) covers native pixels [f*i, f*i + f) and its ray goes through their centre.
    ``P_native`` maps intra-op (true) LPS to native pixels; ``P_work`` to work pixels.
    """

    def __init__(self, geom: CArmGeometry, max_work: int = MAX_WORK_PIXELS):
        self.geom = geom
        f = 1
        while max(geom.rows, geom.cols) / f > max_work:
            f *= 2
        self.factor = f
        self.shape = (int(math.ceil(geom.rows / f)), int(math.ceil(geom.cols / f)))
        self.P_native = projection_matrix(geom)
        A = np.array([[1.0 / f, 0.0, 0.5 / f - 0.5], [0.0, 1.0 / f, 0.5 / f - 0.5], [0.0, 0.0, 1.0]])
        self.P_work = A @ self.P_native
        self.source = np.asarray(geom.source_lps, float)
        self.u, self.v, self.d = geom.axes()
        pr, pc = geom.pixel_spacing_mm
        self.pitch_work = 0.5 * (pr + pc) * f  # mm per work pixel at the detector
        self._dirs = None

    def pixel_mm_at_depth(self, w) -> np.ndarray:
        """Work-pixel size (mm) at distance ``w`` from the source along the central axis."""
        return self.pitch_work * np.asarray(w, float) / self.geom.sid_mm

    def dirs(self) -> np.ndarray:
        """Unit ray directions (h, w, 3) float32 in intra-op LPS."""
        if self._dirs is None:
            h, w = self.shape
            g, f = self.geom, self.factor
            pr, pc = g.pixel_spacing_mm
            cx, cy = g.principal_point
            xs = (np.arange(w) * f + 0.5 * f - 0.5 - cx) * pc
            ys = (np.arange(h) * f + 0.5 * f - 0.5 - cy) * pr
            dvec = (g.sid_mm * self.d)[None, None, :] + xs[None, :, None] * self.u[None, None, :] \
                + ys[:, None, None] * self.v[None, None, :]
            dvec /= np.linalg.norm(dvec, axis=-1, keepdims=True)
            self._dirs = dvec.astype(np.float32)
        return self._dirs

    def project(self, points_true: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """Work-pixel (x, y) and depth w (mm from the source along ``d``) of intra-op points."""
        p = np.asarray(points_true, float).reshape(-1, 3)
        h = p @ self.P_work[:, :3].T + self.P_work[:, 3]
        w = h[:, 2]
        return h[:, :2] / w[:, None], w

    def project_posed(self, points_pre: np.ndarray, T: np.ndarray):
        return self.project(apply_pose(T, points_pre))


# =============================================================================================
# solids: convex quadrics with analytic chords
# =============================================================================================
@dataclass
class Quadric:
    """Ellipsoid (``kind='ellipsoid'``, semi-axes a, b, c) or capped elliptic cylinder
    (``kind='cylinder'``: semi-axes a, b across, half-length c along the local z) at ``center`` with
    local axes the columns of ``R``."""

    center: np.ndarray
    axes: np.ndarray
    R: np.ndarray = field(default_factory=lambda: np.eye(3))
    kind: str = "ellipsoid"
    clip: Optional["Quadric"] = None  # intersected with this one (rounded corners)

    def __post_init__(self):
        self.center = np.asarray(self.center, float)
        self.axes = np.maximum(np.asarray(self.axes, float), 1e-3)
        self.R = np.asarray(self.R, float)

    @property
    def bounding_radius(self) -> float:
        a = self.axes
        return float(np.linalg.norm(a)) if self.kind == "cylinder" else float(a.max())

    def shrunk(self, t) -> "Quadric":
        """The same shape ``t`` mm smaller on every side (the inside of a shell); ``t`` may be
        given per local axis."""
        return Quadric(self.center, np.maximum(self.axes - np.asarray(t, float), 0.05), self.R, self.kind,
                       None if self.clip is None else self.clip.shrunk(t))

    def moved(self, delta) -> "Quadric":
        return Quadric(self.center + np.asarray(delta, float), self.axes, self.R, self.kind,
                       None if self.clip is None else self.clip.moved(delta))

    def interval(self, src: np.ndarray, dirs: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """Entry and exit distances (t0, t1) along rays ``src + t * dirs`` (dirs (N, 3) unit);
        t0 >= t1 where the ray misses."""
        o = (src - self.center) @ self.R / self.axes  # (3,)
        dv = (dirs @ self.R) / self.axes.astype(np.float32)  # (N, 3)
        if self.kind == "ellipsoid":
            A = np.einsum("ij,ij->i", dv, dv)
            B = dv @ o.astype(np.float32)
            C = float(o @ o) - 1.0
        else:
            A = dv[:, 0] ** 2 + dv[:, 1] ** 2
            B = dv[:, 0] * o[0] + dv[:, 1] * o[1]
            C = float(o[0] ** 2 + o[1] ** 2) - 1.0
        disc = B * B - A * C
        ok = (disc > 0) & (A > 1e-12)
        sq = np.sqrt(np.where(ok, disc, 0.0))
        Asafe = np.where(ok, A, 1.0)
        t0 = np.where(ok, (-B - sq) / Asafe, 0.0)
        t1 = np.where(ok, (-B + sq) / Asafe, 0.0)
        if self.kind == "cylinder":
            # the slab |z| <= 1 (local, scaled): z = o_z + t dv_z
            dz = dv[:, 2]
            with np.errstate(divide="ignore", invalid="ignore"):
                za = (-1.0 - o[2]) / dz
                zb = (1.0 - o[2]) / dz
            par = np.abs(dz) < 1e-9
            inside_par = abs(o[2]) <= 1.0
            big = np.float32(1e9)
            lo = np.where(par, -big if inside_par else big, np.minimum(za, zb))
            hi = np.where(par, big if inside_par else -big, np.maximum(za, zb))
            t0 = np.maximum(t0, lo)
            t1 = np.minimum(t1, hi)
            t1 = np.where(ok, t1, t0)
        if self.clip is not None:
            c0, c1 = self.clip.interval(src, dirs)
            t0 = np.maximum(t0, c0)
            t1 = np.minimum(t1, c1)
        bad = ~(np.isfinite(t0) & np.isfinite(t1))
        if bad.any():
            t0 = np.where(bad, 0.0, t0)
            t1 = np.where(bad, 0.0, t1)
        return t0, t1


def ellipsoid(center, axes, R=None) -> Quadric:
    return Quadric(center, axes, np.eye(3) if R is None else R, "ellipsoid")


def cylinder(center, axes, R=None) -> Quadric:
    return Quadric(center, axes, np.eye(3) if R is None else R, "cylinder")


@dataclass
class Solid:
    """``material`` filling ``shape`` minus its overlaps with ``minus`` (assumed disjoint), times
    ``weight``. A shell is ``Solid(outer, m, minus=[outer.shrunk(t)])``."""

    shape: Quadric
    material: str
    weight: float = 1.0
    minus: List[Quadric] = field(default_factory=list)
    name: str = ""


def _bbox_px(grid: RayGrid, center_pre: np.ndarray, radius: float, T: np.ndarray):
    """Work-pixel bounding box (r0, r1, c0, c1) of a sphere, or None when off the detector."""
    (xy,), (w,) = grid.project_posed(center_pre[None], T)
    if w <= radius + 1.0:
        return None
    # the sphere's angular radius, to pixels at the detector
    rad_px = radius / math.sqrt(max(w * w - radius * radius, 1e-6)) * grid.geom.sid_mm / grid.pitch_work
    rad_px = rad_px * 1.15 + 2.0
    h, wd = grid.shape
    c0, c1 = int(math.floor(xy[0] - rad_px)), int(math.ceil(xy[0] + rad_px)) + 1
    r0, r1 = int(math.floor(xy[1] - rad_px)), int(math.ceil(xy[1] + rad_px)) + 1
    c0, r0 = max(c0, 0), max(r0, 0)
    c1, r1 = min(c1, wd), min(r1, h)
    if c0 >= c1 or r0 >= r1:
        return None
    return r0, r1, c0, c1


def solid_path_lengths(solids: Iterable[Solid], grid: RayGrid, T: np.ndarray,
                       out: Optional[Dict[str, np.ndarray]] = None) -> Dict[str, np.ndarray]:
    """Path length maps (mm, work grid) per material of ``solids`` (built in the pre-op frame) seen
    by the rays of ``grid`` with the patient at pose ``T`` (pre-op -> intra-op)."""
    out = {} if out is None else out
    Tinv = np.linalg.inv(np.asarray(T, float))
    src = Tinv[:3, :3] @ grid.source + Tinv[:3, 3]
    dirs_all = grid.dirs() @ Tinv[:3, :3].T.astype(np.float32)
    for s in solids:
        bb = _bbox_px(grid, s.shape.center, s.shape.bounding_radius, T)
        if bb is None:
            continue
        r0, r1, c0, c1 = bb
        d = dirs_all[r0:r1, c0:c1].reshape(-1, 3)
        t0, t1 = s.shape.interval(src, d)
        t0 = np.maximum(t0, 0.0)
        L = np.maximum(t1 - t0, 0.0)
        for m in s.minus:
            u0, u1 = m.interval(src, d)
            L -= np.maximum(np.minimum(t1, u1) - np.maximum(t0, np.maximum(u0, 0.0)), 0.0)
        L = np.maximum(L, 0.0) * s.weight
        if not np.any(L):
            continue
        acc = out.setdefault(s.material, np.zeros(grid.shape, np.float32))
        acc[r0:r1, c0:c1] += L.reshape(r1 - r0, c1 - c0).astype(np.float32)
    return out


# =============================================================================================
# tubes along curves
# =============================================================================================
@dataclass
class LineSet:
    """Tube(s) of ``radius`` mm along sample points carrying arclength ``ds`` (mm) each.

    ``inner_radius`` > 0 makes the tube hollow (the material is only in the wall). ``weight``
    scales the path length (e.g. a partly radiopaque lead)."""

    points: np.ndarray
    ds: np.ndarray
    radius: float
    material: str
    inner_radius: float = 0.0
    weight: float = 1.0
    name: str = ""
    polyline: bool = True  # consecutive points are joined (False: separate short segments)

    @staticmethod
    def from_curve(points, radius, material, inner_radius=0.0, weight=1.0, name="",
                   spacing: Optional[float] = None) -> "LineSet":
        p = np.asarray(points, float).reshape(-1, 3)
        if spacing is not None:
            p = resample_polyline(p, spacing)
        return LineSet(p, arclength_weights(p), float(radius), material, float(inner_radius),
                       float(weight), name)

    @staticmethod
    def from_segments(starts, ends, radius, material, weight=1.0, name="",
                      spacing: float = 0.3) -> "LineSet":
        """Straight segments (stent struts): sampled every ``spacing`` mm."""
        a = np.asarray(starts, float).reshape(-1, 3)
        b = np.asarray(ends, float).reshape(-1, 3)
        L = np.linalg.norm(b - a, axis=1)
        n = np.maximum(1, np.ceil(L / spacing).astype(int))
        idx = np.repeat(np.arange(len(a)), n)
        k = np.concatenate([np.arange(m) for m in n])
        t = (k + 0.5) / n[idx]
        pts = a[idx] + t[:, None] * (b - a)[idx]
        ds = (L / n)[idx]
        return LineSet(pts, ds, float(radius), material, 0.0, float(weight), name, polyline=False)

    def moved(self, new_points: np.ndarray) -> "LineSet":
        return LineSet(np.asarray(new_points, float), self.ds, self.radius, self.material,
                       self.inner_radius, self.weight, self.name, self.polyline)


_DISK_CACHE: Dict[int, np.ndarray] = {}
_RADIUS_STEP = 1.03  # radius bins: 3 % apart (weights rescaled to keep each tube's cross-section)


def _disk_kernel(k: int) -> np.ndarray:
    """Anti-aliased disk of radius ``_RADIUS_STEP ** k`` pixels (fraction of each pixel covered)."""
    if k in _DISK_CACHE:
        return _DISK_CACHE[k]
    R = _RADIUS_STEP ** k
    n = int(math.ceil(R + 1.0))
    sub = 5
    o = (np.arange(sub) + 0.5) / sub - 0.5
    x = np.arange(-n, n + 1)
    X = (x[:, None] + o[None, :]).ravel()
    inside = (X[:, None] ** 2 + X[None, :] ** 2) <= R * R
    cov = inside.reshape(2 * n + 1, sub, 2 * n + 1, sub).mean(axis=(1, 3))
    _DISK_CACHE[k] = cov.astype(np.float32)
    return _DISK_CACHE[k]


def _bilinear_splat(shape, xy: np.ndarray, weights: np.ndarray, pad: int = 0) -> np.ndarray:
    """Sum of bilinear splats of ``weights`` at pixel coordinates ``xy`` (x = col, y = row) on an
    image of ``shape`` enlarged by ``pad`` on every side."""
    h, w = shape[0] + 2 * pad, shape[1] + 2 * pad
    x = xy[:, 0] + pad
    y = xy[:, 1] + pad
    ok = (x > -1) & (x < w) & (y > -1) & (y < h) & np.isfinite(x) & np.isfinite(y)
    x, y, wt = x[ok], y[ok], weights[ok]
    x0 = np.floor(x).astype(np.int64)
    y0 = np.floor(y).astype(np.int64)
    fx, fy = x - x0, y - y0
    img = np.zeros(h * w, np.float64)
    for dy, dx, ww in ((0, 0, (1 - fx) * (1 - fy)), (0, 1, fx * (1 - fy)), (1, 0, (1 - fx) * fy),
                       (1, 1, fx * fy)):
        xx, yy = x0 + dx, y0 + dy
        good = (xx >= 0) & (xx < w) & (yy >= 0) & (yy < h)
        img += np.bincount((yy[good] * w + xx[good]), weights=(wt * ww)[good], minlength=h * w)
    return img.reshape(h, w)


def _fft_convolve_crop(img: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """``img`` convolved with ``kernel`` ('same' size), computed on the bounding box of the
    non-zero part of ``img`` only."""
    nz_r = np.flatnonzero(np.any(img != 0, axis=1))
    if len(nz_r) == 0:
        return np.zeros_like(img, dtype=np.float32)
    nz_c = np.flatnonzero(np.any(img != 0, axis=0))
    kr = kernel.shape[0] // 2
    r0, r1 = max(nz_r[0] - kr, 0), min(nz_r[-1] + kr + 1, img.shape[0])
    c0, c1 = max(nz_c[0] - kr, 0), min(nz_c[-1] + kr + 1, img.shape[1])
    crop = img[r0:r1, c0:c1]
    sh = (next_fast_len(crop.shape[0] + 2 * kr), next_fast_len(crop.shape[1] + 2 * kr))
    F = rfft2(crop, sh) * rfft2(kernel, sh)
    full = irfft2(F, sh)[kr:kr + crop.shape[0], kr:kr + crop.shape[1]]
    out = np.zeros(img.shape, np.float32)
    out[r0:r1, c0:c1] = full
    return out


def tube_path_lengths(linesets: Iterable[LineSet], grid: RayGrid, T: np.ndarray,
                      out: Optional[Dict[str, np.ndarray]] = None,
                      points_are_posed: bool = False) -> Dict[str, np.ndarray]:
    """Path length maps (mm, work grid) per material of the tubes in ``linesets``.

    Points are in the pre-op frame and posed by ``T`` unless ``points_are_posed``."""
    out = {} if out is None else out
    splats: Dict[Tuple[str, int], np.ndarray] = {}
    pad = 0
    items = []
    for ls in linesets:
        if len(ls.points) == 0:
            continue
        pts = ls.points if points_are_posed else apply_pose(T, ls.points)
        xy, w = grid.project(pts)
        if not np.any(w > 1.0):
            continue
        ds = ls.ds
        if ls.polyline and len(pts) > 1:
            # the line measure must be sampled finer than a pixel, else the disks show as beads
            step = float(np.max(np.linalg.norm(np.diff(xy, axis=0), axis=1)))
            n = int(math.ceil(step / 0.5))
            if n > 1:
                t = np.arange(n) / n
                pts = np.concatenate([(pts[:-1, None, :] + t[None, :, None] * np.diff(pts, axis=0)[:, None, :]).reshape(-1, 3),
                                      pts[-1:]])
                ds = arclength_weights(pts) * (float(ls.ds.sum()) / max(float(np.sum(arclength_weights(pts))), 1e-12))
                xy, w = grid.project(pts)
        h, wd = grid.shape
        inb = (xy[:, 0] > -50) & (xy[:, 0] < wd + 50) & (xy[:, 1] > -50) & (xy[:, 1] < h + 50)
        if not inb.any():
            continue
        wmean = float(np.median(w[inb]))
        px_mm = float(grid.pixel_mm_at_depth(wmean))
        for radius, sign in ((ls.radius, 1.0), (ls.inner_radius, -1.0)):
            if radius <= 0:
                continue
            R = max(radius / px_mm, 0.2)
            k = int(round(math.log(R) / math.log(_RADIUS_STEP)))
            Rb = _RADIUS_STEP ** k
            pad = max(pad, int(math.ceil(Rb)) + 2)
            scale = (R / Rb) ** 2  # the binned disk keeps the tube's cross-section (its mass)
            items.append((ls.material, k, xy[inb], sign * ls.weight * scale * ds[inb]))
    for material, k, xy, wts in items:
        key = (material, k)
        img = _bilinear_splat(grid.shape, xy, wts, pad)
        if key in splats:
            splats[key] += img
        else:
            splats[key] = img
    for (material, k), img in splats.items():
        conv = _fft_convolve_crop(img, _disk_kernel(k))
        conv = conv[pad:pad + grid.shape[0], pad:pad + grid.shape[1]]
        acc = out.setdefault(material, np.zeros(grid.shape, np.float32))
        acc += conv
    return out


# =============================================================================================
# voxel splatting (the opacified lumen)
# =============================================================================================
def splat_volume(points_true: np.ndarray, volumes: np.ndarray, grid: RayGrid,
                 voxel_mm: float) -> np.ndarray:
    """Expected path length (mm) through a voxel cloud on the work grid.

    ``points_true``: (N, 3) voxel centres in intra-op LPS; ``volumes``: (N,) mm^3 each (times any
    weight, e.g. contrast concentration). Splatted on a coarse grid whose pixel is about one voxel
    at the isocentre, then upsampled to the work grid (bilinear)."""
    g = grid.geom
    px_iso = grid.pitch_work * g.sod_mm / g.sid_mm
    c = max(1, int(round(voxel_mm / px_iso)))
    h, w = grid.shape
    hc, wc = int(math.ceil(h / c)), int(math.ceil(w / c))
    xy, depth = grid.project(points_true)
    ok = depth > 1.0
    xyc = (xy[ok] + 0.5) / c - 0.5
    area = grid.pixel_mm_at_depth(depth[ok]) ** 2 * (c * c)
    img = _bilinear_splat((hc, wc), xyc, volumes[ok] / area, 0)
    if c == 1:
        return img.astype(np.float32)
    return upsample(img, c, (h, w)).astype(np.float32)


def upsample(img: np.ndarray, factor: int, shape: Tuple[int, int], order: int = 1) -> np.ndarray:
    """Upsample a grid whose pixel i covers fine pixels [f*i, f*i + f) to ``shape`` (centres
    aligned), bilinear (``order=1``) or cubic (3)."""
    if factor == 1 and img.shape == tuple(shape):
        return img
    h, w = shape
    yy = (np.arange(h) + 0.5) / factor - 0.5
    xx = (np.arange(w) + 0.5) / factor - 0.5
    if order == 1:
        return _bilinear_sample(img, yy, xx)
    Y, X = np.meshgrid(yy, xx, indexing="ij")
    return ndimage.map_coordinates(img, [Y, X], order=order, mode="nearest")


def _bilinear_sample(img: np.ndarray, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """Separable bilinear resampling of ``img`` at rows ``yy`` and columns ``xx`` (edge clamp)."""
    def weights(coords, n):
        c = np.clip(coords, 0, n - 1)
        i0 = np.clip(np.floor(c).astype(int), 0, max(n - 2, 0))
        f = c - i0
        i1 = np.minimum(i0 + 1, n - 1)
        return i0, i1, f
    r0, r1, fy = weights(yy, img.shape[0])
    c0, c1, fx = weights(xx, img.shape[1])
    a = img[r0] * (1 - fy)[:, None] + img[r1] * fy[:, None]
    return a[:, c0] * (1 - fx)[None, :] + a[:, c1] * fx[None, :]


def downsample_mean(img: np.ndarray, factor: int) -> np.ndarray:
    """Block mean (edge blocks padded by edge values)."""
    if factor == 1:
        return img.astype(np.float32)
    h, w = img.shape
    H, W = -(-h // factor) * factor, -(-w // factor) * factor
    p = np.pad(img.astype(np.float32), ((0, H - h), (0, W - w)), mode="edge")
    return p.reshape(H // factor, factor, W // factor, factor).mean(axis=(1, 3))


def sharpen_with_silhouette(coarse_up: np.ndarray, silhouette_work: np.ndarray,
                            coarse_factor: int) -> np.ndarray:
    """Normalised convolution: ``coarse_up`` (a splat upsampled from a coarse grid, blurred by
    it) divided by the same blur of the binary ``silhouette_work`` and multiplied by it, so that
    edges follow the sharp silhouette instead of the coarse grid."""
    if coarse_factor <= 1:
        return coarse_up * silhouette_work
    s = downsample_mean(silhouette_work, coarse_factor)
    s_up = upsample(s, coarse_factor, silhouette_work.shape)
    return np.where(silhouette_work > 0, coarse_up / np.maximum(s_up, 0.25), 0.0).astype(np.float32)


# =============================================================================================
# background anatomy
# =============================================================================================
@dataclass
class Scene:
    """Static objects (solids and tubes in the pre-op frame) of one patient's body."""

    solids: List[Solid] = field(default_factory=list)
    tubes: List[LineSet] = field(default_factory=list)
    info: dict = field(default_factory=dict)

    def add_shell(self, shape: Quadric, cortex_mm, name: str = "",
                  cancellous: bool = True, weight: float = 1.0) -> None:
        inner = shape.shrunk(cortex_mm)
        self.solids.append(Solid(shape, "cortical", weight, [inner], name))
        if cancellous:
            self.solids.append(Solid(inner, "cancellous", weight, [], name))

    def add_bone_tube(self, points, radius: float, cortex_mm: float, name: str = "",
                      spacing: float = 1.0) -> None:
        p = resample_polyline(points, spacing)
        self.tubes.append(LineSet.from_curve(p, radius, "cortical", max(radius - cortex_mm, 0.0),
                                             name=name))
        self.tubes.append(LineSet.from_curve(p, max(radius - cortex_mm, 0.1), "cancellous", name=name))


def _lm(anatomy, name, default=None):
    lm = getattr(anatomy, "landmarks", {})
    return np.asarray(lm[name], float) if name in lm else default


def _aorta_y_at(anatomy, z: float) -> Tuple[float, float]:
    """(y, radius) of the aorta centerline (descending/abdominal) nearest to height ``z``."""
    pts, rad = [], []
    for s in ("descending_aorta", "abdominal_aorta"):
        if s in anatomy.centerlines:
            pts.append(anatomy.centerlines[s])
            rad.append(anatomy.radii[s])
    p = np.concatenate(pts)
    r = np.concatenate(rad)
    i = int(np.argmin(np.abs(p[:, 2] - z)))
    return float(p[i, 1]), float(r[i])


def _uniform(rng: np.random.Generator):
    """``U(a, b)``: one float drawn uniformly from [a, b) by ``rng``."""
    return lambda a, b: float(rng.uniform(a, b))


@dataclass
class _Trunk:
    """Cross-section of the body outline (an elliptic cylinder) in the pre-op frame."""

    half_width: float  # skin half width (x)
    y_front: float     # skin in front of the heart
    y_back: float      # skin behind the spine
    yc: float          # centre (y)
    hb: float          # half depth (y)


def build_body(anatomy, rng: np.random.Generator) -> Scene:
    """The patient's static background anatomy in the pre-op frame: body outline, lungs and heart,
    trachea, spine (vertebral bodies with cortical shells, pedicles, processes), ribs, sternum,
    clavicles, pulmonary vessel tree, diaphragm gas, bowel gas, pelvis (iliac wings, sacrum, pelvic
    brim, pubic and ischial rami), femoral heads, necks and shafts.

    Placed from the anatomy's landmarks and parameters: the body midline is
    ``params['midline_x_mm']``; the vertebral bodies lie behind the descending and abdominal aorta;
    the L4 body is level with the aortic bifurcation, the femoral heads posterolateral of the
    inguinal points."""
    P = anatomy.params
    sc = Scene()
    x0 = float(P.get("midline_x_mm", -12.0))
    ann = _lm(anatomy, "annulus_center", np.zeros(3))
    z_bif = float(_lm(anatomy, "bifurcation")[2])
    y_t = _spine(sc, anatomy, rng, x0, z_bif)
    # ---- thorax ------------------------------------------------------------------------------
    trunk = _trunk(sc, anatomy, rng, x0, y_t)
    lung_top, domes = _heart_and_lungs(sc, rng, x0, ann, y_t, trunk)
    _airways(sc, x0, y_t)
    # pulmonary vessels: random branching trees from the hila, clipped to the lungs
    for sgn in (1, -1):
        hilum = np.array([x0 + sgn * 45.0, y_t["T6"][0] - 25.0, ann[2] + 25.0])
        _vessel_tree(sc, hilum, sgn, rng, x0, trunk.yc, trunk.half_width, trunk.hb, lung_top, domes)
    for k in range(1, 13):
        yv, zv, bv = y_t[f"T{k}"]
        _rib(sc, k, x0, yv, zv, bv, trunk.half_width, trunk.yc, trunk.hb, trunk.y_front, rng)
    st_top, st_bot = _sternum_and_clavicles(sc, rng, x0, y_t, trunk.y_front)
    # ---- pelvis and hips, then gas and foreign bodies -----------------------------------------
    _pelvis(sc, anatomy, rng, x0, y_t)
    _bowel_gas(sc, rng, x0, trunk.y_front, y_t["L4"][0], z_bif)
    _sternal_wires(sc, rng, st_top, st_bot)
    _ecg_electrodes(sc, rng, x0, ann, trunk)
    return sc


def _spine(sc: Scene, anatomy, rng: np.random.Generator, x0: float,
           z_bif: float) -> Dict[str, Tuple[float, float, float]]:
    """Vertebrae T1 to L5 (L4 at the bifurcation) behind the aorta; returns per level name the
    (y, z) of the body centre and its half depth."""
    levels, spine_y = _spine_levels(anatomy, rng, z_bif)
    zs = np.array([lv[1] for lv in levels])
    ys = ndimage.gaussian_filter1d(np.array([spine_y[lv[0]][0] for lv in levels]), 1.0)
    sc.info["spine"] = {"x": x0, "levels": [(lv[0], float(z), float(y)) for lv, z, y in zip(levels, zs, ys)]}
    for (name, z, hgt, lumbar), yv in zip(levels, ys):
        _vertebra(sc, rng, name, x0, yv, z, hgt, lumbar, spine_y[name][1])
    return {lv[0]: (float(y), float(lv[1]), spine_y[lv[0]][1]) for lv, y in zip(levels, ys)}


def _spine_levels(anatomy, rng: np.random.Generator,
                  z_bif: float) -> Tuple[List[tuple], Dict[str, Tuple[float, float]]]:
    """Levels from L5 up to T1 as (name, z_centre, height, lumbar?), and per level the body's y
    (before smoothing) and half depth."""
    U = _uniform(rng)
    hiatus = _lm(anatomy, "aortic_hiatus")
    lumbar_h = U(33.0, 38.0)
    thoracic_h = U(24.0, 28.0)
    levels = []  # (name, z_centre, height, lumbar?)
    for i, name in enumerate(("L5", "L4", "L3", "L2", "L1")):
        levels.append((name, z_bif - lumbar_h + i * lumbar_h, lumbar_h, True))
    z_t12 = levels[-1][1] + 0.5 * (lumbar_h + thoracic_h)
    for i in range(12):
        levels.append((f"T{12 - i}", z_t12 + i * thoracic_h, thoracic_h, False))
    spine_y = {}
    for name, z, hgt, lumbar in levels:
        ya, ra = _aorta_y_at(anatomy, min(z, float(hiatus[2]) + 20) if not lumbar else z)
        if lumbar:
            b = U(16.0, 19.0)
            yv = ya + ra + 3.0 + b
        else:
            b = 13.0 + 3.0 * (1.0 - (z - z_t12) / (12 * thoracic_h))
            yv = ya + U(6.0, 12.0)
        spine_y[name] = (yv, b)
    return levels, spine_y


def _vertebra(sc: Scene, rng: np.random.Generator, name: str, x0: float, yv: float, z: float,
              hgt: float, lumbar: bool, b: float) -> None:
    """One vertebra: body with a cortical shell, pedicles, laminae, transverse and spinous
    processes."""
    U = _uniform(rng)
    a = (b * U(1.35, 1.5)) if lumbar else (b * U(1.15, 1.3))
    half = 0.5 * hgt - (U(4.5, 6.0) if lumbar else U(2.5, 3.5))
    body = cylinder((x0, yv, z), (a, b, half))
    body.clip = ellipsoid((x0, yv, z), (1.25 * a, 1.25 * b, 1.3 * half))  # rounded rims
    sc.add_shell(body, (1.3, 1.3, 0.5), f"vertebral body {name}")
    # pedicles: short elliptic cylinders front-to-back (the 'eyes' of an AP view)
    for sgn in (-1, 1):
        ped = cylinder((x0 + sgn * (a - 4.0), yv + b + 6.0, z + 0.15 * hgt),
                       ((4.5 if lumbar else 3.5), (6.5 if lumbar else 5.0), 8.0),
                       R=np.array([[1.0, 0, 0], [0, 0, 1.0], [0, -1.0, 0]]).T)
        sc.add_shell(ped, 1.5, f"pedicle {name}")
        # lamina toward the spinous process
        sc.add_bone_tube([(x0 + sgn * (a - 4.0), yv + b + 12.0, z),
                          (x0 + sgn * 6.0, yv + b + 24.0, z - 2.0),
                          (x0, yv + b + 27.0, z - 3.0)], 2.5, 1.0, f"lamina {name}")
        # transverse processes: long and thin in the lumbar spine, stubby in the thorax
        tp_len = U(30.0, 40.0) if lumbar else U(22.0, 28.0)
        tp_back = 4.0 if lumbar else 14.0
        sc.add_bone_tube([(x0 + sgn * (a - 2.0), yv + b + 10.0, z + 0.1 * hgt),
                          (x0 + sgn * (a - 2.0 + tp_len), yv + b + 10.0 + tp_back, z + 0.1 * hgt - 3.0)],
                         3.5 if lumbar else 3.0, 1.0, f"transverse process {name}")
    # spinous process: down and back (long and steep in the thorax)
    drop = 6.0 if lumbar else 22.0
    sc.add_bone_tube([(x0, yv + b + 26.0, z - 3.0), (x0, yv + b + 50.0, z - 3.0 - drop)],
                     4.0 if lumbar else 3.0, 1.0, f"spinous process {name}")


def _trunk(sc: Scene, anatomy, rng: np.random.Generator, x0: float,
           y_t: Dict[str, Tuple[float, float, float]]) -> _Trunk:
    """The body: an elliptic cylinder of soft tissue from the neck down past the groin (the
    thighs' separation below the perineum lies outside every lower-FoV view here)."""
    U = _uniform(rng)
    y_vb_mid, _, b_mid = y_t["T7"]
    chest_hw = U(140.0, 165.0)          # skin half width
    y_back = y_vb_mid + b_mid + 70.0    # skin behind the spine
    y_front = U(-100.0, -80.0)          # skin in front of the heart
    yc_chest = 0.5 * (y_back + y_front)
    hb = 0.5 * (y_back - y_front)
    z_top = y_t["T1"][1] + 60.0
    ing_l, ing_r = _lm(anatomy, "left_inguinal"), _lm(anatomy, "right_inguinal")
    z_perineum = 0.5 * (ing_l[2] + ing_r[2]) - U(50.0, 70.0)
    z_low = z_perineum - 150.0
    sc.info["body"] = {"chest_half_width": chest_hw, "y_front": y_front, "y_back": y_back}
    trunk = cylinder((x0, yc_chest, 0.5 * (z_top + z_low)), (chest_hw, hb, 0.5 * (z_top - z_low)))
    sc.solids.append(Solid(trunk, "soft", 1.0, [], "body"))
    return _Trunk(chest_hw, y_front, y_back, yc_chest, hb)


def _heart_and_lungs(sc: Scene, rng: np.random.Generator, x0: float, ann: np.ndarray,
                     y_t: Dict[str, Tuple[float, float, float]],
                     trunk: _Trunk) -> Tuple[float, Tuple[float, float]]:
    """Lungs (minus the heart) and the gastric air bubble; returns the lung top and the (left,
    right) diaphragm dome heights."""
    U = _uniform(rng)
    # heart: long axis from the base (behind the annulus) toward the apex (left, anterior, down)
    apex_dir = _unit(np.array([0.55, -0.45, -0.70]) + rng.normal(0, 0.08, 3))
    heart_c = ann + 40.0 * apex_dir + np.array([-18.0, -5.0, 0.0])
    heart = ellipsoid(heart_c, (U(62.0, 72.0), U(52.0, 60.0), U(46.0, 54.0)),
                      frame_from_axis(apex_dir, (0.0, 0.0, 1.0))[:, [2, 0, 1]])
    sc.info["heart"] = {"center": heart_c.tolist(), "apex_dir": apex_dir.tolist()}
    # lungs: their bottoms are the diaphragm domes (the right one higher, over the liver)
    z_dome_r = ann[2] + U(-95.0, -65.0)
    z_dome_l = z_dome_r - U(10.0, 25.0)
    lung_top = y_t["T1"][1] + 20.0
    for sgn, zd in ((1, z_dome_l), (-1, z_dome_r)):
        hz = 0.5 * (lung_top - zd)
        cz = zd + hz
        lung = ellipsoid((x0 + sgn * U(68.0, 80.0), trunk.yc + 12.0, cz),
                         (trunk.half_width - U(75.0, 85.0), trunk.hb - 20.0, hz))
        sc.solids.append(Solid(lung, "lung", 1.0, [heart], "lung"))
    # gastric air bubble under the left dome
    if rng.uniform() < 0.7:
        y_front = trunk.y_front
        sc.solids.append(Solid(ellipsoid((x0 + U(55, 85), y_front + U(60, 90), z_dome_l - U(25, 40)),
                                         (U(20, 35), U(15, 25), U(12, 20))), "air", 1.0, [], "stomach gas"))
    return lung_top, (z_dome_l, z_dome_r)


def _airways(sc: Scene, x0: float, y_t: Dict[str, Tuple[float, float, float]]) -> None:
    """Trachea and main bronchi (air tubes from above the carina at T5)."""
    carina = np.array([x0 + 3.0, y_t["T5"][0] - 28.0, y_t["T5"][1]])
    sc.tubes.append(LineSet.from_curve([carina + (0, 5, 140), carina], 8.5, "air", spacing=1.0, name="trachea"))
    for sgn in (1, -1):
        sc.tubes.append(LineSet.from_curve(
            spline_curve([carina, carina + (sgn * 25, 5, -15), carina + (sgn * 45, 12, -40)], 1.0),
            6.0, "air", name="bronchus"))


def _sternum_and_clavicles(sc: Scene, rng: np.random.Generator, x0: float,
                           y_t: Dict[str, Tuple[float, float, float]],
                           y_front: float) -> Tuple[np.ndarray, np.ndarray]:
    """Sternum (manubrium + body) and the clavicles; returns the sternum's top and bottom."""
    U = _uniform(rng)
    z_sj = y_t["T2"][1] - 10.0
    st_top = np.array([x0 + 2.0, y_front + 14.0, z_sj])
    st_bot = np.array([x0 + 2.0, y_front + 24.0, y_t["T10"][1]])
    st_axis = st_bot - st_top
    sc.add_shell(cylinder(0.5 * (st_top + st_bot), (U(14, 18), 6.0, 0.5 * np.linalg.norm(st_axis)),
                          frame_from_axis(st_axis, (1, 0, 0))), 1.5, "sternum")
    for sgn in (1, -1):
        sc.add_bone_tube(spline_curve([st_top + (sgn * 15, 0, 8), st_top + (sgn * 70, 10, 18),
                                       st_top + (sgn * 140, 60, 22)], 1.0), 7.0, 2.0, "clavicle")
    sc.info["sternum"] = {"top": st_top.tolist(), "bottom": st_bot.tolist()}
    sc.info["y_front"] = float(y_front)
    return st_top, st_bot


def _pelvis(sc: Scene, anatomy, rng: np.random.Generator, x0: float,
            y_t: Dict[str, Tuple[float, float, float]]) -> None:
    """Sacrum, and on each side the hip (``_hip``) and the pelvic ring (``_pubis_and_brim``)."""
    _, zv4, _ = y_t["L4"]
    yv5, zv5, _ = y_t["L5"]
    # sacrum: a thick plate tilted forward at the top
    sac_c = np.array([x0, yv5 + 25.0, zv5 - 50.0])
    sac_R = frame_from_axis(_unit((0.0, -0.55, 1.0)), (1.0, 0.0, 0.0))
    # an inverted triangle: wide alae at S1, narrowing to the coccyx
    for k, (half_w, dz) in enumerate(((48.0, 30.0), (36.0, 8.0), (25.0, -16.0), (14.0, -40.0))):
        sc.solids.append(Solid(ellipsoid(sac_c + sac_R @ np.array([0.0, 0.0, dz]), (half_w, 14.0 - 2.0 * k, 17.0),
                                         sac_R), "cancellous", 1.2, [], "sacrum"))
    for lv in (1, 2, 3):  # sacral foramina rows as small gas-free holes: cancellous deficits
        for sgn in (-1, 1):
            sc.solids.append(Solid(ellipsoid(sac_c + sac_R @ (sgn * 20.0, 0.0, 30.0 - 18.0 * lv), (4.0, 18.0, 4.0), sac_R),
                                   "cancellous", -1.0, [], "sacral foramen"))
    ing_l, ing_r = _lm(anatomy, "left_inguinal"), _lm(anatomy, "right_inguinal")
    for ing, sgn in ((ing_l, 1), (ing_r, -1)):
        fh = _hip(sc, rng, ing, sgn, x0, zv4)
        _pubis_and_brim(sc, rng, ing, fh, sgn, x0, yv5, zv5)


def _hip(sc: Scene, rng: np.random.Generator, ing: np.ndarray, sgn: int, x0: float,
         zv4: float) -> np.ndarray:
    """Femoral head, iliac wing and body, ischial tuberosity, proximal femur and acetabular rim of
    one side; returns the femoral head centre."""
    U = _uniform(rng)
    # femoral head (posterolateral of the inguinal point: the artery crosses its medial third)
    fh = ing + np.array([sgn * U(8, 18), U(28, 40), U(-30, -18)])
    r_head = U(21.0, 25.0)
    sc.add_shell(ellipsoid(fh, (r_head,) * 3), 2.0, "femoral head")
    # iliac wing: a thin curved plate from the acetabular roof up to the crest (about L4),
    # flaring forward and out
    crest_z = zv4 + U(-10, 5)
    wing_c = np.array([x0 + sgn * U(78, 92), fh[1] + U(-5, 10), 0.5 * (fh[2] + 20.0 + crest_z)])
    wR = rotation_about((0, 0, 1), math.radians(sgn * U(30, 45))) @ rotation_about((1, 0, 0), math.radians(U(-10, 10)))
    wing = ellipsoid(wing_c, (U(52, 62), U(8, 11), 0.5 * (crest_z - fh[2] - 20.0)), wR)
    sc.add_shell(wing, 2.0, "iliac wing")
    # iliac body between the wing and the acetabulum, and the ischial tuberosity
    sc.add_shell(ellipsoid(fh + (-sgn * 8, 5, 30), (28.0, 22.0, 26.0)), 1.5, "iliac body")
    isch = fh + np.array([-sgn * U(8, 14), U(10, 20), -U(55, 65)])
    sc.add_shell(ellipsoid(isch, (13.0, 14.0, 18.0)), 1.5, "ischial tuberosity")
    # femoral neck, greater and lesser trochanter, shaft
    gt = fh + np.array([sgn * U(45, 55), U(5, 15), U(-38, -28)])
    sc.add_bone_tube([fh, fh + 0.45 * (gt - fh), gt], U(13, 16), 2.5, "femoral neck")
    sc.add_shell(ellipsoid(gt + (sgn * 5, 0, 0), (15.0, 16.0, 22.0)), 2.0, "greater trochanter")
    shaft_bot = gt + np.array([-sgn * U(20, 35), U(-15, 0), -320.0])
    sc.add_bone_tube([gt - (sgn * 6, 0, 10), shaft_bot], U(13, 15), U(4.5, 6.0), "femoral shaft", spacing=2.0)
    sc.add_shell(ellipsoid(gt + (-sgn * 22, -5, -40), (8.0, 8.0, 10.0)), 1.5, "lesser trochanter")
    # acetabular roof (the sourcil) over the head
    arc = [fh + r_head * 1.08 * np.array([sgn * math.sin(a), 0.2, math.cos(a)]) for a in np.linspace(-0.5, 1.3, 9)]
    sc.add_bone_tube(arc, 4.0, 2.0, "acetabular rim")
    return fh


def _pubis_and_brim(sc: Scene, rng: np.random.Generator, ing: np.ndarray, fh: np.ndarray, sgn: int,
                    x0: float, yv5: float, zv5: float) -> None:
    """One side's obturator ring (superior pubic ramus, inferior ramus, ischium: an oval hole below
    and medial of the acetabulum), the pubic body at the symphysis, and the pelvic brim."""
    U = _uniform(rng)
    sym = np.array([x0 + sgn * 6.0, ing[1] + U(-5, 10), fh[2] - U(25, 40)])
    oc = np.array([x0 + sgn * U(42, 52), fh[1] - 5.0, fh[2] - U(35, 45)])
    oa, ob = U(22, 28), U(15, 20)
    ring = [oc + (oa * math.cos(a), 0.0, ob * math.sin(a)) for a in np.linspace(0, 2 * math.pi, 41)]
    sc.add_bone_tube(spline_curve(ring, 1.0), U(5.5, 7.0), 1.8, "obturator ring")
    sc.add_bone_tube([fh + (-sgn * 15, -5, 5), oc + (0, 0, ob), sym + (0, 0, 6)], 7.0, 1.8, "superior pubic ramus")
    sc.add_shell(ellipsoid(sym + (sgn * 10, 0, -8), (14.0, 12.0, 22.0)), 1.5, "pubic body")
    # pelvic brim (arcuate line): half of the inlet oval, from the promontory to the symphysis
    prom = np.array([x0, yv5 - 10.0, zv5 + 12.0])
    ctr = 0.5 * (prom + sym + (0, 0, 10))
    ax_ap = 0.5 * (sym + (0, 0, 10) - prom)
    tw = U(58, 68)
    brim = [ctr + math.cos(a) * ax_ap * -1.0 + sgn * math.sin(a) * np.array([tw, 0.0, 0.0])
            for a in np.linspace(0.0, math.pi, 25)]
    sc.add_bone_tube(spline_curve(brim, 1.0), 4.0, 1.6, "pelvic brim")


def _bowel_gas(sc: Scene, rng: np.random.Generator, x0: float, y_front: float, yv4: float,
               z_bif: float) -> None:
    """Bowel gas: colon segments and small bubbles in the abdomen and pelvis."""
    U = _uniform(rng)
    for _ in range(int(rng.integers(3, 9))):
        c = np.array([x0 + U(-110, 110), U(y_front + 30, yv4 - 20), z_bif + U(-90, 110)])
        kind = rng.uniform()
        if kind < 0.5:
            direction = _unit(rng.normal(size=3) * (1, 0.3, 1))
            L = U(25, 80)
            sc.tubes.append(LineSet.from_curve(
                spline_curve([c - 0.5 * L * direction, c + rng.normal(0, 8, 3), c + 0.5 * L * direction], 1.0),
                U(7, 16), "air", weight=U(0.4, 0.9), name="bowel gas"))
        else:
            sc.solids.append(Solid(ellipsoid(c, (U(6, 22), U(5, 15), U(5, 18)),
                                             rotation_about(rng.normal(size=3), U(0, 3))),
                                   "air", U(0.5, 1.0), [], "bowel gas"))


def _sternal_wires(sc: Scene, rng: np.random.Generator, st_top: np.ndarray, st_bot: np.ndarray) -> None:
    """Sternotomy wires (previous cardiac surgery) in some patients."""
    if rng.uniform() < 0.25:
        n_w = int(rng.integers(5, 8))
        for z in np.linspace(st_top[2] - 15, st_bot[2] + 15, n_w):
            t = (z - st_top[2]) / (st_bot[2] - st_top[2])
            c = st_top + t * (st_bot - st_top)
            loop = [c + (18 * math.cos(a), 8 * math.sin(a) + (4 if math.cos(a) > 0 else 0), 2.5 * math.sin(2 * a))
                    for a in np.linspace(0, 2 * math.pi, 40)]
            sc.tubes.append(LineSet.from_curve(loop, 0.45, "steel", spacing=0.4, name="sternal wire"))
            sc.tubes.append(LineSet.from_curve([c + (0, -9, 0), c + (2, -13, -3), c + (-2, -16, -6)], 0.9,
                                               "steel", spacing=0.4, name="sternal wire twist"))


def _ecg_electrodes(sc: Scene, rng: np.random.Generator, x0: float, ann: np.ndarray, trunk: _Trunk) -> None:
    """ECG electrodes (snaps) and their leads on the chest skin."""
    U = _uniform(rng)
    chest_hw, yc_chest, hb = trunk.half_width, trunk.yc, trunk.hb
    for _ in range(int(rng.integers(1, 5))):
        ang = U(-1.2, 1.2)
        zz = ann[2] + U(-140, 120)
        pos = np.array([x0 + chest_hw * 0.85 * math.sin(ang), yc_chest - hb * 0.95 * math.cos(ang), zz])
        normal = _unit(np.array([math.sin(ang) / chest_hw, -math.cos(ang) / hb, 0.0]))
        sc.tubes.append(LineSet.from_curve([pos, pos + 3.0 * normal], 3.5, "steel", 2.5, spacing=0.3, name="ECG snap"))
        sc.tubes.append(LineSet.from_curve([pos, pos + 2.0 * normal], 1.4, "steel", spacing=0.3, name="ECG snap"))
        lead = [pos + 2.0 * normal]
        direction = _unit(rng.normal(size=3) * (1, 0, 1))
        for _i in range(int(rng.integers(3, 8))):
            direction = _unit(direction + rng.normal(0, 0.35, 3) * (1, 0, 1))
            lead.append(lead[-1] + 30.0 * direction)
        sc.tubes.append(LineSet.from_curve(spline_curve(lead, 1.0), 0.7, "steel", weight=0.25, name="ECG lead"))


def _rib(sc: Scene, k: int, x0, yv, zv, bv, chest_hw, yc, hb, y_front, rng) -> None:
    """Rib ``k`` (1-12) on both sides: from the transverse process around the chest wall, sloping
    down toward the front, ending at the costal cartilage (radiolucent)."""
    scale = min(1.0, 0.55 + 0.09 * k) if k <= 7 else 1.0 - 0.02 * (k - 7)
    A = (chest_hw - 18.0) * scale
    B = (hb - 16.0) * (0.75 + 0.25 * scale)
    yc_r = yv + bv + 30.0 - B
    end = 0.62 * math.pi if k <= 10 else (0.35 + 0.04 * (12 - k)) * math.pi
    drop = (40.0 + 4.0 * k) * (1.0 if k <= 10 else 0.5)
    r = 4.0 + 0.2 * min(k, 8)
    for sgn in (1, -1):
        phi = np.linspace(0.0, end, 60)
        jitter = rng.normal(0.0, 2.0)
        phi = phi[phi >= 0.3]
        # head at the vertebral body, neck along the transverse process, then the shaft
        pts = [(x0 + sgn * (bv + 2.0), yv + 0.3 * bv, zv + 2.0),
               (x0 + sgn * (bv + 22.0), yv + bv + 18.0, zv - 2.0)]
        for p in phi:
            pts.append((x0 + sgn * (bv + 12.0 + (A - bv - 12.0) * math.sin(p)),
                        yc_r + B * math.cos(p),
                        zv - 8.0 + jitter - drop * (p / math.pi) ** 1.6))
        sc.add_bone_tube(spline_curve(pts, 1.5), r, 1.0, f"rib {k}", spacing=1.5)
        if k <= 10:  # costal cartilage: faint, continuing toward the sternum
            p_end = np.array(pts[-1])
            tip = np.array([x0 + sgn * 25.0, y_front + 20.0, p_end[2] - 25.0])
            sc.tubes.append(LineSet.from_curve(spline_curve([p_end, 0.5 * (p_end + tip) + (0, -8, 0), tip], 1.5),
                                               r, "cancellous", weight=0.3, name="costal cartilage"))


def _vessel_tree(sc: Scene, hilum, sgn, rng, x0, yc, hw, hb, z_top, domes) -> None:
    """Random pulmonary vessel tree: soft-tissue tubes in the aerated lung (the lung markings)."""
    z_dome = domes[0] if sgn > 0 else domes[1]
    stack = []
    for _ in range(4):
        d = _unit(np.array([sgn * 0.8, rng.normal(0, 0.4), rng.normal(0, 1.0)]))
        stack.append((np.asarray(hilum, float), d, 4.5, 0))
    while stack:
        p, d, r, depth = stack.pop()
        L = 45.0 * (0.68 ** depth) * float(rng.uniform(0.7, 1.3))
        pts = [p]
        dd = d
        for _i in range(4):
            dd = _unit(dd + rng.normal(0, 0.12, 3))
            pts.append(pts[-1] + dd * L / 4)
        q = pts[-1]
        inside = (((q[0] - x0) / (hw - 15)) ** 2 + ((q[1] - yc) / (hb - 10)) ** 2 < 1.0) and z_dome - 10 < q[2] < z_top
        sc.tubes.append(LineSet.from_curve(pts, r, "lung", weight=-1.0, spacing=1.0, name="pulmonary vessel"))
        if depth < 4 and inside:
            for _b in range(2):
                nd = _unit(dd + rng.normal(0, 0.55, 3))
                stack.append((q, nd, max(r * 0.7, 0.7), depth + 1))


def texture(shape: Tuple[int, int], rng: np.random.Generator, sigma_px: float) -> np.ndarray:
    """Smooth random field with zero mean and unit standard deviation (Gaussian-filtered noise,
    computed on a coarser grid for large ``sigma_px``)."""
    f = max(1, int(sigma_px // 4))
    small = (int(math.ceil(shape[0] / f)), int(math.ceil(shape[1] / f)))
    t = ndimage.gaussian_filter(rng.normal(size=small).astype(np.float32), sigma_px / f, mode="wrap")
    t = upsample(t, f, shape) if f > 1 else t
    sd = float(t.std())
    return (t - float(t.mean())) / (sd if sd > 0 else 1.0)


def static_attenuation(maps: Dict[str, np.ndarray], grid: RayGrid, rng: np.random.Generator,
                       soft_texture: float = 0.03, lung_texture: float = 0.2) -> np.ndarray:
    """Sum of mu * L over materials, with tissue inhomogeneity: the soft-tissue path varies by
    ``soft_texture`` (relative, 10-30 mm correlation: muscle, fat, bowel content) and the aerated
    lung by ``lung_texture`` (2-6 mm: parenchyma and small vessels)."""
    mu = np.zeros(grid.shape, np.float32)
    px_iso = grid.pitch_work * grid.geom.sod_mm / grid.geom.sid_mm
    for m, L in maps.items():
        term = np.float32(MU_PER_MM[m]) * L
        if m == "soft" and soft_texture > 0:
            term = term * (1.0 + soft_texture * (0.7 * texture(grid.shape, rng, 20.0 / px_iso)
                                                 + 0.5 * texture(grid.shape, rng, 6.0 / px_iso)))
        if m == "lung" and lung_texture > 0:
            term = term * (1.0 + lung_texture * (texture(grid.shape, rng, 1.5 / px_iso)
                                                 + 0.4 * texture(grid.shape, rng, 6.0 / px_iso)))
        mu += term.astype(np.float32)
    return mu


# =============================================================================================
# devices
# =============================================================================================
def _wall_offset_path(points: np.ndarray, radii: np.ndarray, frac: float, outer: bool,
                      sigma_mm: float = 15.0) -> np.ndarray:
    """A path inside a vessel, pushed toward the outer (or inner) curvature by ``frac`` * radius."""
    p = resample_polyline(points, 1.0)
    r = np.interp(np.linspace(0, 1, len(p)), np.linspace(0, 1, len(radii)), radii)
    sm = ndimage.gaussian_filter1d(p, sigma_mm, axis=0, mode="nearest")
    t = np.gradient(sm, axis=0)
    t /= np.maximum(np.linalg.norm(t, axis=1, keepdims=True), 1e-9)
    k = np.gradient(t, axis=0)
    k -= (k * t).sum(axis=1, keepdims=True) * t
    mag = np.linalg.norm(k, axis=1, keepdims=True)
    nrm = k / np.maximum(mag, 1e-9)
    strength = np.clip(mag / 0.01, 0.0, 1.0)  # curvature 1/100 mm -> full offset
    off = (-1.0 if outer else 1.0) * frac * r[:, None] * nrm * strength
    return p + off


def _loop(center, e1, e2, radius, turns, start_angle=0.0, pitch_vec=None, n=None) -> np.ndarray:
    n = n or max(24, int(turns * 2 * math.pi * radius / 0.8))
    a = start_angle + np.linspace(0.0, 2 * math.pi * turns, n)
    pts = center[None] + radius * (np.cos(a)[:, None] * e1[None] + np.sin(a)[:, None] * e2[None])
    if pitch_vec is not None:
        pts += np.linspace(0.0, 1.0, n)[:, None] * np.asarray(pitch_vec)[None]
    return pts


@dataclass
class DeviceSet:
    """Devices of one series: tubes in the pre-op frame. ``moving``: they follow the vessels (the
    caller deforms their points per frame); ``static``: they stay with the body."""

    moving: List[LineSet] = field(default_factory=list)
    static: List[LineSet] = field(default_factory=list)
    info: dict = field(default_factory=dict)


def aortic_route(anatomy, z_low: float) -> Tuple[np.ndarray, np.ndarray]:
    """Aorta centerline points and radii from the root up to the arch and down to ``z_low``,
    ordered from distal (``z_low`` in the descending or abdominal aorta) to the root."""
    pts, rad = anatomy.chain("aorta")
    i_top = int(np.argmax(pts[:, 2]))
    below = np.flatnonzero((pts[:, 2] < z_low) & (np.arange(len(pts)) > i_top))
    i_end = int(below[0]) if len(below) else len(pts) - 1
    seg = pts[: i_end + 1][::-1]
    return seg, rad[: i_end + 1][::-1]


def build_upper_devices(anatomy, rng: np.random.Generator, stage: str, heart_info: dict) -> DeviceSet:
    """Upper-FoV devices: pigtail catheter in the non-coronary cusp, stiff guidewire looping in the
    left ventricle, temporary pacing lead in the right ventricle, and by ``stage``: 'wire' (no
    valve yet), 'crimped' (delivery system with the crimped valve at the annulus), 'deploying',
    'deployed' (expanded frame, delivery system pulled back)."""
    ds = DeviceSet()
    U = lambda a, b: float(rng.uniform(a, b))  # noqa: E731
    L = anatomy.landmarks
    ann = np.asarray(L["annulus_center"], float)
    n = np.asarray(anatomy.annulus_normal, float)
    stj = np.asarray(L["sinotubular_junction"], float)
    z_low = float(L["aortic_hiatus"][2]) - 30.0
    route, rroute = aortic_route(anatomy, z_low)
    # pigtail catheter: outer curvature of the arch, into the non-coronary sinus, curled
    ncc = np.asarray(L["noncoronary_cusp_nadir"], float)
    radial = _unit((ncc - ann) - ((ncc - ann) @ n) * n)
    path = _wall_offset_path(route, rroute, U(0.4, 0.75), outer=True)
    s_keep = (path - stj) @ n > U(5, 15)
    cut = int(np.flatnonzero(s_keep)[-1]) if s_keep.any() else len(path) - 1
    loop_c = ncc + U(6.0, 9.0) * n - U(1.0, 3.0) * radial
    e1 = n
    e2 = _unit(np.cross(n, radial)) * (1 if rng.uniform() < 0.5 else -1)
    e2 = _unit(0.6 * e2 + 0.8 * radial)
    loop = _loop(loop_c, e1, e2, U(5.5, 7.5), U(1.05, 1.3), start_angle=0.0, pitch_vec=U(1.5, 3.0) * _unit(np.cross(e1, e2)))
    pig = spline_curve(np.concatenate([path[:cut + 1:6], [0.5 * (path[cut] + loop[0]) + 3 * radial], loop[::3]]), 0.5)
    r_pig = U(0.8, 1.0)
    ds.moving.append(LineSet.from_curve(pig, r_pig, "catheter", r_pig - 0.35, name="pigtail catheter"))
    # its lumen holds undiluted contrast while injecting (the caller sets the weight per frame)
    ds.moving.append(LineSet.from_curve(pig, r_pig - 0.35, "contrast_medium", weight=0.0, name="pigtail lumen"))
    ds.info["pigtail"] = {"tip": pig[-1].tolist()}
    # stiff guidewire: inner curvature, through the annulus, pre-shaped loop in the LV
    apex_dir = np.asarray(heart_info.get("apex_dir", (0.55, -0.45, -0.7)), float)
    lv_dir = _unit(0.5 * apex_dir - 0.5 * n)
    wpath = _wall_offset_path(route, rroute, U(0.2, 0.6), outer=False)
    s_keep = (wpath - ann) @ n > 25.0
    cut = int(np.flatnonzero(s_keep)[-1]) if s_keep.any() else len(wpath) - 1
    loop_r = U(17.0, 24.0)
    lc = ann + lv_dir * U(45.0, 60.0)
    w1 = _unit(np.cross(lv_dir, rng.normal(size=3)))
    w2 = _unit(np.cross(lv_dir, w1))
    wl = _loop(lc, -lv_dir, w1 * 0.9 + 0.3 * w2, loop_r, U(1.1, 1.5), start_angle=math.pi, pitch_vec=U(6, 12) * w2)
    wire = spline_curve(np.concatenate([wpath[:cut + 1:8], [ann + 8 * n, ann - 10 * lv_dir], wl[::3]]), 0.5)
    ds.moving.append(LineSet.from_curve(wire, 0.45, "steel", name="stiff guidewire"))
    # temporary pacing lead: IVC -> right atrium -> RV apex, via the femoral vein
    x0 = float(anatomy.params.get("midline_x_mm", -12.0))
    ivc = np.array([x0 - 22.0, float(L["aortic_hiatus"][1]) - 20.0, float(L["aortic_hiatus"][2]) - 40.0])
    ra = ann + np.array([-U(35, 50), U(-5, 15), -U(25, 45)])
    tv = ann + np.array([-U(10, 20), -U(15, 25), -U(35, 50)])
    rv_apex = ann + 75.0 * apex_dir + np.array([-U(5, 20), -U(10, 20), -U(5, 15)])
    lead = spline_curve([ivc, ivc + (0, -10, 60), ra, tv, 0.5 * (tv + rv_apex) + rng.normal(0, 6, 3), rv_apex], 0.5)
    ds.moving.append(LineSet.from_curve(lead, 0.85, "catheter", name="pacing lead"))
    ds.moving.append(LineSet.from_curve(lead, 0.3, "pacing", name="pacing lead conductor"))
    tdir = _unit(lead[-1] - lead[-8])
    ds.moving.append(LineSet.from_curve([rv_apex - 2 * tdir, rv_apex + 0.5 * tdir], 1.0, "platinum", spacing=0.25, name="pacing tip"))
    ds.moving.append(LineSet.from_curve([rv_apex - 12 * tdir, rv_apex - 10 * tdir], 1.0, "platinum", 0.6, spacing=0.25, name="pacing ring"))
    # delivery system and valve frame
    ds.info["stage"] = stage
    if stage in ("crimped", "deploying", "deployed"):
        _valve(ds, anatomy, rng, stage, route, rroute, ann, n)
    # valve calcification: blobs near the leaflets and the annulus (they move with the root)
    calc = []
    for cusp in ("right_coronary_cusp_nadir", "left_coronary_cusp_nadir", "noncoronary_cusp_nadir"):
        c = np.asarray(L[cusp], float)
        for _ in range(int(rng.integers(0, 4))):
            q = c + U(2, 8) * n + 0.6 * (ann - c) * U(0, 1) + rng.normal(0, 1.5, 3)
            tdir = _unit(rng.normal(size=3))
            calc.append(LineSet.from_curve([q - U(1, 4) * tdir, q + U(1, 4) * tdir], U(0.8, 2.2), "calcium",
                                           spacing=0.3, name="valve calcium"))
    ds.moving.extend(calc)
    return ds


def _valve(ds: DeviceSet, anatomy, rng, stage, route, rroute, ann, n) -> None:
    U = lambda a, b: float(rng.uniform(a, b))  # noqa: E731
    kind = "self-expanding" if rng.uniform() < 0.55 else "balloon-expandable"
    r_ann = float(anatomy.params.get("annulus_radius_mm", 12.0))
    R = frame_from_axis(n)
    if kind == "self-expanding":
        length, cells, rows = U(42.0, 48.0), 15, 5
        z0 = -U(3.0, 6.0)
        def profile(t, e):  # t in [0, 1] inflow -> outflow, e = expansion 0..1
            full = r_ann * (1.05 + 0.15 * (1 - t)) if t < 0.45 else r_ann * (1.0 + 0.45 * (t - 0.45) / 0.55)
            return 3.6 + e * (full - 3.6)
        strut = 0.22
        mat = "nitinol"
    else:
        length, cells, rows = U(17.0, 20.0), 12, 3
        z0 = -U(2.0, 5.0)
        def profile(t, e):
            return 3.8 + e * (r_ann * 1.05 - 3.8)
        strut = 0.28
        mat = "nitinol"  # cobalt-chromium: similar attenuation at this energy
    if stage == "crimped":
        expansion = lambda t: 0.0  # noqa: E731
    elif stage == "deploying":
        frac = U(0.3, 0.7)
        expansion = lambda t: float(np.clip((frac - t) / 0.25 + 0.5, 0, 1)) if kind == "self-expanding" else frac  # noqa: E731
    else:
        expansion = lambda t: 1.0  # noqa: E731
    starts, ends = [], []
    node = {}
    for j in range(rows + 1):
        t = j / rows
        z = z0 + t * length
        r = profile(t, expansion(t))
        for k in range(cells):
            a = 2 * math.pi * (k + 0.5 * (j % 2)) / cells
            node[j, k] = ann + R @ np.array([r * math.cos(a), r * math.sin(a), z])
    for j in range(rows):
        for k in range(cells):
            a = node[j, k]
            b1 = node[j + 1, k]
            b2 = node[j + 1, (k - 1) % cells] if j % 2 == 0 else node[j + 1, (k + 1) % cells]
            starts += [a, a]
            ends += [b1, b2]
    ds.moving.append(LineSet.from_segments(starts, ends, strut, mat, name="valve frame", spacing=0.3))
    ds.info["valve"] = {"kind": kind, "stage": stage}
    # delivery catheter: shaft over the arch, capsule over the crimped part, marker band, nose cone
    if stage != "deployed" or rng.uniform() < 0.4:
        path = _wall_offset_path(route, rroute, U(0.3, 0.6), outer=True)
        top = ann + (z0 + length + (8.0 if stage != "deployed" else 25.0)) * n
        s_keep = (path - ann) @ n > (z0 + length + 30.0)
        cut = int(np.flatnonzero(s_keep)[-1]) if s_keep.any() else len(path) - 1
        shaft = spline_curve(np.concatenate([path[:cut + 1:8], [top + 6 * n, top]]), 0.5)
        r_shaft = U(2.7, 3.2)
        ds.moving.append(LineSet.from_curve(shaft, r_shaft, "sheath", r_shaft - 0.5, name="delivery catheter"))
        ds.moving.append(LineSet.from_curve(shaft, 0.6, "steel", weight=0.4, name="delivery inner shaft"))
        if stage in ("crimped", "deploying"):
            cap_end = ann + (z0 + (length if stage == "crimped" else length * 0.6)) * n
            cap_start = top
            ds.moving.append(LineSet.from_curve([cap_start, cap_end], 4.2, "sheath", 3.7, spacing=0.5, name="capsule"))
            ds.moving.append(LineSet.from_curve([cap_end, cap_end + 1.5 * n], 4.3, "platinum", 4.0, spacing=0.25,
                                                name="capsule marker"))
            nose = ann + (z0 - 1.0) * n
            if stage == "crimped":
                ds.moving.append(LineSet.from_curve([nose, nose - 12.0 * n], 2.8, "sheath", name="nose cone"))
        ds.moving.append(LineSet.from_curve([top, top + 1.2 * n], r_shaft + 0.1, "platinum", r_shaft - 0.3,
                                            spacing=0.25, name="shaft marker"))


def build_lower_devices(anatomy, rng: np.random.Generator, access_side: str) -> DeviceSet:
    """Lower-FoV devices: large-bore introducer sheath in the access-side iliofemoral axis with the
    stiff wire (or the delivery shaft) inside, a 6F sheath and the pigtail catheter on the other
    side, a venous sheath with the pacing lead in a femoral vein, and sometimes a crossover
    catheter."""
    ds = DeviceSet()
    U = lambda a, b: float(rng.uniform(a, b))  # noqa: E731
    other = "left" if access_side == "right" else "right"
    L = anatomy.landmarks
    pts, _ = anatomy.chain(f"{access_side}_iliofemoral")  # bifurcation -> femoral end
    s = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(pts, axis=0), axis=1))])
    ing = np.asarray(L[f"{access_side}_inguinal"], float)
    i_ing = int(np.argmin(np.linalg.norm(pts - ing, axis=1)))
    i_punct = int(np.searchsorted(s, s[i_ing] + U(15.0, 35.0)))
    i_punct = min(i_punct, len(pts) - 1)
    sheath_len = U(130.0, 220.0)
    i_tip = int(np.searchsorted(s, max(s[i_punct] - sheath_len, 0.0)))
    inner = pts[i_tip:i_punct + 1][::-1]
    # outside the artery: through the skin, angled 45 deg forward and down
    skin = pts[i_punct] + np.array([0.0, -U(35, 50), -U(35, 50)])
    sheath = spline_curve(np.concatenate([[skin + (0, -40, -40), skin], resample_polyline(inner, 4.0)]), 0.5)
    r_sh = U(2.6, 3.2)
    ds.static.append(LineSet.from_curve(sheath, r_sh, "sheath", r_sh - 0.4, name="introducer sheath"))
    ds.static.append(LineSet.from_curve(sheath, r_sh - 0.4, "catheter", weight=0.15, name="sheath contents"))
    tip_dir = _unit(sheath[-1] - sheath[-6])
    ds.static.append(LineSet.from_curve([sheath[-1] - 2.0 * tip_dir, sheath[-1]], r_sh + 0.05, "platinum", r_sh - 0.2,
                                        spacing=0.25, name="sheath marker"))
    # wire from the sheath up the iliac into the aorta
    aorta, _ = anatomy.chain("aorta")
    up = aorta[aorta[:, 2] > float(L["bifurcation"][2])][::-1][:400]
    wire_path = np.concatenate([sheath[::4], resample_polyline(pts[:i_tip + 1][::-1], 4.0), up[::8]])
    ds.static.append(LineSet.from_curve(spline_curve(wire_path, 0.5), 0.45, "steel", name="stiff guidewire"))
    # contralateral: small sheath and the pigtail catheter going up
    pts2, _ = anatomy.chain(f"{other}_iliofemoral")
    s2 = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(pts2, axis=0), axis=1))])
    ing2 = np.asarray(L[f"{other}_inguinal"], float)
    j_ing = int(np.argmin(np.linalg.norm(pts2 - ing2, axis=1)))
    j_p = min(int(np.searchsorted(s2, s2[j_ing] + U(15.0, 35.0))), len(pts2) - 1)
    j_t = int(np.searchsorted(s2, max(s2[j_p] - U(80, 110), 0)))
    skin2 = pts2[j_p] + np.array([0.0, -U(30, 45), -U(30, 45)])
    small = spline_curve(np.concatenate([[skin2 + (0, -30, -30), skin2], resample_polyline(pts2[j_t:j_p + 1][::-1], 4.0)]), 0.5)
    ds.static.append(LineSet.from_curve(small, 1.1, "sheath", 0.8, name="6F sheath"))
    pig_path = np.concatenate([small[::4], resample_polyline(pts2[:j_t + 1][::-1], 4.0), up[::8]])
    ds.static.append(LineSet.from_curve(spline_curve(pig_path, 0.5), 0.9, "catheter", 0.5, name="pigtail catheter"))
    # venous sheath and pacing lead: femoral vein medial to the artery, up to the IVC
    side_v = access_side if rng.uniform() < 0.5 else other
    ptsv, _ = anatomy.chain(f"{side_v}_iliofemoral")
    sgn = 1.0 if side_v == "left" else -1.0
    x0 = float(anatomy.params.get("midline_x_mm", -12.0))
    vein = ptsv[::10] + np.array([-sgn * U(10, 16), U(4, 10), 0.0])
    vein = vein[vein[:, 2] < float(L["bifurcation"][2]) - 10]
    ivc = np.array([[x0 - 20.0, float(L["bifurcation"][1]) + 5, float(L["bifurcation"][2]) + z]
                    for z in (0.0, 60.0, 160.0)])
    vpath = spline_curve(np.concatenate([ivc[::-1], vein]), 0.5)[::-1]
    vpath = vpath[: max(10, int(len(vpath) * 0.98))]
    i_vs = max(0, len(vpath) - int(U(40, 70) / 0.5))
    ds.static.append(LineSet.from_curve(vpath[i_vs:], 1.3, "sheath", 1.0, name="venous sheath"))
    ds.static.append(LineSet.from_curve(vpath, 0.85, "catheter", name="pacing lead"))
    ds.static.append(LineSet.from_curve(vpath, 0.3, "pacing", name="pacing lead conductor"))
    ds.info = {"access_side": access_side, "venous_side": side_v}
    return ds


# =============================================================================================
# detector physics and display
# =============================================================================================
@dataclass
class Imaging:
    """Acquisition and display settings of one series."""

    counts: float              # mean detected photons per native pixel behind a typical path
    scatter_fraction: float    # scatter-to-primary ratio (after the grid)
    scatter_sigma_mm: float    # spread of the scatter at the detector
    blur_px: float             # focal spot + detector blur (Gaussian sigma, native pixels)
    noise_blur_px: float       # noise correlation (scintillator spread)
    electronic_noise: float    # Gaussian, counts
    gamma: float               # display gamma on the log image
    edge_enhance: float        # unsharp-mask gain
    edge_sigma_px: float
    drc: float                 # dynamic range compression of the large-scale (body) contrast
    drc_sigma_mm: float
    window: Tuple[float, float]  # percentiles of the log image mapped to black and white
    bits_stored: int
    shutters: Tuple[float, float, float, float]  # left, right, top, bottom fractions collimated
    circular: bool             # image-intensifier style round field (dark outside)
    vignetting: float          # relative brightness loss at the corners
    wedge: Optional[Tuple[float, float, float]]  # (angle_rad, offset, strength) semi-transparent filter

    def to_dict(self) -> dict:
        d = dict(self.__dict__)
        d["window"] = list(self.window)
        d["shutters"] = list(self.shutters)
        d["wedge"] = None if self.wedge is None else list(self.wedge)
        return d


def draw_imaging(rng: np.random.Generator, cols: int, fov: str, cine: bool) -> Imaging:
    """Random but clinical acquisition and display settings for one series."""
    U = lambda a, b: float(rng.uniform(a, b))  # noqa: E731
    big = cols > 600
    counts = math.exp(U(math.log(250.0), math.log(2500.0)))
    if big:
        counts *= 0.35
    if cine:
        counts *= 1.5
    sh = [0.0, 0.0, 0.0, 0.0]
    circular = rng.uniform() < 0.15
    if not circular and rng.uniform() < 0.75:
        sh[0] = U(0.02, 0.16)
        sh[1] = U(0.02, 0.16)
        if rng.uniform() < 0.35:
            sh[2] = U(0.0, 0.08)
            sh[3] = U(0.0, 0.08)
    wedge = None
    if rng.uniform() < (0.35 if fov == "upper" else 0.15):
        wedge = (U(0, 2 * math.pi), U(0.25, 0.45), U(0.3, 0.7))
    return Imaging(
        counts=counts,
        scatter_fraction=U(0.25, 0.9),
        scatter_sigma_mm=U(25.0, 50.0),
        blur_px=U(0.7, 1.5) * (1.6 if big else 1.0),
        noise_blur_px=U(0.4, 0.8) * (1.5 if big else 1.0),
        electronic_noise=U(1.0, 4.0),
        gamma=U(0.8, 1.3),
        edge_enhance=U(0.1, 0.8),
        edge_sigma_px=U(1.5, 4.0) * (2.0 if big else 1.0),
        drc=U(0.35, 0.8),
        drc_sigma_mm=U(15.0, 40.0),
        window=(U(0.2, 2.0), U(93.0, 99.5)),
        bits_stored=8 if not big else (10 if rng.uniform() < 0.5 else 12),
        shutters=tuple(sh),
        circular=circular,
        vignetting=U(0.0, 0.35) if circular else U(0.0, 0.12),
        wedge=wedge,
    )


def collimation_mask(shape: Tuple[int, int], im: Imaging) -> np.ndarray:
    """float32 transmission of the collimator/shutter field: 1 in the open field, 0 behind the
    blades; soft edges a few pixels wide."""
    h, w = shape
    y = (np.arange(h) + 0.5) / h
    x = (np.arange(w) + 0.5) / w
    edge = 3.0 / max(h, w)
    def ramp(t):
        return np.clip(t / edge + 0.5, 0.0, 1.0)
    l, r, t, b = im.shutters
    mx = ramp(x - l) * ramp((1 - r) - x)
    my = ramp(y - t) * ramp((1 - b) - y)
    m = my[:, None] * mx[None, :]
    if im.circular:
        Y, X = np.meshgrid(y - 0.5, x - 0.5, indexing="ij")
        rr = np.sqrt(X * X + Y * Y)
        m = m * np.clip((0.5 - rr) / edge + 0.5, 0.0, 1.0)
    return m.astype(np.float32)


def form_image(mu_line_work: np.ndarray, grid: RayGrid, im: Imaging,
               rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
    """The stored frame from the total attenuation line integral (work grid).

    Returns (frame uint8/uint16 (rows, cols), open-field mask float (rows, cols)). Vessels and
    bone are dark (MONOCHROME2); collimator blades show as bright bands, an image-intensifier
    field as a dark surround."""
    g = grid.geom
    shape = (g.rows, g.cols)
    mu = upsample(mu_line_work, grid.factor, shape) if grid.factor > 1 else mu_line_work
    mu = mu.astype(np.float32)
    primary = np.exp(-mu)
    ref = float(np.exp(-np.percentile(mu, 50)))
    N0 = im.counts / max(ref, 1e-6)
    prim = primary * N0
    if im.wedge is not None:
        ang, off, strength = im.wedge
        Y, X = np.meshgrid(np.linspace(-0.5, 0.5, g.rows), np.linspace(-0.5, 0.5, g.cols), indexing="ij")
        t = X * math.cos(ang) + Y * math.sin(ang) - off
        prim = prim * (1.0 - strength * np.clip(t / 0.03 + 0.5, 0, 1))
    field_open = collimation_mask(shape, im)
    prim = prim * field_open
    if im.vignetting > 0:
        Y, X = np.meshgrid(np.linspace(-1, 1, g.rows), np.linspace(-1, 1, g.cols), indexing="ij")
        prim = prim * (1.0 - im.vignetting * 0.5 * (X * X + Y * Y))
    prim = ndimage.gaussian_filter(prim, im.blur_px)
    pr = g.pixel_spacing_mm[0]
    sig = im.scatter_sigma_mm / pr
    small = downsample_mean(prim, 8)
    scat = ndimage.gaussian_filter(small, sig / 8.0, mode="nearest")
    scat = upsample(scat, 8, shape)
    total = np.nan_to_num(prim + im.scatter_fraction * scat, nan=0.0, posinf=0.0, neginf=0.0)
    np.clip(total, 0.0, 1e8, out=total)
    noisy = rng.poisson(np.maximum(total, 0.0)).astype(np.float32)
    noisy += rng.normal(0.0, im.electronic_noise, noisy.shape).astype(np.float32)
    noisy = ndimage.gaussian_filter(noisy, im.noise_blur_px)
    logi = np.log(np.maximum(noisy, 0.5))
    # dynamic range compression (clinical "harmonisation"): flatten the body's large-scale
    # thickness variation so that vessels and bones keep their local contrast
    inside0 = field_open > 0.5
    lsmall = downsample_mean(np.where(inside0, logi, np.nan_to_num(np.median(logi[inside0]) if inside0.any() else 0.0)), 8)
    s_px = im.drc_sigma_mm / g.pixel_spacing_mm[0] / 8.0
    low = upsample(ndimage.gaussian_filter(lsmall, s_px, mode="nearest"), 8, shape)
    logi = logi - im.drc * (low - float(np.median(low)))
    # edge enhancement (unsharp mask) on the log image, as clinical processing does
    logi = logi + im.edge_enhance * (logi - ndimage.gaussian_filter(logi, im.edge_sigma_px))
    inside = field_open > 0.5
    vals = logi[inside] if inside.sum() > 100 else logi.ravel()
    lo, hi = np.percentile(vals, im.window)
    disp = np.clip((logi - lo) / max(hi - lo, 1e-6), 0.0, 1.0) ** im.gamma
    # collimator blades: bright bands; image intensifier: dark surround
    if im.circular:
        disp = disp * field_open + 0.03 * (1 - field_open)
    else:
        blade = 0.9 + 0.05 * ndimage.gaussian_filter(rng.normal(size=shape).astype(np.float32), 2.0)
        disp = disp * field_open + blade * (1 - field_open)
    maxval = (1 << im.bits_stored) - 1
    out = np.clip(np.round(disp * maxval), 0, maxval)
    return out.astype(np.uint8 if im.bits_stored == 8 else np.uint16), field_open
