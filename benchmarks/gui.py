"""Interactive latency in the real manipulate widget: a napari viewer (under Xvfb when there is
no display) with a synthetic scan at the bundle's spacing, the widget's own thread workers.

- slider latency: ``slider.setValue(v)`` as a user's move; time until the edit layer shows
  strength v as the live preview, then at full steps (throttle and rest timers included); the
  first move of a scan decodes the preview's anchors, timed on its own;
- scrubbing: a sweep layer's frames shown one after the other (``dims.set_current_step``),
  each until the canvas has rendered it (``grabFramebuffer``);
- memory: peak RSS (``getrusage``) and current RSS (psutil) after a few moves and after many.
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import os
import resource
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from benchmarks._common import Mode, Section, median

TIMEOUT_S = 600.0
CHEAP_STEPS = {"preview": 1, "decode": 2}  # memory and sweep runs: renders, not decode speed
PREVIEW_TARGET_S, FULL_TARGET_S, GROWTH_TARGET = 1.0, 5.0, 5.0
VALUES = (1.0, -1.5, 2.0, -0.5, 2.5, -2.0, 0.5, -2.5, 1.5, -1.0)  # slider moves, in turn


def run(mode: Mode) -> Section:
    return widget_section(
        mode, "Interactive latency in the manipulate widget",
        "The real napari manipulate widget on CPU with its thread workers; a synthetic scan at "
        "the bundle's spacing; times from a slider value change.", _measure)


def widget_section(mode: Mode, title: str, about: str, measure) -> Section:
    """A section measured by ``measure(mode, section)`` on a display (Xvfb when there is
    none); skipped, saying why, when neither is available."""
    section = Section(title, about)
    try:
        with _display():
            measure(mode, section)
    except ImportError as err:
        section.skipped = f"no display and no Xvfb ({err})"
    return section


@contextlib.contextmanager
def _display() -> Iterator[None]:
    """A virtual X display (Xvfb) on Linux when there is none."""
    if not sys.platform.startswith("linux") or os.environ.get("DISPLAY") \
            or os.environ.get("QT_QPA_PLATFORM"):
        yield
        return
    from pyvirtualdisplay import Display

    with Display(visible=False, size=(1400, 900)):
        try:
            yield
        finally:  # Qt must let go of the display before it stops (else Xlib exits with 1)
            from qtpy import sip
            from qtpy.QtWidgets import QApplication

            if QApplication.instance() is not None:
                sip.delete(QApplication.instance())


def _bundle(mode: Mode, tmp: Path) -> tuple[Path, str]:
    from napari_ldae.core.presets import save_random_bundle
    from napari_ldae.session import DEMO_BUNDLE

    if mode.preset == "demo" and (DEMO_BUNDLE / "config.json").is_file():
        return DEMO_BUNDLE, "the trained demo bundle (resources/demo)"
    return save_random_bundle(tmp / "bundle", mode.preset), \
        f"a random {mode.preset}-preset bundle (untrained; same speed as a trained one)"


def _measure(mode: Mode, section: Section) -> None:
    import napari

    from napari_ldae.gui._state import get_state
    from napari_ldae.gui.demo import axial_view, open_subject
    from napari_ldae.gui.manipulate_widget import ManipulateWidget
    from napari_ldae.session import Session

    with tempfile.TemporaryDirectory() as tmp:
        bundle, which = _bundle(mode, Path(tmp))
        session = Session(bundle, device="cpu", cache_dir=Path(tmp) / "cache")
        viewer = napari.Viewer(title="napari-ldae benchmark")
        try:
            get_state(viewer).set_session(session)
            source = open_subject(viewer, spacing=session.contract.spacing[0], n_visits=1)[0]
            manip = ManipulateWidget(viewer)
            viewer.window.add_dock_widget(manip, name="LDAE manipulate")
            manip.layer_combo.select(source.name)
            manip.target.onto.setCurrentText("model")  # the decode; onto the scan: onto.py
            axial_view(viewer)
            ui = _Driver(viewer, manip, source.name)
            section.notes.append(f"Bundle: {which}; steps {session.steps}; results shown on "
                                 "the model grid (the section `onto` carries them onto a scan).")
            _latency(ui, mode, section, session.steps)
            _memory(ui, mode, section)
            _scrub(ui, mode, section)
        finally:
            viewer.close()


class _Driver:
    """Drives the widget like a user and reads what the viewer shows."""

    def __init__(self, viewer, manip, source: str) -> None:
        from qtpy.QtWidgets import QApplication

        self.viewer, self.manip, self.source = viewer, manip, source
        self.app = QApplication.instance()
        self._values = itertools.cycle(VALUES)

    def next_value(self) -> float:
        """The next slider value of a fixed cycle that differs from the current one."""
        return next(v for v in self._values if abs(v - self.manip.strength) > 1e-6)

    def wait(self, done: Callable[[], bool], on_poll: Callable[[], None] | None = None) -> None:
        """Process Qt events until ``done()``."""
        t0 = time.perf_counter()
        while not done():
            if time.perf_counter() - t0 > TIMEOUT_S:
                raise TimeoutError("the widget did not finish in time")
            self.app.processEvents()
            if on_poll is not None:
                on_poll()
            time.sleep(0.01)

    def idle(self) -> None:
        self.wait(lambda: not self.manip.controls.busy and not self.manip.sweep_controls.busy)

    def shown(self) -> tuple[float, int] | None:
        """(strength, steps) of the edit on screen, if any."""
        name = f"{self.source} [edit]"
        if name not in self.viewer.layers:
            return None
        prov = self.viewer.layers[name].metadata["ldae_provenance"]
        return prov["strength"], prov["steps"]

    def move(self, steps: dict[str, int]) -> dict[int, float]:
        """Move the slider to a new value; seconds until each step count of it was shown."""
        value = self.next_value()
        seen: dict[int, float] = {}
        t0 = time.perf_counter()

        def poll() -> None:
            shown = self.shown()
            if shown and abs(shown[0] - value) < 1e-6 and shown[1] not in seen:
                seen[shown[1]] = time.perf_counter() - t0

        self.manip.slider.setValue(value)
        self.wait(lambda: steps["decode"] in seen, poll)
        self.idle()
        return seen


def _latency(ui: _Driver, mode: Mode, section: Section, steps: dict[str, int]) -> None:
    from napari_ldae.gui._preview import ANCHORS
    from napari_ldae.gui._state import get_state

    get_state(ui.viewer).set_steps(steps)
    t0 = time.perf_counter()
    ui.manip.render_full()  # encodes the scan (cached afterwards) and the reconstruction
    ui.idle()
    encode_s = time.perf_counter() - t0
    anchors_s = ui.move(steps)[steps["decode"]]  # the first move decodes the anchors
    moves = [ui.move(steps) for _ in range(mode.reps)]
    firsts = [min(seen.values()) for seen in moves]
    previews = [seen[steps["preview"]] for seen in moves if steps["preview"] in seen]
    full = median([seen[steps["decode"]] for seen in moves])
    first = median(firsts)
    section.rows += [
        {"measurement": "first use: encode + reconstruct + edit, full steps", "value": encode_s,
         "unit": "s"},
        {"measurement": f"first slider move: {ANCHORS} preview anchors ({steps['preview']} "
         "steps), then full quality", "value": anchors_s, "unit": "s"},
        {"measurement": f"slider move → first image ({len(previews)} of {len(moves)} moves "
         f"showed the live preview)", "value": first, "unit": "s"},
        {"measurement": f"slider move → full quality ({steps['decode']} steps)", "value": full,
         "unit": "s"}]
    section.target("slider preview (first image)", first, PREVIEW_TARGET_S, at_most=True,
                   unit=" s")
    section.target("slider full quality", full, FULL_TARGET_S, at_most=True, unit=" s")


def _rss_mb() -> tuple[float, float]:
    """(peak RSS, current RSS) of this process in MB."""
    import psutil

    gc.collect()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux
    return peak, psutil.Process().memory_info().rss / 2**20


def _memory(ui: _Driver, mode: Mode, section: Section) -> None:
    from napari_ldae.gui._state import get_state

    get_state(ui.viewer).set_steps(CHEAP_STEPS)
    few, many = mode.moves
    readings = []
    for n in range(1, many + 1):
        ui.move(CHEAP_STEPS)
        if n in (few, many):
            readings.append(_rss_mb())
    (peak_a, rss_a), (peak_b, rss_b) = readings
    growth = 100 * (peak_b - peak_a) / peak_a
    section.rows += [
        {"measurement": f"peak RSS after {few} → {many} moves", "value":
         f"{peak_a:.0f} → {peak_b:.0f}", "unit": "MB"},
        {"measurement": f"current RSS after {few} → {many} moves", "value":
         f"{rss_a:.0f} → {rss_b:.0f}", "unit": "MB"},
        {"measurement": "current RSS growth", "value": 100 * (rss_b - rss_a) / rss_a,
         "unit": "%"}]
    section.target(f"peak RSS growth, {few} → {many} moves", growth, GROWTH_TARGET,
                   at_most=True, unit=" %")
    section.notes.append(f"Memory: RSS of the benchmark process (the GUI section runs first); "
                         f"moves render with {CHEAP_STEPS} steps (the number of renders matters "
                         f"for leaks, not their steps); {few} and {many} moves in {mode.name} "
                         "mode.")


def _scrub(ui: _Driver, mode: Mode, section: Section) -> None:
    from napari_ldae.gui._state import get_state

    get_state(ui.viewer).set_steps(CHEAP_STEPS)
    ui.manip.sweep_frames.setValue(mode.sweep_frames)
    ui.manip.sweep()
    ui.idle()
    canvas = ui.viewer.window._qt_viewer.canvas.native
    grab = canvas.grabFramebuffer if hasattr(canvas, "grabFramebuffer") \
        else lambda: ui.viewer.screenshot(canvas_only=True)
    times = []
    for _ in range(mode.reps):
        for frame in range(mode.sweep_frames):
            t0 = time.perf_counter()
            ui.viewer.dims.set_current_step(0, frame)
            ui.app.processEvents()
            grab()
            times.append(time.perf_counter() - t0)
    frame_s = median(times)
    section.rows.append({"measurement": f"sweep scrubbing: frame time ({mode.sweep_frames} "
                         "frames, 2D canvas render)", "value": 1000 * frame_s, "unit": "ms"})
