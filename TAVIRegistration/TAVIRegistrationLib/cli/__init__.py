"""The ``tavireg`` command line: a thin front end over the library.

Contract (docs/conventions.md): exit status 0 on success; 2 on bad input or usage with one line
``error: ...`` on stderr and no traceback; 1 on an internal failure. Every fallback a step takes is
printed as ``warning: ...`` on stderr (and listed in ``--json`` output). Outputs are written
atomically (``outputs.OutputSet``): a failed run leaves no partial file and never touches an input.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback
from typing import Callable, Dict, Optional, Sequence

from ..errors import InputError
from .common import EXIT_INPUT, EXIT_INTERNAL, EXIT_OK, Parser  # noqa: F401 - the exit codes are the contract

#: every command and the module of this package that holds it: ``add_<command>_parser(sub)`` adds its
#: options, ``run_<command>(args)`` runs it (``-`` as ``_``); a module is imported when the parser is built
_REGISTRY = [
    ("info", "case"), ("project", "case"), ("register", "case"), ("demo", "demo"), ("bench", "bench"),
    ("phantom", "phantom"), ("foreign", "phantom"), ("gui", "case"), ("segment", "segment"), ("gradcam", "segment"),
    ("train-seg", "train"), ("train-reg", "train"), ("evaluate", "evaluate"),
]

_COMMANDS: Dict[str, Callable[[argparse.Namespace], int]] = {}


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = Parser(
        prog="tavireg",
        description="Register a pre-operative CTA vessel model to TAVI fluoroscopy.",
    )
    parser.add_argument("--version", action="version", version=f"tavireg {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True
    for name, module_name in _REGISTRY:
        module = importlib.import_module(f".{module_name}", __package__)
        function = name.replace("-", "_")
        getattr(module, f"add_{function}_parser")(sub)
        _COMMANDS[name] = getattr(module, f"run_{function}")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        return _COMMANDS[args.command](args)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INPUT
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except SystemExit as exc:  # --help / --version
        return int(exc.code or 0)
    except Exception as exc:  # noqa: BLE001 - the last line of defence of a clinical tool
        if os.environ.get("TAVIREG_DEBUG"):
            traceback.print_exc()
        msg = " ".join(f"{type(exc).__name__}: {exc}".split())
        print(f"internal error: {msg} (set TAVIREG_DEBUG=1 for the traceback)", file=sys.stderr)
        return EXIT_INTERNAL
