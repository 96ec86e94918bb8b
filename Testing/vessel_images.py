"""Tiny synthetic angiogram-like images for the segmentation tests: a bright background with one
dark curved 'vessel' and noise, and its mask; and a folder of them in the angios40 layout
(``N.png`` + ``N_gt.png``)."""

from pathlib import Path

import numpy as np
from PIL import Image


def vessel_image(rng, rows=64, cols=64):
    """(uint8 image, uint8 0/1 mask) of one curved dark vessel."""
    yy, xx = np.mgrid[0:rows, 0:cols]
    a, b, c = rng.uniform(-0.01, 0.01), rng.uniform(-0.5, 0.5), rng.uniform(rows * 0.3, rows * 0.7)
    centre = a * (xx - cols / 2) ** 2 + b * (xx - cols / 2) + c
    mask = np.abs(yy - centre) < rng.uniform(2, 4)
    img = 170 - 90 * mask + rng.normal(0, 8, (rows, cols))
    return np.clip(img, 0, 255).astype(np.uint8), mask.astype(np.uint8)


def write_vessel_folder(folder: Path, n=5, seed=0, rows=64, cols=64) -> Path:
    """``n`` image/mask pairs as ``1.png``/``1_gt.png`` ... in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(1, n + 1):
        img, mask = vessel_image(rng, rows, cols)
        Image.fromarray(img).save(folder / f"{i}.png")
        Image.fromarray(mask * 255).save(folder / f"{i}_gt.png")
    return folder
