"""The pipeline object shared by the three front ends (CLI, Qt viewer, Slicer Logic).

It holds one case (a surface model and a fluoroscopy series) and runs the steps of the data flow on
a frame: geometry, projection, region of interest, segmentation and registration, so that every
front end runs the very same code on the same inputs. A run of frames (``iter_run``,
``register_run``) renders the projection once per distinct C-arm geometry (a static run: once),
segments its frames in batches ahead of the registration, warm-starts each frame's registration
from the last one that registered, and keeps nothing of a frame once it is handed on.

Front ends convert their own inputs (files, MRML nodes) into ``SurfaceModel`` / ``FluoroSeries``
and call these methods; nothing here knows about files beyond what the step modules read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import dataclasses
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .errors import InputError
from .geometry import CArmGeometry
from .projection import Projection, ProjectionRenderer, render_with_canvas
from .roi import Roi, bounding_roi, validate_roi



def default_isocenter(model, warnings: List[str]) -> Tuple[float, float, float]:
    """The model's bounding-box centre, used as the C-arm isocentre when none is given (named in
    ``warnings``: real XA files do not say where the patient lies relative to the isocentre)."""
    center = tuple(float(c) for c in model.center)
    warnings.append(
        "isocentre not given: placed at the model's bounding-box centre "
        "({:.1f}, {:.1f}, {:.1f}) LPS mm".format(*center)
    )
    return center


@dataclass
class FrameProjection:
    """The projection step's result for one frame, with the ROI a user would start from."""

    frame_index: int
    geometry: CArmGeometry
    projection: Projection
    default_roi: Optional[Roi]


@dataclass
class FrameRegistration:
    """The registration of one frame: the affine M, the registered projection, the masks."""

    frame_index: int
    roi: Roi
    projection: FrameProjection
    fixed_mask: np.ndarray  # uint8 0/1, frame grid: the segmentation or the given mask
    fixed_source: str  # "segmentation" | "given"
    result: object  # registration.RegistrationResult
    warnings: List[str]

    @property
    def valid(self) -> bool:
        return self.result.valid

    @property
    def matrix(self) -> np.ndarray:
        return self.result.matrix

    @property
    def registered_mask(self) -> np.ndarray:
        return self.result.registered_mask

    @property
    def metrics(self) -> Dict[str, float]:
        return self.result.metrics


#: the projection is rendered this share of the frame's size beyond each of its edges: the part of the
#: model outside the frame takes part in a registration that brings it in
PROJECTION_PAD = 0.25

#: frames segmented together by ``iter_run`` (measured: on a 2-core CPU the DRU-Net takes 43-45 ms a
#: frame in batches of 1-2, 52-58 ms in 4 and 67-70 ms in 8)
RUN_BATCH = {"cpu": 2, "cuda": 16}


def _on_gpu(device) -> bool:
    """Whether ``device`` (None: the default one) is a CUDA device."""
    if device is None:
        from .networks.weights import pick_device

        device = pick_device()
    return str(device).startswith("cuda")


@dataclass
class RunFrame:
    """One frame of a registered run: its registration (None when it failed), why it failed, and the
    seconds its stages took (``segment`` is its share of the batch it was segmented in)."""

    index: int
    registration: Optional[FrameRegistration]
    failure: Optional[str]
    seconds: Dict[str, float] = field(default_factory=dict)

    @property
    def registered(self) -> bool:
        return self.registration is not None


@dataclass
class RunRegistration:
    """A run registered frame by frame: the frames that registered, and why the others did not."""

    registrations: List[FrameRegistration] = field(default_factory=list)
    failures: Dict[int, str] = field(default_factory=dict)  # frame index -> reason

    def failure_warnings(self) -> List[str]:
        return failure_warnings(self.failures)


def failure_warnings(failures: Dict[int, str]) -> List[str]:
    """One warning per frame of a run that did not register, in frame order."""
    return [f"frame {i} not registered: {why}" for i, why in sorted(failures.items())]


class RegistrationPipeline:
    """One case: a surface model (LPS mm) and a fluoroscopy series, processed frame by frame.

    ``isocenter_lps``: the C-arm isocentre in the model's coordinates (default: see
    ``default_isocenter``). ``contrast_front``: ``cnn+refine`` registers only the part of the
    projection up to the contrast front that agrees best with the frame (``filling``); False
    registers the whole projection.
    """

    def __init__(self, model, series, *, isocenter_lps: Optional[Sequence[float]] = None,
                 orthographic: bool = False, contrast_front: bool = True):
        self.model = model
        self.series = series
        self.orthographic = bool(orthographic)
        self.contrast_front = bool(contrast_front)
        self.warnings: List[str] = list(getattr(model, "warnings", [])) + list(getattr(series, "warnings", []))
        if isocenter_lps is None:
            isocenter_lps = default_isocenter(model, self.warnings)
        self.isocenter_lps = tuple(float(c) for c in isocenter_lps)
        self._renderer: Optional[ProjectionRenderer] = None
        self._projections: Dict[int, FrameProjection] = {}
        self._renders: Dict[CArmGeometry, FrameProjection] = {}  # one render per distinct geometry
        self._segmentations: Dict[tuple, object] = {}

    # -- frames and geometry ------------------------------------------------------------------
    @property
    def n_frames(self) -> int:
        return int(self.series.n_frames)

    def frame(self, index: int) -> np.ndarray:
        return self.series.frame(index)

    def geometry(self, index: int) -> CArmGeometry:
        return self.series.geometry(index).with_isocenter(self.isocenter_lps)

    # -- projection ---------------------------------------------------------------------------
    def project(self, index: int) -> FrameProjection:
        """The model's projection under frame ``index``'s geometry (rendered once per distinct
        geometry: the frames of a static run share one)."""
        if index not in self._projections:
            geom = self.geometry(index)
            if geom not in self._renders:
                self._renders[geom] = self._render(index, geom)
            self._projections[index] = dataclasses.replace(self._renders[geom], frame_index=index)
        return self._projections[index]

    def _render(self, index: int, geom: CArmGeometry) -> FrameProjection:
        if self._renderer is None:
            self._renderer = ProjectionRenderer(self.model.polydata)
        pad = int(round(PROJECTION_PAD * max(geom.rows, geom.cols)))
        proj = render_with_canvas(self._renderer, geom, pad, orthographic=self.orthographic)
        if proj.area_px == 0:
            hint = getattr(self.model, "extent_problem", "")
            raise InputError(
                f"frame {index}: the model projects entirely outside the detector; check the "
                "isocentre, the model's space (LPS/RAS) and units" + (f" ({hint})" if hint else "")
            )
        return FrameProjection(index, geom, proj, bounding_roi(proj.mask))

    def moving_image(self, index: int, roi: Optional[Sequence[int]] = None) -> Tuple[np.ndarray, Roi]:
        """The projection cropped to the ROI (default: around the whole projection).

        Returns the uint8 0/1 crop and the ROI actually used (clipped to the frame).
        """
        fp = self.project(index)
        rows, cols = fp.projection.mask.shape
        roi = validate_roi(roi if roi is not None else fp.default_roi, rows, cols)
        x, y, w, h = roi
        crop = fp.projection.mask[y:y + h, x:x + w]
        if not crop.any():
            raise InputError(f"ROI {x},{y},{w},{h} contains no part of the model's projection")
        return crop.copy(), roi

    # -- segmentation -------------------------------------------------------------------------
    def fov(self, fov: str = "auto") -> Optional[str]:
        """The run's field of view: ``fov`` when it names one, else what its DICOM header says
        (None when nothing does)."""
        from .segmentation import FOVS, fov_from_header

        f = (fov or "auto").lower()
        return f if f in FOVS else fov_from_header(getattr(self.series, "header", None))

    def segment(self, index: int, fov: str = "auto", model=None, device=None):
        """The DRU-Net vessel mask of frame ``index`` (cached per frame and FoV)."""
        from .segmentation import segment_frame

        key = self._segmentation_key(index, fov, model)
        if key not in self._segmentations:
            self._segmentations[key] = segment_frame(self.frame(index), fov=fov, model=model,
                                                     device=device, fov_hint=self.fov())
        return self._segmentations[key]

    @staticmethod
    def _segmentation_key(index: int, fov: str, model) -> tuple:
        return (index, fov, model if isinstance(model, (str, type(None))) else id(model))

    def segment_ahead(self, frames: Sequence[int], fov: str = "auto", model=None, device=None,
                      batch_size: int = 8) -> float:
        """Segment ``frames`` in batches into the cache ``segment`` and ``register`` read (frames already
        there are skipped); returns the seconds it took."""
        from .segmentation import segment_frames

        start = time.perf_counter()
        todo = [i for i in frames if self._segmentation_key(i, fov, model) not in self._segmentations]
        if todo:
            results = segment_frames([self.frame(i) for i in todo], fov=fov, model=model, device=device,
                                     fov_hint=self.fov(), batch_size=batch_size)
            for i, res in zip(todo, results):
                self._segmentations[self._segmentation_key(i, fov, model)] = res
        return time.perf_counter() - start

    # -- registration --------------------------------------------------------------------------
    def register(self, index: int, roi: Optional[Sequence[int]] = None, *, fixed_mask: Optional[np.ndarray] = None,
                 method: Optional[str] = None, init: Optional[np.ndarray] = None, fov: str = "auto",
                 seg_model=None, reg_model=None, device=None, hold: float = 0.0,
                 prior: Optional[np.ndarray] = None, refine_steps: Optional[int] = None) -> "FrameRegistration":
        """Register the model's projection (inside ``roi``) to frame ``index``.

        ``fixed_mask``: the frame's vessel mask when known (skips segmentation); else the DRU-Net
        segmentation (its mask; cnn+refine's refinement fits its probability). ``method``: cnn,
        cnn+refine or sitk (default: ``registration.default_method``).
        ``init``: a frame-grid affine to start from (the previous cine frame's
        ``frame_matrix``); ``hold``, ``prior``, ``refine_steps``: see ``registration.register_pair``. A degenerate or failed result
        is returned with ``valid`` False and the reasons in ``problems``: front ends must not show its
        overlay as if it were valid.
        """
        from .registration import default_method, register_pair

        fp = self.project(index)
        rows, cols = fp.projection.mask.shape
        roi = validate_roi(roi if roi is not None else fp.default_roi, rows, cols)
        warnings: List[str] = []
        if method is None:
            method = default_method(warnings)
        if fixed_mask is None:
            seg = self.segment(index, fov=fov, model=seg_model, device=device)
            fixed, fixed_source, probability = seg.mask, "segmentation", seg.probability
            warnings.extend(seg.warnings)
            frame_fov = seg.fov_used
        else:
            frame_fov = self.fov(fov)
            fixed = np.asarray(fixed_mask)
            if fixed.shape != (rows, cols):
                raise InputError(f"fixed mask is {fixed.shape[1]}x{fixed.shape[0]}, the frame is {cols}x{rows}")
            fixed, fixed_source, probability = (fixed > 0).astype(np.uint8), "given", None
        if not fixed.any():
            what = "the vessel segmentation found no contrast-filled vessel" if fixed_source == "segmentation" \
                else "the given vessel mask is empty"
            raise InputError(f"frame {index}: {what}; nothing to register to: pick a frame with contrast (the "
                             "one with the most contrast medium), or give the frame's vessel mask")
        flow = None
        if self.contrast_front and method == "cnn+refine":
            from .filling import vessel_flow

            model_flow = vessel_flow(self.model)
            flow = model_flow.project(fp.projection.matrix)
            warnings.extend(model_flow.warnings)
        result = register_pair(fp.projection.mask, fixed, roi, method=method, model=reg_model,
                               init=init, device=device, fov=frame_fov, hold=hold, prior=prior,
                               refine_steps=refine_steps, canvas=fp.projection.canvas, pad=fp.projection.pad,
                               flow=flow, fixed_probability=probability)
        warnings.extend(result.warnings)
        return FrameRegistration(index, roi, fp, fixed, fixed_source, result, warnings)

    def iter_run(self, frames: Sequence[int], roi: Optional[Sequence[int]] = None, *,
                 method: Optional[str] = None, fov: str = "auto", device=None, fixed_masks=None,
                 batch_size: Optional[int] = None) -> Iterator[RunFrame]:
        """Register the frames of a run one after another, yielding a ``RunFrame`` for each as soon as
        it is done (a run streams: nothing of a frame is kept here once it is yielded).

        Each frame is warm-started from the last frame that registered (the first from scratch); a
        frame that fails (no vessel found, a degenerate affine) is yielded with its reason and the run
        goes on from the last good affine; a frame that does not gain more than ``RUN_HOLD_DICE`` over it
        keeps it (a static run does not creep). Frames are segmented ``batch_size`` at a time (default
        ``RUN_BATCH`` for the device: a CPU's caches favour small batches, a GPU large ones) in a second
        thread while the frames before them register, unless ``fixed_masks`` (a function of the frame
        index) gives their masks."""
        frames = [int(i) for i in frames]
        if batch_size is None:
            batch_size = RUN_BATCH["cuda" if _on_gpu(device) else "cpu"]
        chunks = [frames[k:k + batch_size] for k in range(0, len(frames), batch_size)]
        init = None
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="tavireg-segment") as ahead:
            def segment(chunk):
                if fixed_masks is not None or not chunk:
                    return None
                return ahead.submit(self._segment_chunk, chunk, fov, device, batch_size)

            pending = segment(chunks[0] if chunks else [])
            for n, chunk in enumerate(chunks):
                seg_s = pending.result() if pending is not None else 0.0
                # the next chunk is segmented while this one registers
                pending = segment(chunks[n + 1] if n + 1 < len(chunks) else [])
                for index in chunk:
                    t0 = time.perf_counter()
                    frame = self._register_run_frame(index, roi, method, init, fov, device,
                                                     None if fixed_masks is None else fixed_masks(index))
                    frame.seconds = {"segment": seg_s, "register": time.perf_counter() - t0}
                    if frame.registered:
                        init = frame.registration.result.frame_matrix
                    self.forget(index, keep_projection=True)
                    yield frame

    def _segment_chunk(self, chunk, fov, device, batch_size) -> float:
        """``segment_ahead`` of one chunk of a run: its seconds per frame (0 when it failed: each frame
        then fails on its own, with its own message, when it registers)."""
        try:
            return self.segment_ahead(chunk, fov=fov, device=device, batch_size=batch_size) / len(chunk)
        except InputError:
            return 0.0

    def _register_run_frame(self, index, roi, method, init, fov, device, fixed_mask) -> RunFrame:
        from .registration import RUN_HOLD_DICE, RUN_REFINE_STEPS, default_method

        try:
            # the CNN alone starts afresh (composed onto the last affine frame after frame it compounds
            # its scale) and keeps the last affine unless it does better; the optimisers start from it,
            # near their optimum (fewer L-BFGS iterations)
            fresh = (method or default_method([])) == "cnn"
            warm = init is not None and not fresh
            reg = self.register(index, roi, method=method, init=None if fresh else init, fov=fov, device=device,
                                fixed_mask=fixed_mask, hold=RUN_HOLD_DICE, prior=init if fresh else None,
                                refine_steps=RUN_REFINE_STEPS if warm else None)
        except InputError as exc:
            return RunFrame(index, None, str(exc))
        if not reg.valid:
            return RunFrame(index, None, reg.result.message)
        return RunFrame(index, reg, None)

    def register_run(self, frames: Sequence[int], roi: Optional[Sequence[int]] = None, *,
                     method: Optional[str] = None, fov: str = "auto", device=None,
                     progress=None, cancelled=None) -> "RunRegistration":
        """``iter_run`` collected: every registration that succeeded and the reason of every failure.
        ``progress(done, total)`` is called after each frame; ``cancelled()`` (optional), checked
        after each frame, stops the run when it returns True (the frames done so far are kept)."""
        run = RunRegistration()
        frames = list(frames)
        for done, frame in enumerate(self.iter_run(frames, roi, method=method, fov=fov, device=device), start=1):
            if frame.registered:
                run.registrations.append(frame.registration)
            else:
                run.failures[frame.index] = frame.failure
            if progress is not None:
                progress(done, len(frames))
            if cancelled is not None and cancelled():
                break
        return run

    def forget(self, index: Optional[int] = None, keep_projection: bool = False) -> None:
        """Drop the cached projection and segmentations of frame ``index`` (all frames when None):
        what a long session does to bound its memory, or when a frame's pixels were replaced.
        ``keep_projection``: only the segmentations (the run's projection is shared by its frames)."""
        if index is None:
            self._projections.clear()
            self._renders.clear()
            self._segmentations.clear()
            return
        if not keep_projection:
            fp = self._projections.pop(index, None)
            if fp is not None and not any(p.geometry == fp.geometry for p in self._projections.values()):
                self._renders.pop(fp.geometry, None)
        for key in [k for k in list(self._segmentations) if k[0] == index]:  # (a run segments ahead meanwhile)
            del self._segmentations[key]

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None
        self._projections.clear()
        self._renders.clear()
        self._segmentations.clear()

    def __enter__(self) -> "RegistrationPipeline":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
