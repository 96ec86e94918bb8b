"""What ``train-seg`` and ``train-reg`` share: the training run around a network.

* ``TrainingConfig``: the options every trainer takes (a trainer's config extends it and sets the
  defaults of ``epochs``, ``lr`` and ``size``), their checks, the command line that reproduces a
  run's weights (its options are declared in ``cli.train``).
* Data sets: ``natural_key``, ``read_case_index`` (the rows of a case index CSV,
  patient-wise split checked), ``split_patients`` (seeded patient-wise validation split) and
  ``split_record``, ``finite_median`` (validation medians).
* ``setup_distributed``/``Distributed``: device choice, deterministic algorithms, torchrun/DDP
  (NCCL on GPUs, gloo on CPUs; rank 0 validates, checkpoints and exports).
* ``lr_at``: cosine learning-rate decay over the planned epochs.
* ``Logger``: tqdm progress bar and per-epoch lines on stderr (rank 0 only).
* Checkpoints: ``save_atomic`` (torch or JSON), ``load_checkpoint(path, kind)``,
  ``save_scripted_atomic`` (TorchScript file and its SHA256).
* ``TrainingRun``: resume, or start from ``--init`` weights (fine-tuning), DDP wrapping, the epoch
  loop (time limit, validation, ``last.pt`` / ``best.pt`` / ``history.json``), the summary and
  ``export_with_manifest``.

Nothing here knows what the network does: the trainers pass their model, loss, validation and
manifest fields in. Torch is imported lazily so that building the CLI's parser stays cheap.
"""

from __future__ import annotations

import csv
import math
import os
import re
import sys
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import InputError
from ..reproduce import argv_text, command_text

CHECKPOINT_FORMAT = 1
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_SPLITS = ("train", "val", "test")


# ---------------------------------------------------------------------------------------------
# configuration and command line
# ---------------------------------------------------------------------------------------------
@dataclass
class TrainingConfig:
    """The options of every trainer; a trainer's config extends it (and gives ``epochs``, ``lr`` and
    ``size`` their defaults), sets ``SUBCOMMAND`` and ``COMMAND_OPTIONS`` and checks its own fields
    in ``check`` after calling this one."""

    data: List[str]
    out: str
    epochs: int
    lr: float
    size: int
    batch_size: int = 8
    weight_decay: float = 1e-4
    seed: int = 0
    #: seed of the patient-wise validation split (None: ``seed``), so runs that differ only in ``seed``
    #: (an ensemble or soup of seeds) can validate on, and never train on, the same patients
    split_seed: Optional[int] = None
    val_fraction: float = 0.2
    #: cross-validation: "K/N" holds out the K-th of N seeded folds of each data set's free patients
    #: instead of ``val_fraction`` of them (None: no folds)
    val_fold: Optional[str] = None
    device: str = "auto"
    max_minutes: Optional[float] = None
    stop_epoch: Optional[int] = None
    resume: Optional[str] = None  # None, "last" or a checkpoint path
    #: starting weights (fine-tuning): checkpoints of this trainer or installed models' manifest names;
    #: several: the mean of their weights (a model soup). A single text (older checkpoints) is one source.
    init: Optional[List[str]] = None
    export: Optional[str] = None
    export_dir: Optional[str] = None
    progress: bool = True
    #: data-preparation worker processes (0 = in the training process); results do not depend on it
    workers: int = 0
    #: torch intra-op threads (None = torch's default); results do not depend on it
    threads: Optional[int] = None

    #: the CLI subcommand, and the fields its reproducing command spells out after ``--data``, in order
    SUBCOMMAND = ""
    COMMAND_OPTIONS = ()  # type: Tuple[str, ...]

    def check(self) -> None:
        if self.epochs < 0 or (self.epochs == 0 and (not self.init or self.resume)):
            raise InputError(f"--epochs must be >= 1 (0 only with --init and without --resume: validate and export "
                             f"the starting weights), got {self.epochs}")
        if self.batch_size < 1:
            raise InputError(f"--batch-size must be >= 1, got {self.batch_size}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise InputError(f"--lr must be a positive number, got {self.lr}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise InputError(f"--val-fraction must lie in [0, 1), got {self.val_fraction}")
        parse_fold(self.val_fold)
        for name in ("seed", "split_seed"):
            if getattr(self, name) is not None and getattr(self, name) < 0:
                raise InputError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        if self.max_minutes is not None and not self.max_minutes > 0:
            raise InputError(f"--max-minutes must be positive, got {self.max_minutes}")
        if self.stop_epoch is not None and not 1 <= self.stop_epoch <= self.epochs:
            raise InputError(f"--stop-epoch must lie in 1-{self.epochs}, got {self.stop_epoch}")
        if not 0 <= self.workers <= 64:
            raise InputError(f"--workers must lie in 0-64, got {self.workers}")
        if self.threads is not None and not 1 <= self.threads <= 256:
            raise InputError(f"--threads must lie in 1-256, got {self.threads}")
        if self.export is not None and not _NAME_RE.match(self.export):
            raise InputError(f"--export name {self.export!r} must be letters, digits, '.', '_' or '-' (up to 64)")

    def command_flags(self) -> List[str]:
        """Switches of the reproducing command (after the options of ``COMMAND_OPTIONS``)."""
        return []

    def command(self, world_size: int = 1) -> str:
        """The command line that reproduces this run's weights (resume and time limit left out)."""
        parts = [self.SUBCOMMAND]
        for d in self.data:
            parts += ["--data", str(d)]
        for name in self.COMMAND_OPTIONS:
            parts += ["--" + name.replace("_", "-"), _option_text(getattr(self, name))]
        if self.split_seed is not None:
            parts += ["--split-seed", str(self.split_seed)]
        if self.val_fold is not None:
            parts += ["--val-fold", str(self.val_fold)]
        parts += self.command_flags()
        for source in init_sources(self.init):
            parts += ["--init", source]
        if self.stop_epoch is not None:
            parts += ["--stop-epoch", str(self.stop_epoch)]
        parts += ["--out", str(self.out)]
        if self.export:
            parts += ["--export", self.export]
        if self.export_dir:
            parts += ["--export-dir", str(self.export_dir)]
        prefix = ["tavireg"] if world_size <= 1 else [
            "torchrun", f"--nproc_per_node={world_size}", "-m", "TAVIRegistrationLib.cli"]
        return command_text(prefix + parts)

    @classmethod
    def from_args(cls, args):
        """The configuration of parsed command-line arguments (options named like the fields)."""
        given = vars(args)
        values = {f.name: given[f.name] for f in fields(cls) if f.name in given}
        values.update(data=list(args.data), out=str(args.out), progress=not args.quiet,
                      export_dir=str(args.export_dir) if args.export_dir else None)
        return cls(**values)


def init_sources(init) -> List[str]:
    """``TrainingConfig.init`` as a list (None: none; a text, as older checkpoints store it: one)."""
    if not init:
        return []
    return [str(init)] if isinstance(init, (str, Path)) else [str(v) for v in init]


def average_states(states: Sequence[Dict[str, Any]], names: Sequence[str]) -> Dict[str, Any]:
    """The mean of several state dicts of one network (a model soup: floating-point tensors averaged,
    integer buffers such as batch-norm counters taken from the first). Networks that differ in
    their tensors' names or shapes are refused."""
    first = states[0]
    for state, name in zip(states[1:], names[1:]):
        if set(state) != set(first) or any(state[k].shape != first[k].shape for k in first):
            raise InputError(f"--init {names[0]} and {name} are different networks: their weights cannot be averaged")
    return {k: (sum(st[k].double() for st in states) / len(states)).to(first[k].dtype)
            if first[k].is_floating_point() else first[k].clone() for k in first}


def _option_text(value) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (tuple, list)):
        return ",".join(_option_text(v) for v in value)
    return str(value)


# ---------------------------------------------------------------------------------------------
# data sets
# ---------------------------------------------------------------------------------------------
def natural_key(s: str):
    """Sort key that orders "2" before "10"."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]


@dataclass
class CaseRow:
    """One non-``test`` row of a case index CSV."""

    line: int
    values: Dict[str, str]  # column -> stripped text
    patient: str  # "<csv stem>:<patient>"
    split: str  # "train", "val", "test" (only with include_test) or "" (assigned by split_patients)


def read_case_index(csv_path: Path, columns: Sequence[str], missing_hint: str = "",
                    include_test: bool = False) -> Tuple[List[CaseRow], int]:
    """The rows of a case index CSV that are not ``test`` ones (every row with ``include_test``: a data
    set used only to validate), and how many ``test`` rows it has.

    ``columns`` must be present (``missing_hint`` is added to the message when some are not); every
    row needs a patient and a split of ``train``, ``val``, ``test`` or empty (``auto`` = empty), and a
    patient's rows must all be on one side of the split.
    """
    try:
        with open(csv_path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            cols = [c.strip() for c in (reader.fieldnames or [])]
            rows = [{(k or "").strip(): (v or "").strip() for k, v in r.items()} for r in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"cannot read case index {csv_path}: {exc}") from None
    missing = [c for c in columns if c not in cols]
    if missing:
        raise InputError(f"case index {csv_path.name} lacks the column(s) {', '.join(missing)}{missing_hint}")
    out: List[CaseRow] = []
    skipped = 0
    sides: Dict[str, set] = {}
    for i, r in enumerate(rows, start=2):
        split = r["split"].lower()
        if split not in ("", "auto") + _SPLITS:
            raise InputError(f"{csv_path.name} line {i}: split must be train, val, test or empty, got {r['split']!r}")
        if not r["patient"]:
            raise InputError(f"{csv_path.name} line {i}: empty patient")
        patient = f"{csv_path.stem}:{r['patient']}"
        sides.setdefault(patient, set()).add(split if split in _SPLITS else "auto")
        if split == "test":
            skipped += 1
            if not include_test:
                continue
        out.append(CaseRow(i, r, patient, split if split in _SPLITS else ""))
    for patient, s in sides.items():
        if len(s & set(_SPLITS)) > 1 or ("auto" in s and len(s) > 1):
            raise InputError(
                f"case index {csv_path.name}: patient {patient.split(':', 1)[1]!r} has frames in several splits "
                f"({', '.join(sorted(s))}); the split must be patient-wise"
            )
    return out, skipped


def row_fov_and_frame(values: Dict[str, str], where: str) -> Tuple[str, int]:
    """A case-index row's FoV (``upper``/``lower``) and frame number (empty = 0); an InputError
    naming ``where`` (e.g. "index.csv line 7") otherwise."""
    from ..segmentation import FOVS

    fov = values["fov"].lower()
    if fov not in FOVS:
        raise InputError(f"{where}: fov must be upper or lower, got {values['fov']!r}")
    try:
        return fov, int(values["frame"]) if values["frame"] else 0
    except ValueError:
        raise InputError(f"{where}: frame must be an integer, got {values['frame']!r}") from None


def parse_fold(text: Optional[str]) -> Optional[Tuple[int, int]]:
    """``--val-fold K/N`` as (K, N) with 1 <= K <= N, 2 <= N <= 100; None stays None."""
    if text is None:
        return None
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
    if not m or not (2 <= int(m.group(2)) <= 100 and 1 <= int(m.group(1)) <= int(m.group(2))):
        raise InputError(f"--val-fold must be K/N with 1 <= K <= N and 2 <= N <= 100, got {text!r}")
    return int(m.group(1)), int(m.group(2))


def split_patients(samples: List[Any], val_fraction: float, seed: int,
                   fold: Optional[str] = None) -> Tuple[List[Any], List[Any]]:
    """Patient-wise (train, val) of samples with ``patient``, ``source`` and ``split``: given splits
    kept, the rest split per data set (``source``) by a seeded shuffle: its first ``val_fraction``,
    or with ``fold`` = "K/N" its K-th of N near-equal consecutive parts (the folds of one seed
    partition the patients)."""
    rng = np.random.default_rng(seed)
    k_n = parse_fold(fold)
    val_patients = set()
    for source in sorted({s.source for s in samples}):
        free = sorted({s.patient for s in samples if s.source == source and not s.split}, key=natural_key)
        if not free or (val_fraction <= 0 and k_n is None):
            continue
        order = rng.permutation(len(free))  # drawn for every data set, so later data sets' splits stay put
        if len(free) == 1:
            order = order[:0]  # a data set of one patient keeps it for training
        if k_n is not None:
            part = np.array_split(order, k_n[1])[k_n[0] - 1]
        else:
            part = order[:max(1, int(round(val_fraction * len(free))))]
        val_patients.update(free[i] for i in part)
    train, val = [], []
    for s in samples:
        is_val = s.split == "val" or (not s.split and s.patient in val_patients)
        (val if is_val else train).append(s)
    if not train:
        raise InputError("the validation split took every patient: lower --val-fraction or add data")
    return train, val


def split_record(train: Iterable[Any], val: Iterable[Any]) -> Dict[str, List[str]]:
    """The patients on each side of a split, as checkpoints and the manifest record them."""
    return {"train_patients": sorted({s.patient for s in train}, key=natural_key),
            "val_patients": sorted({s.patient for s in val}, key=natural_key)}


def finite_median(values: Iterable[float]) -> Optional[float]:
    """Median of the finite values, None when there are none."""
    v = np.asarray(list(values), float)
    v = v[np.isfinite(v)]
    return float(np.median(v)) if v.size else None


# ---------------------------------------------------------------------------------------------
# devices, distribution, schedule, logging
# ---------------------------------------------------------------------------------------------
@dataclass
class Distributed:
    """This process's place in a torchrun job (world 1: a plain run)."""

    world: int = 1
    rank: int = 0
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    def agree(self, flag: bool) -> bool:
        """Rank 0's decision, for every rank."""
        if self.world <= 1:
            return flag
        import torch
        import torch.distributed as dist

        t = torch.tensor([1.0 if flag else 0.0])
        if dist.get_backend() == "nccl":
            t = t.cuda()
        dist.broadcast(t, 0)
        return bool(t.item() > 0.5)

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()

    def close(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.destroy_process_group()


def setup_distributed(requested_device: str):
    """``(Distributed, torch.device)``: the device asked for (``models.pick_device``), deterministic
    algorithms (warn only), cuDNN benchmark off, and under torchrun the process group."""
    import torch

    from ..networks.weights import pick_device

    dist_info = Distributed(int(os.environ.get("WORLD_SIZE", "1") or 1), int(os.environ.get("RANK", "0") or 0),
                            int(os.environ.get("LOCAL_RANK", "0") or 0))
    device = pick_device(requested=requested_device)
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    torch.use_deterministic_algorithms(True, warn_only=True)
    if dist_info.world > 1:
        import torch.distributed as dist

        if device.type == "cuda":
            torch.cuda.set_device(dist_info.local_rank)
            device = torch.device("cuda", dist_info.local_rank)
        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return dist_info, device


def lr_at(config: TrainingConfig, epoch: int) -> float:
    """Cosine decay from lr to lr/20 over the planned epochs."""
    return config.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * epoch / config.epochs)))


class Logger:
    """tqdm progress bars and lines on stderr; silent when disabled (``--quiet``, ranks other than 0)."""

    def __init__(self, enabled: bool):
        self.enabled = enabled

    def bar(self, items, desc: str):
        if not self.enabled:
            return items
        from tqdm import tqdm

        return tqdm(items, desc=desc, unit="batch", leave=False, file=sys.stderr, dynamic_ncols=True)

    def line(self, text: str) -> None:
        if self.enabled:
            from tqdm import tqdm

            tqdm.write(text, file=sys.stderr)


# ---------------------------------------------------------------------------------------------
# checkpoints and TorchScript files
# ---------------------------------------------------------------------------------------------
def save_atomic(obj, path: Path) -> None:
    """``obj`` to ``path`` in one step: JSON for a ``.json`` path, else ``torch.save``."""
    from ..networks.weights import write_atomic, write_json_atomic

    if isinstance(obj, (dict, list)) and path.suffix == ".json":
        write_json_atomic(path, obj)
        return
    import torch

    write_atomic(path, lambda tmp: torch.save(obj, tmp))


def load_checkpoint(path: Path, kind: str, accept_unnamed: bool = False) -> Dict[str, Any]:
    """A checkpoint written by the trainer ``kind`` (e.g. "train-reg"); ``accept_unnamed`` also takes
    one that names no kind (written before checkpoints recorded theirs). InputError otherwise."""
    import torch

    if not path.is_file():
        raise InputError(f"checkpoint {path} does not exist (nothing to resume)")
    try:
        ck = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"checkpoint {path} cannot be read: {' '.join(str(exc).split())[:160]}") from None
    if (not isinstance(ck, dict) or ck.get("format") != CHECKPOINT_FORMAT or "model" not in ck
            or ck.get("kind", kind if accept_unnamed else None) != kind):
        raise InputError(f"{path} is not a {kind} checkpoint")
    return ck


def history_minutes(history: Sequence[Dict[str, Any]]) -> float:
    """Minutes of training in a run's history (each epoch's own seconds, resumed runs included)."""
    return round(sum(float(r.get("seconds", 0.0)) for r in history) / 60, 2)


def save_scripted_atomic(scripted, target_dir: Path, file_name: str) -> Tuple[Path, str]:
    """A scripted module saved as ``target_dir/file_name`` in one step; ``(path, SHA256)``."""
    from ..networks.weights import sha256_file, write_atomic

    digest: List[str] = []

    def write(tmp: str) -> None:
        scripted.save(tmp)
        digest.append(sha256_file(tmp))

    final = target_dir / file_name
    write_atomic(final, write)
    return final, digest[0]


# ---------------------------------------------------------------------------------------------
# the training run
# ---------------------------------------------------------------------------------------------
def _init_hashes(record: Dict[str, Any]) -> List[Optional[str]]:
    return [r.get("sha256") for r in record.get("average_of", [record])]


class _PreparedBatches:
    """A map-style data set whose item ``b`` is ``prepare(b, batches[b])`` (for ``DataLoader`` workers)."""

    def __init__(self, batches: List[List[int]], prepare: Callable[[int, List[int]], Any]):
        self.batches, self.prepare = batches, prepare

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, b: int):
        return self.prepare(int(b), self.batches[b])


class TrainingRun:
    """One training command around a trainer's network: set-up, resume, the epoch loop with
    checkpoints, the summary and the export. Typical use::

        run = TrainingRun(config, "train-xyz")       # checks config, devices, torchrun
        samples, described = load_data(config)
        train_set, val_set = run.split_data(samples, described)
        ... model, optimiser ...
        run.resume(model, opt, keys)                 # when config.resume
        net, model = run.parallel(model)             # DDP under torchrun
        run.fit(model, net, opt, train_epoch, validate, describe, n_params)
        return run.finish(n_params, {...}, build_model=..., script_model=..., manifest_fields=...)
    """

    def __init__(self, config: TrainingConfig, checkpoint_kind: str, accept_unnamed: bool = False):
        config.check()
        self.t_start = time.monotonic()
        self.config = config
        self.checkpoint_kind = checkpoint_kind
        self.accept_unnamed = accept_unnamed
        self.out_dir = Path(config.out)
        self.dist, self.device = setup_distributed(config.device)
        if config.threads is not None:
            import torch

            torch.set_num_threads(int(config.threads))
        self.log = Logger(config.progress and self.dist.main)
        self.start_epoch, self.history, self.best = 0, [], None
        self.epochs_done, self.stopped_by_time = 0, False
        self.split: Dict[str, Any] = {}
        self.described: List[Dict[str, Any]] = []
        self.init_record: Optional[Dict[str, Any]] = None
        self._init_state: Optional[Dict[str, Any]] = None  # read by split_data, loaded by resume

    def load_checkpoint(self, path: Path) -> Dict[str, Any]:
        return load_checkpoint(path, self.checkpoint_kind, self.accept_unnamed)

    @property
    def resume_path(self) -> Path:
        return self.out_dir / "last.pt" if self.config.resume == "last" else Path(self.config.resume)

    @property
    def per_rank_batch(self) -> int:
        return max(1, self.config.batch_size // self.dist.world)

    def split_data(self, samples: List[Any], described: List[Dict[str, Any]]) -> Tuple[List[Any], List[Any]]:
        """``(train, val)`` of ``split_patients``, recorded with the data sets' description for the
        checkpoints; first (before anything is written) the checkpoint to resume from must be
        readable and the output folder writable."""
        from ..outputs import check_writable_dir

        if self.config.resume:
            self.load_checkpoint(self.resume_path)
        elif self.config.init:
            self._init_state = self.init_weights()
        check_writable_dir(self.out_dir)
        split_seed = self.config.seed if self.config.split_seed is None else self.config.split_seed
        train, val = split_patients(samples, self.config.val_fraction, split_seed, self.config.val_fold)
        self.split, self.described = split_record(train, val), described
        return train, val

    def init_weights(self) -> Dict[str, Any]:
        """The ``--init`` weights (a state dict; the mean of several sources' ``average_states``): each a
        checkpoint of this trainer, or the TorchScript file of an installed model (hash-checked);
        remembered (``describe_init``) for the manifest."""
        from ..networks.weights import load_network_with_entry

        states, records = [], []
        sources = init_sources(self.config.init)
        for source in sources:
            path = Path(source)
            if path.is_file():
                ck = self.load_checkpoint(path)
                states.append(ck["model"])
                records.append(self.describe_init(source, ck))
            else:
                records.append(self.describe_init(source))
                module, _ = load_network_with_entry(source, "cpu")
                states.append({k: v.detach().clone() for k, v in module.state_dict().items()})
        self.init_record = self.combine_init_records(records)
        return states[0] if len(states) == 1 else average_states(states, sources)

    @staticmethod
    def combine_init_records(records: List[Dict[str, Any]]) -> Dict[str, Any]:
        """One source's record, or for a soup ``{"average_of": [records], "rule": ...}``."""
        if len(records) == 1:
            return records[0]
        return {"average_of": records, "rule": "mean of the networks' weights (model soup); integer buffers "
                                               "from the first"}

    def describe_init(self, source: str, ck: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
        """What one ``--init`` source names, for the manifest: the file and its SHA256, and how those
        weights were made (the command that trained them, the epoch, the minutes and, recursively,
        their own ``init``), so that a network fine-tuned in stages records every stage. ``ck``: the
        checkpoint when it is one (already read)."""
        from ..networks.weights import find_entry, models_dir, sha256_file

        path = Path(source)
        if path.is_file():
            ck = ck if ck is not None else self.load_checkpoint(path)
            known = {f.name for f in fields(type(self.config))}
            cfg = type(self.config)(**{k: v for k, v in (ck.get("config") or {}).items() if k in known})
            return {"checkpoint": str(path), "sha256": sha256_file(path), "epoch": ck.get("epoch"),
                    "command": cfg.command(),
                    "train_minutes": history_minutes(ck.get("history") or []),
                    **({"init": ck["init"]} if ck.get("init") else {})}
        try:
            entry = find_entry(source)
        except InputError:
            raise InputError(f"--init {source}: neither a checkpoint file nor an installed model") from None
        return {"model": entry["name"], "file": str(models_dir() / entry["file"]), "sha256": entry["sha256"],
                **{k: entry[k] for k in ("command", "init") if entry.get(k)},
                **({"train_minutes": entry["metrics"]["train_minutes"]}
                   if (entry.get("metrics") or {}).get("train_minutes") is not None else {})}

    def resume(self, model, opt, keys: Sequence[str], adapt_init: Optional[Callable] = None) -> bool:
        """Weights, optimiser, epoch, history and best of the checkpoint to resume from (False when
        not resuming); its config must agree on ``keys`` and its split must be this run's. When not
        resuming, the ``--init`` weights (if any) are loaded into ``model`` (the network must be the
        same: a mismatch is an InputError). ``adapt_init(state, model) -> (state, note or None)`` may
        first fit the weights to ``model`` (e.g. widen them); its note is logged and recorded in the
        manifest's ``init`` (``adapted``)."""
        if not self.config.resume:
            if self.config.init:
                state, self._init_state = self._init_state or self.init_weights(), None
                note = None
                if adapt_init is not None:
                    state, note = adapt_init(state, model)
                try:
                    model.load_state_dict(state)
                except RuntimeError as exc:
                    first = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
                    raise InputError(f"--init {' + '.join(init_sources(self.config.init))}: its network differs "
                                     f"from this run's ({first})") from None
                self.log.line(f"started from the weights of {' + '.join(init_sources(self.config.init))}")
                if note:
                    self.init_record = {**(self.init_record or {}), "adapted": note}
                    self.log.line(note)
            return False
        ck_path = self.resume_path
        ck = self.load_checkpoint(ck_path)
        old = ck.get("config", {})
        defaults = {f.name: f.default for f in fields(self.config)}
        for key in keys:
            was = old.get(key, defaults.get(key))  # an option newer than the checkpoint: it ran with the default
            if was != getattr(self.config, key):
                raise InputError(f"cannot resume {ck_path}: it was trained with {key}={was!r}, "
                                 f"this run asks for {getattr(self.config, key)!r}")
        if ck.get("split") != self.split:
            raise InputError(f"cannot resume {ck_path}: the training/validation patients differ from the checkpoint's")
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        self.start_epoch, self.history, self.best = int(ck["epoch"]), list(ck.get("history", [])), ck.get("best")
        self.init_record = ck.get("init")
        if self.init_record and self.config.init:  # the same start files still there: their full description
            try:
                fresh = self.combine_init_records([self.describe_init(s) for s in init_sources(self.config.init)])
            except InputError:
                fresh = None
            if fresh and _init_hashes(fresh) == _init_hashes(self.init_record):
                self.init_record = fresh
        self.log.line(f"resumed from {ck_path} after epoch {self.start_epoch}")
        return True

    def parallel(self, model):
        """``(net to train, model)``: under torchrun ``net`` is the DDP wrapper (batch norm synchronised
        on GPUs) and ``model`` its module; else both are ``model``."""
        if self.dist.world <= 1:
            return model, model
        import torch
        from torch.nn.parallel import DistributedDataParallel as DDP

        if self.device.type == "cuda":
            net = DDP(torch.nn.SyncBatchNorm.convert_sync_batchnorm(model), device_ids=[self.device.index])
        else:
            net = DDP(model)
        return net, net.module

    def train_epoch(self, net, opt, epoch: int, order: Sequence[int], loss_of: Callable[[int, Any], Any],
                    grad_clip: Optional[float] = None, prepare: Optional[Callable[[int, List[int]], Any]] = None
                    ) -> float:
        """One epoch over this rank's sample indices ``order`` in batches of ``per_rank_batch``: the
        epoch's learning rate (times a parameter group's ``lr_scale``), then per batch ``b`` the loss
        ``loss_of(b, data)`` and a step (gradient norm clipped at ``grad_clip``). The mean loss.

        ``data`` is the batch's list of indices, or ``prepare(b, indices)`` when ``prepare`` is given:
        the CPU work that makes a batch (it must depend on ``b`` and the indices only), run in
        ``config.workers`` worker processes (``torch.utils.data.DataLoader``, forked) while the
        network trains on the previous batch."""
        import torch

        for group in opt.param_groups:
            group["lr"] = lr_at(self.config, epoch) * float(group.get("lr_scale", 1.0))
        k = self.per_rank_batch
        batches = [list(order[i:i + k]) for i in range(0, len(order), k)]
        net.train()
        total, count = 0.0, 0
        bar = self.log.bar(range(len(batches)), desc=f"epoch {epoch + 1}/{self.config.epochs}")
        if prepare is None:
            items: Iterable[Any] = batches
        elif self.config.workers > 0:
            items = torch.utils.data.DataLoader(_PreparedBatches(batches, prepare), batch_size=None, shuffle=False,
                                                num_workers=int(self.config.workers), prefetch_factor=4,
                                                multiprocessing_context="fork")
        else:
            items = (prepare(b, idx) for b, idx in enumerate(batches))
        for b, data in zip(bar, items):
            loss = loss_of(b, data)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(net.parameters(), grad_clip)
            opt.step()
            total += float(loss.detach()) * len(batches[b])
            count += len(batches[b])
            if hasattr(bar, "set_postfix"):
                bar.set_postfix(loss=f"{total / count:.4f}")
        return total / max(count, 1)

    def fit(self, model, net, opt, train_epoch: Callable[[int], float],
            validate: Callable[[], Optional[Tuple[Dict[str, Any], float]]], describe: Callable[[Dict[str, Any]], str],
            params: int, first_record: Optional[Dict[str, Any]] = None) -> None:
        """The epochs from ``start_epoch`` to ``--stop-epoch``/``--epochs``, stopping early when the
        next epoch would pass ``--max-minutes``. Each epoch: ``train_epoch(epoch)``; on rank 0
        ``validate()`` (``(metrics, score)`` or None) decides ``best.pt`` (higher score is better),
        ``last.pt`` and ``history.json`` are written and ``describe(metrics)`` is logged.
        ``first_record`` is added to the record of epoch 1. With ``--epochs 0`` (``--init`` only) the
        starting weights are validated and saved as epoch 0, so that they can be exported."""
        config, dist, log = self.config, self.dist, self.log
        if config.epochs == 0:
            if dist.main:
                record: Dict[str, Any] = {"epoch": 0, "train_loss": None, "lr": 0.0, "seconds": 0.0}
                validated = validate()
                if validated is not None:
                    record["val"], score = validated
                    self.best = {"epoch": 0, "score": score, "metrics": record["val"]}
                self.history.append(record)
                self._save_epoch(model, opt, 0, params, improved=validated is not None)
                log.line("--epochs 0: the starting weights, not trained" + (describe(record["val"]) if validated else ""))
            dist.barrier()
            return
        epoch_times: List[float] = []
        stopped = False
        epoch = self.start_epoch
        for epoch in range(self.start_epoch, config.stop_epoch or config.epochs):
            if config.max_minutes is not None and epoch > self.start_epoch:
                elapsed = time.monotonic() - self.t_start
                stopped = dist.agree(elapsed + max(epoch_times[-3:]) > 60 * config.max_minutes)
                if stopped:
                    break
            t0 = time.monotonic()
            loss_avg = train_epoch(epoch)
            epoch_times.append(time.monotonic() - t0)
            record: Dict[str, Any] = {"epoch": epoch + 1, "train_loss": loss_avg, "lr": lr_at(config, epoch),
                                      "seconds": round(epoch_times[-1], 2)}
            if first_record is not None and epoch == 0:
                record.update(first_record)
            if dist.main:
                improved = False
                validated = validate()
                if validated is not None:
                    record["val"], score = validated
                    if self.best is None or score > self.best["score"]:
                        self.best = {"epoch": epoch + 1, "score": score, "metrics": record["val"]}
                        improved = True
                self.history.append(record)
                self._save_epoch(model, opt, epoch + 1, params, improved)
                val_txt = describe(record["val"]) if "val" in record else ""
                log.line(f"epoch {epoch + 1}/{config.epochs}: loss {loss_avg:.4f}{val_txt} [{epoch_times[-1]:.1f} s]")
            dist.barrier()
        self.epochs_done = len(self.history) if dist.main else epoch + 1
        self.stopped_by_time = stopped

    def _save_epoch(self, model, opt, epoch: int, params: int, improved: bool) -> None:
        """``last.pt`` (and ``best.pt`` when ``improved``) and ``history.json`` after ``epoch``."""
        import torch

        ck = {"format": CHECKPOINT_FORMAT, "kind": self.checkpoint_kind, "model": model.state_dict(),
              "optimizer": opt.state_dict(), "epoch": epoch, "history": self.history, "best": self.best,
              "config": asdict(self.config), "split": self.split, "params": params, "init": self.init_record,
              "torch_version": torch.__version__}
        save_atomic(ck, self.out_dir / "last.pt")
        if improved:
            save_atomic({**ck, "optimizer": None}, self.out_dir / "best.pt")
        save_atomic({"history": self.history, "best": self.best, "split": self.split, "data": self.described},
                    self.out_dir / "history.json")

    def finish(self, params: int, extra: Dict[str, Any], *, build_model: Callable[[], Any],
               script_model: Callable[[Any], Any],
               manifest_fields: Callable[[Any, Dict[str, Any]], Tuple]) -> Dict[str, Any]:
        """The summary (``extra`` added), the export when ``--export`` asks for one (rank 0; see
        ``export_with_manifest``), and the end of the process group."""
        summary: Dict[str, Any] = {"out": str(self.out_dir), "epochs_done": self.epochs_done, "params": params,
                                   "device": str(self.device), "world_size": self.dist.world, "best": self.best,
                                   "stopped_by_time": self.stopped_by_time, **extra,
                                   "train_minutes": round((time.monotonic() - self.t_start) / 60, 2)}
        if self.stopped_by_time:
            self.log.line(f"stopped after epoch {self.epochs_done}: --max-minutes {self.config.max_minutes:g} reached")
        if self.config.export and self.dist.main:
            summary["export"] = self.export_with_manifest(summary, build_model, script_model, manifest_fields)
            self.log.line(f"exported {summary['export']['file']} (sha256 {summary['export']['sha256'][:16]}...) "
                          f"to {summary['export']['models_dir']}")
        self.dist.barrier()
        self.dist.close()
        return summary

    def export_with_manifest(self, summary: Dict[str, Any], build_model: Callable[[], Any],
                             script_model: Callable[[Any], Any],
                             manifest_fields: Callable[[Any, Dict[str, Any]], Tuple]) -> Dict[str, Any]:
        """``best.pt`` (else ``last.pt``) into ``build_model()``, ``script_model``-ed to ``NAME.pt`` in
        ``--export-dir`` (default ``models.models_dir()``), and its manifest entry.

        ``manifest_fields(model, checkpoint)`` gives ``(fields, metrics, loss)``: the trainer's entry
        fields (``kind``, ``architecture`` ...), its validation metrics and its loss description; the
        entry adds the file, its SHA256, the data, the validation patients, the checkpoint's epoch, the
        run's facts and the command that reproduces the file.
        """
        import torch

        from ..networks.weights import add_manifest_entry, models_dir
        from ..outputs import check_writable_dir

        config, out_dir = self.config, self.out_dir
        ck = self.load_checkpoint(out_dir / "best.pt" if (out_dir / "best.pt").is_file() else out_dir / "last.pt")
        model = build_model()
        model.load_state_dict(ck["model"])
        target_dir = Path(config.export_dir) if config.export_dir else models_dir()
        check_writable_dir(target_dir)
        final, digest = save_scripted_atomic(script_model(model), target_dir, f"{config.export}.pt")
        best = ck.get("best") or {}
        epochs_done, world = summary["epochs_done"], summary["world_size"]
        repro = replace(config, stop_epoch=epochs_done, max_minutes=None) if summary["stopped_by_time"] else config
        entry_fields, metrics, loss = manifest_fields(model, ck)
        entry = {
            "name": config.export,
            "file": final.name,
            "sha256": digest,
            **entry_fields,
            "trained_on": self.described,
            "validation_patients": self.split["val_patients"],
            "metrics": {
                **metrics,
                "checkpoint_epoch": best.get("epoch", ck.get("epoch")),
                "epochs_trained": epochs_done,
                # the epochs' own time, resumed runs included (this process may only have exported)
                "train_minutes": history_minutes(self.history),
                "device": summary.get("device"),
                "world_size": world,
            },
            "loss": loss,
            **({"init": self.init_record} if self.init_record else {}),
            "seed": config.seed,
            "command": repro.command(world),
            "argv": argv_text(),
            "torch_version": torch.__version__,
        }
        stored = add_manifest_entry(entry, target_dir)
        return {"file": str(final), "sha256": digest, "models_dir": str(target_dir), "entry": stored}
