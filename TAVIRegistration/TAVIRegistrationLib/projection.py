"""Projection of the surface model onto a fluoroscopy frame: VTK offscreen rendering.

The VTK camera is built from the same ``CArmGeometry`` as the 3x4 matrix in ``geometry`` and the
two agree (tested: projected vertices fall on the rendered silhouette within a pixel):

* the camera sits at the X-ray source and looks along ``d`` (isocentre -> detector);
* its vertical view angle spans the detector height, ``2 atan(rows * row_spacing / 2 / SID)``,
  and an explicit aspect ratio covers non-square detector pixels;
* its view-up is ``v`` (the image row direction, toward the feet at AP). VTK's screen-right is then
  ``dop x up = d x v = u``, the image column direction, and VTK's frame buffer, whose first row is
  the bottom of the window, i.e. the most ``-v`` side, already is an image with row 0 on top in our
  convention: no flip is needed.

One z-buffer read gives both the binary silhouette (z < 1) and the depth image (distance from the
source along the central ray, mm). ``ProjectionRenderer`` keeps one render window for many frames.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from dataclasses import dataclass
from typing import Optional

import numpy as np

from .errors import InputError
from .geometry import CArmGeometry, projection_matrix

_PROBE_LOCK = threading.Lock()
_PROBE_RESULT: Optional[str] = None  # "" = rendering works; else the reason it does not


def _configure_offscreen_backend() -> None:
    """Prefer EGL on headless Linux (the PyPI VTK wheel renders through it), unless set already."""
    if sys.platform.startswith("linux") and "slicer" not in sys.modules:
        os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")


def probe_rendering() -> None:
    """Check once per process, in a child process, that offscreen OpenGL rendering works.

    A missing GL/EGL library makes VTK segfault instead of raising; the child takes the crash and
    this raises ``RuntimeError`` with a message saying what to install.
    """
    global _PROBE_RESULT
    if "slicer" in sys.modules or os.environ.get("TAVIREG_RENDER_PROBED") == "1":
        return
    with _PROBE_LOCK:
        if _PROBE_RESULT is None:
            _configure_offscreen_backend()
            code = "from TAVIRegistrationLib.projection import _probe_child; _probe_child()"
            env = dict(os.environ)
            pkg_parent = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
            env["PYTHONPATH"] = pkg_parent + os.pathsep + env.get("PYTHONPATH", "")
            try:
                proc = subprocess.run(
                    [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
                )
                ok = proc.returncode == 0 and "RENDER-OK" in proc.stdout
                detail = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
            except (OSError, subprocess.TimeoutExpired) as exc:
                ok, detail = False, str(exc)
            _PROBE_RESULT = "" if ok else detail
            if ok:
                os.environ["TAVIREG_RENDER_PROBED"] = "1"  # children inherit the answer
    if _PROBE_RESULT:
        raise RuntimeError(
            "offscreen VTK rendering does not work on this machine "
            f"({_PROBE_RESULT}); on Debian/Ubuntu install libegl1 and libgl1-mesa-dri, or set "
            "VTK_DEFAULT_OPENGL_WINDOW to a render window class that works here"
        )


def _probe_child() -> None:
    win = _new_render_window(8, 8)
    win.Render()
    print("RENDER-OK", win.GetClassName())


def _new_render_window(cols: int, rows: int):
    _configure_offscreen_backend()
    import vtkmodules.vtkRenderingOpenGL2  # noqa: F401  (registers the OpenGL factory overrides)
    from vtkmodules.vtkRenderingCore import vtkRenderer, vtkRenderWindow

    win = vtkRenderWindow()
    win.SetOffScreenRendering(1)
    win.SetMultiSamples(0)  # no multisampling: sharp, exact silhouettes
    win.SetSize(int(cols), int(rows))
    ren = vtkRenderer()
    ren.SetBackground(0.0, 0.0, 0.0)
    win.AddRenderer(ren)
    return win


@dataclass
class Projection:
    """The model's projection on one frame.

    ``mask``: uint8 0/1 (rows, cols), the binary silhouette. ``depth_mm``: float32 (rows, cols),
    distance from the source along the central ray to the nearest surface, NaN where the model is
    absent (None when not asked for). ``matrix``: the 3x4 projection matrix used. ``canvas``: the
    silhouette on a detector ``pad`` pixels larger on every side (frame pixel (x, y) is canvas pixel
    (x + pad, y + pad)), where the pipeline renders it: the part of the model outside the frame,
    which a registration may bring into it.
    """

    mask: np.ndarray
    depth_mm: Optional[np.ndarray]
    matrix: np.ndarray
    geometry: CArmGeometry
    orthographic: bool = False
    canvas: Optional[np.ndarray] = None
    pad: int = 0

    @property
    def area_px(self) -> int:
        return int(self.mask.sum())

    def depth_display(self) -> np.ndarray:
        """uint8 picture of the depth (near = bright), black background: for display only."""
        out = np.zeros(self.mask.shape, np.uint8)
        if self.depth_mm is None or not self.mask.any():
            return out
        d = self.depth_mm[self.mask > 0]
        lo, hi = float(d.min()), float(d.max())
        scale = 200.0 / (hi - lo) if hi > lo else 0.0
        out[self.mask > 0] = (255.0 - (d - lo) * scale).astype(np.uint8)
        return out


class ProjectionRenderer:
    """Renders one surface model under many C-arm geometries, reusing one offscreen window."""

    def __init__(self, polydata):
        probe_rendering()
        _configure_offscreen_backend()
        # The OpenGL module must be imported before the mapper is made: its factory overrides
        # turn vtkPolyDataMapper into the OpenGL mapper (without it the mapper draws nothing).
        import vtkmodules.vtkRenderingOpenGL2  # noqa: F401
        from vtkmodules.vtkRenderingCore import vtkActor, vtkPolyDataMapper

        if polydata is None or polydata.GetNumberOfCells() == 0:
            raise InputError("the surface model is empty: nothing to project")
        self._polydata = polydata
        self._win = None
        mapper = vtkPolyDataMapper()
        mapper.SetInputData(polydata)
        mapper.ScalarVisibilityOff()
        self._actor = vtkActor()
        self._actor.SetMapper(mapper)
        prop = self._actor.GetProperty()
        prop.LightingOff()
        prop.SetColor(1.0, 1.0, 1.0)
        prop.BackfaceCullingOff()
        self._size = None

    def _window(self, cols: int, rows: int):
        if self._win is None:
            self._win = _new_render_window(cols, rows)
            self._ren = self._win.GetRenderers().GetFirstRenderer()
            self._ren.AddActor(self._actor)
            self._size = (cols, rows)
        elif self._size != (cols, rows):
            self._win.SetSize(cols, rows)
            self._size = (cols, rows)
        return self._win

    def render(self, geom: CArmGeometry, orthographic: bool = False, with_depth: bool = True) -> Projection:
        import math

        from vtkmodules.util.numpy_support import vtk_to_numpy
        from vtkmodules.vtkCommonCore import vtkFloatArray

        rows, cols = int(geom.rows), int(geom.cols)
        win = self._window(cols, rows)
        ren = self._ren
        cam = ren.GetActiveCamera()
        u, v, d = geom.axes()
        pr, pc = geom.pixel_spacing_mm
        src = geom.source_lps
        cam.SetPosition(*src)
        cam.SetFocalPoint(*(src + geom.sid_mm * d))
        cam.SetViewUp(*v)
        cam.SetUseExplicitAspectRatio(True)
        cam.SetExplicitAspectRatio((cols * pc) / (rows * pr))
        if orthographic:
            cam.ParallelProjectionOn()
            cam.SetParallelScale(rows * pr / 2.0 / geom.magnification)
        else:
            cam.ParallelProjectionOff()
            cam.SetViewAngle(math.degrees(2.0 * math.atan(rows * pr / 2.0 / geom.sid_mm)))
        near, far = self._clipping_range(src, d)
        cam.SetClippingRange(near, far)
        win.Render()
        zbuf = vtkFloatArray()
        win.GetZbufferData(0, 0, cols - 1, rows - 1, zbuf)
        z = vtk_to_numpy(zbuf).reshape(rows, cols)
        inside = z < 1.0
        mask = inside.astype(np.uint8)
        depth = None
        if with_depth:
            depth = np.full((rows, cols), np.nan, np.float32)
            zi = z[inside].astype(np.float64)
            if orthographic:
                depth[inside] = near + zi * (far - near)
            else:
                ndc = 2.0 * zi - 1.0
                depth[inside] = 2.0 * near * far / ((far + near) - ndc * (far - near))
        return Projection(mask, depth, projection_matrix(geom, orthographic), geom, orthographic)

    def _clipping_range(self, src: np.ndarray, d: np.ndarray):
        """Near/far planes that enclose the model's bounding box, seen from the source."""
        b = self._polydata.GetBounds()
        corners = np.array([[x, y, z] for x in b[0:2] for y in b[2:4] for z in b[4:6]])
        depths = (corners - src) @ d
        lo, hi = float(depths.min()), float(depths.max())
        if hi <= 1.0:
            raise InputError("the surface model lies behind the X-ray source for this geometry")
        pad = 0.01 * (hi - lo) + 1.0
        near = max(lo - pad, 1.0, hi * 1e-4)
        return near, hi + pad

    def close(self) -> None:
        if self._win is not None:
            self._win.Finalize()
            self._win = None

    def __enter__(self) -> "ProjectionRenderer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def render_with_canvas(renderer: "ProjectionRenderer", geom: CArmGeometry, pad: int, orthographic: bool = False,
                       with_depth: bool = True) -> Projection:
    """``renderer.render`` on a detector ``pad`` pixels larger on every side (the same pixel spacing and
    centre), cropped to the frame: the frame's projection, with the whole of it as ``canvas``."""
    from dataclasses import replace

    rows, cols, pad = int(geom.rows), int(geom.cols), int(pad)
    big = renderer.render(replace(geom, rows=rows + 2 * pad, cols=cols + 2 * pad), orthographic, with_depth)
    crop = (slice(pad, pad + rows), slice(pad, pad + cols))
    depth = None if big.depth_mm is None else big.depth_mm[crop].copy()
    return Projection(big.mask[crop].copy(), depth, projection_matrix(geom, orthographic), geom, orthographic,
                      canvas=big.mask, pad=pad)


def render_projection(polydata, geom: CArmGeometry, orthographic: bool = False, with_depth: bool = True) -> Projection:
    """One-off projection of ``polydata`` (LPS mm) under ``geom``."""
    with ProjectionRenderer(polydata) as r:
        return r.render(geom, orthographic=orthographic, with_depth=with_depth)
