"""What the commands share: the parser that reports usage errors as one line, number lists, warnings
and JSON on the console, and the options several commands take (the C-arm geometry overrides, the
vessel model, the network).

``--network`` names the weights of a network (a manifest name or a TorchScript file); ``--model`` is
the vessel surface model everywhere. Commands that took ``--model`` for weights still accept it for
one release, with a deprecation warning.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import List, Optional, Sequence

from ..errors import InputError

EXIT_OK, EXIT_INTERNAL, EXIT_INPUT = 0, 1, 2

DEPRECATED_NETWORK_OPTION = "--model"


def add_network_argument(parser, help_text: str, default: str = "segmentation") -> None:
    parser.add_argument("--network", default=None, help=help_text)
    parser.add_argument(DEPRECATED_NETWORK_OPTION, dest="deprecated_network", default=None,
                        help=argparse.SUPPRESS)
    parser.set_defaults(network_default=default)


def network_from_args(args, warnings: List[str]) -> str:
    """The network named by ``--network`` (or the deprecated ``--model``, named in ``warnings``)."""
    old = getattr(args, "deprecated_network", None)
    if old is not None:
        if args.network is not None and args.network != old:
            raise InputError(f"--network {args.network} and --model {old} name different networks: give --network")
        warnings.append(f"--model {old} for a network's weights is deprecated: use --network {old} "
                        "(--model names the vessel surface model)")
    chosen = args.network if args.network is not None else old
    return chosen if chosen is not None else args.network_default


class Parser(argparse.ArgumentParser):
    """argparse that reports usage errors as one ``error:`` line and exit status 2."""

    def error(self, message: str):  # noqa: D401 - argparse API
        raise InputError(f"{message} (see '{self.prog} --help')")


def floats(text: str, n: Optional[int] = None, what: str = "value") -> List[float]:
    try:
        values = [float(t) for t in text.replace(" ", "").split(",") if t != ""]
    except ValueError:
        raise InputError(f"{what} must be comma-separated numbers, got {text!r}") from None
    if n is not None and len(values) != n:
        raise InputError(f"{what} needs {n} comma-separated numbers, got {text!r}")
    return values


def emit_warnings(warnings: Sequence[str]) -> None:
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)


def print_json(obj) -> None:
    print(json.dumps(obj, indent=2, sort_keys=False, default=float))


def add_geometry_overrides(p, title="C-arm geometry (overrides what the fluoroscopy file says, or supplies "
                                     "what it lacks; each one used is named in the warnings)"):
    g = p.add_argument_group(title)
    g.add_argument("--primary", type=float, help="primary angle, deg (+LAO / -RAO)")
    g.add_argument("--secondary", type=float, help="secondary angle, deg (+CRA / -CAU)")
    g.add_argument("--sid", type=float, help="source to detector distance, mm")
    g.add_argument("--sod", type=float, help="source to isocentre distance, mm")
    g.add_argument("--spacing", help="detector pixel spacing, mm: one value or ROW,COL")
    return g


def geometry_overrides_from_args(args):
    """The --primary --secondary --sid --sod --spacing values as ``fluoro.GeometryOverrides``."""
    from ..fluoro import GeometryOverrides

    spacing = None
    if args.spacing is not None:
        sp = floats(args.spacing, what="--spacing")
        if len(sp) not in (1, 2):
            raise InputError("--spacing takes one value or ROW,COL")
        spacing = (sp[0], sp[-1])
    return GeometryOverrides(args.primary, args.secondary, args.sid, args.sod, spacing)


_MANUAL_GEOMETRY = ("primary", "secondary", "sid", "sod", "spacing", "rows", "cols")


def add_model_arguments(p, required=True) -> None:
    p.add_argument("--model", type=Path, required=required,
                   help="vessel surface (STL/OBJ/PLY/VTK/VTP) or labelmap (NRRD/NIfTI)")
    p.add_argument("--units", choices=("mm", "cm", "m"), help="units of the model file (default: its header, else mm with a warning)")
    p.add_argument("--space", choices=("LPS", "RAS"), help="coordinate space of the model file (default: its SPACE= header, else LPS with a warning)")
    p.add_argument("--isocenter", metavar="X,Y,Z",
                   help="C-arm isocentre in the model's LPS mm (default: the model's bounding-box centre, with a warning)")
    p.add_argument("--orthographic", action="store_true",
                   help="parallel projection (the paper's Eq. 3) instead of the perspective C-arm")


def geometry_from_args(args, warnings: List[str]):
    """The C-arm geometry of the command: from --fluoro (manual values override), or manual."""
    from ..geometry import CArmGeometry

    overrides = geometry_overrides_from_args(args)
    if args.fluoro is not None:
        from ..fluoro import read_fluoro

        if args.rows is not None or args.cols is not None:
            raise InputError("--rows/--cols cannot be combined with --fluoro (the frame's size is used)")
        series = read_fluoro(args.fluoro, load_pixels=False, **overrides.as_kwargs())
        warnings.extend(series.warnings)
        return series.geometry(args.frame), series
    missing = [f"--{n}" for n in _MANUAL_GEOMETRY if getattr(args, n) is None]
    if missing:
        raise InputError("without --fluoro the geometry needs " + ", ".join(missing))
    geom = CArmGeometry(args.primary, args.secondary, args.sid, args.sod, overrides.pixel_spacing_mm,
                        args.rows, args.cols)
    return geom, None


def load_model_from_args(args, warnings: List[str]):
    from ..mesh import load_model

    model = load_model(args.model, units=args.units, space=args.space)
    warnings.extend(model.warnings)
    return model


def isocenter_from_args(args, model, warnings: List[str]):
    if args.isocenter:
        return tuple(floats(args.isocenter, 3, "--isocenter"))
    from ..pipeline import default_isocenter

    return default_isocenter(model, warnings)
