"""Compare training runs side by side: validation curves of ``train-seg`` / ``train-reg`` runs.

    .venv/bin/python benchmarks/compare_runs.py RUN_DIR [RUN_DIR ...] --out curves.png [--json]

Each RUN_DIR is a ``--out`` folder of a trainer (its ``history.json``). Drawn per epoch: the
training loss and the validation score that chose ``best.pt`` (train-seg: the mean over data sets of
their median Dice; train-reg: the median Dice against the fixed images), and for train-seg each data
set's median Dice. Printed: per run the best epoch and score and the score of the last epoch, so
that a comparison (losses, widths, learning rates) is read from the validation split only.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Dict, List


class BadRun(Exception):
    """A folder that is not a trainer's --out folder (one line)."""


def read_run(folder: Path) -> Dict[str, Any]:
    path = folder / "history.json"
    if not path.is_file():
        raise BadRun(f"{folder} holds no history.json (not a train-seg/train-reg --out folder)")
    try:
        data = json.loads(path.read_text())
        history: List[Dict[str, Any]] = data["history"]
    except (ValueError, KeyError, TypeError) as exc:
        raise BadRun(f"{path} is not a training history ({exc.__class__.__name__})") from None
    epochs, loss, score, by_source = [], [], [], {}
    for rec in history:
        val = rec.get("val") or {}
        if "selection" in val:  # train-seg
            s = val["selection"]["score"]
            for src, d in val["selection"]["median_dice_by_source"].items():
                by_source.setdefault("/".join(Path(src).parts[-2:]), []).append((rec["epoch"], d))
        else:  # train-reg (or a train-seg run from before the selection score)
            s = val.get("median_dice", (val.get("unknown") or {}).get("median_dice"))
        epochs.append(rec["epoch"])
        loss.append(rec.get("train_loss"))
        score.append(s)
    best = data.get("best") or {}
    return {"name": folder.name, "epochs": epochs, "loss": loss, "score": score, "by_source": by_source,
            "best_epoch": best.get("epoch"), "best_score": best.get("score"),
            "last_score": score[-1] if score else None}


def plot(runs: List[Dict[str, Any]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sources = sorted({s for r in runs for s in r["by_source"]})
    n = 2 + len(sources)
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 3.6))
    for i, r in enumerate(runs):
        colour = f"C{i}"
        # a run of one record (an --epochs 0 export: epoch 0, no training loss) is drawn as a point
        style = {"color": colour, "label": r["name"], "marker": "s" if len(r["epochs"]) == 1 else None}
        axes[0].plot(r["epochs"], r["loss"], **style)
        axes[1].plot(r["epochs"], r["score"], **style)
        if r["best_epoch"] is not None:
            axes[1].plot([r["best_epoch"]], [r["best_score"]], "o", color=colour)
        for ax, src in zip(axes[2:], sources):
            pts = r["by_source"].get(src, [])
            ax.plot([p[0] for p in pts], [p[1] for p in pts], **style)
    axes[0].set_title("training loss")
    axes[1].set_title("validation score (dot: best.pt)")
    for ax, src in zip(axes[2:], sources):
        ax.set_title(f"validation median Dice: {src}")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    tmp = out.with_name(f".{out.name}.part")
    fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    tmp.replace(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path, metavar="RUN_DIR")
    ap.add_argument("--out", type=Path, help="PNG of the curves")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    try:
        runs = [read_run(r) for r in args.runs]
    except BadRun as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.out:
        plot(runs, args.out)
    summary = [{k: r[k] for k in ("name", "best_epoch", "best_score", "last_score")} | {"epochs": len(r["epochs"])}
               for r in runs]
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        for r in summary:
            print(f"{r['name']}: {r['epochs']} epochs, best {r['best_score']:.4f} at epoch {r['best_epoch']}, "
                  f"last {r['last_score']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
