"""Benchmarks (``tavireg bench``): timings are measured here, never asserted in unit tests.

Each benchmark returns a JSON-serialisable dict with the machine it ran on, so figures reported in
the documentation can be reproduced with the same command.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from typing import Dict, List, Optional, Sequence

import numpy as np


def machine_facts() -> Dict[str, object]:
    facts: Dict[str, object] = {
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
    }
    try:
        from vtkmodules.vtkCommonCore import vtkVersion

        facts["vtk"] = vtkVersion.GetVTKVersion()
    except ImportError:  # pragma: no cover
        pass
    return facts


def dense_sphere(n_triangles: int):
    """A closed sphere of radius 40 mm with about ``n_triangles`` triangles."""
    from vtkmodules.vtkFiltersSources import vtkSphereSource

    res = max(8, int(round((n_triangles / 2.0) ** 0.5)))
    s = vtkSphereSource()
    s.SetRadius(40.0)
    s.SetThetaResolution(res)
    s.SetPhiResolution(res + 2)
    s.Update()
    return s.GetOutput()


def timing_summary(samples: List[float]) -> Dict[str, float]:
    ms = [1000.0 * s for s in samples]
    return {
        "median_ms": statistics.median(ms),
        "p90_ms": float(np.percentile(ms, 90)),
        "min_ms": min(ms),
        "n": len(ms),
    }


def bench_projection(polydata=None, sizes: Sequence[int] = (512, 1024), repeats: int = 30,
                     with_depth: bool = False, progress=None) -> Dict[str, object]:
    """Median render + z-buffer read-back time of a model at each detector size.

    The angles change between repeats (as between cine frames), so nothing is served from a cache.
    """
    from ..geometry import CArmGeometry
    from ..projection import ProjectionRenderer

    if polydata is None:
        polydata = dense_sphere(200_000)
    result: Dict[str, object] = {
        "benchmark": "projection",
        "triangles": int(polydata.GetNumberOfCells()),
        "with_depth": with_depth,
        "machine": machine_facts(),
        "sizes": {},
    }
    with ProjectionRenderer(polydata) as renderer:
        for size in sizes:
            spacing = 0.3 * 512.0 / size  # same detector, finer pixels
            times = []
            for i in range(repeats + 2):
                g = CArmGeometry(-30 + 2.0 * i, 10 - 0.5 * i, 1000, 750, (spacing, spacing), size, size)
                t0 = time.perf_counter()
                proj = renderer.render(g, with_depth=with_depth)
                dt = time.perf_counter() - t0
                if i >= 2:  # the first renders of a size allocate buffers and compile shaders
                    times.append(dt)
                if progress is not None:
                    progress()
            assert proj.mask.any()
            result["sizes"][str(size)] = timing_summary(times)
    return result


def time_calls(call, repeats: int, dev, progress=None) -> List[float]:
    """Seconds of ``repeats`` calls after two untimed ones (allocation, TorchScript's first runs);
    on a GPU each call is waited for."""
    import torch

    times = []
    for i in range(repeats + 2):
        t0 = time.perf_counter()
        call()
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        if i >= 2:
            times.append(time.perf_counter() - t0)
        if progress is not None:
            progress()
    return times


#: frame sizes of ``bench_segmentation`` (pixels, square)
SEGMENTATION_SIZES = (256, 512, 1024)


def bench_segmentation(sizes: Sequence[int] = SEGMENTATION_SIZES, repeats: int = 30, *, device=None,
                       progress=None, models_directory=None) -> Dict[str, object]:
    """Median time of the installed DRU-Net: ``segment_frame`` (pre-processing, network, resize back,
    threshold) on a frame of each size, and the network's forward pass alone at its input size.

    The frames are smooth random grey images (a fixed seed): the network's time does not depend on
    what it sees. Two untimed calls per size come first (allocation, TorchScript's first runs)."""
    import torch

    from ..errors import InputError
    from ..segmentation import _entry_size, get_model, preprocess, segment_frame

    try:
        module, entry, dev = get_model(None, device, None, models_directory)
    except InputError as exc:
        raise InputError(f"the segmentation benchmark needs an installed segmentation network: {exc}") from None
    rng = np.random.default_rng(0)
    in_size = _entry_size(entry, None)
    result: Dict[str, object] = {
        "benchmark": "segmentation",
        "model": entry["name"],
        "sha256": entry["sha256"],
        "device": str(dev),
        "machine": {**machine_facts(), "torch_threads": torch.get_num_threads()},
        "sizes": {},
    }

    def smooth_frame(size: int) -> np.ndarray:  # 12-bit-like grey levels in 16-pixel blocks
        coarse = rng.random((size // 16 + 1, size // 16 + 1)).astype(np.float32)
        return np.kron(coarse, np.ones((16, 16), np.float32))[:size, :size] * 4000.0

    def segment(frame):
        return segment_frame(frame, fov="upper", model=entry["name"], device=dev, models_directory=models_directory)

    for size in sizes:
        frame = smooth_frame(size)
        result["sizes"][str(size)] = timing_summary(time_calls(lambda: segment(frame), repeats, dev, progress))
    x = torch.from_numpy(preprocess(smooth_frame(max(in_size)), in_size)[0])[None, None].to(dev)
    with torch.inference_mode():
        net = time_calls(lambda: module(x), repeats, dev, progress)
    result["network_only"] = {"input": f"{in_size[1]}x{in_size[0]}", **timing_summary(net)}
    return result


def _stats(samples: List[float]):
    """``timing_summary`` of the samples, or None when there are none."""
    return timing_summary(samples) if samples else None


class _PipelineSamples:
    """The per-frame samples of ``bench_pipeline`` (seconds; Dice; invalid results per method)."""

    def __init__(self, methods: Sequence[str]):
        self.methods = list(methods)
        self.times: Dict[str, List[float]] = {k: [] for k in ("read", "project", "project_first", "segment",
                                                              "overlay")}
        self.register = {m: [] for m in methods}
        self.whole = {m: [] for m in methods}
        self.dice = {m: [] for m in methods}
        self.invalid = {m: 0 for m in methods}
        self.sizes: set = set()
        self.frames = 0
        self.notes: List[str] = []

    def add(self, frame: Dict[str, object]) -> None:
        t = frame["seconds"]
        self.times["read"].append(t["read"])
        self.times["project_first" if frame["cold"] else "project"].append(t["project"])
        if t["segment"] is not None:
            self.times["segment"].append(t["segment"])
        self.times["overlay"].append(t["overlay"])
        for m, reg in frame["registrations"].items():
            self.register[m].append(t["register"][m])
            self.whole[m].append((t["segment"] or 0.0) + t["register"][m] + t["overlay"])
            self.dice[m].append(float(reg.metrics.get("dice", float("nan"))))
            self.invalid[m] += int(not reg.valid)
        self.sizes.add(frame["size"])
        self.frames += 1


def _pipeline_data(data_index, n_frames: int, size, seed: int, generate_progress):
    """``(index path, source label, phantom seconds or None, temporary folder or None)``: the given
    phantom index, or a one-patient phantom generated for the benchmark."""
    import tempfile
    from pathlib import Path

    from ..errors import InputError
    from ..synthetic.phantom import PhantomConfig, generate_dataset

    if data_index is not None:
        data_index = Path(data_index)
        if not data_index.is_file():
            raise InputError(f"data index {data_index} does not exist")
        return data_index, str(data_index), None, None
    tmp = tempfile.TemporaryDirectory(prefix="tavireg-bench-")
    t0 = time.perf_counter()
    cfg = PhantomConfig(out=Path(tmp.name) / "data", patients=1, seed=int(seed),
                        frames_per_patient=n_frames + n_frames // 2 + 2, size=size, workers=1, overwrite=True)
    try:
        generate_dataset(cfg, progress=generate_progress)
    except BaseException:
        tmp.cleanup()
        raise
    source = f"generated phantom (1 patient, seed {seed}, {'clinical 512/1024' if size is None else size} px)"
    return Path(tmp.name) / "data" / "index.csv", source, time.perf_counter() - t0, tmp


def _pipeline_groups(data_index, n_frames: int) -> Dict[tuple, List[Dict[str, str]]]:
    """The index rows with contrast, ``n_frames`` (and a few spare) evenly spread in index order,
    grouped by (case, image, isocentre) so that a patient's model and renderer serve its frames in turn."""
    import csv

    with open(data_index, newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r.get("mask") and int(float(r.get("opacified_px") or 0)) > 0]
    if len(rows) > n_frames + 2:
        idx = np.unique(np.round(np.linspace(0, len(rows) - 1, n_frames + 2)).astype(int))
        rows = [rows[k] for k in idx]
    groups: Dict[tuple, List[Dict[str, str]]] = {}
    for r in rows:
        groups.setdefault((r["case"], r["image"], r["isocenter_lps"]), []).append(r)
    return groups


def _measure_frame(pipe, renderer, image_path, i: int, truth, roi, methods, main: str, seg_ready: bool,
                   cold: bool) -> Dict[str, object]:
    """One frame of ``bench_pipeline``: each stage timed (InputError when a step refuses the frame)."""
    from ..fluoro import read_fluoro
    from ..report import frame_overlay

    t0 = time.perf_counter()
    read_fluoro(image_path).frame(i)
    t_read = time.perf_counter() - t0
    # the projection step as the pipeline runs it, on one renderer per model (a viewer keeps its
    # renderer from frame to frame; its first render is reported apart as project_first)
    t0 = time.perf_counter()
    renderer.render(pipe.geometry(i), orthographic=pipe.orthographic, with_depth=True)
    t_proj = time.perf_counter() - t0
    pipe.project(i)  # the pipeline's own (untimed) projection for the steps below
    t_seg, fixed = None, truth.mask
    if seg_ready:
        t0 = time.perf_counter()
        fixed = pipe.segment(i).mask
        t_seg = time.perf_counter() - t0
    regs, t_reg = {}, {}
    for m in methods:
        t0 = time.perf_counter()
        regs[m] = pipe.register(i, roi, fixed_mask=fixed, method=m)
        t_reg[m] = time.perf_counter() - t0
    t0 = time.perf_counter()
    frame_overlay(pipe, regs[main])
    t_over = time.perf_counter() - t0
    return {"seconds": {"read": t_read, "project": t_proj, "segment": t_seg, "register": t_reg, "overlay": t_over},
            "registrations": regs, "cold": cold, "size": f"{truth.mask.shape[1]}x{truth.mask.shape[0]}"}


def _measure_frames(data_index, n_frames: int, methods, main: str, seg_ready: bool, progress) -> _PipelineSamples:
    """Every stage of ``n_frames`` frames of the index, one patient's model and renderer at a time."""
    from pathlib import Path

    from ..errors import InputError
    from ..fluoro import read_fluoro
    from ..mesh import load_model
    from ..pipeline import RegistrationPipeline
    from ..projection import ProjectionRenderer
    from ..synthetic.phantom import frame_truth

    root = Path(data_index).parent
    samples = _PipelineSamples(methods)
    current, renderer, warm = None, None, False
    try:
        for (case, image, iso), group in _pipeline_groups(data_index, n_frames).items():
            if samples.frames >= n_frames:
                break
            if case != current:
                if renderer is not None:
                    renderer.close()
                model = load_model(root / Path(case).parent / "model.vtk")
                current, renderer, warm = case, ProjectionRenderer(model.polydata), False
            with RegistrationPipeline(model, read_fluoro(root / image),
                                      isocenter_lps=tuple(float(v) for v in iso.split(";"))) as pipe:
                for r in group:
                    if samples.frames >= n_frames:
                        break
                    truth = frame_truth(root, r)
                    roi = truth.user_roi()
                    if roi is None:
                        continue
                    try:
                        frame = _measure_frame(pipe, renderer, root / image, int(r["frame"]), truth, roi, methods,
                                               main, seg_ready, cold=not warm)
                    except InputError as exc:  # e.g. an empty segmentation: no latency sample
                        samples.notes.append(f"{image} frame {r['frame']}: {exc}")
                        continue
                    warm = True
                    samples.add(frame)
                    if progress is not None:
                        progress()
    finally:
        if renderer is not None:
            renderer.close()
    return samples


def _register_network_only(models_directory) -> Dict[str, object]:
    """The registration network's forward pass alone at its input size."""
    import torch

    from ..registration import _model_size, get_model

    module, _, dev = get_model(None, None, models_directory)
    size = _model_size(module, None)
    x = torch.rand((1, 2, size, size), generator=torch.Generator().manual_seed(0)).to(dev)
    with torch.inference_mode():
        return {"input": f"{size}x{size}", **timing_summary(time_calls(lambda: module(x), 20, dev))}


def bench_pipeline(data_index=None, n_frames: int = 20, methods: Optional[Sequence[str]] = None, *,
                   size: Optional[int] = None, seed: int = 0, progress=None, generate_progress=None,
                   models_directory=None) -> Dict[str, object]:
    """Median per-stage latency of the whole chain on phantom frames, and the sitk/cnn speed ratio.

    ``data_index``: a ``tavireg phantom`` index.csv; None generates a one-patient phantom
    (``phantom.generate_dataset``, ``seed``, frames of ``size`` pixels or clinical 512/1024) in a
    temporary folder. ``n_frames`` frames with contrast, evenly spread over the index (in its order,
    so that a patient's model and renderer serve its frames in turn) are measured. Stages, per frame:

    * ``read``: ``read_fluoro`` of the frame's DICOM file (the whole file, as it arrives) + ``frame``;
    * ``project``: the model's projection (``RegistrationPipeline.project``) with the renderer
      already running; ``project_first``: the first frame of a run (renderer start included);
    * ``segment``: the DRU-Net (only when a segmentation network is installed; else the phantom's
      ground-truth mask is the fixed image and the stage reads 'skipped: no network');
    * ``register``: ``RegistrationPipeline.register`` per method (cnn and cnn+refine only with an
      installed registration network), with the projection and the segmentation already made;
    * ``overlay``: ``report.frame_overlay`` of the registered projection;
    * ``whole_frame``: segment + register + overlay per method (the project's 300 ms goal).

    ``speed_ratio_sitk_over_cnn``: median sitk time / median cnn time, beside each method's median
    Dice against the fixed image (``dice``), when cnn is available; ``register_network_only``: the
    registration network's forward pass alone at its input size (the rest of cnn's register stage
    is cropping, resizing, drawing the registered mask and its overlap figures).
    """
    from ..errors import InputError
    from ..networks.weights import installed
    from ..registration import METHODS

    if int(n_frames) < 2:
        raise InputError(f"the pipeline benchmark needs at least 2 frames, got {n_frames}")
    n_frames = int(n_frames)
    seg_ready = installed("segmentation", models_directory)
    reg_ready = installed("registration", models_directory)
    wanted = list(methods) if methods else list(METHODS)
    run_methods = [m for m in wanted if m == "sitk" or reg_ready]
    skipped_methods = {m: "skipped: no network" for m in wanted if m not in run_methods}
    if not run_methods:
        raise InputError("no registration method can run here (no registration network is installed)")
    main = "cnn" if "cnn" in run_methods else run_methods[0]
    data_index, source, t_gen, tmp = _pipeline_data(data_index, n_frames, size, seed, generate_progress)
    load_before = os.getloadavg() if hasattr(os, "getloadavg") else None
    try:
        samples = _measure_frames(data_index, n_frames, run_methods, main, seg_ready, progress)
    finally:
        if tmp is not None:
            tmp.cleanup()
    if samples.frames < 2:
        raise InputError(f"only {samples.frames} frame(s) with a contrast-filled vessel could be measured")
    if samples.frames < n_frames:
        samples.notes.append(f"only {samples.frames} of the {n_frames} frames asked for could be measured")
    result = _pipeline_result(samples, source, seg_ready, skipped_methods)
    if "cnn" in run_methods:  # how much of cnn's register stage is the network itself
        result["register_network_only"] = _register_network_only(models_directory)
    if t_gen is not None:
        result["phantom_seconds"] = round(t_gen, 1)
    load_after = os.getloadavg() if hasattr(os, "getloadavg") else None
    if load_before is not None:  # other jobs on the cores inflate every figure: say so
        result["machine"]["load_average_1min_before_after"] = [round(load_before[0], 2), round(load_after[0], 2)]
    try:
        import torch

        result["machine"]["torch_threads"] = torch.get_num_threads()
    except ImportError:  # pragma: no cover
        pass
    return result


def _pipeline_result(samples: _PipelineSamples, source: str, seg_ready: bool, skipped_methods) -> Dict[str, object]:
    """``bench_pipeline``'s figures from its samples."""
    methods = samples.methods
    stages: Dict[str, object] = {
        "read": _stats(samples.times["read"]),
        "project": _stats(samples.times["project"]),
        "project_first": _stats(samples.times["project_first"]),
        "segment": _stats(samples.times["segment"]) if seg_ready else "skipped: no network",
        "register": {**{m: _stats(samples.register[m]) for m in methods}, **skipped_methods},
        "overlay": _stats(samples.times["overlay"]),
    }
    result: Dict[str, object] = {
        "benchmark": "pipeline",
        "data": source,
        "frames": samples.frames,
        "frame_sizes": sorted(samples.sizes),
        "fixed_image": "DRU-Net segmentation" if seg_ready else "phantom ground-truth mask (no segmentation network)",
        "machine": machine_facts(),
        "stages": stages,
        "whole_frame": {m: _stats(samples.whole[m]) for m in methods},
        "whole_frame_stages": "segment + register + overlay" if seg_ready else "register + overlay (segment skipped)",
        "dice": {m: float(np.nanmedian(samples.dice[m])) if np.isfinite(samples.dice[m]).any() else None
                 for m in methods},
        "dice_reference": "median Dice of the registered projection against the fixed image (inside the ROI footprint)",
        "invalid": samples.invalid,
        "speed_ratio_sitk_over_cnn": None,
        "notes": samples.notes,
    }
    if "cnn" in methods and "sitk" in methods:
        result["speed_ratio_sitk_over_cnn"] = (stages["register"]["sitk"]["median_ms"]
                                               / stages["register"]["cnn"]["median_ms"])
    return result


#: detector sizes and frames of ``bench_run``
RUN_SIZES = (512, 1024)
RUN_FRAMES = 60
#: the rates a run must reach on a 2-core CPU at 512 px: the fluoroscope's with ``cnn``, a third of it
#: with the default method
RUN_GOALS_FPS = {"cnn": 15.0, "cnn+refine": 5.0}


def noisy_run(series, frame_index: int, n_frames: int, noise: float = 3.0, seed: int = 0):
    """A static run of ``n_frames``: frame ``frame_index`` of ``series`` repeated with uniform pixel
    noise of +-``noise`` grey levels (every frame its own draw), under that frame's geometry."""
    import dataclasses

    rng = np.random.default_rng(seed)
    frame = series.frame(frame_index)
    frames = np.stack([frame + rng.uniform(-noise, noise, frame.shape).astype(np.float32)
                       for _ in range(n_frames)])
    return dataclasses.replace(series, frames=frames, n_frames=n_frames,
                               geometries=[series.geometry(frame_index)] * n_frames)


def _window_dice(registered: np.ndarray, truth: np.ndarray) -> float:
    inter = float(np.logical_and(registered > 0, truth > 0).sum())
    total = float((registered > 0).sum() + (truth > 0).sum())
    return 2.0 * inter / total if total else float("nan")


def _run_path(pipe, frames, roi, method, device, truth_mask, overlay):
    """The run pipeline: ``iter_run`` (one render, batched segmentation, warm starts) and an overlay
    per frame. Returns (seconds per frame, per-stage seconds, Dice to the truth, corners, failures)."""
    stages = {"segment": [], "register": [], "overlay": []}
    dice, corners, failed = [], [], 0
    start = time.perf_counter()
    for fr in pipe.iter_run(frames, roi, method=method, device=device):
        t0 = time.perf_counter()
        if fr.registered:
            overlay(pipe, fr.registration)
            dice.append(_window_dice(fr.registration.registered_mask, truth_mask))
            corners.append(_roi_corners(fr.registration.matrix, roi))
        else:
            failed += 1
        stages["overlay"].append(time.perf_counter() - t0)
        stages["segment"].append(fr.seconds["segment"])
        stages["register"].append(fr.seconds["register"])
    total = time.perf_counter() - start
    return total / len(frames), stages, dice, corners, failed


def _single_path(pipe, frames, roi, method, device, truth_mask, overlay):
    """One frame at a time, as a front end registering frame by frame does: every frame projected,
    segmented alone, registered from the previous frame's affine and drawn."""
    stages = {"project": [], "segment": [], "register": [], "overlay": []}
    dice, init = [], None
    start = time.perf_counter()
    for i in frames:
        pipe.forget()
        t0 = time.perf_counter()
        pipe.project(i)
        t1 = time.perf_counter()
        pipe.segment(i, device=device)
        t2 = time.perf_counter()
        try:
            reg = pipe.register(i, roi, method=method, init=init, device=device)
        except Exception:  # noqa: BLE001 - a failed frame is counted, the run goes on
            reg = None
        t3 = time.perf_counter()
        if reg is not None and reg.valid:
            overlay(pipe, reg)
            dice.append(_window_dice(reg.registered_mask, truth_mask))
            init = reg.result.frame_matrix
        t4 = time.perf_counter()
        for name, a, b in (("project", t0, t1), ("segment", t1, t2), ("register", t2, t3), ("overlay", t3, t4)):
            stages[name].append(b - a)
    return (time.perf_counter() - start) / len(frames), stages, dice


def _roi_corners(matrix: np.ndarray, roi) -> np.ndarray:
    x, y, w, h = roi
    pts = np.array([[x, x + w, x, x + w], [y, y, y + h, y + h], [1.0, 1.0, 1.0, 1.0]])
    return (np.asarray(matrix) @ pts)[:2].T


def bench_run(sizes: Sequence[int] = RUN_SIZES, n_frames: int = RUN_FRAMES, methods: Sequence[str] = ("cnn", "cnn+refine"),
              *, device=None, progress=None, workdir=None) -> Dict[str, object]:
    """Frames per second of a registered run, per detector size and method: the run pipeline
    (``RegistrationPipeline.iter_run``) against one frame at a time in the same process, with the
    seconds of each stage, the median Dice of the registered projection to the truth (both paths),
    and the warm start's drift (the largest distance of a ROI corner from the first frame's, px).

    The run is the demo case's frame at each size (``synthetic.demo``) repeated ``n_frames`` times
    with +-3 grey levels of noise (``noisy_run``); ``progress`` is called once per frame of each path."""
    import tempfile
    from pathlib import Path

    from ..errors import InputError
    from ..fluoro import read_fluoro
    from ..mesh import load_model
    from ..networks.weights import installed, pick_device
    from ..pipeline import RegistrationPipeline
    from ..report import frame_overlay
    from ..synthetic.demo import make_demo_case

    if int(n_frames) < 2:
        raise InputError(f"the run benchmark needs at least 2 frames, got {n_frames}")
    if not installed("segmentation") or not installed("registration"):
        raise InputError("the run benchmark needs the installed segmentation and registration networks")
    dev = pick_device(requested=device or "auto")
    results: Dict[str, object] = {"benchmark": "run", "frames": int(n_frames), "device": str(dev),
                                  "machine": machine_facts(), "goals_fps_512": RUN_GOALS_FPS, "sizes": {}}
    with tempfile.TemporaryDirectory(prefix="tavireg-bench-run-") as tmp:
        for size in sizes:
            case = make_demo_case(Path(workdir or tmp) / f"demo{size}", size=int(size))
            truth = case.truth()
            roi = truth.user_roi()
            series = noisy_run(read_fluoro(case.fluoro_path), case.frame_index, int(n_frames))
            model = load_model(case.model_path)
            per_method = {}
            for method in methods:
                with RegistrationPipeline(model, series, isocenter_lps=case.isocenter_lps) as pipe:
                    pipe.project(0)  # the renderer started and the networks loaded outside the timing
                    pipe.register(0, roi, method=method, device=dev)
                    pipe.forget()
                    run_s, run_stages, run_dice, corners, failed = _run_path(
                        pipe, range(int(n_frames)), roi, method, dev, truth.mask, frame_overlay)
                    if progress is not None:
                        progress(int(n_frames))
                    one_s, one_stages, one_dice = _single_path(
                        pipe, range(int(n_frames)), roi, method, dev, truth.mask, frame_overlay)
                    if progress is not None:
                        progress(int(n_frames))
                drift = float(max(np.abs(c - corners[0]).max() for c in corners)) if corners else None
                per_method[method] = {
                    "run_fps": 1.0 / run_s, "single_fps": 1.0 / one_s, "speedup": one_s / run_s,
                    "run_stages_ms": {k: 1000.0 * statistics.median(v) for k, v in run_stages.items()},
                    "single_stages_ms": {k: 1000.0 * statistics.median(v) for k, v in one_stages.items()},
                    "median_dice_run": statistics.median(run_dice) if run_dice else None,
                    "median_dice_single": statistics.median(one_dice) if one_dice else None,
                    "failed_frames": failed,
                    "drift_px": drift,
                }
            results["sizes"][str(size)] = {"rows": int(series.rows), "cols": int(series.cols), "roi": list(roi),
                                           "methods": per_method}
    return results


def run_plot_png(res: Dict[str, object]) -> bytes:
    """Bar chart of ``bench_run``: frames per second per size and method, run pipeline beside one frame
    at a time, with the goals as lines."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels, run, single = [], [], []
    for size, entry in res["sizes"].items():
        for method, m in entry["methods"].items():
            labels.append(f"{method}\n{size} px")
            run.append(m["run_fps"])
            single.append(m["single_fps"])
    fig, ax = plt.subplots(figsize=(1.6 + 1.5 * len(labels), 3.6), dpi=110)
    xs = np.arange(len(labels))
    ax.bar(xs - 0.2, single, 0.4, label="one frame at a time", color="#9e9e9e")
    ax.bar(xs + 0.2, run, 0.4, label="run pipeline", color="#1f77b4")
    for method, goal in res.get("goals_fps_512", {}).items():
        ax.axhline(goal, ls="--", lw=1, color="#d62728" if method == "cnn" else "#ff7f0e",
                   label=f"goal {method} at 512 px: {goal:g} fps")
    ax.set_xticks(xs)
    ax.set_xticklabels(labels)
    ax.set_ylabel("frames per second")
    ax.set_title(f"Registered run of {res['frames']} frames on {res['device']}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()
