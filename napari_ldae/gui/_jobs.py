"""Run the Session's progress generators off the GUI thread, with progress, cancel and errors.

A :class:`Job` wraps one generator function in a napari ``GeneratorWorker`` (signals
connected before ``start()``), shows a napari progress bar (cancelable from the activity
dock too) and calls back on the GUI thread with the result, an error message or "cancelled".
``worker.quit()`` acts at the next yield, i.e. after the current DDIM step. With
``NAPARI_LDAE_SYNC=1`` the generator runs synchronously on the calling thread (tests,
benchmarks), through the same callbacks.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Generator
from typing import Any

from napari.utils import cancelable_progress
from napari.utils.notifications import show_error

from napari_ldae.core.device import is_out_of_memory
from napari_ldae.core.progress import Progress
from napari_ldae.session import describe_error

SYNC_ENV = "NAPARI_LDAE_SYNC"


def sync_mode() -> bool:
    """Whether work runs synchronously (``NAPARI_LDAE_SYNC=1``)."""
    return os.environ.get(SYNC_ENV, "").strip().lower() not in ("", "0", "false", "no")


class JobError(Exception):
    """Carries an error of a job's generator out of the worker thread (not a RuntimeError)."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


class _JobProgress(cancelable_progress):
    """A napari progress bar whose Cancel (activity dock) cancels the job at once."""

    def cancel(self) -> None:
        super().cancel()
        if self.cancel_callback is not None:
            self.cancel_callback()


class Job:
    """One generator run in a worker thread (or synchronously), reporting on the GUI thread.

    ``on_result(value)``, ``on_error(message, exc)``, ``on_cancel()`` and ``on_progress(p)``
    are called on the GUI thread; exactly one of the first three, then ``on_done()``.
    ``activity=False`` shows no bar in napari's activity dock (frequent, short jobs such as
    slider renders: while a bar is open napari animates an "in progress" indicator, which
    repaints the whole window ~30 times a second, costly with software OpenGL).
    """

    def __init__(self, gen_func: Callable[[], Generator[Progress, None, Any]], *, desc: str,
                 on_result: Callable[[Any], None],
                 on_error: Callable[[str, BaseException], None] | None = None,
                 on_cancel: Callable[[], None] | None = None,
                 on_progress: Callable[[Progress], None] | None = None,
                 on_done: Callable[[], None] | None = None, notify: bool = True,
                 activity: bool = True) -> None:
        self._gen_func = gen_func
        self.desc = desc
        self._on_result, self._on_error, self._on_cancel = on_result, on_error, on_cancel
        self._on_progress, self._on_done = on_progress, on_done
        self._notify, self._activity = notify, activity
        self._pbar: _JobProgress | None = None
        self.worker = None
        self.running = False
        self.cancelled = False

    # ------------------------------------------------------------------------- control
    def start(self) -> Job:
        self.running = True
        if self._activity:
            self._pbar = _JobProgress(total=0, desc=self.desc, cancel_callback=self.cancel)
        if sync_mode():
            self._run_sync()
            return self
        from napari.qt.threading import create_worker

        worker = create_worker(self._run, _start_thread=False, _ignore_errors=True)
        worker.yielded.connect(self._yielded)
        worker.returned.connect(self._returned)
        worker.errored.connect(self._errored)
        worker.aborted.connect(self._aborted)
        worker.finished.connect(self._finished)
        self.worker = worker
        worker.start()
        return self

    def cancel(self) -> None:
        """Stop at the next yield (the current network call finishes first)."""
        if not self.running or self.cancelled:
            return
        self.cancelled = True
        if self.worker is not None:
            self.worker.quit()

    def _run(self) -> Generator[Progress, None, Any]:
        try:
            return (yield from self._gen_func())
        except Exception as err:
            # superqt's GeneratorWorker swallows every RuntimeError raised by the generator
            # (torch.OutOfMemoryError included) as "RuntimeError in aborted thread", emitting
            # no `errored`: wrap errors so that they always reach the GUI.
            raise JobError(err) from err

    def _run_sync(self) -> None:
        gen = self._gen_func()
        try:
            while True:
                if self.cancelled:
                    gen.close()
                    self._aborted()
                    break
                try:
                    p = next(gen)
                except StopIteration as stop:
                    self._returned(stop.value)
                    break
                self._yielded(p)
        except Exception as err:
            self._errored(err)
        finally:
            self._finished()

    # ------------------------------------------------------------------------- signals
    def _yielded(self, p: Progress) -> None:
        pbar = self._pbar  # a local: updating the bar may process queued signals
        if pbar is not None and isinstance(p, Progress):
            if pbar.total != p.total:
                pbar.total = p.total
            pbar.n = p.step
            pbar.set_description(f"{self.desc}: {p.message}" if p.message else self.desc)
            if not pbar.disable:
                pbar.update(0)
        if self._on_progress is not None:
            self._on_progress(p)

    def _returned(self, value: Any) -> None:
        self._close_bar()
        if self.cancelled:  # cancelled on the last step: the result is stale
            self._aborted()
            return
        self._on_result(value)

    def _errored(self, err: BaseException) -> None:
        if isinstance(err, JobError):
            err = err.error
        self._close_bar()
        if is_out_of_memory(err):
            _free_gpu()
        message = describe_error(err)
        if self._notify:
            show_error(f"{self.desc} failed: {message}")
        if self._on_error is not None:
            self._on_error(message, err)

    def _aborted(self) -> None:
        self._close_bar()
        if self._on_cancel is not None:
            self._on_cancel()
            self._on_cancel = None  # only once

    def _finished(self) -> None:
        self._close_bar()
        self.running = False
        if self._on_done is not None:
            self._on_done()

    def _close_bar(self) -> None:
        if self._pbar is not None:
            pbar, self._pbar = self._pbar, None
            pbar.close()


def _free_gpu() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
