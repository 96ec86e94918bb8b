"""Registering in the viewer: whether it can run, and the Register action's job over the pipeline's
``register(frame_index, roi)`` in the worker thread."""

from __future__ import annotations

from ..errors import InputError

#: Tooltip of the Register action while the library has no registration step.
REGISTER_UNAVAILABLE_TIP = ("registration needs the vessel segmentation network, and none is installed "
                            "(train one with 'tavireg train-seg --export NAME')")
REGISTER_TIP = "Register the projection ROI to the frame"


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
        if not w.registrationAvailable():
            w.reportError("Register", InputError(REGISTER_UNAVAILABLE_TIP))
            return
        if w.pipeline is None or w.frameProjection is None:
            return
        try:
            roi = w.movingRoi()
        except InputError as exc:
            w.reportError("Register", exc)
            return
        pipeline, index = w.pipeline, w.frameIndex
        w.jobs.submit(f"Registering frame {index}", lambda: pipeline.register(index, roi),
                      lambda result: self._done(pipeline, index, result))

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
