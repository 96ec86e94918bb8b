"""The DRU-Net selection rule as one command: which candidate network, if any, ships.

    .venv/bin/python tools/seg_selection.py --validation SEED/index.csv \\
        --development PHANTOM/index.csv --real ../shared/data/angios40/train \\
        --baseline drunet-b12-v7s --candidate NAME [--candidate NAME ...] [--candidates-dir DIR] \\
        --out DIR [--margin 0.005] [--max-drop 0.01] [--empty-loss 0.10] [--json]

Each network is run through ``tavireg evaluate seg`` on three data sets (the inputs are only read):

* ``validation``: every frame of a phantom no network has seen (``tavireg phantom --seed N`` with a
  fresh seed; ``--split all``), scored per FoV;
* ``development``: the validation-split patients of the training phantom (P003 of the seed-0
  phantom; ``--split val``), scored over both FoVs together;
* real validation: the images of ``--real`` that the baseline's manifest entry names as its
  validation patients (``train-seg``'s own split, e.g. ``train:3``), linked under
  ``OUT/data/real_validation``, never copied.

Score: the mean of four medians of the Dice per frame (frames with an empty truth left out):
validation upper FoV, validation lower FoV, development, real validation. The highest-scoring
candidate ships iff (1) its score is at least the baseline's + ``--margin``, (2) none of its four
medians is below the baseline's by more than ``--max-drop``, and (3) it leaves at least the
baseline's count of empty-truth validation lower-FoV frames without a predicted pixel, less
``--empty-loss`` of that count (rounded down). Write the rule down, and generate the validation
phantom, before any candidate is trained; a validation seed serves one decision.

Candidates are manifest names in ``--candidates-dir`` (``TAVIREG_MODELS_DIR`` for their runs, e.g.
a trainer's ``--export-dir``); the baseline is read from the installed models (or
``--baseline-dir``). An ``OUT/NAME`` folder that already holds an evaluation of the same weights on
the same data is reused. Printed: a table and the verdict; written: ``OUT/selection.json``.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "TAVIRegistration"))

from TAVIRegistrationLib.evaluation import seg as ev  # noqa: E402
from TAVIRegistrationLib.networks import weights  # noqa: E402
from TAVIRegistrationLib.errors import InputError  # noqa: E402

MEDIANS = ("upper", "lower", "development", "real")


def _link_real_validation(real: Path, entry: Dict[str, Any], dst: Path) -> List[str]:
    """Links in ``dst`` to the N.png / N_gt.png pairs of ``real`` named ``<real's name>:N`` in the
    entry's validation patients."""
    prefix = f"{real.name}:"
    names = [p[len(prefix):] for p in entry.get("validation_patients") or [] if p.startswith(prefix)]
    if not names:
        raise InputError(f"{entry['name']}'s manifest entry names no validation image of {real} "
                         f"(validation patients: {', '.join(entry.get('validation_patients') or []) or 'none'})")
    dst.mkdir(parents=True, exist_ok=True)
    for old in dst.iterdir():  # links of an earlier run (another baseline may name other images)
        if old.is_symlink():
            old.unlink()
    for n in names:
        for f in (f"{n}.png", f"{n}_gt.png"):
            if not (real / f).is_file():
                raise InputError(f"{real / f} not found (named by {entry['name']}'s validation patients)")
            (dst / f).symlink_to((real / f).resolve())
    return names


def prepare_data(validation: Path, development: Path, real: Path, baseline_entry: Dict[str, Any],
                 out: Path) -> Dict[str, Any]:
    """The three data sets (the real validation images linked under ``out/data``), their labels in
    ``evaluate seg``'s tables and a fingerprint of their files."""
    names = _link_real_validation(real, baseline_entry, out / "data" / "real_validation")
    sets = {"validation": ev.open_dataset(validation, ev.ALL_SPLITS, "--validation"),
            "development": ev.open_dataset(development, "val", "--development"),
            "real": ev.open_dataset(out / "data" / "real_validation", ev.ALL_SPLITS, "--real")}
    if sets["validation"].label == sets["development"].label:  # one evaluate run tells them apart by label
        raise InputError(f"--validation and --development are both labelled {sets['validation'].label!r} "
                         "(their folders' names): put one of them in a folder of another name")
    # which files, and their size and time: a data set generated again under the same path differs
    h = hashlib.sha256()
    for f in sorted(str(p) for d in sets.values() for fr in d.frames for p in (fr.image, fr.mask)):
        try:
            st = os.stat(f)
        except OSError:
            raise InputError(f"{f} not found (named by {validation}, {development} or {real})") from None
        h.update(f"{f} {st.st_size} {st.st_mtime_ns}\n".encode())
    return {"sets": sets, "labels": {k: d.label for k, d in sets.items()},
            "frames": {k: len(d.frames) for k, d in sets.items()}, "real_images": names,
            "fingerprint": h.hexdigest()}


def _read_evaluation(folder: Path):
    try:
        summary = json.loads((folder / "summary.json").read_text())
        with open(folder / "per_frame.csv", newline="") as fh:
            per_frame = [r for r in csv.DictReader(fh) if r["method"] == ev.METHOD_DRUNET]
        table = {(r["dataset"], r["fov"]): r for r in summary["table"] if r["method"] == ev.METHOD_DRUNET}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{folder} is not an evaluate seg output folder ({exc.__class__.__name__})") from None
    return table, per_frame


def four_medians(folder: Path, labels: Dict[str, str]) -> Dict[str, Any]:
    """The four medians and the empty-frame count from a network's ``evaluate seg`` folder over the
    three data sets."""
    table, per_frame = _read_evaluation(folder)

    def row(label: str, fov: str) -> Dict[str, Any]:
        if (label, fov) not in table:
            raise InputError(f"{folder}/summary.json has no DRU-Net row for {label} ({fov} FoV)")
        return table[(label, fov)]

    dev = [float(r["dice"]) for r in per_frame if r["dataset"] == labels["development"] and r["empty_gt"] == "False"]
    if not dev:
        raise InputError(f"{folder}/per_frame.csv has no development frame with a vessel")
    lower = row(labels["validation"], "lower")
    m = {"upper": float(row(labels["validation"], "upper")["median_dice"]), "lower": float(lower["median_dice"]),
         "development": float(statistics.median(dev)), "real": float(row(labels["real"], "upper")["median_dice"])}
    return {"medians": m, "score": sum(m.values()) / len(m),
            "empty_lower_clean": int(lower["empty_gt_clean"]), "empty_lower": int(lower["n_empty_gt"])}


def judge(baseline: Dict[str, Any], candidates: Dict[str, Dict[str, Any]], margin: float = 0.005,
          max_drop: float = 0.01, empty_loss: float = 0.10) -> Dict[str, Any]:
    """Each candidate's criteria against the baseline; the highest-scoring one ships iff it meets all."""
    need_empty = baseline["empty_lower_clean"] - int(empty_loss * baseline["empty_lower_clean"])
    verdicts = {}
    for name, c in candidates.items():
        gain = c["score"] - baseline["score"]
        drops = {k: baseline["medians"][k] - c["medians"][k] for k in MEDIANS}
        failed = []
        if gain < margin - 1e-12:
            failed.append(f"(1) score gain {gain:+.4f} < {margin:+.4f}")
        worst = max(drops, key=drops.get)
        if drops[worst] > max_drop + 1e-12:
            failed.append(f"(2) {worst} median down {drops[worst]:.4f} > {max_drop:.4f}")
        if c["empty_lower_clean"] < need_empty:
            failed.append(f"(3) {c['empty_lower_clean']} empty lower-FoV frames left empty < {need_empty}")
        verdicts[name] = {"gain": gain, "passes": not failed, "failed": failed}
    best = max(candidates, key=lambda n: candidates[n]["score"]) if candidates else None
    ships = best if best is not None and verdicts[best]["passes"] else None
    return {"verdicts": verdicts, "highest": best, "ships": ships, "empty_needed": need_empty}


def evaluate(name: str, models_dir: Optional[Path], data: Dict[str, Any], out: Path) -> Path:
    """``tavireg evaluate seg`` of one network in ``OUT/NAME``, one run over the three data sets (every
    row of the validation phantom, the development index's val rows, the real images). Reused when the
    folder already holds the evaluation of the same weights on the same files (``inputs.sha256``)."""
    folder = out / name
    entry = weights.find_entry(name, models_dir)
    stamp = folder / "inputs.sha256"
    key = f"{entry['sha256']} {data['fingerprint']}"
    if stamp.is_file() and stamp.read_text().strip() == key:
        return folder
    stamp.unlink(missing_ok=True)
    print(f"evaluating {name} (tavireg evaluate seg -> {folder}) ...", file=sys.stderr, flush=True)
    env = dict(os.environ)
    env[weights.ENV_MODELS_DIR] = str(models_dir if models_dir is not None else weights.models_dir())
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[1] / "TAVIRegistration"),
                                         env.get("PYTHONPATH", "")])
    cmd = [sys.executable, "-m", "TAVIRegistrationLib.cli", "evaluate", "seg", "--network", name, "--out", str(folder)]
    for which, split in (("validation", ev.ALL_SPLITS), ("development", "val"), ("real", ev.ALL_SPLITS)):
        cmd += ["--data", str(data["sets"][which].path), "--split", split]
    res = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if res.returncode != 0:
        lines = res.stderr.strip().splitlines() or ["(no message)"]
        raise InputError(f"evaluate seg of {name} failed (exit {res.returncode}): {lines[-1]}")
    stamp.write_text(key + "\n")
    return folder


def report(baseline_name: str, results: Dict[str, Dict[str, Any]], decision: Dict[str, Any]) -> str:
    lines = ["| network | score | upper | lower | development | real | empty lower left empty | verdict |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, r in results.items():
        m = r["medians"]
        if name == baseline_name:
            verdict = "baseline"
        else:
            v = decision["verdicts"][name]
            verdict = f"{v['gain']:+.4f}; " + ("meets the rule" if v["passes"] else "; ".join(v["failed"]))
        lines.append(f"| `{name}` | {r['score']:.4f} | {m['upper']:.3f} | {m['lower']:.3f} | {m['development']:.3f} "
                     f"| {m['real']:.3f} | {r['empty_lower_clean']}/{r['empty_lower']} | {verdict} |")
    ships = decision["ships"]
    lines.append("")
    lines.append(f"ships: `{ships}`" if ships else
                 f"nothing ships (highest-scoring candidate: `{decision['highest']}`)")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--validation", required=True, type=Path, help="case index of the fresh validation phantom")
    p.add_argument("--development", required=True, type=Path, help="case index whose val-split patients count once")
    p.add_argument("--real", required=True, type=Path, help="folder of N.png + N_gt.png (the real training images)")
    p.add_argument("--baseline", required=True, help="manifest name of the network to beat")
    p.add_argument("--baseline-dir", type=Path, help="its models folder (default: the installed models)")
    p.add_argument("--candidate", action="append", required=True, help="manifest name (repeatable)")
    p.add_argument("--candidates-dir", type=Path, help="models folder of the candidates (default: the installed)")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--margin", type=float, default=0.005)
    p.add_argument("--max-drop", type=float, default=0.01)
    p.add_argument("--empty-loss", type=float, default=0.10)
    p.add_argument("--json", action="store_true", help="print selection.json instead of the table")
    args = p.parse_args(argv)
    try:
        base_entry = weights.find_entry(args.baseline, args.baseline_dir)
        if args.baseline in args.candidate:
            raise InputError(f"{args.baseline} is the baseline; it cannot also be a candidate")
        for c in args.candidate:
            weights.find_entry(c, args.candidates_dir)
        data = prepare_data(args.validation, args.development, args.real, base_entry, args.out)
        results = {args.baseline: four_medians(evaluate(args.baseline, args.baseline_dir, data, args.out),
                                                   data["labels"])}
        for c in args.candidate:
            results[c] = four_medians(evaluate(c, args.candidates_dir, data, args.out), data["labels"])
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    decision = judge(results[args.baseline], {c: results[c] for c in args.candidate},
                     args.margin, args.max_drop, args.empty_loss)
    record = {"baseline": args.baseline, "results": results, "decision": decision, "data": {
        "validation": str(args.validation), "development": str(args.development), "real": str(args.real),
        "frames": data["frames"], "labels": data["labels"], "real_images": data["real_images"]},
        "rule": {"margin": args.margin, "max_drop": args.max_drop, "empty_loss": args.empty_loss}}
    weights.write_json_atomic(args.out / "selection.json", record)
    print(json.dumps(record, indent=1) if args.json else report(args.baseline, results, decision))
    return 0


if __name__ == "__main__":
    sys.exit(main())
