"""``tavireg train-seg`` and ``train-reg``: the trainers' options (the training itself is in
``training``; ``TrainingConfig.from_args`` turns the options into a configuration)."""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import fields
from pathlib import Path
from typing import Any, Callable, Dict, Tuple

from ..training import reg as reg_training
from ..training import seg as seg_training


def pair_of_floats(text: str) -> Tuple[float, float]:
    """argparse type of ``LO,HI`` options (``--scale-range``)."""
    try:
        a, b = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LO,HI, got {text!r}") from None
    return a, b


def add_common_training_arguments(p, config_cls) -> None:
    """The options of ``TrainingConfig`` (defaults from ``config_cls``), ``--quiet`` and ``--json``."""
    default = {f.name: f.default for f in fields(config_cls)}
    p.add_argument("--out", type=Path, required=True, help="folder for checkpoints and the training history")
    p.add_argument("--epochs", type=int, default=default["epochs"],
                   help="planned epochs (the learning-rate schedule spans them)")
    p.add_argument("--batch-size", type=int, default=default["batch_size"],
                   help="global batch size (split across torchrun processes)")
    p.add_argument("--lr", type=float, default=default["lr"], help="AdamW learning rate")
    p.add_argument("--weight-decay", type=float, default=default["weight_decay"], help="AdamW weight decay")
    p.add_argument("--seed", type=int, default=default["seed"])
    p.add_argument("--split-seed", type=int,
                   help="seed of the validation split of data sets without a split of their own (default: --seed); "
                        "runs that vary only --seed then validate on the same patients")
    p.add_argument("--size", type=int, default=default["size"], help=f"network input size (default {default['size']})")
    p.add_argument("--val-fraction", type=float, default=default["val_fraction"],
                   help="share of patients held out for validation")
    p.add_argument("--val-fold", metavar="K/N",
                   help="cross-validation: hold out the K-th of N seeded folds of each data set's patients (those "
                        "without a split of their own) instead of --val-fraction; N runs with K = 1..N validate "
                        "on every patient once")
    p.add_argument("--device", default=default["device"], help="auto (cuda when available), cpu, cuda or cuda:N")
    p.add_argument("--max-minutes", type=float, help="stop before an epoch that would end after this many minutes")
    p.add_argument("--stop-epoch", type=int, help="stop after this epoch (keeps the schedule of --epochs)")
    p.add_argument("--resume", nargs="?", const="last", metavar="CHECKPOINT",
                   help="continue from OUT/last.pt (or the given checkpoint)")
    p.add_argument("--init", metavar="CHECKPOINT|MODEL", action="append",
                   help="start from these weights (fine-tuning) instead of a random initialisation: a checkpoint "
                        "of this trainer (best.pt, last.pt) or an installed model's manifest name; the optimiser "
                        "and schedule start afresh, the manifest records the file's SHA256. Repeated: the mean of "
                        "the networks' weights (a model soup; for networks fine-tuned from one another). With "
                        "--epochs 0 nothing is trained: the starting weights are validated and exported")
    p.add_argument("--export", metavar="NAME", help="export the best weights as NAME.pt with a manifest entry")
    p.add_argument("--export-dir", type=Path, help="where to export (default: Resources/Models or $TAVIREG_MODELS_DIR)")
    p.add_argument("--workers", type=int, default=0,
                   help="worker processes preparing batches beside the training process (train-reg; default 0; "
                        "the batches, and so the weights, are the same for any number)")
    p.add_argument("--threads", type=int,
                   help="torch threads of the training process (default: torch's; on a busy 2-core machine 1 "
                        "is often several times faster than 2)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or per-epoch lines")
    p.add_argument("--json", action="store_true", help="print a JSON summary")


def run_command(args, config_cls, train: Callable[[Any], Dict[str, Any]]) -> int:
    """A trainer's CLI command: train, then (rank 0, ``--json``) print the summary."""
    from ..networks.weights import json_default

    summary = train(config_cls.from_args(args))
    if args.json and int(os.environ.get("RANK", "0") or 0) == 0:
        s = dict(summary)
        if "export" in s:
            s["export"] = {k: v for k, v in s["export"].items() if k != "entry"}
        print(json.dumps(s, indent=2, default=json_default))
    return 0


def add_train_seg_parser(sub) -> None:
    p = sub.add_parser("train-seg", help="train the DRU-Net vessel segmentation and export TorchScript weights")
    p.add_argument("--data", action="append", required=True, metavar="PATH",
                   help="folder of N.png + N_gt.png pairs, or a case index CSV (repeatable)")
    p.add_argument("--base-channels", type=int, default=8, help="network width (8-16 for CPU use)")
    p.add_argument("--loss", choices=seg_training.LOSSES, default="per-fov",
                   help="per-fov: BCE for upper, Dice for lower frames (the paper); or dice, bce, combined")
    p.add_argument("--folder-fov", choices=seg_training.FOLDER_FOVS, default="upper",
                   help="FoV of image/mask folders (default upper); unknown: header-less images, as `segment` "
                        "treats them, with a threshold of their own chosen on them")
    p.add_argument("--val-data", action="append", metavar="PATH",
                   help="a folder or case index that only validates: every frame of it (test rows included) "
                        "validates, none trains (repeatable)")
    p.add_argument("--no-augment", dest="augment", action="store_false", help="switch augmentation off")
    p.add_argument("--crop", type=int, default=0, metavar="N",
                   help="train on random N x N windows of the augmented frames (about (size/N)^2 times faster "
                        "per step; 0: whole frames); validation always sees whole frames")
    p.add_argument("--scale-range", type=pair_of_floats, default=seg_training.TrainConfig.scale_range, metavar="LO,HI",
                   help="zoom of the random affine augmentation, uniform in LO-HI (default 0.9,1.1; above 1 "
                        "zooms in, drawing vessels wider than the frames show them)")
    p.add_argument("--restyle", type=float, default=0.0, metavar="P",
                   help="share of the training frames drawn anew around their vessel masks: another frame's "
                        "background with its vessels painted out, the lumen from faint to dense, devices, "
                        "shutters, gamma, noise, bit depth; a fifth of them without contrast, with an empty "
                        "mask (default 0)")
    add_common_training_arguments(p, seg_training.TrainConfig)


def run_train_seg(args) -> int:
    return run_command(args, seg_training.TrainConfig, seg_training.train)


def _int_list(text: str) -> Tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def add_train_reg_parser(sub) -> None:
    p = sub.add_parser("train-reg", help="train the registration CNN (no ground-truth transforms) and export TorchScript")
    p.add_argument("--data", action="append", required=True, metavar="PATH",
                   help="folder of vessel masks (*_gt.png, else *.png), phantom case index CSV, or synthetic:COUNT "
                        "(repeatable)")
    p.add_argument("--pairs-per-epoch", type=int, default=256, help="random pairs per epoch (default 256)")
    p.add_argument("--width", type=float, default=1.0, help="filters = Fig. 4's times this (default 1)")
    p.add_argument("--fc", type=int, default=1024, help="units of the first fully connected layer (default 1024)")
    p.add_argument("--pool-after", type=_int_list, metavar="N,N,...",
                   help="convolutions (1-9) followed by 2x2 max-pooling (default 1,3,5,7,9; the paper's 3,5,7,9 "
                        "is about 4x slower; each pooling added early quarters the work of the layers after it)")
    p.add_argument("--segment-fixed", action="store_true",
                   help="segment the phantom index's frames with the installed DRU-Net (cached under OUT/segmentations) "
                        "and use them as the fixed image of half of those pairs")
    p.add_argument("--margin", type=float, default=reg_training.DEFAULT_MARGIN,
                   help="registration window margin, a fraction of the ROI's longer side per side (default 0.3)")
    p.add_argument("--val-pairs", type=int, default=4, help="seeded validation pairs per validation patient")
    p.add_argument("--sub-roi", type=float, default=0.5, help="probability of a random sub-ROI (default 0.5)")
    p.add_argument("--corrupt", type=float, default=0.8,
                   help="probability of DRU-Net-like corruption of the fixed mask (default 0.8)")
    p.add_argument("--max-rotation", type=float, default=10.0, help="random rotation, +- degrees (default 10)")
    p.add_argument("--scale-range", type=pair_of_floats, default=(0.85, 1.15), metavar="LO,HI",
                   help="random scale range (default 0.85,1.15)")
    p.add_argument("--max-shear", type=float, default=0.05, help="random shear, +- (default 0.05)")
    p.add_argument("--max-shift", type=float, default=0.2, help="random shift, +- fraction of the window (default 0.2)")
    add_common_training_arguments(p, reg_training.RegTrainConfig)


def run_train_reg(args) -> int:
    return run_command(args, reg_training.RegTrainConfig, reg_training.train)
