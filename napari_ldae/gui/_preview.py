"""Live previews of a slider: a few anchor values decoded once, any value in between blended.

:class:`LivePreview` owns every request of a slider, the anchors and the full render alike:
it numbers them, cancels the running one, drops stale results and queues full quality after
anchors being made. The widget gives one :class:`PreviewSource`; the slider value travels in
each :class:`Request`. Anchors span the slider's range and are decoded in one batch with the
preview step count; while the slider moves the shown volume is the piecewise-linear blend of
the two anchors around its value (no network call), and full quality follows when it rests.
A source may carry its results onto the scan (``gui._onto``): the anchors are then carried once,
in the worker, and the carried anchors are blended.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from napari_ldae.core.progress import ProgressGen
from napari_ldae.gui._onto import blend_record, for_display
from napari_ldae.operations import Result
from napari_ldae.operations_transfer import OnScan

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


@dataclass(frozen=True)
class Request:
    """One request of the slider: ``kind`` "anchors", "blend" or "full", at ``value``."""

    kind: str
    value: float
    key: tuple
    context: Any
    number: int = 0


@dataclass
class Anchors:
    """Decoded anchors for one source and setting (``key``).

    ``result`` holds the anchors' record (one volume per value: model-space, or carried onto
    the scan); ``shown`` the image, difference (and log-Jacobian) arrays ``(A, …)`` placed and
    in the scan's units (made in the worker). Placing and units are linear, so blending them
    equals placing the blend.
    """

    key: tuple
    values: np.ndarray  # (A,) sorted, in the source's anchor coordinate
    shown: tuple[np.ndarray, ...]
    result: Result | OnScan | None = None

    def shown_at(self, position: float) -> tuple[np.ndarray, ...]:
        """Image and change maps at ``position``, ready to show."""
        return tuple(blend_anchors(self.values, arrays, position) for arrays in self.shown)

    def result_at(self, position: float, shown: tuple[np.ndarray, ...],
                  **provenance: Any) -> Result | OnScan:
        """The record of the blend at ``position`` (``shown``: its display arrays)."""
        model = self.result.result if isinstance(self.result, OnScan) else self.result
        return blend_record(self.result, blend_anchors(self.values, model.volumes, position),
                            shown, **provenance)


class PreviewSource(Protocol):
    """What a widget gives :class:`LivePreview` (``title`` names its jobs). The widget itself
    has the viewer's ``state`` (its steps) and a ``target`` (:class:`~napari_ldae.gui._onto.
    TargetChoice`): blends are shown only when the preview steps are fewer than full quality's
    where results are shown."""

    title: str

    def key(self) -> tuple[tuple, Any]:
        """``(key, context)`` of the current inputs (raises on bad input); ``context`` has a
        ``geometry`` (:class:`~napari_ldae.gui._layers.ResultGeometry`)."""

    def anchor_values(self, key: tuple) -> np.ndarray:
        """The anchors' positions (sorted)."""

    def position(self, value: float) -> float:
        """The anchor position of a slider value."""

    def at(self, value: float) -> dict[str, Any]:
        """The provenance of a slider value (e.g. its strength)."""

    def iter_result(self, request: Request, positions: list[float] | None) -> ProgressGen:
        """The record of a request (``positions``: the anchors'): a model-space
        :class:`Result`, or an :class:`OnScan` carried onto the scan."""

    def show(self, request: Request, shown: tuple[np.ndarray, ...],
             result: Result | OnScan) -> None:
        """Present a record (``shown``: its display arrays)."""


@dataclass(frozen=True)
class PreviewContext:
    """The inputs of a request: the session, source layers and scans, and where to show."""

    session: Any
    layers: tuple
    scans: tuple
    geometry: Any  # ResultGeometry


class LivePreview:
    """The slider protocol of a widget: throttled blends while it moves, full quality at rest."""

    def __init__(self, widget, controls, slider, source: PreviewSource) -> None:
        from qtpy.QtCore import QTimer
        from superqt.utils import qthrottled

        self.widget, self.controls, self.slider, self.source = widget, controls, slider, source
        self.anchors: Anchors | None = None
        self.latest: Request | None = None  # the newest request; older results are dropped
        self.full_next = False  # render full quality when the running anchors are made
        self._count = 0
        self._later = qthrottled(self._preview, timeout=THROTTLE_MS)
        self.rest_timer = QTimer(widget)
        self.rest_timer.setSingleShot(True)
        self.rest_timer.setInterval(REST_MS)
        self.rest_timer.timeout.connect(self.rested)
        slider.valueChanged.connect(self.moved)
        slider.sliderReleased.connect(self.released)

    @property
    def value(self) -> float:
        return round(float(self.slider.value()), 4)

    def moved(self, *_) -> None:
        steps = self.widget.state.steps
        if steps["preview"] < self.widget.target.full_steps(steps):
            self._later()
        self.rest_timer.start()

    def released(self) -> None:
        self.rest_timer.stop()
        self.rested()

    def rested(self) -> None:
        """Full quality, after the anchors if they are being made."""
        if self._running("anchors"):
            self.full_next = True
        else:
            self.render_full()

    def _running(self, kind: str) -> bool:
        return bool(self.controls.busy and self.latest and self.latest.kind == kind)

    def _new(self, kind: str, key: tuple, context: Any) -> Request:
        """A new request: the running job is cancelled (its result would be stale)."""
        if self.controls.busy:
            self.controls.job.cancel()
        self._count += 1
        self.latest, self.full_next = Request(kind, self.value, key, context, self._count), False
        return self.latest

    def _key(self, controls) -> tuple[tuple, Any] | None:
        from napari_ldae.session import describe_error

        try:
            return self.source.key()
        except Exception as err:
            self.widget.fail(controls, describe_error(err))
            return None

    def _preview(self) -> None:
        if not _alive(self.controls.status):  # a throttled call after the widget was closed
            return
        got = self._key(self.controls)
        if got is None:
            return
        key, context = got
        if self.anchors is not None and self.anchors.key == key:
            if self._running("full"):
                self._new("blend", key, context)  # a full render of an older value: stale now
            self._show_blend(Request("blend", self.value, key, context))
        elif not (self._running("anchors") and self.latest.key == key):
            self._make_anchors(self._new("anchors", key, context))

    def _show_blend(self, request: Request) -> None:
        a = self.anchors
        position = self.source.position(request.value)
        listed = ", ".join(f"{v:g}" for v in a.values)
        carried = f", each carried onto the scan by {a.result.method}" \
            if isinstance(a.result, OnScan) else ""
        shown = a.shown_at(position)
        result = a.result_at(position, shown, preview=f"linear blend of decodes at {listed}"
                             f"{carried}", **self.source.at(request.value))
        self.source.show(request, shown, result)

    def _make_anchors(self, request: Request) -> None:
        from qtpy.QtCore import QTimer

        values = np.asarray(self.source.anchor_values(request.key), dtype=float)

        def work():
            result = yield from self.source.iter_result(request, list(values))
            return result, for_display(result, request.context.geometry)

        def done(out) -> None:
            if request is not self.latest:
                return
            result, shown = out
            self.anchors = Anchors(request.key, values, shown, result)
            self._show_blend(Request("blend", self.value, request.key, request.context))
            if self.full_next:  # after this job has finished
                QTimer.singleShot(0, self.render_full)

        self.controls.say(f"preparing the live preview: {ANCHORS} anchors …")
        # the widget's own bar and Cancel only: slider renders are frequent and short
        self.widget.run_job(self.controls, work, f"{self.source.title} (live preview)", done,
                            activity=False)

    def render_full(self) -> None:
        """The slider's value at full quality; the latest request wins."""
        self.rest_timer.stop()
        got = self._key(self.controls)
        if got is None:
            return
        request = self._new("full", *got)

        def work():
            result = (yield from self.source.iter_result(request, None)).item(0)
            return result, for_display(result, request.context.geometry)

        def done(out) -> None:
            if request is self.latest:  # else a newer value was asked for
                result, shown = out
                self.source.show(request, shown, result)

        self.widget.run_job(self.controls, work, self.source.title, done, activity=False)


def _alive(widget) -> bool:
    """False once Qt has deleted the widget (any call on it then raises RuntimeError)."""
    try:
        widget.objectName()
    except RuntimeError:
        return False
    return True
