"""Command-line options shared by several commands and defined by more than one module's parser.

``--network`` names the weights of a network (a manifest name or a TorchScript file); ``--model`` is
the vessel surface model everywhere. Commands that took ``--model`` for weights still accept it for
one release, with a deprecation warning.
"""

from __future__ import annotations

import argparse
from typing import List

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
            from .errors import InputError

            raise InputError(f"--network {args.network} and --model {old} name different networks: give --network")
        warnings.append(f"--model {old} for a network's weights is deprecated: use --network {old} "
                        "(--model names the vessel surface model)")
    chosen = args.network if args.network is not None else old
    return chosen if chosen is not None else args.network_default
