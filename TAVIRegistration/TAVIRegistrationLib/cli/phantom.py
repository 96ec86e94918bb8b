"""``tavireg phantom``: synthetic TAVI cases (``synthetic.phantom``); ``tavireg foreign``: cases from a given
vessel surface (``synthetic.foreign``)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ..errors import InputError
from ..synthetic.foreign import STYLES, ForeignConfig, generate_foreign
from ..synthetic.phantom import PhantomConfig, default_real_dir, generate_dataset


def add_phantom_parser(sub) -> None:
    p = sub.add_parser("phantom", help="generate synthetic TAVI cases (model, XA DICOM frames, ground truth)")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--patients", type=int, default=10, help="number of patients (default 10)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0): same seed, same data")
    p.add_argument("--frames-per-patient", type=int, default=100, help="frames per patient (default 100)")
    p.add_argument("--workers", type=int, default=0, help="parallel processes (default: min(2, CPUs))")
    p.add_argument("--size", type=int, help="force square frames of this many pixels (default: clinical 512/1024)")
    p.add_argument("--contact-sheet", action="store_true",
                   help="also write contact_sheet.png (samples next to real angiograms)")
    p.add_argument("--real-dir", type=Path,
                   help="real angiograms for the contact sheet (default: ../shared/data/angios40 if present)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing data set in --out")
    p.add_argument("--json", action="store_true", help="print a JSON summary")


def run_phantom(args) -> int:
    from tqdm import tqdm

    real = args.real_dir
    if args.contact_sheet and real is None:
        real = default_real_dir()
    if real is not None and not Path(real).is_dir():
        raise InputError(f"--real-dir {real} is not a folder")
    cfg = PhantomConfig(out=args.out, patients=args.patients, seed=args.seed,
                        frames_per_patient=args.frames_per_patient, workers=args.workers,
                        contact_sheet=args.contact_sheet, real_dir=real, size=args.size,
                        overwrite=args.overwrite)
    cfg.validate()
    total = cfg.patients * cfg.frames_per_patient
    with tqdm(total=total, desc="phantom", unit="frame", file=sys.stderr, disable=None) as bar:
        summary = generate_dataset(cfg, progress=bar.update)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"{summary['frames']} frames of {summary['patients']} patients in {summary['seconds']} s "
              f"-> {summary['out']} (split: " + ", ".join(f"{k} {len(v)}" for k, v in summary['split'].items()) + ")")
    return 0




def add_foreign_parser(sub) -> None:
    p = sub.add_parser("foreign", help="registration cases from a given vessel surface (an anatomy the phantom "
                                       "did not draw), frames in other styles")
    p.add_argument("--mesh", type=Path, action="append", required=True,
                   help="vessel surface file (repeatable: the files are joined, e.g. a wall and its caps)")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--poses", type=int, default=6, help="true poses, each with its own C-arm view (default 6)")
    p.add_argument("--styles", default=",".join(STYLES), help=f"frame styles (default {','.join(STYLES)})")
    p.add_argument("--backgrounds", type=Path, help="real X-ray frames (N.png) for the angio style "
                                                    "(default: the real angiograms' train folder, when found)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0): same seed, same data")
    p.add_argument("--size", type=int, default=512, help="frame size in pixels (default 512)")
    p.add_argument("--scale", type=float, help="scale of the surfaces to mm (default: 1, or up to an adult "
                                               "aorta's size for a small model, with a note)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing data set in --out")
    p.add_argument("--json", action="store_true", help="print a JSON summary")


def run_foreign(args) -> int:
    from tqdm import tqdm

    backgrounds = args.backgrounds
    if backgrounds is None:
        real = default_real_dir()
        backgrounds = real / "train" if real is not None else None
    cfg = ForeignConfig(meshes=args.mesh, out=args.out, poses=args.poses,
                        styles=[s.strip() for s in args.styles.split(",") if s.strip()], seed=args.seed,
                        size=args.size, scale=args.scale, backgrounds=backgrounds, overwrite=args.overwrite)
    for mesh in cfg.meshes:
        if not Path(mesh).is_file():
            raise InputError(f"--mesh {mesh} does not exist")
    cfg.validate()
    with tqdm(total=cfg.poses, desc="foreign", unit="pose", file=sys.stderr, disable=None) as bar:
        summary = generate_foreign(cfg, progress=bar.update)
    for note in summary["notes"]:
        print(f"warning: {note}", file=sys.stderr)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"{summary['frames']} frames of {summary['poses']} poses ({', '.join(summary['styles'])}) -> {summary['out']}")
    return 0
