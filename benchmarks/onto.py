"""An edit carried onto a 1 mm scan in the real manipulate widget (napari viewer, Xvfb when
there is no display, the widget's own thread workers, "show on: scan"):

- slider latency: from ``slider.setValue(v)`` until the edit layer shows strength v as the
  live preview (a blend of the carried anchors), then carried at full quality, by ``warp`` and
  by ``intensity``; the first move of a scan, which decodes and carries the anchors, on its own;
- the parts of a full render, on the main thread and interleaved: the edit's decode (the
  bundle's ``carry`` steps, as the widget's on the scan), and the
  carrying of one edit onto the scan by each transfer (:func:`~napari_ldae.operations_transfer.
  iter_onto_scan`).

The subject (one visit, 1 mm; 6 mm in tiny mode) is generated once and cached in the default
cache folder (``napari_ldae.gui.demo.demo_subject``; not in tiny mode); generating it is not
timed.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from benchmarks._common import Mode, Section, interleaved, median
from benchmarks.gui import PREVIEW_TARGET_S, _bundle, _Driver, widget_section

FULL_TARGET_S = 5.0
SCAN_MM = {"full": 1.0, "quick": 1.0, "tiny": 6.0}
STRENGTH = 2.5  # the carried edit timed on its own


def run(mode: Mode) -> Section:
    return widget_section(
        mode, "An edit carried onto a 1 mm scan in the manipulate widget",
        "The real napari manipulate widget on CPU with its thread workers, showing on the scan "
        "(the model's change carried onto a 1 mm synthetic scan); times from a slider value "
        "change, and the parts of a full render on the main thread.", _measure)


def _measure(mode: Mode, section: Section) -> None:
    import napari

    from napari_ldae.gui._state import get_state
    from napari_ldae.gui.demo import axial_view, open_subject
    from napari_ldae.gui.manipulate_widget import ManipulateWidget
    from napari_ldae.operations_transfer import full_steps
    from napari_ldae.session import Session, default_cache_dir

    spacing = SCAN_MM[mode.name]
    with tempfile.TemporaryDirectory() as tmp:
        bundle, which = _bundle(mode, Path(tmp))
        session = Session(bundle, device="cpu", cache_dir=Path(tmp) / "cache")
        viewer = napari.Viewer(title="napari-ldae benchmark: onto the scan")
        try:
            get_state(viewer).set_session(session)
            cache = None if mode.name == "tiny" else default_cache_dir()  # (seconds in tiny)
            source = open_subject(viewer, spacing, n_visits=1, cache_dir=cache)[0]
            manip = ManipulateWidget(viewer)
            viewer.window.add_dock_widget(manip, name="LDAE manipulate")
            manip.layer_combo.select(source.name)
            axial_view(viewer)
            section.notes.append(f"Bundle: {which}; steps {session.steps}; scan "
                                 f"{source.data.shape} at {spacing:g} mm.")
            # full quality on the scan decodes with the bundle's carry steps
            shown = {**session.steps, "decode": full_steps(session.steps, "scan")}
            _latency(_Driver(viewer, manip, source.name), mode, section, shown)
            _parts(session, manip, mode, section, shown)
        finally:
            viewer.close()


def _latency(ui: _Driver, mode: Mode, section: Section, steps: dict[str, int]) -> None:
    from napari_ldae.gui._preview import ANCHORS

    t0 = time.perf_counter()
    ui.manip.render_full()  # encodes the scan (cached afterwards) and the reconstruction
    ui.idle()
    section.rows.append({"measurement": "first use: encode + reconstruct (strength 0: the "
                         "scan itself)", "value": time.perf_counter() - t0, "unit": "s"})
    for transfer in ("warp", "intensity"):
        ui.manip.target.transfer.setCurrentText(transfer)  # re-renders the value shown
        ui.idle()
        anchors = ui.move(steps)[steps["decode"]]  # a new key: the anchors again
        moves = [ui.move(steps) for _ in range(mode.reps)]
        first = median([min(seen.values()) for seen in moves])
        full = median([seen[steps["decode"]] for seen in moves])
        previews = sum(steps["preview"] in seen for seen in moves)
        section.rows += [
            {"measurement": f"{transfer}: first slider move: {ANCHORS} anchors decoded "
             f"({steps['preview']} steps) and carried, then full quality", "value": anchors,
             "unit": "s"},
            {"measurement": f"{transfer}: slider move → first image ({previews} of "
             f"{len(moves)} moves showed the live preview)", "value": first, "unit": "s"},
            {"measurement": f"{transfer}: slider move → full quality carried onto the scan "
             f"({steps['decode']} steps)", "value": full, "unit": "s"}]
        section.target(f"{transfer}: slider preview (first image)", first, PREVIEW_TARGET_S,
                       at_most=True, unit=" s")
        section.target(f"{transfer}: full quality carried onto the scan", full, FULL_TARGET_S,
                       at_most=True, unit=" s")


def _parts(session, manip, mode: Mode, section: Section, steps: dict[str, int]) -> None:
    """The decode (``steps["decode"]``) and each transfer of one full render, on the main
    thread, interleaved."""
    from napari_ldae.core.progress import drain
    from napari_ldae.operations_transfer import iter_onto_scan

    scan = manip._prepare()[2]
    edit = drain(session.iter_edit(scan, manip.direction.currentData(), [STRENGTH],
                                   steps["decode"], steps["encode"]))
    cases = {
        f"decode of one edit ({steps['decode']} steps)": lambda: drain(session.iter_edit(
            scan, manip.direction.currentData(), [STRENGTH], steps["decode"], steps["encode"])),
        "carry by warp": lambda: drain(iter_onto_scan(edit, "warp")),
        "carry by intensity": lambda: drain(iter_onto_scan(edit, "intensity"))}
    for name, times in interleaved(cases, mode.reps).items():
        section.rows.append({"measurement": f"main thread: {name}", "value": median(times),
                             "unit": "s"})
    section.notes.append(f"Main-thread parts: strength {STRENGTH:+g}, {mode.reps} interleaved "
                         "rounds, median; the reconstruction is cached (the widget's full render "
                         "decodes the edit only).")
