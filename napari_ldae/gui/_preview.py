"""Live previews of a slider: a few anchor values decoded once, any value in between blended.

The anchors span the slider's range and are decoded in one batch with the preview step count;
while the slider moves, the shown volume is the piecewise-linear blend of the two anchors
around its value (no network call), and full quality follows when it rests.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

ANCHORS = 5  # anchor values, evenly over the slider's range
THROTTLE_MS = 40  # at most one blended preview per 40 ms while dragging
REST_MS = 300  # the slider rests: full quality (the blend already shows the value)


def blend_anchors(values: np.ndarray, volumes: np.ndarray, value: float) -> np.ndarray:
    """Piecewise-linear blend of ``volumes`` (one per sorted anchor value) at ``value``
    (clipped to the anchors' range)."""
    v = float(np.clip(value, values[0], values[-1]))
    i = int(np.clip(np.searchsorted(values, v, side="right") - 1, 0, len(values) - 2))
    w = np.float32((v - values[i]) / (values[i + 1] - values[i]))
    return (1.0 - w) * volumes[i] + w * volumes[i + 1]


@dataclass
class Anchors:
    """Decoded anchors for one source and setting (``key``), as displayed.

    ``shown`` holds the image and difference arrays ``(A, …)`` of the anchors, placed and in the
    scan's units (made in the worker); placing and units are linear, so blending them equals
    placing the blend, and nothing is resampled on the GUI thread.
    """

    key: tuple
    values: np.ndarray  # (A,) sorted
    shown: tuple[np.ndarray, ...]
    extra: dict[str, Any] = field(default_factory=dict)  # layers, geometry

    def shown_at(self, value: float) -> tuple[np.ndarray, ...]:
        """Image and differences at ``value``, ready to show."""
        return tuple(blend_anchors(self.values, arrays, value) for arrays in self.shown)


class LivePreview:
    """The slider protocol of a widget: throttled blends while it moves, full quality at rest.

    The widget gives ``key()`` → ``(key, context)`` for the current inputs (raising on bad
    input), ``anchor_job(key, context)`` → ``(values, gen_func, desc)`` whose generator returns
    ``(shown, extra)`` (see :class:`Anchors`), ``show_blend(anchors)`` and
    ``render_full()``; full renders call :meth:`new_request` too, so that the latest request
    wins over anchors and renders alike.
    """

    def __init__(self, widget, controls, slider, *, key: Callable, anchor_job: Callable,
                 show_blend: Callable, render_full: Callable) -> None:
        from qtpy.QtCore import QTimer
        from superqt.utils import qthrottled

        self.widget, self.controls = widget, controls
        self._key, self._anchor_job = key, anchor_job
        self._show_blend, self._render_full = show_blend, render_full
        self.anchors: Anchors | None = None
        self.request = 0
        self.running: tuple | None = None  # ("anchors", key) or ("full", …): the running job
        self.full_next = False  # render full quality when the running anchors are made
        self._later = qthrottled(self._preview, timeout=THROTTLE_MS)
        self.rest_timer = QTimer(widget)
        self.rest_timer.setSingleShot(True)
        self.rest_timer.setInterval(REST_MS)
        self.rest_timer.timeout.connect(self.rested)
        slider.valueChanged.connect(self.moved)
        slider.sliderReleased.connect(self.released)

    def moved(self, *_) -> None:
        steps = self.widget.state.steps
        if steps["preview"] < steps["decode"]:
            self._later()
        self.rest_timer.start()

    def released(self) -> None:
        self.rest_timer.stop()
        self.rested()

    def rested(self) -> None:
        """Full quality, after the anchors if they are being made."""
        if self.controls.busy and self.running and self.running[0] == "anchors":
            self.full_next = True
        else:
            self._render_full()

    def new_request(self, running: tuple | None = None) -> int:
        """Cancel the running job (its result would be stale); the number of the next one."""
        if self.controls.busy:
            self.controls.job.cancel()
        self.request += 1
        self.running, self.full_next = running, False
        return self.request

    def _preview(self) -> None:
        from napari_ldae.session import describe_error

        try:
            key, context = self._key()
        except Exception as err:
            self.widget.fail(self.controls, describe_error(err))
            return
        busy = self.controls.busy
        if self.anchors is not None and self.anchors.key == key:
            if busy and self.running and self.running[0] == "full":
                self.new_request()  # a full render of an older value: stale now
            self._show_blend(self.anchors)
        elif not (busy and self.running == ("anchors", key)):
            self._make_anchors(key, context)

    def _make_anchors(self, key: tuple, context: Any) -> None:
        from qtpy.QtCore import QTimer

        values, work, desc = self._anchor_job(key, context)
        request = self.new_request(("anchors", key))

        def done(result) -> None:
            if request != self.request:
                return
            shown, extra = result
            self.anchors = Anchors(key, values, shown, extra)
            self._show_blend(self.anchors)
            if self.full_next:  # after this job has finished
                QTimer.singleShot(0, self._render_full)

        self.controls.say(f"preparing the live preview: {ANCHORS} anchors …")
        # the widget's own bar and Cancel only: slider renders are frequent and short
        self.widget.run_job(self.controls, work, desc, done, activity=False)
