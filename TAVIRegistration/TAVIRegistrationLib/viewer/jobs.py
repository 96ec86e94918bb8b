"""The viewer's background work: one worker ``QThread`` that runs jobs one after the other.

The worker owns the pipeline's VTK renderer, so every job that renders, and the pipeline's
``close``, runs there. :class:`JobQueue` submits jobs, tracks the pending ones, hands results back
to the GUI thread and lets the user give up waiting (Cancel): a cancelled job's result is dropped
and what it holds freed in the worker.
"""

from __future__ import annotations

import itertools
import os
import sys
import time
import traceback
from typing import Callable, Dict, List, Optional

from .qt_compat import QT_API, Signal, qt


class Job:
    """One piece of work for the worker thread; its function never touches a widget."""

    _ids = itertools.count(1)

    def __init__(self, label, fn, on_done=None, on_error=None, busy=True, cleanup=None):
        self.id = next(self._ids)
        self.label = label
        self.fn = fn
        self.on_done = on_done
        self.on_error = on_error
        self.busy = busy
        self.cleanup = cleanup          # called in the worker with the result of a cancelled job
        self.cancelled = False
        self.result = None
        self.error = None
        self.traceback = ""


class Worker(qt.QObject):
    """Runs jobs one after the other in its thread (it owns the pipeline's VTK renderer)."""

    done = Signal(object)

    def run(self, job):
        if job.cancelled:   # given up before it started: nothing to do, nothing to free
            self.done.emit(job)
            return
        try:
            job.result = job.fn()
        except BaseException as exc:  # noqa: BLE001 - reported to the user by the window
            job.error = exc
            job.traceback = traceback.format_exc()
        if job.cancelled and job.cleanup is not None and job.result is not None:
            quietly(job.cleanup, job.result)   # here: VTK objects die in the thread that made them
            job.result = None
        self.done.emit(job)


def quietly(fn, *args):
    """Call ``fn(*args)``; an exception is only printed with TAVIREG_DEBUG (freeing must not raise)."""
    try:
        fn(*args)
    except Exception:  # noqa: BLE001 - freeing resources must not raise
        if os.environ.get("TAVIREG_DEBUG"):
            traceback.print_exc()


class JobQueue(qt.QObject):
    """Submits jobs to the worker and hands their results back in the GUI thread.

    ``threaded=False`` runs jobs in the calling thread (default: threaded under PyQt5 only, since
    PythonQt (3D Slicer) does not run Python code in QThreads well). ``on_busy()`` is called when the
    set of pending jobs changes, ``on_error(title, exc)`` for a failed job without its own handler.
    """

    _request = Signal(object)

    def __init__(self, parent=None, *, threaded=None, on_busy: Callable[[], None] = lambda: None,
                 on_error: Callable[[str, BaseException], None] = lambda title, exc: None):
        super().__init__(parent)
        self.threaded = (QT_API == "pyqt5") if threaded is None else bool(threaded)
        self.pending: Dict[int, Job] = {}
        self.closed = False
        self._onBusy = on_busy
        self._onError = on_error
        self._worker = Worker()
        self._thread = None
        if self.threaded:
            self._thread = qt.QThread(self)
            self._worker.moveToThread(self._thread)
            self._thread.start()
        self._request.connect(self._worker.run)
        self._worker.done.connect(self._onJobDone)

    def submit(self, label, fn, on_done=None, *, on_error=None, busy=True, cleanup=None) -> Optional[Job]:
        """Queue ``fn`` for the worker; ``on_done(result)`` or ``on_error(exc)`` follow in the GUI thread.
        None once the queue is closed."""
        if self.closed:
            return None
        job = Job(label, fn, on_done, on_error, busy, cleanup)
        self.pending[job.id] = job
        if busy:
            self._onBusy()
        self._request.emit(job)
        return job

    def busyJobs(self) -> List[Job]:
        """The pending jobs the user waits for (a progress bar shows them)."""
        return [j for j in self.pending.values() if j.busy]

    def waitIdle(self, timeout_s: float = 120.0) -> bool:
        """Process events until no job is pending; False on timeout."""
        deadline = time.monotonic() + float(timeout_s)
        app = qt.QApplication.instance()
        while self.pending:
            if time.monotonic() > deadline:
                return False
            app.processEvents(qt.QEventLoop.AllEvents, 50)
            if self.pending:
                time.sleep(0.002)
        app.processEvents()
        return True

    def cancelBusy(self) -> None:
        """Stop waiting for the busy jobs: their results will be dropped."""
        for job in self.busyJobs():
            job.cancelled = True
            del self.pending[job.id]
        self._onBusy()

    def _onJobDone(self, job):
        if self.closed:
            return
        current = self.pending.pop(job.id, None)
        if current is None:   # cancelled: drop the result, free what it holds
            if job.cleanup is not None and job.result is not None:
                result = job.result
                self.submit(None, lambda: job.cleanup(result), busy=False)
            self._onBusy()
            return
        self._onBusy()
        if job.error is not None:
            if os.environ.get("TAVIREG_DEBUG") and job.traceback:
                sys.stderr.write(job.traceback)
            if job.on_error is not None:
                job.on_error(job.error)
            else:
                self._onError(job.label or "Error", job.error)
            return
        if job.on_done is not None:
            job.on_done(job.result)

    def close(self, last: Callable[[], None]) -> None:
        """Drop the pending jobs, run ``last`` in the worker (after the running job), wait for it and
        stop the thread."""
        import threading

        self.closed = True
        for job in self.pending.values():
            job.cancelled = True
        self.pending.clear()
        finished = threading.Event()

        def run_last():
            try:
                last()
            finally:
                finished.set()

        self._request.emit(Job(None, run_last, busy=False))
        if self._thread is not None:
            finished.wait(120)   # jobs run in order: the running one ends first
            self._thread.quit()
            self._thread.wait()
