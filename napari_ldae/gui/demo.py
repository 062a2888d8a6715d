"""``napari-ldae demo``: napari with a bundle loaded, a synthetic subject and the widgets.

With a screenshot folder the same steps run headless (synchronously) and PNGs are saved:
a 2D edit with its difference overlay, the 3D view, a sweep over the visits and a sweep into
the future (a prediction).
"""

from __future__ import annotations

import os
from pathlib import Path

from napari_ldae.gui._state import get_state

SCREENSHOTS = ("model-panel.png", "manipulate-2d.png", "manipulate-3d.png",
               "interpolate-sweep.png", "predict-sweep.png")


def open_subject(viewer, spacing: float, seed: int = 0, n_visits: int = 4) -> list:
    """A synthetic subject's visits as image layers (only the first one visible)."""
    from napari_ldae.data.io import Scan
    from napari_ldae.data.synthetic import make_subject
    from napari_ldae.napari_io import robust_contrast_limits, scan_layer_data

    subject = make_subject(seed=seed, spacing=spacing, n_visits=n_visits)
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
    visits = open_subject(viewer, spacing=session.contract.spacing[0])
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
    paths = [out / name for name in SCREENSHOTS]
    shoot = _shooter(viewer)
    raise_docks(widgets["docks"])
    shoot(paths[0])
    manip = widgets["manipulate"]
    manip.slider.blockSignals(True)  # no debounced renders: one full-quality render
    manip.slider.setValue(manip.slider.maximum() * 0.6)
    manip.slider.blockSignals(False)
    manip.render_full()
    shoot(paths[1])
    viewer.dims.ndisplay = 3  # the scan in gray, the signed change in red/blue
    viewer.layers[f"{visits[0].name} [edit]"].visible = False
    shoot(paths[2], angles=(-10.0, 25.0, 75.0))
    interp = widgets["interpolate"]
    raise_docks(widgets["docks"], ("interpolate",))
    interp.table.only([v.name for v in visits])
    months = interp.months()
    interp.frames.setValue(5)
    sweep = f"{visits[-1].name} [sweep over time]"
    shown = (sweep, f"{sweep} Δ to {visits[-1].name}")
    for path, end, frame in ((paths[3], months[-1], 2),  # over the visits
                             (paths[4], 2 * months[-1] - months[0], 4)):  # as far ahead again
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
        shoot(path)
    return paths


def _shooter(viewer):
    from qtpy.QtWidgets import QApplication

    window = viewer.window._qt_window
    viewer.window.show()
    window.resize(1500, 950)

    def settle() -> None:
        for _ in range(5):
            QApplication.processEvents()

    def shoot(path: Path, angles: tuple[float, float, float] | None = None) -> None:
        _close_notifications(viewer)
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
