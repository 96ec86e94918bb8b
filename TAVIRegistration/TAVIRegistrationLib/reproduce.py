"""The command line that reproduces a result, as training, evaluation and packing record it.

Recorded commands must run again elsewhere: an absolute path inside the working directory is written
relative to it (so a manifest or summary written from the repository names ``Resources/...`` or
``../shared/...``, not one machine's folders), and the program is named ``tavireg``, not the path of
the virtual environment's script.
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path
from typing import Optional, Sequence


def portable(part: str, cwd: Optional[Path] = None) -> str:
    """``part`` with an absolute path inside ``cwd`` (default: the working directory) made relative."""
    if not os.path.isabs(part):
        return part
    base = Path(cwd or os.getcwd()).resolve()
    try:
        return Path(part).resolve().relative_to(base).as_posix() or "."
    except ValueError:
        parent = base.parent
        try:  # data beside the checkout (../shared/data) is named the way users lay it out
            return "../" + Path(part).resolve().relative_to(parent).as_posix()
        except ValueError:
            return part


def command_text(parts: Sequence[object], cwd: Optional[Path] = None) -> str:
    """One shell-quoted command line from its parts, with paths made ``portable``."""
    return shlex.join(portable(str(p), cwd) for p in parts)


def argv_text(argv: Optional[Sequence[str]] = None, cwd: Optional[Path] = None) -> str:
    """The command line this process was started with (``sys.argv``), the program named by its file name."""
    argv = list(sys.argv if argv is None else argv)
    if argv:
        argv[0] = os.path.basename(argv[0])
    return command_text(argv, cwd)
