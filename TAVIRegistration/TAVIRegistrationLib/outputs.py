"""Atomic outputs: a failed run leaves no partial file and never touches its inputs.

Every output is first written to a hidden temporary file in the destination folder and moved into
place with ``os.replace`` only when the whole command has succeeded (see ``OutputSet``).
"""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np

from .errors import InputError


def check_writable_dir(directory: Path) -> None:
    """Raise InputError unless ``directory`` exists (or can be created) and is writable."""
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise InputError(f"output folder {directory} exists and is not a folder")
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create output folder {directory}: {exc.strerror or exc}") from None
    if not os.access(directory, os.W_OK | os.X_OK):
        raise InputError(f"output folder {directory} is not writable")


class OutputSet:
    """Collects outputs in temporary files and publishes them all at once.

    Usage::

        with OutputSet(inputs=[model_path]) as outs:
            outs.add(out_png, lambda f: write_png(f, mask))
        # files appear here only if the block raised nothing

    ``inputs`` are resolved paths that an output must never overwrite.
    """

    def __init__(self, inputs: Optional[List[Path]] = None):
        self._inputs = {Path(p).resolve() for p in (inputs or []) if p is not None}
        self._pending: Dict[Path, Path] = {}

    def add(self, path: Path, writer: Callable[[io.BufferedWriter], None]) -> Path:
        path = Path(path)
        final = path.resolve()
        if final in self._inputs:
            raise InputError(f"output {path} would overwrite an input file")
        if final in self._pending:
            raise InputError(f"output {path} is named twice")
        if final.is_dir():
            raise InputError(f"output {path} is an existing folder, not a file name")
        check_writable_dir(final.parent)
        fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".part", dir=final.parent)
        try:
            os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the usual mode
            with os.fdopen(fd, "wb") as fh:
                writer(fh)
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as exc:
            _unlink_quietly(Path(tmp))
            raise InputError(f"cannot write {path}: {exc.strerror or exc}") from None
        except BaseException:
            _unlink_quietly(Path(tmp))
            raise
        self._pending[final] = Path(tmp)
        return final

    def commit(self) -> List[Path]:
        """Move every output into place. Under an exclusive lock of each destination folder (flock
        on the folder itself, no lock file), so that two runs writing into one folder leave the
        complete set of one of them, never a mix."""
        import contextlib
        import fcntl

        done = []
        with contextlib.ExitStack() as stack:
            for folder in sorted({final.parent for final in self._pending}):
                fd = os.open(folder, os.O_RDONLY)
                stack.callback(os.close, fd)
                fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                for final, tmp in self._pending.items():
                    os.replace(tmp, final)
                    done.append(final)
            except OSError as exc:
                self.discard()
                raise InputError(f"cannot move the outputs into place ({len(done)} of them moved): "
                                 f"{exc.strerror or exc}") from None
        self._pending.clear()
        return done

    def discard(self) -> None:
        for tmp in self._pending.values():
            if tmp.exists():
                _unlink_quietly(tmp)
        self._pending.clear()

    def __enter__(self) -> "OutputSet":
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            self.commit()
        else:
            self.discard()
        return False


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _unlink_quietly(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass


def mask_png_writer(mask: np.ndarray) -> Callable[[io.BufferedWriter], None]:
    """Writer for a binary mask as an 8-bit PNG with values 0/255 (the project's file convention)."""
    from PIL import Image

    data = (np.asarray(mask) > 0).astype(np.uint8) * 255

    def write(fh):
        Image.fromarray(data, mode="L").save(fh, format="PNG")

    return write


def read_mask_png(path, shape=None, what: str = "mask") -> np.ndarray:
    """A mask PNG (the writer's format: 0/255, any one-channel image) as uint8 0/1 (grey > 127).

    With ``shape`` (rows, cols) the mask must have that size. InputError (one line) otherwise.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what} {path} does not exist")
    try:
        with Image.open(path) as im:
            if im.mode not in ("1", "L", "P", "I", "I;16"):
                raise InputError(f"{what} {path} must be a one-channel PNG (0/255), not {im.mode}")
            m = np.asarray(im.convert("L"))
    except (UnidentifiedImageError, OSError) as exc:
        raise InputError(f"cannot read {what} {path}: {exc.__class__.__name__}") from None
    if shape is not None and m.shape != tuple(shape):
        raise InputError(f"{what} {path.name} is {m.shape[1]}x{m.shape[0]} px but its image is "
                         f"{shape[1]}x{shape[0]}")
    return (m > 127).astype(np.uint8)


def image_png_writer(image: np.ndarray) -> Callable[[io.BufferedWriter], None]:
    """Writer for an 8-bit grey (H, W) or RGB (H, W, 3) array as PNG."""
    from PIL import Image

    data = np.asarray(image)
    if data.dtype != np.uint8:
        raise TypeError("image_png_writer takes uint8 arrays")

    def write(fh):
        Image.fromarray(data).save(fh, format="PNG")

    return write
