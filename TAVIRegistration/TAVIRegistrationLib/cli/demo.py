"""``tavireg demo``: the built-in demo case, generated and registered end to end (``synthetic.demo``)."""

from __future__ import annotations

from pathlib import Path

from .common import EXIT_OK, emit_warnings, print_json


def add_demo_parser(sub) -> None:
    p = sub.add_parser("demo", help="make a synthetic TAVI case and run the whole pipeline on it")
    p.add_argument("--out", type=Path, default=Path("demo_out"), help="output folder (default demo_out)")
    p.add_argument("--seed", type=int, default=None, help="phantom seed of the case (default: the built-in one)")
    p.add_argument("--method", choices=("cnn", "cnn+refine", "sitk"),
                   help="registration method (default: cnn+refine when a network is installed, else sitk)")
    p.add_argument("--json", action="store_true", help="print a JSON summary")


def run_demo(args) -> int:
    from ..synthetic.demo import DEMO_SEED, run_demo

    result = run_demo(args.out, seed=DEMO_SEED if args.seed is None else args.seed, method=args.method)
    emit_warnings(result["warnings"])
    if args.json:
        print_json(result)
    else:
        print(f"demo case: {result['case']} (frame {result['frame']}), method {result['method']}")
        print("Dice vs ground truth: {} before, {} after registration".format(
            _fmt3(result["dice_before"]), _fmt3(result["dice_vs_truth"])))
        if result["landmark_error_mm"] is not None:
            print(f"landmark error: {result['landmark_error_before_mm']:.1f} mm before, "
                  f"{result['landmark_error_mm']:.1f} mm after")
        print(f"report: {Path(args.out) / 'report.md'}")
    return EXIT_OK


def _fmt3(v) -> str:
    return "n/a" if v is None or v != v else f"{v:.3f}"


