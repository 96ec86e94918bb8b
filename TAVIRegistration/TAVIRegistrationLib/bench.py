"""Benchmarks (``tavireg bench``): timings are measured here, never asserted in unit tests.

Each benchmark returns a JSON-serialisable dict with the machine it ran on, so figures reported in
issues and the README can be reproduced with the same command.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from typing import Dict, List, Optional, Sequence

import numpy as np


def machine_facts() -> Dict[str, object]:
    facts: Dict[str, object] = {
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
    }
    try:
        from vtkmodules.vtkCommonCore import vtkVersion

        facts["vtk"] = vtkVersion.GetVTKVersion()
    except ImportError:  # pragma: no cover
        pass
    return facts


def dense_sphere(n_triangles: int):
    """A closed sphere of radius 40 mm with about ``n_triangles`` triangles."""
    from vtkmodules.vtkFiltersSources import vtkSphereSource

    res = max(8, int(round((n_triangles / 2.0) ** 0.5)))
    s = vtkSphereSource()
    s.SetRadius(40.0)
    s.SetThetaResolution(res)
    s.SetPhiResolution(res + 2)
    s.Update()
    return s.GetOutput()


def _summary(samples: List[float]) -> Dict[str, float]:
    ms = [1000.0 * s for s in samples]
    return {
        "median_ms": statistics.median(ms),
        "p90_ms": float(np.percentile(ms, 90)),
        "min_ms": min(ms),
        "n": len(ms),
    }


def bench_projection(polydata=None, sizes: Sequence[int] = (512, 1024), repeats: int = 30,
                     with_depth: bool = False, progress=None) -> Dict[str, object]:
    """Median render + z-buffer read-back time of a model at each detector size.

    The angles change between repeats (as between cine frames), so nothing is served from a cache.
    """
    from .geometry import CArmGeometry
    from .projection import ProjectionRenderer

    if polydata is None:
        polydata = dense_sphere(200_000)
    result: Dict[str, object] = {
        "benchmark": "projection",
        "triangles": int(polydata.GetNumberOfCells()),
        "with_depth": with_depth,
        "machine": machine_facts(),
        "sizes": {},
    }
    with ProjectionRenderer(polydata) as renderer:
        for size in sizes:
            spacing = 0.3 * 512.0 / size  # same detector, finer pixels
            times = []
            for i in range(repeats + 2):
                g = CArmGeometry(-30 + 2.0 * i, 10 - 0.5 * i, 1000, 750, (spacing, spacing), size, size)
                t0 = time.perf_counter()
                proj = renderer.render(g, with_depth=with_depth)
                dt = time.perf_counter() - t0
                if i >= 2:  # the first renders of a size allocate buffers and compile shaders
                    times.append(dt)
                if progress is not None:
                    progress()
            assert proj.mask.any()
            result["sizes"][str(size)] = _summary(times)
    return result
