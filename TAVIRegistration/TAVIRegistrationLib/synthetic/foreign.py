"""Registration cases from an anatomy the phantom did not draw, with frames unlike the phantom's.

Given vessel surfaces (for example a real aorta from CTA), each case is: the nominal model (the
surfaces as given, scaled to millimetres), a true pose (the model moved rigidly about the C-arm
isocentre by ``SHIFT_MM`` and ``ROTATION_DEG``), a C-arm view, and one frame: the true pose's
projection rendered in one of ``STYLES``:

* ``bold``: the contrast-filled lumen, darker where it is thicker, on a smooth background with one
  guidewire, 12-bit MONOCHROME2 (the look of a clean simulation, not of the phantom's physics);
* ``angio``: the lumen composited onto a real X-ray background (a frame of the real angiograms'
  training split, its own vessels included), with noise, 8-bit.

The views and detector spacings are chosen so that in some cases the vessel leaves the frame at its
edges. The ground truth is what the phantom gives: the true vessel mask, the nominal projection, the
least-squares 2D affine from the nominal to the true projection of the surface points, and twelve
landmarks (surface points spread by farthest-point sampling) projected under both poses. The data
set is written in the phantom's layout (``index.csv``, ``case.json`` per case, XA DICOM frames,
masks), so ``tavireg evaluate reg --split all`` and ``tavireg evaluate seg --split all`` read it.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import InputError
from ..export import strict_json
from ..geometry import CArmGeometry, project

STYLES = ("bold", "angio")
SHIFT_MM = (4.0, 12.0)
ROTATION_DEG = (2.0, 6.0)
#: a model whose largest extent is below this many file units is taken to be smaller than an adult aorta
#: and scaled to ``TARGET_EXTENT_MM`` (the scale is recorded; ``scale`` overrides it)
ADULT_EXTENT_MM = 120.0
TARGET_EXTENT_MM = 150.0
N_LANDMARKS = 12
INDEX_COLUMNS = ("patient", "split", "fov", "series", "image", "frame", "mask", "projection_true",
                 "projection_nominal", "case", "affine", "affine_rms_px", "opacified_px", "rows", "cols",
                 "primary_deg", "secondary_deg", "sid_mm", "sod_mm", "pixel_spacing_mm", "isocenter_lps",
                 "cine", "stage", "style", "source")


@dataclass
class ForeignConfig:
    """What ``generate_foreign`` makes: ``poses`` true poses (each with its own view) per style."""

    meshes: Sequence[Path]
    out: Path
    poses: int = 6
    styles: Sequence[str] = STYLES
    seed: int = 0
    size: int = 512
    scale: Optional[float] = None
    backgrounds: Optional[Path] = None  # folder of real X-ray frames (*.png without _gt) for ``angio``
    overwrite: bool = False

    def validate(self) -> None:
        if not self.meshes:
            raise InputError("give at least one vessel surface (--mesh)")
        if self.poses < 1:
            raise InputError(f"--poses must be at least 1, got {self.poses}")
        unknown = [s for s in self.styles if s not in STYLES]
        if unknown or not self.styles:
            raise InputError(f"--styles must name some of {', '.join(STYLES)}, got {','.join(self.styles)}")
        if not 128 <= self.size <= 2048:
            raise InputError(f"--size must be 128-2048 px, got {self.size}")
        if self.scale is not None and not 0.01 <= self.scale <= 100:
            raise InputError(f"--scale must be 0.01-100, got {self.scale}")
        if "angio" in self.styles and (self.backgrounds is None or not _background_files(self.backgrounds)):
            raise InputError("the angio style needs real X-ray frames (--backgrounds DIR of N.png files, "
                             "e.g. the real angiograms' train folder)")
        out = Path(self.out)
        if out.exists() and any(out.iterdir()) and not self.overwrite:
            raise InputError(f"{out} is not empty: choose another --out or pass --overwrite")


def _background_files(folder) -> List[Path]:
    folder = Path(folder)
    return sorted(p for p in folder.glob("*.png") if not p.stem.endswith("_gt")) if folder.is_dir() else []


def load_surfaces(paths: Sequence[Path], scale: Optional[float]) -> Tuple[object, float, List[str]]:
    """The surfaces appended into one model (LPS as given), scaled to millimetres: ``(polydata,
    scale, notes)``; without ``scale`` a model smaller than ``ADULT_EXTENT_MM`` is scaled to
    ``TARGET_EXTENT_MM`` (named in the notes)."""
    from vtkmodules.vtkCommonTransforms import vtkTransform
    from vtkmodules.vtkFiltersCore import vtkAppendPolyData
    from vtkmodules.vtkFiltersGeneral import vtkTransformPolyDataFilter

    from ..mesh import load_model

    append = vtkAppendPolyData()
    notes: List[str] = []
    for path in paths:
        model = load_model(Path(path), units="mm", space="LPS")
        append.AddInputData(model.polydata)
    append.Update()
    poly = append.GetOutput()
    b = np.asarray(poly.GetBounds(), float).reshape(3, 2)
    extent = float((b[:, 1] - b[:, 0]).max())
    if scale is None:
        scale = TARGET_EXTENT_MM / extent if extent < ADULT_EXTENT_MM else 1.0
        if scale != 1.0:
            notes.append(f"the surfaces are {extent:.1f} units across, small for an adult aorta: scaled by "
                         f"{scale:.3f} to {TARGET_EXTENT_MM:.0f} mm (units taken as mm, space as LPS)")
    t = vtkTransform()
    t.Scale(scale, scale, scale)
    f = vtkTransformPolyDataFilter()
    f.SetInputData(poly)
    f.SetTransform(t)
    f.Update()
    return f.GetOutput(), float(scale), notes


def _points(poly) -> np.ndarray:
    from vtkmodules.util.numpy_support import vtk_to_numpy

    return vtk_to_numpy(poly.GetPoints().GetData()).astype(float)


def farthest_points(points: np.ndarray, n: int, rng) -> np.ndarray:
    """``n`` of ``points`` spread by farthest-point sampling (the first one drawn at random)."""
    chosen = [int(rng.integers(len(points)))]
    dist = np.linalg.norm(points - points[chosen[0]], axis=1)
    for _ in range(n - 1):
        chosen.append(int(np.argmax(dist)))
        dist = np.minimum(dist, np.linalg.norm(points - points[chosen[-1]], axis=1))
    return points[chosen]


def rigid_pose(rng, center: np.ndarray) -> np.ndarray:
    """A 4x4 rigid motion about ``center``: rotation ``ROTATION_DEG`` about a random axis, then a shift
    of ``SHIFT_MM`` in a random direction."""
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    angle = math.radians(rng.uniform(*ROTATION_DEG))
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    rot = np.eye(3) + math.sin(angle) * k + (1 - math.cos(angle)) * k @ k
    shift = rng.normal(size=3)
    shift *= rng.uniform(*SHIFT_MM) / np.linalg.norm(shift)
    pose = np.eye(4)
    pose[:3, :3] = rot
    pose[:3, 3] = center - rot @ center + shift
    return pose


def random_view(rng, center: np.ndarray, size: int) -> CArmGeometry:
    """An upper-FoV C-arm view: LAO 15-45 or RAO 5-25, cranial/caudal up to 15 degrees, SID 950-1200 mm;
    a detector spacing that makes the field of view 110-200 mm at the isocentre (so that a long
    aorta may leave the frame)."""
    primary = rng.uniform(15, 45) if rng.random() < 0.7 else -rng.uniform(5, 25)
    secondary = rng.uniform(-15, 15)
    sid = rng.uniform(950, 1200)
    sod = sid * rng.uniform(0.7, 0.8)
    fov_mm = rng.uniform(110, 200)
    spacing = fov_mm * (sid / sod) / size
    return CArmGeometry(round(primary, 1), round(secondary, 1), round(sid, 1), round(sod, 1),
                        (round(spacing, 4),) * 2, size, size, tuple(float(c) for c in center))


def fit_affine(nominal_px: np.ndarray, true_px: np.ndarray) -> Tuple[np.ndarray, float]:
    """Least-squares 3x3 frame affine mapping ``nominal_px`` to ``true_px`` and its RMS residual (px)."""
    a = np.hstack([nominal_px, np.ones((len(nominal_px), 1))])
    sol, *_ = np.linalg.lstsq(a, true_px, rcond=None)
    m = np.eye(3)
    m[:2, :] = sol.T
    rms = float(np.sqrt(np.mean(np.sum((a @ sol - true_px) ** 2, axis=1))))
    return m, rms


def transform_polydata(poly, pose: np.ndarray):
    from vtkmodules.vtkCommonMath import vtkMatrix4x4
    from vtkmodules.vtkCommonTransforms import vtkTransform
    from vtkmodules.vtkFiltersGeneral import vtkTransformPolyDataFilter

    m = vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            m.SetElement(r, c, float(pose[r, c]))
    t = vtkTransform()
    t.SetMatrix(m)
    f = vtkTransformPolyDataFilter()
    f.SetInputData(poly)
    f.SetTransform(t)
    f.Update()
    return f.GetOutput()


def lumen_thickness(mask: np.ndarray) -> np.ndarray:
    """A path-length proxy of a tubular silhouette: the chord of a circle of the local radius (the
    distance transform's), 0 outside, in pixels."""
    from scipy import ndimage

    d = ndimage.distance_transform_edt(mask > 0)
    radius = ndimage.maximum_filter(d, size=9)
    return 2.0 * np.sqrt(np.clip(radius ** 2 - (radius - d) ** 2, 0.0, None)) * (mask > 0)


def render_bold(mask: np.ndarray, rng) -> np.ndarray:
    """The ``bold`` style (uint16, 12 bits): a smooth bright background, the lumen darker with its
    thickness, one guidewire, mild blur and noise."""
    from scipy import ndimage

    rows, cols = mask.shape
    yy, xx = np.mgrid[0:rows, 0:cols] / max(rows, cols)
    background = 2800 + 600 * (xx - 0.5) * rng.uniform(-1, 1) + 500 * (yy - 0.5) * rng.uniform(-1, 1)
    background += ndimage.gaussian_filter(rng.normal(0, 1, mask.shape), 40) * 3000
    t = lumen_thickness(mask)
    image = background * np.exp(-rng.uniform(0.02, 0.04) * t)
    image *= 1.0 - 0.5 * _guidewire(mask, rng)
    image = ndimage.gaussian_filter(image, rng.uniform(0.6, 1.2)) + rng.normal(0, 25, mask.shape)
    return np.clip(image, 0, 4095).astype(np.uint16)


def render_angio(mask: np.ndarray, background: np.ndarray, rng) -> np.ndarray:
    """The ``angio`` style (uint8): the lumen composited multiplicatively onto a real X-ray frame
    (resized to the mask), with noise."""
    from PIL import Image
    from scipy import ndimage

    rows, cols = mask.shape
    bg = np.asarray(Image.fromarray(background).convert("L").resize((cols, rows), Image.BILINEAR), np.float32)
    t = lumen_thickness(mask)
    image = bg * np.exp(-rng.uniform(0.008, 0.02) * t)
    image = ndimage.gaussian_filter(image, 0.8) + rng.normal(0, 3, mask.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def _guidewire(mask: np.ndarray, rng) -> np.ndarray:
    """A thin smooth curve (0/1 float) running along the lumen and out of it: a device, not a vessel."""
    from scipy import ndimage

    rows, cols = mask.shape
    ys, xs = np.nonzero(mask)
    start = np.array([ys.mean(), xs.mean()]) if len(ys) else np.array([rows / 2, cols / 2])
    angle = rng.uniform(0, 2 * math.pi)
    pts, p = [], start.copy()
    for _ in range(int(1.5 * max(rows, cols))):
        angle += rng.normal(0, 0.05)
        p = p + np.array([math.sin(angle), math.cos(angle)])
        if not (0 <= p[0] < rows and 0 <= p[1] < cols):
            break
        pts.append(p.copy())
    wire = np.zeros(mask.shape, np.float32)
    if pts:
        q = np.minimum(np.round(np.asarray(pts)).astype(int), [rows - 1, cols - 1])
        wire[q[:, 0], q[:, 1]] = 1.0
    return np.clip(ndimage.gaussian_filter(wire, 0.8) * 4.0, 0, 1)


def generate_foreign(config: ForeignConfig, progress=None) -> Dict[str, object]:
    """Write the data set; returns its summary (frames, poses, styles, scale, notes). ``progress()`` per pose."""
    from ..projection import ProjectionRenderer

    config.validate()
    rng = np.random.default_rng(int(config.seed))
    poly, scale, notes = load_surfaces(config.meshes, config.scale)
    points = _points(poly)
    center = 0.5 * (np.asarray(poly.GetBounds()).reshape(3, 2).sum(axis=1))
    landmarks = farthest_points(points, N_LANDMARKS, rng)
    sample = points[rng.choice(len(points), size=min(3000, len(points)), replace=False)]
    backgrounds = _background_files(config.backgrounds) if config.backgrounds is not None else []
    out = Path(config.out)
    if out.exists() and config.overwrite:
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    rows: List[Dict[str, object]] = []
    with ProjectionRenderer(poly) as nominal_renderer:
        for k in range(config.poses):
            pose = rigid_pose(rng, center)
            geom = random_view(rng, center, config.size)
            with ProjectionRenderer(transform_polydata(poly, pose)) as true_renderer:
                true_mask = true_renderer.render(geom, with_depth=False).mask
            truth = {
                "pose": pose, "geometry": geom, "true_mask": true_mask,
                "nominal_mask": nominal_renderer.render(geom, with_depth=False).mask,
                "landmarks_px": project(geom, landmarks @ pose[:3, :3].T + pose[:3, 3]),
                "landmarks_nominal_px": project(geom, landmarks),
            }
            truth["affine"], truth["affine_rms_px"] = fit_affine(
                project(geom, sample), project(geom, sample @ pose[:3, :3].T + pose[:3, 3]))
            rows.extend(_write_case(out, f"F{k:03d}", poly, truth, config.styles, rng, backgrounds))
            if progress is not None:
                progress()
    _write_index(out, rows)
    summary = {"frames": len(rows), "poses": config.poses, "styles": list(config.styles), "scale": scale,
               "seed": config.seed, "size": config.size, "meshes": [str(m) for m in config.meshes], "notes": notes,
               "out": str(out)}
    (out / "foreign.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def _write_case(out: Path, case_id: str, poly, truth: Dict[str, object], styles: Sequence[str], rng,
                backgrounds: List[Path]) -> List[Dict[str, object]]:
    """One pose: ``model.vtk`` (the nominal surfaces), one single-frame series per style, the masks and
    ``case.json``; returns its index rows."""
    from PIL import Image

    from ..fluoro import write_fluoro_dicom
    from ..mesh import save_model

    folder = out / "cases" / case_id
    (folder / "masks").mkdir(parents=True, exist_ok=True)
    save_model(poly, folder / "model.vtk")
    geom, true_mask = truth["geometry"], truth["true_mask"]
    Image.fromarray(true_mask * 255).save(folder / "masks" / "true.png")
    Image.fromarray(truth["nominal_mask"] * 255).save(folder / "masks" / "nominal.png")
    rows, cols = true_mask.shape
    names = [f"L{i:02d}" for i in range(len(truth["landmarks_px"]))]
    frame_truth = {
        "index": 0, "mask": "masks/true.png", "affine": truth["affine"], "affine_rms_px": truth["affine_rms_px"],
        "landmarks_px": dict(zip(names, truth["landmarks_px"])),
        "landmarks_nominal_px": dict(zip(names, truth["landmarks_nominal_px"])),
        "landmarks_in_frame": [n for n, p in zip(names, truth["landmarks_px"]) if 0 <= p[0] < cols and 0 <= p[1] < rows],
    }
    geometry = {"primary_angle_deg": geom.primary_angle_deg, "secondary_angle_deg": geom.secondary_angle_deg,
                "sid_mm": geom.sid_mm, "sod_mm": geom.sod_mm, "imager_pixel_spacing_mm": list(geom.pixel_spacing_mm),
                "rows": rows, "cols": cols, "isocenter_lps": list(geom.isocenter_lps)}
    series, index_rows = [], []
    for n, style in enumerate(styles):
        if style == "bold":
            frame, bits = render_bold(true_mask, rng), 12
        else:
            frame, bits = render_angio(true_mask, np.asarray(Image.open(backgrounds[int(rng.integers(len(backgrounds)))])),
                                       rng), 8
        name = f"s{n:02d}"
        write_fluoro_dicom(folder / f"{style}.dcm", frame[None], geom, bits_stored=bits,
                           patient_name="Foreign^TAVIRegistration", patient_id=case_id,
                           series_description=f"foreign anatomy, {style} style")
        series.append({"series": name, "fov": "upper", "file": f"{style}.dcm", "cine": False, "style": style,
                       "geometry": geometry, "isocenter_lps": list(geom.isocenter_lps),
                       "pose": {"T_true": truth["pose"], "about": "isocenter_lps"}, "frames": [frame_truth]})
        rel = f"cases/{case_id}"
        index_rows.append({
            "patient": case_id, "split": "test", "fov": "upper", "series": name, "image": f"{rel}/{style}.dcm",
            "frame": 0, "mask": f"{rel}/masks/true.png", "projection_true": f"{rel}/masks/true.png",
            "projection_nominal": f"{rel}/masks/nominal.png", "case": f"{rel}/case.json",
            "affine": json.dumps(np.round(truth["affine"], 6).tolist()),
            "affine_rms_px": round(float(truth["affine_rms_px"]), 4), "opacified_px": int(true_mask.sum()),
            "rows": rows, "cols": cols, "primary_deg": geom.primary_angle_deg,
            "secondary_deg": geom.secondary_angle_deg, "sid_mm": geom.sid_mm, "sod_mm": geom.sod_mm,
            "pixel_spacing_mm": geom.pixel_spacing_mm[0],
            "isocenter_lps": ";".join(f"{c:.3f}" for c in geom.isocenter_lps), "cine": 0, "stage": "foreign",
            "style": style, "source": "foreign"})
    case = {"format": 1, "kind": "foreign", "case": case_id, "coordinate_system": "LPS", "units": "mm",
            "model": "model.vtk", "series": series}
    (folder / "case.json").write_text(json.dumps(strict_json(case), indent=1) + "\n")
    return index_rows


def _write_index(out: Path, rows: List[Dict[str, object]]) -> None:
    with open(out / "index.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(INDEX_COLUMNS))
        writer.writeheader()
        writer.writerows(rows)
