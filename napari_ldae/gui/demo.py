"""``napari-ldae demo``: napari with a bundle loaded, a synthetic subject and the widgets.

The subject is made at :data:`DEMO_SPACING` (1.5 mm), finer than the demo model's 3 mm grid, so
that the detail the transfer keeps on the scan can be seen; it is generated once (about 30 s of
CPU) and cached in the session's cache folder. With a screenshot folder the same steps run
headless (synchronously) and PNGs are saved: a 2D edit carried onto the scan with its
difference, its log-Jacobian, the 3D view, the region volumes of a sweep, a sweep over the
visits and a sweep into the future (a prediction).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from napari_ldae.gui._state import get_state

#: The demo subject's voxel size (mm): half the demo model's grid spacing. 1 mm takes three
#: times as long to generate (about 100 s of CPU) and the transfer a little longer.
DEMO_SPACING = 1.5
WINDOW = (1500, 1150)  # the screenshots' window: room for the model and manipulate panels
SCREENSHOTS = ("model-panel.png", "manipulate-2d.png", "manipulate-jacobian.png",
               "manipulate-3d.png", "manipulate-volumes.png", "interpolate-sweep.png",
               "predict-sweep.png")


def demo_subject(spacing: float, seed: int = 0, n_visits: int = 4,
                 cache_dir: Path | None = None):
    """A synthetic subject (:func:`~napari_ldae.data.synthetic.make_subject`), from
    ``cache_dir`` when it was made there before by the same generator."""
    from napari_ldae.data import synthetic

    if cache_dir is None:
        return synthetic.make_subject(seed=seed, spacing=spacing, n_visits=n_visits)
    path = Path(cache_dir) / "demo" / f"sub-s{seed}_{spacing:g}mm_{n_visits}v_" \
        f"{_generator_hash()}.npz"
    if path.is_file():
        with np.load(path) as f:
            visits = [SimpleNamespace(data=f["data"][i], affine=f["affine"],
                                      session=str(f["sessions"][i]), months=float(f["months"][i]))
                      for i in range(n_visits)]
            return SimpleNamespace(subject=str(f["subject"]), diagnosis=str(f["diagnosis"]),
                                   visits=visits)
    print(f"making the demo subject at {spacing:g} mm (once; cached in {path.parent})")
    subject = synthetic.make_subject(seed=seed, spacing=spacing, n_visits=n_visits)
    arrays = {"data": np.stack([v.data for v in subject.visits]),
              "affine": subject.visits[0].affine, "months": [v.months for v in subject.visits],
              "sessions": [v.session for v in subject.visits], "subject": subject.subject,
              "diagnosis": subject.diagnosis}

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)

    from napari_ldae._files import atomic_write

    atomic_write(path, write)
    return subject


def _generator_hash() -> str:
    """The synthetic generator's source, hashed: a changed generator makes a new subject."""
    from napari_ldae.data import synthetic_subject, synthetic_template

    h = hashlib.sha256()
    for module in (synthetic_subject, synthetic_template):
        h.update(Path(module.__file__).read_bytes())
    return h.hexdigest()[:12]


def open_subject(viewer, spacing: float, seed: int = 0, n_visits: int = 4,
                 cache_dir: Path | None = None) -> list:
    """A synthetic subject's visits as image layers (only the first one visible)."""
    from napari_ldae.data.io import Scan
    from napari_ldae.napari_io import robust_contrast_limits, scan_layer_data

    subject = demo_subject(spacing, seed, n_visits, cache_dir)
    layers = []
    for i, visit in enumerate(subject.visits):
        data, kwargs, _ = scan_layer_data(Scan.from_array(visit.data, visit.affine),
                                          name=f"{subject.subject} {visit.session}")
        kwargs["metadata"]["ldae_visit"] = {"subject": subject.subject, "months": visit.months,
                                            "session": visit.session,
                                            "diagnosis": subject.diagnosis}
        kwargs["contrast_limits"] = robust_contrast_limits(subject.visits[0].data)
        layers.append(viewer.add_image(data, visible=i == 0, **kwargs))
    return layers


def dock_widgets(viewer) -> dict:
    """Dock the LDAE widgets (model and manipulate in front; the rest tabbed behind them).

    Returns the widgets by short name, and their dock widgets under ``"docks"``.
    """
    from napari_ldae.gui.encode_widget import EncodeWidget
    from napari_ldae.gui.export_widget import ExportWidget
    from napari_ldae.gui.interpolate_widget import InterpolateWidget
    from napari_ldae.gui.manipulate_widget import ManipulateWidget
    from napari_ldae.gui.model_widget import ModelWidget
    from napari_ldae.gui.train_widget import TrainWidget

    widgets = {"model": ModelWidget(viewer), "encode": EncodeWidget(viewer),
               "manipulate": ManipulateWidget(viewer), "interpolate": InterpolateWidget(viewer),
               "export": ExportWidget(viewer), "train": TrainWidget(viewer)}
    docks = {key: viewer.window.add_dock_widget(widget, name=f"LDAE {key}", area="right",
                                                tabify=key not in ("model", "manipulate"))
             for key, widget in widgets.items()}
    raise_docks(docks)
    widgets["docks"] = docks
    return widgets


def raise_docks(docks: dict, keys=("model", "manipulate")) -> None:
    """Bring the given tabbed dock widgets to the front."""
    for key in keys:
        docks[key].show()
        docks[key].raise_()


def axial_view(viewer, z_mm: float = 12.0) -> None:
    """2D axial slice, anterior up, the subject's right on the right (neurological)."""
    n = viewer.dims.ndim
    viewer.dims.ndisplay = 2
    viewer.dims.order = (*range(n - 3), n - 1, n - 2, n - 3)
    viewer.dims.set_point(n - 1, z_mm)
    viewer.camera.orientation2d = ("up", "right")
    viewer.reset_view()


def run_demo(bundle: str | Path | None = None, screenshot_dir: str | Path | None = None,
             device: str | None = None) -> list[Path]:
    """Open the demo; with ``screenshot_dir`` save the screenshots and return their paths."""
    import napari

    from napari_ldae.session import Session

    session = Session(bundle, device=device)
    viewer = napari.Viewer(title="napari-ldae demo")
    get_state(viewer).set_session(session)
    visits = open_subject(viewer, DEMO_SPACING, cache_dir=session.cache_dir)
    widgets = dock_widgets(viewer)
    widgets["manipulate"].layer_combo.select(visits[0].name)
    axial_view(viewer)
    if screenshot_dir is None:
        napari.run()
        return []
    os.environ["NAPARI_LDAE_SYNC"] = "1"  # drive the widgets step by step
    try:
        return screenshots(viewer, widgets, visits, Path(screenshot_dir))
    finally:
        viewer.close()


def screenshots(viewer, widgets: dict, visits: list, out: Path) -> list[Path]:
    """Drive the widgets like a user and save one PNG per step."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {name: out / name for name in SCREENSHOTS}
    shoot = _shooter(viewer)
    raise_docks(widgets["docks"])
    shoot(paths["model-panel.png"])
    manip = widgets["manipulate"]
    manip.slider.blockSignals(True)  # no debounced renders: one full-quality render
    manip.slider.setValue(manip.slider.maximum() * 0.6)
    manip.slider.blockSignals(False)
    manip._show_years()  # what the blocked signal would have shown
    manip.render_full()  # carried onto the scan by warp (the defaults)
    edit = {kind: viewer.layers[f"{visits[0].name} {suffix}"]
            for kind, suffix in (("image", "[edit]"), ("difference", "[Δ edit]"),
                                 ("log_jacobian", "[log-Jacobian edit]"))}
    _only(viewer, [visits[0], edit["image"], edit["difference"]])
    viewer.layers.selection.active = edit["difference"]
    shoot(paths["manipulate-2d.png"])
    _only(viewer, [visits[0], edit["image"], edit["log_jacobian"]])
    viewer.layers.selection.active = edit["log_jacobian"]
    shoot(paths["manipulate-jacobian.png"])
    _only(viewer, [visits[0], edit["log_jacobian"]])
    viewer.dims.ndisplay = 3  # the change above its noise floor over a translucent brain
    shoot(paths["manipulate-3d.png"], angles=(-10.0, 25.0, 75.0))
    _visits_shots(viewer, widgets, visits, paths, shoot)
    _volumes_shot(viewer, widgets, visits, paths["manipulate-volumes.png"], shoot)
    return list(paths.values())


def _only(viewer, layers: list) -> None:
    """Show these layers, hide the others."""
    for layer in viewer.layers:
        layer.visible = any(layer is shown for shown in layers)


def _volumes_shot(viewer, widgets: dict, visits: list, path: Path, shoot) -> None:
    """A sweep toward AD with its region volumes: the table and the plot against strength."""
    manip = widgets["manipulate"]
    raise_docks(widgets["docks"], ("manipulate",))
    axial_view(viewer)
    manip.sweep_frames.setValue(5)
    manip.volumes.auto.setChecked(True)
    manip.sweep()
    manip.volumes.auto.setChecked(False)
    sweep = viewer.layers[f"{visits[0].name} [sweep {manip.direction.currentData()}]"]
    _only(viewer, [visits[0], sweep])
    viewer.dims.set_current_step(0, 4)
    docks = widgets["docks"]
    for key in ("model", "encode"):  # room for the manipulate panel's table and plot
        docks[key].hide()
    shoot(path)
    for key in ("model", "encode"):
        docks[key].show()


def _visits_shots(viewer, widgets: dict, visits: list, paths: dict, shoot) -> None:
    """A sweep over the visits, then as far past the last one again (a prediction)."""
    interp = widgets["interpolate"]
    raise_docks(widgets["docks"], ("interpolate",))
    interp.table.only([v.name for v in visits])
    months = interp.months()
    interp.frames.setValue(5)
    sweep = f"{visits[-1].name} [sweep over time]"
    shown = (sweep, f"{sweep} Δ to {visits[-1].name}")
    for name, end, frame in (("interpolate-sweep.png", months[-1], 2),  # over the visits
                             ("predict-sweep.png", 2 * months[-1] - months[0], 4)):  # ahead
        interp.sweep_to.setValue(end)
        interp.slider.blockSignals(True)  # the date label follows the frame shown
        interp.slider.setValue(months[0] + (end - months[0]) * frame / 4)
        interp.slider.blockSignals(False)
        interp.label_date()
        interp.sweep()
        for layer in viewer.layers:
            layer.visible = layer.name in shown
        viewer.layers.selection.active = viewer.layers[sweep]
        axial_view(viewer)
        viewer.dims.set_current_step(0, frame)
        shoot(paths[name])


def _shooter(viewer):
    from qtpy.QtWidgets import QApplication

    window = viewer.window._qt_window
    viewer.window.show()
    window.resize(*WINDOW)

    def settle() -> None:
        for _ in range(5):
            QApplication.processEvents()

    def shoot(path: Path, angles: tuple[float, float, float] | None = None) -> None:
        _close_notifications(viewer)
        window.resize(*WINDOW)  # or as tall as the docked panels need
        settle()
        viewer.reset_view()
        if angles is not None:
            viewer.camera.angles = angles
        settle()
        viewer.screenshot(str(path), canvas_only=False)

    return shoot


def _close_notifications(viewer) -> None:
    """Dismiss notification toasts (e.g. napari's backend notices) that would hide the canvas."""
    try:
        from napari._qt.dialogs.qt_notification import NapariQtNotification
    except ImportError:  # pragma: no cover - napari moved it
        return
    for toast in viewer.window._qt_window.findChildren(NapariQtNotification):
        toast.close()
