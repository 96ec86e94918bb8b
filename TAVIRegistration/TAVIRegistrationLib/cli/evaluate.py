"""``tavireg evaluate seg`` and ``tavireg evaluate reg``: held-out evaluation of the segmentation and
registration networks (the evaluation itself is in ``evaluation.seg`` and ``evaluation.reg``)."""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import sys
from pathlib import Path
from typing import Callable, Dict, List, Optional

from ..errors import InputError
from ..evaluation import reg as reg_eval
from ..evaluation import seg as seg_eval
from ..export import strict_json
from ..reproduce import command_text
def add_evaluate_parser(sub) -> None:
    """``tavireg evaluate {seg,reg}``."""
    p = sub.add_parser("evaluate", help="held-out evaluation: segmentation (seg) or registration (reg)")
    subsub = p.add_subparsers(dest="evaluate_what", metavar="WHAT", parser_class=type(p))
    subsub.required = True
    _add_seg(subsub)
    _add_reg(subsub)


def _add_seg(subsub) -> None:
    p = subsub.add_parser(
        "seg", help="DRU-Net vs a Frangi baseline: DSC/precision/recall table, box plots, TP/FP/FN samples",
        description="Evaluate vessel segmentation on held-out data: the installed DRU-Net and the Frangi "
                    "vesselness baseline (threshold chosen on --frangi-train training data only). Case index "
                    "CSVs: only split == test rows (see --split); image-mask folders: all pairs, FoV upper.")
    p.add_argument("--data", action="append", required=True, metavar="INDEX.csv|DIR",
                   help="evaluation data (repeatable): a case index CSV (its test rows) or a folder of "
                        "N.png + N_gt.png pairs")
    p.add_argument("--pool", metavar="LABEL",
                   help="also report the case indices' frames together as one data set LABEL (rows of table.csv "
                        "and the goal check; each patient still drawn whole by the bootstrap), e.g. every "
                        "held-out phantom patient")
    p.add_argument("--split", choices=seg_eval.EVAL_SPLITS, action="append",
                   help="rows of which split of each case index (default test, the held-out patients; val or "
                        "train serve choices made on training data; all: every row, for a data set generated "
                        "only to evaluate on); once for every --data, or once per --data in their order")
    from .common import add_network_argument

    add_network_argument(p, "manifest name of the DRU-Net weights (default: the installed segmentation network)")
    p.add_argument("--frangi-train", action="append", default=[], metavar="INDEX.csv|DIR",
                   help="training data for the Frangi threshold (repeatable): a case index CSV (its train rows) "
                        "or a folder of N.png + N_gt.png pairs; without it the baseline is skipped")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--max-frames", type=int, metavar="N",
                   help="evaluate at most N frames per data set (evenly spaced; default all)")
    p.add_argument("--frangi-max-frames", type=int, metavar="N",
                   help="use at most N frames per --frangi-train source (evenly spaced; default all)")
    p.add_argument("--frangi-sigmas", metavar="S1,S2,...",
                   help="fix the Frangi scales (px at 256 x 256) instead of choosing among "
                        + "; ".join(seg_eval.sigma_label(s) for s in seg_eval.FRANGI_SIGMA_SETS) + " on the training data")
    p.add_argument("--workers", type=int, default=1,
                   help="processes for the Frangi training frames (default 1; the result does not depend on it)")
    p.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda or cuda:N")
    p.add_argument("--json", action="store_true", help="print summary.json to stdout")


def _add_reg(subsub) -> None:
    p = subsub.add_parser("reg", help="registration accuracy on held-out phantom cases")
    add_evaluate_reg_arguments(p)


def run_evaluate(args) -> int:
    what = getattr(args, "evaluate_what", None)
    if what == "seg":
        return run_evaluate_seg(args)
    if what == "reg":
        return run_evaluate_reg(args)
    raise InputError("evaluate needs seg or reg (see 'tavireg evaluate --help')")


def run_evaluate_seg(args) -> int:
    from ..networks.weights import pick_device
    from .common import network_from_args

    out = _checked_seg_options(args)
    device = pick_device(requested=args.device)
    datasets = _seg_datasets(args)
    train = [seg_eval.open_dataset(d, seg_eval.TRAIN_SPLIT, "--frangi-train") for d in args.frangi_train]
    sigma_sets = _frangi_sigma_sets(args.frangi_sigmas)
    pooled = seg_eval.pool_members(datasets, args.pool) if args.pool is not None else []  # fails before the evaluation
    option_warnings: List[str] = []
    args.network = network_from_args(args, option_warnings)
    res = seg_eval.evaluate_seg(datasets, model=args.network, device=device, frangi_train=train,
                       frangi_max_frames=args.frangi_max_frames, frangi_sigma_sets=sigma_sets,
                       workers=args.workers, pool=args.pool)
    res["warnings"] = option_warnings + res["warnings"]
    notes = _seg_notes(args, res, pooled)
    summary = strict_json(_seg_summary(args, datasets, res))
    _write_seg_outputs(args, out, res, notes, summary)
    for w in res["warnings"]:
        print(f"warning: {w}", file=sys.stderr)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(seg_eval.table_markdown(res["table"]) + seg_eval.goals_markdown(res["goals"]), end="")
        print(f"written: {out}/" + ", ".join(summary["outputs"]))
    return 0


def _checked_seg_options(args) -> Path:
    """The ``--out`` folder, after checking the numeric options; InputError when one is unusable."""
    if args.workers < 1:
        raise InputError("--workers must be at least 1")
    for opt in ("max_frames", "frangi_max_frames"):
        v = getattr(args, opt)
        if v is not None and v < 1:
            raise InputError(f"--{opt.replace('_', '-')} must be at least 1")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} exists and is not a folder")
    return out


def _seg_datasets(args) -> List[seg_eval.DataSet]:
    """The ``--data`` sets, each with a distinct label (even two folders of the same name) and at
    most ``--max-frames`` frames."""
    datasets = [seg_eval.open_dataset(d, split, "--data") for d, split in zip(args.data, data_splits(args))]
    labels: Dict[str, int] = {}
    for d in datasets:
        n = labels.get(d.label, 0)
        labels[d.label] = n + 1
        if n:
            d.label = f"{d.label}#{n + 1}"
            d.frames = [dataclasses.replace(f, dataset=d.label) for f in d.frames]
        d.info["frames_total"] = len(d.frames)
        d.frames = seg_eval.subsample(d.frames, args.max_frames)
    return datasets


def _frangi_sigma_sets(text: Optional[str]):
    """The Frangi scale sets to choose among: the one ``--frangi-sigmas`` fixes, else all of
    ``FRANGI_SIGMA_SETS``."""
    if not text:
        return seg_eval.FRANGI_SIGMA_SETS
    try:
        sig = tuple(float(v) for v in text.replace(" ", "").split(",") if v)
    except ValueError:
        raise InputError(f"--frangi-sigmas must be comma-separated numbers, got {text!r}") from None
    if not sig or not all(0.3 <= v <= 64 for v in sig):
        raise InputError(f"--frangi-sigmas must be scales between 0.3 and 64 px, got {text!r}")
    return (sig,)


def _seg_notes(args, res: dict, pooled: List[str]) -> List[str]:
    """The notes under the table of ``table.md``: the rules, the pool, the model and the Frangi parameters."""
    notes = list(seg_eval.RULES)
    if pooled:
        notes.append(f"{args.pool}: the frames of every case index above together ({', '.join(pooled)}), "
                     "patients kept apart.")
    notes.append(f"DRU-Net model {res['model']['name']} (SHA256 {str(res['model']['sha256'])[:12]}...); thresholds "
                 + ", ".join(f"{k} {v:.2f}" for k, v in res["model"]["thresholds"].items()) + ".")
    if res["frangi"]["evaluated"]:
        notes.append("Frangi training data: " + "; ".join(
            f"{s['label']} ({s['split_used']}, {s['frames']} frames)" for s in res["frangi"]["training"]) + ".")
        for ds, per in res["frangi"]["params"].items():
            for fov, p in per.items():
                notes.append(f"Frangi on {ds} {fov}: sigmas {seg_eval.sigma_label(p['sigmas'])} px, threshold "
                             f"{p['threshold']:.3g}, chosen on {p['chosen_on']} ({p['n_frames']} frames, "
                             f"median DSC {p['median_dice']:.3f} there).")
    return notes


def _seg_summary(args, datasets, res: dict) -> dict:
    """``summary.json`` of ``tavireg evaluate seg`` (before ``strict_json``)."""
    return {
        "command": command_line(args),
        "data": [{"label": d.label, "path": str(d.path), "kind": d.kind, "frames_evaluated": len(d.frames),
                  **{k: v for k, v in d.info.items()}} for d in datasets],
        "rules": seg_eval.RULES,
        "model": res["model"],
        "frangi": res["frangi"],
        "table": res["table"],
        "goals": res["goals"],
        "by_stage": res["by_stage"],
        "samples": [{k: p[k] for k in ("dataset", "fov", "kind", "frame", "ranked_by")} for p in res["samples"]],
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "device": res["model"]["device"],
                    "torch_threads": _torch_threads()},
        "seconds": res["seconds"],
        "outputs": ["table.csv", "table.md", "per_frame.csv", "boxplots.png", "samples.png", "summary.json"]
                   + (["by_stage.csv", "by_stage.png"] if res["by_stage"] else []),
        "warnings": res["warnings"],
    }


def _write_seg_outputs(args, out: Path, res: dict, notes: List[str], summary: dict) -> None:
    """Every output file of ``tavireg evaluate seg`` into ``out``, all or nothing (``OutputSet``)."""
    from ..export import csv_writer, json_writer
    from ..outputs import OutputSet

    inputs = [Path(d) for d in list(args.data) + list(args.frangi_train)]
    with OutputSet(inputs=inputs) as outs:
        outs.add(out / "table.csv", csv_writer(res["table"], seg_eval.TABLE_COLUMNS))
        outs.add(out / "table.md", _bytes_writer(("# Vessel segmentation on held-out data\n\n"
                                                 + seg_eval.table_markdown(res["table"], notes)
                                                 + seg_eval.goals_markdown(res["goals"])
                                                 + seg_eval.stage_markdown(res["by_stage"])).encode()))
        if res["by_stage"]:
            outs.add(out / "by_stage.csv", csv_writer(res["by_stage"], seg_eval.STAGE_COLUMNS))
        outs.add(out / "per_frame.csv", csv_writer(res["records"], seg_eval.PER_FRAME_COLUMNS))
        outs.add(out / "boxplots.png", _bytes_writer(seg_eval.boxplot_png(res["records"], res["order"])))
        if res["by_stage"]:
            outs.add(out / "by_stage.png", _bytes_writer(seg_eval.boxplot_png(res["records"], res["order"], by_stage=True)))
        outs.add(out / "samples.png", _bytes_writer(seg_eval.samples_png(res["samples"], res["methods"])))
        outs.add(out / "summary.json", json_writer(summary))


def data_splits(args) -> List[str]:
    """The split of each ``--data``: ``--split`` once for all (default test) or once per ``--data``."""
    splits = list(args.split or [seg_eval.EVAL_SPLIT])
    if len(splits) == 1:
        return splits * len(args.data)
    if len(splits) != len(args.data):
        raise InputError(f"--split is given {len(splits)} times for {len(args.data)} --data: give it once for all, "
                         "or once per --data in their order")
    return splits


def command_line(args) -> str:
    """The command that reproduces this run (from the parsed arguments)."""
    parts = ["tavireg", "evaluate", "seg"]
    for d in args.data:
        parts += ["--data", str(d)]
    for d in args.frangi_train:
        parts += ["--frangi-train", str(d)]
    if args.network != "segmentation":
        parts += ["--network", str(args.network)]
    if args.split:
        for split in args.split:
            parts += ["--split", split]
    for opt in ("max_frames", "frangi_max_frames", "frangi_sigmas", "pool"):
        if getattr(args, opt, None) is not None:
            parts += ["--" + opt.replace("_", "-"), str(getattr(args, opt))]
    if args.device != "auto":
        parts += ["--device", str(args.device)]
    parts += ["--out", str(args.out)]
    return command_text(parts)


def _bytes_writer(data: bytes) -> Callable:
    return lambda fh: fh.write(data)


def _torch_threads() -> Optional[int]:
    try:
        import torch

        return int(torch.get_num_threads())
    except Exception:  # noqa: BLE001
        return None


def run_evaluate_reg(args) -> int:
    from tqdm import tqdm

    from ..evaluation.bench import machine_facts
    from ..export import csv_writer
    from ..outputs import OutputSet, check_writable_dir

    methods = reg_eval.parse_methods(getattr(args, "methods", None))
    fixed = getattr(args, "fixed", "truth") or "truth"
    max_frames = getattr(args, "max_frames", None)
    split = getattr(args, "split", "test") or "test"
    contrast_front = not getattr(args, "whole_model", False)
    if max_frames is not None and max_frames < 1:
        raise InputError(f"--max-frames must be at least 1, got {max_frames}")
    reg_eval.load_index(args.data)  # bad input fails before the output folder is made
    device = None
    if any(m != "sitk" for m in methods) or fixed == "segmentation":
        from ..networks.weights import pick_device

        device = pick_device(requested=getattr(args, "device", "auto"))
    out = Path(args.out)
    check_writable_dir(out)
    with tqdm(total=0, desc="evaluate reg", unit="registration", file=sys.stderr, disable=None) as bar:
        def on_total(n):
            bar.total = n
            bar.refresh()

        res = reg_eval.evaluate_registration(args.data, methods, fixed=fixed, max_frames=max_frames, split=split,
                                    progress=bar.update, on_total=on_total, device=device,
                                    contrast_front=contrast_front)
    goals = reg_eval.check_goals(res.table)
    if split == "test":  # how the installed threshold does on held-out patients
        from ..registration import agreement_threshold

        agreement = reg_eval.agreement_analysis(res.records, agreement_threshold()[0])
    else:  # the threshold to choose on training patients
        agreement = reg_eval.agreement_analysis(res.records)
    outputs = {name: str(out / name) for name in ("per_frame.csv", "table.csv", "table.md", "boxplots.png", "summary.json")}
    summary = strict_json({
        "command": _command_line(args, methods, fixed, max_frames),
        "data": str(args.data), "phantom_version": res.phantom_version, "split": split, "fixed": fixed,
        "methods": res.methods,
        "methods_requested": methods, "contrast_front": contrast_front,
        "frames": len({(r["image"], r["frame"]) for r in res.records}),
        "skipped_frames": res.skipped_frames, "success_mm": reg_eval.SUCCESS_MM,
        "roi": "FrameTruth.user_roi(): around the contrast-filled part of the model, grown by 8 %",
        "table": res.table, "goals": goals, "low_agreement": agreement, "seconds": round(res.seconds, 1), "machine": machine_facts(),
        "outputs": outputs, "warnings": res.warnings,
    })
    md = ("# Registration evaluation\n\n" + reg_eval.table_markdown(res.table, fixed, split) + reg_eval.goals_markdown(goals)
          + reg_eval.agreement_markdown(agreement, split)
          + "\n![box plots](boxplots.png)\n")
    png = reg_eval.boxplot_png(res.records, res.methods, fixed, split)
    with OutputSet(inputs=[args.data]) as outs:
        outs.add(out / "per_frame.csv", csv_writer(res.records, reg_eval.PER_FRAME_COLUMNS))
        outs.add(out / "table.csv", csv_writer(res.table, reg_eval.TABLE_COLUMNS))
        outs.add(out / "table.md", lambda fh: fh.write(md.encode()))
        outs.add(out / "boxplots.png", lambda fh: fh.write(png))
        outs.add(out / "summary.json", lambda fh: fh.write((json.dumps(summary, indent=2) + "\n").encode()))
    for w in res.warnings:
        print(f"warning: {w}", file=sys.stderr)
    if getattr(args, "json", False):
        print(json.dumps(summary, indent=2))
    else:
        print(reg_eval.table_markdown(res.table, fixed, split), end="")
        print(f"outputs in {out}")
    return 0


def _command_line(args, methods, fixed, max_frames) -> str:
    """The command that reproduces this run."""
    from ..reproduce import command_text

    parts = ["tavireg", "evaluate", "reg", "--data", str(args.data), "--methods", ",".join(methods), "--fixed", fixed]
    if max_frames is not None:
        parts += ["--max-frames", str(max_frames)]
    if getattr(args, "split", "test") not in (None, "test"):
        parts += ["--split", str(args.split)]
    if getattr(args, "whole_model", False):
        parts.append("--whole-model")
    if getattr(args, "device", "auto") not in (None, "auto"):
        parts += ["--device", str(args.device)]
    parts += ["--out", str(args.out)]
    if getattr(args, "json", False):
        parts.append("--json")
    return command_text(parts)


def add_evaluate_reg_arguments(p) -> None:
    if not getattr(p, "description", None):
        p.description = (
            "Registration accuracy on held-out phantom patients (rows of split 'test' with contrast): per method, "
            "Dice/precision/recall of the registered projection vs the ground-truth vessel mask inside the "
            "registration window, the mean landmark error (TRE, mm at the isocentre) and the success rate "
            f"(TRE < {reg_eval.SUCCESS_MM:g} mm). ROI: the one a user would draw (FrameTruth.user_roi). Writes per_frame.csv, "
            "table.csv, table.md, boxplots.png and summary.json.")
    p.add_argument("--data", type=Path, required=True, metavar="INDEX.csv",
                   help="index.csv of a tavireg phantom data set (rows of split 'test' are evaluated)")
    p.add_argument("--methods", default=",".join(reg_eval.METHODS),
                   help="comma-separated registration methods (default: cnn,cnn+refine,sitk; one whose network "
                   "is not installed is skipped with a warning)")
    p.add_argument("--fixed", choices=reg_eval.FIXED_SOURCES, default="truth",
                   help="fixed image: the ground-truth vessel mask (default) or the DRU-Net segmentation")
    p.add_argument("--max-frames", type=int, metavar="N",
                   help="evaluate at most N frames, evenly spread over the split (default: all)")
    p.add_argument("--split", choices=("test", "val", "train", "all"), default="test",
                   help="rows of which split (default test, the held-out patients; train/val serve choices made on "
                        "training data, such as the low-agreement threshold; all: every row, for a data set "
                        "generated only to validate or test on)")
    p.add_argument("--whole-model", action="store_true",
                   help="cnn+refine registers the whole projection (as 'tavireg register --whole-model')")
    p.add_argument("--device", default="auto", help="for the networks: auto (cuda when available), cpu, cuda or cuda:N")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")


