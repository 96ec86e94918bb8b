"""The weights registry: TorchScript files in ``Resources/Models/`` and their manifest.

``Resources/Models/manifest.json`` is ``{"format": 1, "models": [entry, ...]}`` (a bare list of
entries is read too). An entry describes one TorchScript file::

    name            unique name, e.g. "drunet-b8-v1" (what --model takes)
    file            file name inside the models folder
    sha256          hex SHA256 of the file; a mismatch refuses the file
    kind            "segmentation" | "registration"
    architecture    e.g. "DRUNet" (checked against the scripted module's ``architecture``)
    base_channels   network width (checked against the module's ``base_channels`` when it has one)
    input_size      [rows, cols] the network was trained at
    fov             FoVs the model serves, e.g. ["upper", "lower"]
    thresholds      probability threshold per FoV ("upper", "lower", "unknown"), chosen on validation
    normalisation   how pixel values are scaled before the network
    trained_on      data sets (paths, counts, patients)
    metrics         validation metrics measured by the training command
    command         the exact command that reproduces the file
    torch_version, created (ISO 8601 UTC), params, size_bytes, default (bool, optional)

The folder is ``Resources/Models`` of the checkout (or of an installed Slicer extension), found
relative to this package; the environment variable ``TAVIREG_MODELS_DIR`` overrides it. Torch is
imported only by the functions that need it.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

from ..errors import InputError

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = 1
KINDS = ("segmentation", "registration")
ENV_MODELS_DIR = "TAVIREG_MODELS_DIR"
_REQUIRED = ("name", "file", "sha256", "kind")
#: Architectures each kind accepts (a file of another architecture is refused).
ARCHITECTURES = {"segmentation": ("DRUNet",), "registration": None}  # None: any, checked by its user


def models_dir() -> Path:
    """The models folder: ``$TAVIREG_MODELS_DIR``, else the ``Resources/Models`` beside the package.

    Looked for at the checkout's top level (``<repo>/Resources/Models``) and beside the package
    (``<module dir>/Resources/Models``, the layout of an installed Slicer extension); the first one
    that exists wins, else the checkout's path is returned (it may not exist yet).
    """
    env = os.environ.get(ENV_MODELS_DIR)
    if env:
        return Path(env).expanduser()
    pkg = Path(__file__).resolve().parents[1]  # the TAVIRegistrationLib folder
    candidates = [pkg.parents[1] / "Resources" / "Models", pkg.parent / "Resources" / "Models"]
    for c in candidates:
        if c.is_dir():
            return c
    return candidates[0]


def manifest_path(directory: Optional[Union[str, Path]] = None) -> Path:
    return Path(directory if directory is not None else models_dir()) / MANIFEST_NAME


def sha256_file(path: Union[str, Path], chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def load_manifest(directory: Optional[Union[str, Path]] = None) -> List[Dict[str, Any]]:
    """The manifest's entries (an empty list when there is no manifest). InputError if unreadable."""
    path = manifest_path(directory)
    if not path.is_file():
        return []
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"model manifest {path} cannot be read: {exc}") from None
    entries = data.get("models") if isinstance(data, dict) else data
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise InputError(f"model manifest {path} is not a list of model entries")
    for e in entries:
        missing = [k for k in _REQUIRED if not e.get(k)]
        if missing:
            raise InputError(f"model manifest {path}: entry {e.get('name', '?')!r} lacks {', '.join(missing)}")
    return entries


def installed(kind: str, directory: Optional[Union[str, Path]] = None) -> bool:
    """Whether the manifest lists a model of ``kind`` ('segmentation' or 'registration')."""
    try:
        return any(e.get("kind") == kind for e in load_manifest(directory))
    except InputError:
        return False


def find_entry(name_or_kind: str, directory: Optional[Union[str, Path]] = None,
               fov: Optional[str] = None) -> Dict[str, Any]:
    """The entry named ``name_or_kind``; or, for a kind, the default one of that kind.

    Among several entries of a kind: those serving ``fov`` (when given) first, then one marked
    ``"default": true``, then the most recently created.
    """
    entries = load_manifest(directory)
    for e in entries:
        if e["name"] == name_or_kind:
            return e
    if name_or_kind in KINDS:
        pool = [e for e in entries if e["kind"] == name_or_kind]
        if not pool:
            raise InputError(
                f"no {name_or_kind} network is installed in {models_dir_label(directory)} "
                f"(train one with 'tavireg train-{'seg' if name_or_kind == 'segmentation' else 'reg'} --export NAME')"
            )
        if fov:
            serving = [e for e in pool if fov in (e.get("fov") or [])]
            pool = serving or pool
        pool.sort(key=lambda e: (bool(e.get("default")), str(e.get("created", ""))), reverse=True)
        return pool[0]
    known = ", ".join(e["name"] for e in entries) or "none"
    raise InputError(f"network {name_or_kind!r} is not in {manifest_path(directory)} (installed: {known})")


def models_dir_label(directory: Optional[Union[str, Path]] = None) -> str:
    return str(Path(directory) if directory is not None else models_dir())


def verify_entry_file(entry: Dict[str, Any], directory: Optional[Union[str, Path]] = None) -> Path:
    """Path of the entry's file after checking that it exists and that its SHA256 matches."""
    base = Path(directory) if directory is not None else models_dir()
    name = str(entry["file"])
    if Path(name).name != name:
        raise InputError(f"model {entry['name']!r}: file {name!r} must be a plain file name inside {base}")
    path = base / name
    if not path.is_file():
        raise InputError(f"weight file {path} of model {entry['name']!r} is missing")
    digest = sha256_file(path)
    if digest.lower() != str(entry["sha256"]).lower():
        raise InputError(
            f"weight file {path} does not match its manifest entry (SHA256 {digest[:16]}..., "
            f"expected {str(entry['sha256'])[:16]}...): the file is damaged or was replaced; refusing it"
        )
    return path


def load_network_with_entry(name_or_kind: str = "segmentation", device=None,
                          directory: Optional[Union[str, Path]] = None,
                          fov: Optional[str] = None) -> Tuple[Any, Dict[str, Any]]:
    """``(scripted module in eval mode on device, manifest entry)``; see ``load_network``."""
    import torch

    entry = find_entry(name_or_kind, directory, fov=fov)
    path = verify_entry_file(entry, directory)
    dev = torch.device(device) if device is not None else pick_device()
    try:
        with warnings.catch_warnings():  # torch 2.13 marks TorchScript deprecated; still supported
            warnings.filterwarnings("ignore", message=r".*torch\.jit\.load.* is deprecated", category=DeprecationWarning)
            module = torch.jit.load(str(path), map_location=dev)
    except Exception as exc:  # noqa: BLE001 - torch raises many kinds for a bad archive
        msg = " ".join(str(exc).split())[:200]
        raise InputError(f"weight file {path} is not a loadable TorchScript model: {msg}") from None
    module.eval()
    _check_architecture(module, entry, path)
    return module, entry


def load_network(name_or_kind: str = "segmentation", device=None,
               directory: Optional[Union[str, Path]] = None, fov: Optional[str] = None):
    """Load a TorchScript model named in the manifest (or the default one of a kind).

    The file's SHA256 must match the manifest and the module's architecture attributes must match
    the entry; a missing, tampered or wrong file raises InputError. ``device``: a torch device or
    string; default ``pick_device()``.
    """
    return load_network_with_entry(name_or_kind, device, directory, fov)[0]


def _check_architecture(module, entry: Dict[str, Any], path: Path) -> None:
    kind = entry["kind"]
    if kind not in KINDS:
        raise InputError(f"model {entry['name']!r} has unknown kind {kind!r} (expected one of {', '.join(KINDS)})")
    got_arch = _attr(module, "architecture")
    want_arch = entry.get("architecture")
    allowed = ARCHITECTURES.get(kind)
    if allowed is not None and got_arch not in allowed:
        raise InputError(
            f"weight file {path} holds a {got_arch or 'unknown'} network, not a {kind} network "
            f"({' or '.join(allowed)})"
        )
    if want_arch and got_arch is not None and got_arch != want_arch:
        raise InputError(f"weight file {path} holds a {got_arch} network; the manifest says {want_arch}")
    want_c = entry.get("base_channels")
    got_c = _attr(module, "base_channels")
    if want_c is not None and got_c is not None and int(got_c) != int(want_c):
        raise InputError(
            f"weight file {path} has {got_c} base channels; the manifest says {want_c}"
        )


def _attr(module, name: str):
    try:
        return getattr(module, name)
    except (AttributeError, RuntimeError):
        return None


def add_manifest_entry(entry: Dict[str, Any], directory: Optional[Union[str, Path]] = None) -> Dict[str, Any]:
    """Add (or replace, by name) an entry and rewrite the manifest atomically.

    ``sha256`` is computed from the file when absent; ``created``, ``size_bytes`` and
    ``torch_version`` are filled in when absent. Returns the stored entry.
    """
    base = Path(directory) if directory is not None else models_dir()
    entry = dict(entry)
    for k in ("name", "file", "kind"):
        if not entry.get(k):
            raise InputError(f"manifest entry lacks {k!r}")
    if entry["kind"] not in KINDS:
        raise InputError(f"manifest entry kind must be one of {', '.join(KINDS)}, got {entry['kind']!r}")
    path = base / entry["file"]
    if not path.is_file():
        raise InputError(f"cannot add {entry['name']!r} to the manifest: {path} does not exist")
    entry.setdefault("sha256", sha256_file(path))
    entry.setdefault("size_bytes", path.stat().st_size)
    entry.setdefault("created", _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat())
    if "torch_version" not in entry:
        try:
            import torch

            entry["torch_version"] = torch.__version__
        except ImportError:  # pragma: no cover
            entry["torch_version"] = None
    entries = [e for e in load_manifest(base) if e["name"] != entry["name"]]
    entries.append(entry)
    write_json_atomic(manifest_path(base), {"format": MANIFEST_FORMAT, "models": entries})
    return entry


def file_mode() -> int:
    """Permissions of a new ordinary file under the current umask (mkstemp makes 0600 files)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def write_atomic(path: Union[str, Path], write: Callable[[str], None]) -> None:
    """Create or replace ``path`` in one step: ``write(tmp)`` fills a temporary file beside it (with
    the usual permissions), which then takes its place; a failure leaves no partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    os.close(fd)
    try:
        os.chmod(tmp, file_mode())
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def write_json_atomic(path: Union[str, Path], data) -> None:
    """``data`` as indented JSON (numpy values and paths converted), written with ``write_atomic``."""

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2, default=json_default)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())

    write_atomic(path, write)


def json_default(o):
    """``json.dump``'s ``default``: numpy scalars and arrays, paths."""
    try:
        import numpy as np

        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


_INFERENCE: Dict[int, Tuple[Any, Any]] = {}  # id(module) -> (module, its frozen form)


def inference_module(module):
    """``module`` frozen for inference (TorchScript ``freeze`` and ``optimize_for_inference``: batch
    norm folded into the convolutions, weights inlined): the same outputs to float rounding, about a
    third faster for the DRU-Net on a CPU. Made once per module; the module itself when it cannot be
    frozen (not TorchScript, or in training mode)."""
    import torch

    key = id(module)
    if key not in _INFERENCE or _INFERENCE[key][0] is not module:
        frozen = module
        if isinstance(module, torch.jit.ScriptModule) and not module.training:
            try:
                with warnings.catch_warnings():  # TorchScript's deprecation notice is not the user's concern
                    warnings.simplefilter("ignore", DeprecationWarning)
                    frozen = torch.jit.optimize_for_inference(torch.jit.freeze(module))
            except Exception:  # noqa: BLE001 - an unfreezable network runs as it is
                frozen = module
        _INFERENCE[key] = (module, frozen)
    return _INFERENCE[key][1]


def pick_device(force_cpu: bool = False, requested: Optional[str] = None):
    """``torch.device``: ``requested`` ("auto", "cpu", "cuda", "cuda:1"), else cuda when available.

    Asking for cuda where there is none raises InputError.
    """
    import torch

    req = (requested or "auto").strip().lower()
    if force_cpu or req == "cpu":
        return torch.device("cpu")
    if req == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if req.startswith("cuda"):
        if not torch.cuda.is_available():
            raise InputError(f"device {requested!r} asked for, but no CUDA GPU is available here")
        try:
            dev = torch.device(req)
        except RuntimeError:
            raise InputError(f"bad device {requested!r}") from None
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise InputError(f"device {requested!r}: only {torch.cuda.device_count()} GPU(s) here")
        return dev
    raise InputError(f"device must be auto, cpu or cuda[:N], got {requested!r}")
