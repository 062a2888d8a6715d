"""Change maps as layers: the signed intensity difference and the warp's log-Jacobian.

Both are drawn over the gray scan in a diverging colormap centred at 0 whose centre is
transparent, with symmetric contrast limits and translucent blending: the difference in blue
(intensity drops) and red (rises), the log-Jacobian in purple (tissue shrinks) and orange
(expands). The limits follow the largest change but never fall below the map's noise floor, so a
negligible change stays faint instead of filling the colormap.

In 3D only change above the noise floor is drawn (and, as before, above a third of the largest
change, so that the main changes stand out where translucent rendering accumulates along each
ray), over the brain rendered as a translucent average (``_layers.BRAIN_RENDERING_3D``): a
negligible edit draws nothing instead of painting the whole brain surface.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from napari_ldae.gui._layers import RESULT_KEY, upsert

if TYPE_CHECKING:
    import napari

    from napari_ldae.gui._layers import ResultGeometry

DIFF_COLORMAP_NAME = "ldae Δ (bwr)"
JACOBIAN_COLORMAP_NAME = "ldae log-Jacobian (PuOr)"
#: Intensity changes below this fraction of the scan's range are noise: a T1 scan's own noise is
#: 1–3 % of its white-matter signal (the synthetic cohort draws σ in 0.01–0.03; real 1 mm scans
#: have a white-matter SNR of about 30–100), and the demo decoder's reconstructions at 20 and 50
#: DDIM steps differ by up to 1.7 % (99th percentile in the brain), so a smaller change cannot be
#: told from either.
NOISE_FLOOR = 0.02
#: Log-Jacobians below this (±5 % of local volume) are noise: demons matches the decoder's small
#: intensity differences by local volume changes of a few percent where no tissue moved (for a
#: negligible edit, the demo bundle's at strength 0.25, 90 % of the brain is below 0.031).
LOG_JACOBIAN_FLOOR = 0.05
#: In 3D, changes below this fraction of the largest one are not drawn either.
MAIN_CHANGE_3D = 1 / 3
CHANGE_KINDS = ("difference", "log_jacobian")
_COLORS = {"difference": ((0.1, 0.35, 1.0), (1.0, 0.15, 0.1)),  # shrink/drop, grow/rise
           "log_jacobian": ((0.55, 0.2, 0.85), (1.0, 0.6, 0.0))}
_NAMES = {"difference": DIFF_COLORMAP_NAME, "log_jacobian": JACOBIAN_COLORMAP_NAME}


def noise_floor(kind: str, geometry: ResultGeometry) -> float:
    """The noise floor of a change map in its own units (scan units for a difference)."""
    if kind == "log_jacobian":
        return LOG_JACOBIAN_FLOOR
    lo, hi = geometry.scan.intensity_range
    return NOISE_FLOOR * max(float(hi - lo), 1e-12)


def symmetric_limits(data: np.ndarray, floor: float = 1e-6) -> tuple[float, float]:
    """``(-m, m)``: the largest |value|, at least ``floor``."""
    m = float(np.abs(data).max()) if data.size else 0.0
    m = max(m, floor, 1e-6)
    return (-m, m)


def change_colormap(kind: str = "difference", ndisplay: int = 2, hidden: float = 0.0):
    """The diverging colormap of a change map with a transparent centre.

    ``hidden`` (3D): the fraction of the half-range around 0 that is fully transparent; the
    colour's opacity then grows to 1 at the limits.
    """
    from napari.utils.colormaps import Colormap

    low, high = _COLORS[kind]
    name = _NAMES[kind]
    if ndisplay == 3:
        band = float(np.clip(hidden, 0.0, 1.0)) / 2
        if band >= 0.499:
            return Colormap([(1, 1, 1, 0.0), (1, 1, 1, 0.0)], controls=[0.0, 1.0],
                            name=f"{name} 3D (nothing above the floor)")
        colors = [(*low, 1.0), (*low, 0.0), (1, 1, 1, 0.0), (*high, 0.0), (*high, 1.0)]
        return Colormap(colors, controls=[0.0, 0.5 - band, 0.5, 0.5 + band, 1.0],
                        name=f"{name} 3D ±{band:.3f}")
    colors = [(*low, 1.0), (*low, 0.55), (1, 1, 1, 0.0), (*high, 0.55), (*high, 1.0)]
    return Colormap(colors, controls=[0.0, 0.3, 0.5, 0.7, 1.0], name=name)


def styled(layer, ndisplay: int):
    """A change layer's colormap for the view: in 3D, transparent below its floor and below
    :data:`MAIN_CHANGE_3D` of its largest change."""
    info = layer.metadata[RESULT_KEY]
    if ndisplay != 3:
        return change_colormap(info["kind"])
    m = max(abs(float(v)) for v in layer.contrast_limits)
    largest = float(np.abs(layer.data).max()) if np.size(layer.data) else 0.0
    hidden = max(info.get("floor", 0.0), MAIN_CHANGE_3D * largest) / max(m, 1e-12)
    return change_colormap(info["kind"], 3, hidden)


def show_change(viewer: napari.Viewer, kind: str, name: str, data: np.ndarray,
                geometry: ResultGeometry, metadata: dict, **extra) -> Any:
    """Add or update a change map (``kind`` "difference" or "log_jacobian"): diverging,
    symmetric, translucent, never stretched below its noise floor."""
    _hook_ndisplay(viewer)
    floor = noise_floor(kind, geometry)
    metadata[RESULT_KEY] = {**metadata[RESULT_KEY], "kind": kind, "floor": floor}
    kwargs = {"contrast_limits": symmetric_limits(data, floor),
              "colormap": change_colormap(kind), "blending": "translucent",
              "rendering": "translucent", "metadata": metadata, **extra}
    layer = upsert(viewer, name, data, geometry, kwargs)
    layer.colormap = styled(layer, viewer.dims.ndisplay)
    return layer


def show_difference(viewer: napari.Viewer, name: str, diff: np.ndarray,
                    geometry: ResultGeometry, metadata: dict, **extra) -> Any:
    """The signed intensity difference (scan units)."""
    return show_change(viewer, "difference", name, diff, geometry, metadata, **extra)


def show_log_jacobian(viewer: napari.Viewer, name: str, log_jacobian: np.ndarray,
                      geometry: ResultGeometry, metadata: dict, **extra) -> Any:
    """The warp's log-Jacobian: > 0 where tissue expands, < 0 where it shrinks."""
    return show_change(viewer, "log_jacobian", name, log_jacobian, geometry, metadata,
                       **extra)


def is_change_layer(layer) -> bool:
    return layer.metadata.get(RESULT_KEY, {}).get("kind") in CHANGE_KINDS


def _restyle(viewer) -> None:
    """Swap the change layers' colormaps when the view switches between 2D and 3D."""
    for layer in viewer.layers:
        if is_change_layer(layer):
            layer.colormap = styled(layer, viewer.dims.ndisplay)


def _hook_ndisplay(viewer) -> None:
    import weakref

    from napari_ldae.gui._state import get_state

    viewer = getattr(viewer, "__wrapped__", viewer)  # plugins get a proxy of the viewer
    state = get_state(viewer)
    if not state.ndisplay_hooked:
        ref = weakref.ref(viewer)
        viewer.dims.events.ndisplay.connect(lambda _e: ref() is not None and _restyle(ref()))
        state.ndisplay_hooked = True
