"""Registering in the viewer: whether it can run, the Register action's job over the pipeline's
``register(frame_index, roi)`` and the Register run action's over ``register_run`` (every frame of the
run, each warm-started from the last that registered), in the worker thread; and the playback of a
registered run."""

from __future__ import annotations

from ..errors import InputError
from .qt_compat import qt

#: Tooltip of the Register action while the library has no registration step.
REGISTER_UNAVAILABLE_TIP = ("registration needs the vessel segmentation network, and none is installed "
                            "(train one with 'tavireg train-seg --export NAME')")
REGISTER_TIP = "Register the projection ROI to the frame"
REGISTER_RUN_TIP = "Register the projection ROI to every frame of the run (then play it)"
WHOLE_MODEL_TIP = ("Register the whole projection, also the vessels beyond the contrast front that agrees best "
                   "with the frame (by default cnn+refine leaves out the model's vessels that the frame shows "
                   "without contrast; tavireg register --whole-model)")
#: playback rate when the file does not give its frame time (frames per second)
DEFAULT_PLAYBACK_FPS = 15.0


def registration_available() -> bool:
    """Whether registration can run: the viewer registers to the DRU-Net segmentation of the frame,
    so a segmentation network must be installed (the registration method itself falls back to
    SimpleITK when no registration network is, with a warning)."""
    from ..networks.weights import installed

    return installed("segmentation")


class Registrar:
    """Registration > Register of a :class:`.window.ViewerWindow`."""

    def __init__(self, window):
        self.window = window

    def register(self) -> None:
        """Register the projection ROI to the current frame in the worker thread.

        Plugs into ``RegistrationPipeline.register(frame_index, roi)``, whose result carries
        ``registered_mask`` (uint8 0/1 on the frame's grid); the frame view then shows
        ``overlay.overlay_rgb`` of it, like the CLI. A degenerate result is reported and not shown.
        """
        w = self.window
        roi = self._roi("Register")
        if roi is None:
            return
        pipeline, index = self._pipeline(), w.frameIndex
        w.jobs.submit(f"Registering frame {index}", lambda: pipeline.register(index, roi),
                      lambda result: self._done(pipeline, index, result))

    def _roi(self, title: str):
        """The ROI to register, or None (an error reported under ``title``) when registration cannot
        run now."""
        w = self.window
        if not w.registrationAvailable():
            w.reportError(title, InputError(REGISTER_UNAVAILABLE_TIP))
            return None
        if w.pipeline is None or w.frameProjection is None:
            return None
        try:
            return w.movingRoi()
        except InputError as exc:
            w.reportError(title, exc)
            return None

    def _pipeline(self):
        """The case's pipeline, set to register the whole projection or up to the contrast front as
        Registration > Whole model says (read when a registration starts)."""
        pipeline = self.window.pipeline
        pipeline.contrast_front = not self.window.wholeModelAction.isChecked()
        return pipeline

    def registerRun(self) -> None:
        """Register the projection ROI to every frame of the run in the worker thread (Cancel stops it
        after the frame in progress). The frames that registered are then shown as the run plays or is
        stepped through; a frame that did not is shown without an overlay, its reason in the status bar
        and the warnings."""
        w = self.window
        roi = self._roi("Register run")
        if roi is None:
            return
        pipeline, frames = self._pipeline(), range(int(w.series.n_frames))
        holder = {}

        def work():
            return pipeline.register_run(frames, roi, cancelled=lambda: holder["job"].cancelled)

        holder["job"] = w.jobs.submit(f"Registering the run ({len(frames)} frames)", work,
                                      lambda run: self._runDone(pipeline, run))

    def _runDone(self, pipeline, run) -> None:
        w = self.window
        if pipeline is not w.pipeline:
            return
        if not run.registrations:
            w.setRun(None)
            w.reportError("Register run", InputError("no frame of the run registered: " + "; ".join(
                run.failure_warnings()[:3])))
            return
        w.setRun(run)
        n = len(run.registrations) + len(run.failures)
        w.statusBar().showMessage(f"Run registered: {len(run.registrations)} of {n} frames", 8000)

    def _done(self, pipeline, index, result) -> None:
        w = self.window
        if pipeline is not w.pipeline or index != w.frameIndex:
            return
        if not result.valid:  # never show a wrong overlay as if it were right
            w.registration = None
            w.reportError("Register", InputError(result.result.message))
        else:
            w.registration = result
            if result.result.flagged:  # shown, with the flag: border, status line, warnings panel
                w.statusBar().showMessage(result.result.flags[0], 0)
        w.refreshAll()

    def updateAction(self, usable: bool) -> None:
        """Enable Register when available and ``usable`` (a projection, nothing running); its tip
        says why not when unavailable."""
        w = self.window
        available = w.registrationAvailable()
        w.registerAction.setEnabled(available and usable)
        tip = REGISTER_TIP if available else REGISTER_UNAVAILABLE_TIP
        w.registerAction.setToolTip(tip)
        w.registerAction.setStatusTip(tip)
        if w.registerButton is not None:
            w.registerButton.setToolTip(tip)
        runs = w.series is not None and int(w.series.n_frames) > 1
        w.registerRunAction.setEnabled(available and usable and runs)
        w.registerRunAction.setToolTip(REGISTER_RUN_TIP if available else REGISTER_UNAVAILABLE_TIP)
        w.playAction.setEnabled(runs)


class Player:
    """Plays the run: steps the frames at the file's frame rate (``DEFAULT_PLAYBACK_FPS`` when it
    does not say), wrapping at the end; with a registered run, each frame with its overlay."""

    def __init__(self, window):
        self.window = window
        self.timer = qt.QTimer(window)
        self.timer.timeout.connect(self._step)

    def interval_ms(self) -> int:
        series = self.window.series
        ms = getattr(series, "frame_time_ms", None) if series is not None else None
        return int(round(ms)) if ms else int(round(1000.0 / DEFAULT_PLAYBACK_FPS))

    def playing(self) -> bool:
        return self.timer.isActive()

    def setPlaying(self, on: bool) -> None:
        w = self.window
        on = bool(on) and w.series is not None and int(w.series.n_frames) > 1
        if on:
            self.timer.start(self.interval_ms())
        else:
            self.timer.stop()
        if w.playAction.isChecked() != on:
            w.playAction.setChecked(on)

    def _step(self) -> None:
        w = self.window
        if w.series is None:
            self.setPlaying(False)
            return
        w.setFrame((w.frameIndex + 1) % int(w.series.n_frames))
