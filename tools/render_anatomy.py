"""Render a synthetic anatomy's lumen surface offscreen, to look at (not a test).

    .venv/bin/python tools/render_anatomy.py --seed 3 --out /tmp/anatomy
    -> /tmp/anatomy_front.png (camera anterior, looking posterior; patient left on image right)
       /tmp/anatomy_side.png  (camera at the patient's left, looking right; anterior on image left)

``--deformed`` renders the intra-operative state in red over the pre-operative one in grey;
``--region upper|lower`` restricts the surface; ``--landmarks`` draws the landmarks as spheres.
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")

import numpy as np  # noqa: E402
import vtk  # noqa: E402

from TAVIRegistrationLib.synthetic.anatomy import anatomy_surface, deform_anatomy, generate_anatomy  # noqa: E402


def _actor(poly, color, opacity=1.0):
    mapper = vtk.vtkPolyDataMapper()
    mapper.SetInputData(poly)
    mapper.ScalarVisibilityOff()
    actor = vtk.vtkActor()
    actor.SetMapper(mapper)
    actor.GetProperty().SetColor(*color)
    actor.GetProperty().SetOpacity(opacity)
    actor.GetProperty().SetSpecular(0.3)
    return actor


def _landmark_actors(anatomy, radius=3.0):
    actors = []
    for name, p in anatomy.landmarks.items():
        src = vtk.vtkSphereSource()
        src.SetCenter(*p)
        src.SetRadius(radius)
        src.Update()
        color = (0.1, 0.3, 1.0) if "coronary" in name else (1.0, 0.8, 0.0)
        actors.append(_actor(src.GetOutput(), color))
    return actors


def render_views(actors, out_prefix: str, size=(700, 1000)) -> list:
    """Render ``actors`` from the front and from the patient's left; returns the PNG paths."""
    ren = vtk.vtkRenderer()
    ren.SetBackground(1.0, 1.0, 1.0)
    for a in actors:
        ren.AddActor(a)
    win = vtk.vtkRenderWindow()
    win.SetOffScreenRendering(1)
    win.SetMultiSamples(0)
    win.SetSize(*size)
    win.AddRenderer(ren)
    ren.ResetCamera()
    bounds = np.array(ren.ComputeVisiblePropBounds()).reshape(3, 2)
    centre = bounds.mean(axis=1)
    extent = float(np.max(bounds[:, 1] - bounds[:, 0]))
    paths = []
    # LPS: anterior = -y, patient left = +x, head = +z
    for view, direction in (("front", (0.0, -1.0, 0.0)), ("side", (1.0, 0.0, 0.0))):
        cam = ren.GetActiveCamera()
        cam.SetFocalPoint(*centre)
        cam.SetPosition(*(centre + 4.0 * extent * np.asarray(direction)))
        cam.SetViewUp(0.0, 0.0, 1.0)
        cam.SetParallelProjection(True)
        cam.SetParallelScale(0.55 * (bounds[2, 1] - bounds[2, 0]))
        ren.ResetCameraClippingRange()
        win.Render()
        grab = vtk.vtkWindowToImageFilter()
        grab.SetInput(win)
        grab.ShouldRerenderOff()
        grab.ReadFrontBufferOff()
        grab.Update()
        writer = vtk.vtkPNGWriter()
        path = f"{out_prefix}_{view}.png"
        writer.SetFileName(path)
        writer.SetInputData(grab.GetOutput())
        writer.Write()
        paths.append(path)
    return paths


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--voxel", type=float, default=1.0, help="voxel size in mm")
    ap.add_argument("--region", default=None, choices=["upper", "lower"])
    ap.add_argument("--deformed", action="store_true", help="overlay the intra-operative state")
    ap.add_argument("--landmarks", action="store_true")
    ap.add_argument("--out", default="/tmp/anatomy", help="output prefix")
    args = ap.parse_args(argv)
    anatomy = generate_anatomy(args.seed)
    timings: dict = {}
    surface = anatomy_surface(anatomy, args.voxel, args.region, timings=timings)
    print(f"seed {args.seed}: {timings['triangles']} triangles, {timings['total_s']:.2f} s "
          f"(field {timings['field_s']:.2f} s, {timings['voxels'] / 1e6:.1f} M voxels)")
    actors = [_actor(surface, (0.85, 0.85, 0.85) if args.deformed else (0.9, 0.35, 0.3),
                     0.45 if args.deformed else 1.0)]
    if args.deformed:
        moved = deform_anatomy(anatomy, args.seed)
        actors.append(_actor(anatomy_surface(moved, args.voxel, args.region), (0.9, 0.2, 0.2)))
        print("deformation:", moved.params["deformation"])
    if args.landmarks:
        actors += _landmark_actors(anatomy)
    for p in render_views(actors, args.out):
        print(p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
