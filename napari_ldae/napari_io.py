"""napari reader, writer and sample data (npe2 commands of ``napari.yaml``). No Qt here.

Image layers made here are in the scan's closest RAS axis order with a diagonal
``scale``/``translate`` (world = RAS millimetres), and carry the source scan in
``layer.metadata["ldae_scan"]`` (:func:`napari_ldae.data.layer_metadata.scan_metadata`): path,
true affine, file shape, NIfTI header bytes, the reorientation and the intensity range. Layers
derived from a scan (edits, difference maps) should copy the source layer's ``scale``,
``translate`` and ``metadata``; the writer then saves them in the original file's space and
header. A dict in ``layer.metadata["ldae_provenance"]`` is copied into the export's JSON sidecar.

nibabel and the data modules are imported inside the functions: napari imports this module
when it uses one of its commands, and it should stay light.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_ldae._files import nifti_stem

if TYPE_CHECKING:
    from napari_ldae.data.io import Scan

LayerData = tuple[Any, dict[str, Any], str]
PathLike = str | os.PathLike
_SUFFIXES = (".nii", ".nii.gz")


# ----------------------------------------------------------------------------- reader
def get_reader(path: PathLike | Sequence[PathLike]) -> Callable[..., list[LayerData]] | None:
    """The NIfTI reader when every path ends in ``.nii``/``.nii.gz``, else None."""
    paths = [path] if isinstance(path, str | os.PathLike) else list(path)
    if not paths or not all(str(p).lower().endswith(_SUFFIXES) for p in paths):
        return None
    return read_nifti


def read_nifti(path: PathLike | Sequence[PathLike]) -> list[LayerData]:
    """One image layer per NIfTI file, placed where its affine says."""
    from napari_ldae.data.io import read_scan

    paths = [path] if isinstance(path, str | os.PathLike) else list(path)
    return [scan_layer_data(read_scan(p)) for p in paths]


def scan_layer_data(scan: Scan, name: str | None = None) -> LayerData:
    """``(data, kwargs, "image")`` for a scan: display-ordered voxels, geometry, metadata."""
    from napari_ldae.data.layer_metadata import META_KEY, scan_metadata

    data = scan.display_data
    kwargs = {
        "name": name or (nifti_stem(scan.path) if scan.path else "scan"),
        "scale": scan.display.scale,
        "translate": scan.display.translate,
        "contrast_limits": robust_contrast_limits(data),
        "colormap": "gray",
        "metadata": {META_KEY: scan_metadata(scan)},
    }
    return data, kwargs, "image"


def robust_contrast_limits(data: np.ndarray, percentiles=(0.5, 99.5)) -> tuple[float, float]:
    """Display window from intensity percentiles (min/max when those coincide)."""
    sample = data[::2, ::2, ::2] if data.size > 2_000_000 else data
    lo, hi = (float(v) for v in np.percentile(sample, percentiles))
    if hi <= lo:
        lo, hi = float(data.min()), float(data.max())
    if hi <= lo:
        hi = lo + 1.0
    return lo, hi


# ----------------------------------------------------------------------------- writer
def write_nifti(path: str, data: Any, attributes: dict[str, Any]) -> list[str]:
    """Write one image layer as NIfTI (3D, or 4D ``(N, X, Y, Z)`` → volumes last).

    An LDAE result layer is written from its model-space record (:func:`export_layer`, as
    the export widget does). A layer that carries ``ldae_scan`` metadata and has its source's
    display shape is written in the source file's voxel order, affine and header. Any other
    layer gets the affine of its napari transform, its world axes taken as RAS millimetres.
    napari's save dialog asks before replacing a file, so this writer replaces existing files.
    """
    from napari_ldae.data.io import write_scan
    from napari_ldae.data.layer_metadata import META_KEY, PROVENANCE_KEY, header_from_metadata
    from napari_ldae.errors import ScanError
    from napari_ldae.gui._layers import RESULT_KEY

    arr = np.asarray(data)
    if attributes.get("rgb") or arr.ndim not in (3, 4):
        raise ScanError(
            f"NIfTI export needs a 3D (or 4D) grayscale image layer; "
            f"{attributes.get('name', 'this layer')!r} has shape {arr.shape}"
        )
    metadata = attributes.get("metadata") or {}
    if (metadata.get(RESULT_KEY) or {}).get("record") is not None:
        return [str(export_layer(path, metadata, attributes.get("name"), overwrite=True))]
    source = metadata.get(META_KEY)
    provenance = {"napari_layer": attributes.get("name"), **metadata.get(PROVENANCE_KEY, {})}
    vol, affine = _source_space(arr, source) if source else (None, None)
    if vol is None:
        vol, affine = _volumes_last(arr), _layer_affine(attributes, arr.ndim)
    header = header_from_metadata(source) if source else None
    out = write_scan(path, vol, affine=affine, header=header, space="scan",
                     source=(source or {}).get("path"), provenance=provenance, overwrite=True)
    return [str(out)]


def export_layer(path: PathLike, metadata: dict, name: str | None, overwrite: bool) -> Path:
    """Write an LDAE result layer through :func:`napari_ldae.operations.export`: its
    model-space record (``ldae_result`` metadata), in the source scan's space and header."""
    from napari_ldae.data.layer_metadata import PROVENANCE_KEY
    from napari_ldae.gui._layers import RESULT_KEY
    from napari_ldae.operations import export

    info = metadata[RESULT_KEY]
    extra = {**metadata.get(PROVENANCE_KEY, {}), "napari_layer": name}
    return export(path, info["record"], info["kind"], overwrite, info.get("reference", 0),
                  **extra)


def _source_space(arr: np.ndarray, source: dict) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Layer data in the source file's voxel order, or (None, None) if the shapes differ."""
    from napari_ldae.data.display_geometry import DisplayGeometry

    affine = np.asarray(source["affine"], dtype=np.float64)
    geom = DisplayGeometry.from_affine(affine, tuple(source["shape"]))
    if tuple(arr.shape[-3:]) != geom.shape:
        return None, None
    return geom.from_display(_volumes_last(arr)), affine


def _volumes_last(arr: np.ndarray) -> np.ndarray:
    return np.moveaxis(arr, 0, -1) if arr.ndim == 4 else arr


def _layer_affine(attributes: dict[str, Any], ndim: int) -> np.ndarray:
    """Voxel-to-world 4×4 of the last three layer axes, from napari's layer transform."""
    from napari.utils.transforms import Affine

    data2physical = Affine(
        scale=attributes.get("scale", [1.0] * ndim),
        translate=attributes.get("translate", [0.0] * ndim),
        rotate=attributes.get("rotate"),
        shear=attributes.get("shear"),
        ndim=ndim,
    ).affine_matrix
    extra = attributes.get("affine")
    physical2world = np.asarray(getattr(extra, "affine_matrix", extra if extra is not None
                                        else np.eye(ndim + 1)), dtype=np.float64)
    full = physical2world @ data2physical
    keep = [*range(ndim - 3, ndim), ndim]
    return full[np.ix_(keep, keep)]


# ----------------------------------------------------------------------------- sample data
def synthetic_subject() -> list[LayerData]:
    """One synthetic subject's four visits, generated on the fly (no download)."""
    from napari_ldae.data.io import Scan
    from napari_ldae.data.synthetic import make_subject

    subject = make_subject(seed=0, spacing=3.0, n_visits=4)
    layers = []
    for i, visit in enumerate(subject.visits):
        scan = Scan.from_array(visit.data, visit.affine)
        data, kwargs, kind = scan_layer_data(scan, name=f"{subject.subject} {visit.session}")
        kwargs["metadata"]["ldae_visit"] = {
            "subject": subject.subject, "session": visit.session, "months": visit.months,
            "diagnosis": subject.diagnosis, "truth": dict(visit.truth),
        }
        kwargs["visible"] = i == 0
        layers.append((data, kwargs, kind))
    limits = [kw["contrast_limits"] for _, kw, _ in layers]
    shared = (min(lo for lo, _ in limits), max(hi for _, hi in limits))
    for _, kwargs, _ in layers:
        kwargs["contrast_limits"] = shared
    return layers
