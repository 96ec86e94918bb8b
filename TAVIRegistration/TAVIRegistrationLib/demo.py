"""The built-in demo case (``tavireg demo``): one synthetic TAVI patient run through the pipeline.

``make_demo_case`` makes a small phantom case (``phantom.generate_dataset``, one patient, an
upper-FoV aortic-root frame) and returns the files a user would have: the pre-operative vessel
model and an XA DICOM frame, plus the C-arm isocentre and the ground truth. ``run_demo`` runs the
same pipeline object as the CLI, the viewer and the Slicer module on it, and writes pictures and a
Markdown report. The same case serves the viewer's ``--demo`` and the Slicer self-test.
"""

from __future__ import annotations

import csv
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

from .errors import InputError

DEMO_SEED = 7
DEMO_SIZE = 512


@dataclass
class DemoCase:
    directory: Path
    model_path: Path
    fluoro_path: Path
    frame_index: int
    isocenter_lps: Tuple[float, float, float]
    fov: str
    truth_mask_path: Path  # the vessel mask as opacified in the frame (0/255 PNG)
    truth_affine: np.ndarray  # nominal -> true projection, frame pixels (3x3)
    row: Dict[str, str] = field(default_factory=dict)


def make_demo_case(directory, seed: int = DEMO_SEED, frames: int = 4, size: int = DEMO_SIZE) -> DemoCase:
    """Make (or reuse, if already made with the same settings) the demo case in ``directory``."""
    from .phantom import PhantomConfig, generate_dataset

    directory = Path(directory)
    index = directory / "index.csv"
    stamp = directory / "demo.json"
    settings = {"seed": int(seed), "frames": int(frames), "size": int(size)}
    if not (index.exists() and stamp.exists() and json.loads(stamp.read_text()) == settings):
        config = PhantomConfig(out=directory, patients=1, seed=seed, frames_per_patient=frames,
                               size=size, upper_fraction=1.0, workers=1, overwrite=True)
        generate_dataset(config)
        stamp.write_text(json.dumps(settings))
    with open(index, newline="") as fh:
        rows = list(csv.DictReader(fh))
    upper = [r for r in rows if r["fov"] == "upper"] or rows
    if not upper:
        raise InputError(f"the demo case in {directory} has no frames")
    # the frame with the most contrast: the clearest picture for a first look
    row = max(upper, key=lambda r: int(r.get("opacified_px") or 0))
    affine = np.asarray(json.loads((directory / row["affine"]).read_text())["matrix"]
                        if row["affine"].endswith(".json") else json.loads(row["affine"]), dtype=float)
    return DemoCase(
        directory=directory,
        model_path=directory / Path(row["case"]).parent / "model.vtk",
        fluoro_path=directory / row["image"],
        frame_index=int(row["frame"]),
        isocenter_lps=tuple(float(v) for v in json.loads(row["isocenter_lps"])),
        fov=row["fov"],
        truth_mask_path=directory / row["mask"],
        truth_affine=affine.reshape(3, 3),
        row=row,
    )
