"""Layers in and out: scans from image layers, results placed exactly on their source scan.

Geometry (the choice, tested in ``tests/test_gui_layers.py``): a model-space result is shown
**on the model grid** with that grid's world geometry. For a scan that is not oblique the
model grid's affine (:func:`~napari_ldae.data.preprocess.model_affine`) is diagonal in RAS, so
it becomes the layer's ``scale``/``translate`` and every result voxel sits at its true world
position (RAS mm), the frame in which the source layer is shown too; nothing is resampled
while the slider moves. For an oblique scan (napari cannot slice rotated affines) the result is
resampled onto the scan's own grid and shown with the source layer's placement. A result
carried onto its scan (:mod:`napari_ldae.operations_transfer`) already lies on the scan's grid,
at its resolution and in its units: it is shown with the scan's own placement (``carried``).

Intensities: images are shown in the source scan's units (the inverse of the min-max rule)
with the source layer's contrast limits; in 3D the scan and its results render as a
translucent average (:data:`BRAIN_RENDERING_3D`), so that change maps show through them
(:mod:`napari_ldae.gui._change`). A result layer's ``metadata["ldae_result"]`` holds its record
(a model-space :class:`~napari_ldae.operations.Result`, or the
:class:`~napari_ldae.operations_transfer.OnScan` carried onto the scan): the display is derived
from it, export writes it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_ldae.data.io import Scan
from napari_ldae.data.layer_metadata import META_KEY, PROVENANCE_KEY
from napari_ldae.errors import ScanError

if TYPE_CHECKING:
    import napari

    from napari_ldae.operations import Result
    from napari_ldae.operations_transfer import OnScan
    from napari_ldae.session import Session

RESULT_KEY = "ldae_result"
#: How the gray brain renders in 3D (napari ignores ``rendering`` in 2D): a translucent average
#: along each ray, through which the change maps show.
BRAIN_RENDERING_3D = "average"


# ----------------------------------------------------------------------------- scans
def scan_from_layer(layer) -> Scan:
    """The scan behind an image layer: its ``ldae_scan`` metadata, else its scale/translate
    read as a RAS millimetre affine."""
    from napari_ldae.data.layer_metadata import scan_from_metadata

    data = np.asarray(layer.data)
    if data.ndim != 3 or getattr(layer, "rgb", False):
        raise ScanError(f"{layer.name!r} is not a 3D grayscale volume (shape {data.shape})")
    meta = layer.metadata.get(META_KEY)
    if meta:
        return scan_from_metadata(data, meta)
    affine = np.diag([*np.asarray(layer.scale, float)[-3:], 1.0])
    affine[:3, 3] = np.asarray(layer.translate, float)[-3:]
    return Scan.from_array(data.astype(np.float32), affine)


def is_volume_layer(layer) -> bool:
    from napari.layers import Image

    return isinstance(layer, Image) and layer.ndim == 3 and not layer.rgb


def is_source_layer(layer) -> bool:
    """Scans to work on: 3D image layers that are not themselves LDAE results."""
    return is_volume_layer(layer) and RESULT_KEY not in layer.metadata


# ----------------------------------------------------------------------------- geometry
@dataclass
class ResultGeometry:
    """Where results of one source scan are shown: the model grid, or the scan's grid
    (resampled from the model grid, or carried onto it)."""

    scan: Scan
    space: str  # "model", "scan" or "carried"
    scale: tuple[float, float, float]
    translate: tuple[float, float, float]
    session: Session

    @classmethod
    def of(cls, session: Session, scan: Scan) -> ResultGeometry:
        aff = session.model_affine(scan)
        rzs = aff[:3, :3]
        if np.allclose(rzs, np.diag(np.diag(rzs)), atol=1e-6) and (np.diag(rzs) > 0).all():
            return cls(scan, "model", tuple(map(float, np.diag(rzs))),
                       tuple(map(float, aff[:3, 3])), session)
        return cls(scan, "scan", scan.display.scale, scan.display.translate, session)

    @classmethod
    def carried(cls, session: Session, scan: Scan) -> ResultGeometry:
        """Volumes already on ``scan``'s grid and in its units (a result carried onto it)."""
        return cls(scan, "carried", scan.display.scale, scan.display.translate, session)

    def place(self, volumes: np.ndarray) -> np.ndarray:
        """Model-space (carried: the scan's file-ordered) ``(X, Y, Z)`` or ``(N, X, Y, Z)`` →
        the grid this geometry shows."""
        if self.space == "model":
            return np.asarray(volumes, dtype=np.float32)
        mapped = volumes if self.space == "carried" else \
            self.session.to_scan_space(volumes, self.scan)  # file order
        if mapped.ndim == 4:
            return np.stack([self.scan.display.to_display(v) for v in mapped])
        return self.scan.display.to_display(mapped)

    def units(self, unit: np.ndarray, difference: bool = False) -> np.ndarray:
        """[0, 1] model intensities → the scan's units (differences: no offset); carried
        volumes are in them already."""
        if self.space == "carried":
            return np.asarray(unit, dtype=np.float32)
        lo, hi = self.scan.intensity_range
        out = unit * np.float32(hi - lo)
        return out if difference else out + np.float32(lo)

    def for_display(self, volumes: np.ndarray, *references: np.ndarray) -> tuple[np.ndarray, ...]:
        """(image, image − reference for each reference), placed and in the scan's units; run it
        in the worker (placing on an oblique scan's grid resamples)."""
        image = self.units(self.place(volumes))
        return image, *(self.units(self.place(volumes - r), difference=True) for r in references)

    def layer_kwargs(self, ndim: int = 3) -> dict[str, Any]:
        extra = ndim - 3
        return {"scale": (1.0,) * extra + tuple(self.scale),
                "translate": (0.0,) * extra + tuple(self.translate)}

    def result_metadata(self, kind: str, result: Result | OnScan, source: str,
                        reference: int = 0) -> dict[str, Any]:
        """A result layer's metadata: its record (what export writes) and provenance
        (``reference``: which reconstruction a model-space difference is taken to)."""
        from napari_ldae.data.layer_metadata import scan_metadata

        return {RESULT_KEY: {"space": self.space, "kind": kind, "scan": scan_metadata(self.scan),
                             "contract": self.session.contract.to_dict(), "record": result,
                             "reference": reference},
                PROVENANCE_KEY: {**result.provenance, "source": source}}


def change_percent(geometry: ResultGeometry, diff: np.ndarray) -> float:
    """The largest |Δ| as a percentage of the source scan's intensity range (a model whose edits
    do nothing shows it: the Δ map's symmetric limits would stretch any change to full colour)."""
    lo, hi = geometry.scan.intensity_range
    return 100.0 * float(np.abs(diff).max()) / max(float(hi - lo), 1e-12)


# ----------------------------------------------------------------------------- showing
def label_sweep_axis(viewer, label: str = "sweep frame") -> None:
    """Name the leading dims axis of 4D sweeps so that its slider says what it scrubs."""
    if viewer.dims.ndim == 4:
        labels = list(viewer.dims.axis_labels)
        labels[0] = label
        viewer.dims.axis_labels = labels


def show_image(viewer: napari.Viewer, name: str, data: np.ndarray, geometry: ResultGeometry,
               source, metadata: dict, **extra) -> Any:
    """Add or update (in place, same name) a gray result layer with the source's window; both
    render as a translucent brain in 3D."""
    source.rendering = BRAIN_RENDERING_3D
    kwargs = {"contrast_limits": tuple(source.contrast_limits), "colormap": "gray",
              "rendering": BRAIN_RENDERING_3D, "metadata": metadata, **extra}
    return upsert(viewer, name, data, geometry, kwargs)


def upsert(viewer, name: str, data: np.ndarray, geometry: ResultGeometry, kwargs: dict):
    """Update the layer ``name`` in place when its shape and placement fit, else (re)add it."""
    data = np.asarray(data, dtype=np.float32)
    placement = geometry.layer_kwargs(data.ndim)
    if name in viewer.layers:
        layer = viewer.layers[name]
        if layer.ndim == data.ndim and tuple(layer.data.shape) == data.shape \
                and np.allclose(layer.scale, placement["scale"]) \
                and np.allclose(layer.translate, placement["translate"]):
            layer.data = data
            layer.metadata = kwargs["metadata"]
            layer.contrast_limits = kwargs["contrast_limits"]
            return layer
        viewer.layers.remove(layer)
    return viewer.add_image(data, name=name, **placement, **kwargs)


def unique_name(viewer: napari.Viewer, base: str) -> str:
    name, i = base, 2
    while name in viewer.layers:
        name, i = f"{base} ({i})", i + 1
    return name
