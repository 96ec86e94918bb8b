"""Pack a case index for carrying: its training frames pre-processed at the network's size.

``tavireg train-seg`` keeps every frame at ``--size`` anyway; this writes that form (8-bit grey images of
``segmentation.preprocess``'s output, 0/255 masks at the same size) as a new case index, so a data set
of DICOM runs (about a gigabyte for ten phantom patients) travels to a training machine as a few tens
of megabytes. The packed index trains like the source (``train-seg --data NEW.csv``).

    .venv/bin/python tools/pack_seg.py INDEX.csv --out NEW.csv [--all-train] [--format jpeg|png]
                                       [--jpeg-quality Q] [--size PX] [--quiet]

Bad input: one ``error:`` line and exit status 2, nothing written.
"""

import argparse
import csv
import hashlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "TAVIRegistration"))

from TAVIRegistrationLib.errors import InputError  # noqa: E402
from TAVIRegistrationLib.reproduce import command_text  # noqa: E402
from TAVIRegistrationLib.training.seg import TrainConfig, case_rows, check_size  # noqa: E402

#: JPEG quality of ``pack_case_index``'s frames (errors of about one grey level, well below the
#: training noise augmentation; files about 20 % smaller than PNG)
PACK_JPEG_QUALITY = 97


def pack_case_index(csv_path: Path, out_csv: Path, size: int = 256, image_format: str = "jpeg",
                    all_train: bool = False, command: str = "", progress: bool = False,
                    jpeg_quality: int = PACK_JPEG_QUALITY) -> Dict[str, Any]:
    """The training rows of a case index, pre-processed at the network's size, as a new case index.

    ``tavireg train-seg`` keeps every frame at ``size`` anyway; this writes that form (8-bit grey images of
    ``segmentation.preprocess``'s output, 0/255 masks at the same size) to ``out_csv`` and a folder
    of the same name beside it, so a data set of DICOM runs (a gigabyte for ten phantom patients)
    travels to a GPU machine as a few tens of megabytes. ``test`` rows are not packed (``evaluate``
    reads the original frames). ``all_train`` marks every packed row ``train`` (a data set used
    only to train); else each row keeps its split. ``out_csv.json`` records the source (path and
    SHA256), the options and ``command``. Nothing is left behind on failure; an existing output is
    refused. ``jpeg_quality`` (50-100) trades size for fidelity: 90 makes the files about 45 % smaller
    than 97 for a mean error of about 0.005 more on the 0-1 scale. Returns that record.
    """
    csv_path, out_csv = Path(csv_path), Path(out_csv)
    if image_format not in ("jpeg", "png"):
        raise InputError(f"--format must be jpeg or png, got {image_format!r}")
    if not 50 <= int(jpeg_quality) <= 100:
        raise InputError(f"--jpeg-quality must be 50-100, got {jpeg_quality}")
    check_size(size)
    if not csv_path.is_file():
        raise InputError(f"case index {csv_path} does not exist")
    if out_csv.suffix.lower() != ".csv":
        raise InputError(f"--out must name a .csv file, got {out_csv.name}")
    folder, record_path = out_csv.with_suffix(""), out_csv.with_name(out_csv.name + ".json")
    for p in (out_csv, folder, record_path):
        if p.exists():
            raise InputError(f"{p} already exists; choose another --out")
    if not out_csv.parent.is_dir():
        raise InputError(f"folder {out_csv.parent} does not exist")
    rows, n_rows, skipped = case_rows(csv_path, size)
    if n_rows == 0:
        raise InputError(f"{csv_path.name} has no rows to pack (only test rows)")
    ext = "jpg" if image_format == "jpeg" else "png"
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_csv.stem}.", suffix=".part", dir=out_csv.parent))
    try:
        frames = tmp / folder.name
        frames.mkdir()
        lines = [["patient", "split", "fov", "image", "frame", "mask"]]
        if progress:
            from tqdm import tqdm

            rows = tqdm(rows, total=n_rows, desc="pack", unit="frame", file=sys.stderr, dynamic_ncols=True)
        for i, (row, fov, x, m, _) in enumerate(rows):
            image_name, mask_name = f"{folder.name}/{i:05d}.{ext}", f"{folder.name}/{i:05d}_mask.png"
            grey = Image.fromarray(np.round(x * 255.0).astype(np.uint8))
            if ext == "jpg":
                grey.save(tmp / image_name, quality=int(jpeg_quality))
            else:
                grey.save(tmp / image_name, optimize=True)
            Image.fromarray((m * 255).astype(np.uint8)).save(tmp / mask_name, optimize=True)
            lines.append([row.values["patient"], "train" if all_train else row.split, fov, image_name, "",
                          mask_name])
        with open(tmp / out_csv.name, "w", newline="", encoding="utf-8") as fh:
            csv.writer(fh).writerows(lines)
        record = {
            "source": str(csv_path.resolve()),
            "source_sha256": hashlib.sha256(csv_path.read_bytes()).hexdigest(),
            "rows": n_rows,
            "test_rows_skipped": skipped,
            "size": size,
            "format": image_format,
            "jpeg_quality": int(jpeg_quality) if image_format == "jpeg" else None,
            "all_train": all_train,
            "preprocessing": "segmentation.preprocess at size x size, then round(255 x) as 8-bit grey",
            "command": command,
        }
        (tmp / record_path.name).write_text(json.dumps(record, indent=1) + "\n")
        os.replace(tmp / folder.name, folder)
        os.replace(tmp / record_path.name, record_path)
        os.replace(tmp / out_csv.name, out_csv)  # last: the index appears only when all it names is there
    except BaseException:
        for p in (folder, record_path):
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            elif p.exists():
                p.unlink()
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return record


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # usage errors as one line, exit status 2
        raise InputError(message)


def main(argv=None) -> int:
    p = _Parser(prog="pack_seg.py", description=__doc__.split("\n\n")[0])
    p.add_argument("index", type=Path, metavar="INDEX.csv", help="case index CSV (phantom or your own)")
    p.add_argument("--out", type=Path, required=True, metavar="NEW.csv",
                   help="the new case index; its frames go to the folder NEW/ beside it, a record to NEW.csv.json")
    p.add_argument("--size", type=int, default=TrainConfig.size, help="frame size (default: the network's, 256)")
    p.add_argument("--format", dest="image_format", choices=("jpeg", "png"), default="jpeg",
                   help="frames as JPEG (default) or lossless PNG")
    p.add_argument("--jpeg-quality", type=int, default=PACK_JPEG_QUALITY,
                   help=f"JPEG quality, 50-100 (default {PACK_JPEG_QUALITY}; 90: files about 45 %% smaller, a mean "
                        "error about 0.005 larger on the 0-1 scale)")
    p.add_argument("--all-train", action="store_true",
                   help="mark every packed row as training (else each keeps its split; test rows are never packed)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    try:
        args = p.parse_args(argv)
        command = command_text(["python", "tools/pack_seg.py", args.index, "--out", args.out, "--size", args.size,
                                "--format", args.image_format]
                               + (["--jpeg-quality", args.jpeg_quality] if args.image_format == "jpeg" else [])
                               + (["--all-train"] if args.all_train else []))
        rec = pack_case_index(args.index, args.out, args.size, args.image_format, args.all_train,
                              command=command, progress=not args.quiet, jpeg_quality=args.jpeg_quality)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"packed {rec['rows']} frames of {args.index.name} ({rec['test_rows_skipped']} test rows left out) "
          f"at {rec['size']} px to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
