"""A scan's geometry in a napari layer's metadata, and the scan rebuilt from it.

napari layers carry the source scan's path, true affine, file shape, NIfTI header and
reorientation in ``layer.metadata["ldae_scan"]`` (:data:`META_KEY`), so a layer can be written
back in the scan's own space; see ``docs/data.md``. Plain dicts and numpy: napari is not imported.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from napari_ldae.data.display_geometry import DisplayGeometry
from napari_ldae.data.io import Scan
from napari_ldae.errors import ScanError

#: Key of a napari layer's ``metadata`` holding the source scan's geometry.
META_KEY = "ldae_scan"
#: Key of a napari layer's ``metadata`` whose dict is copied into an export's sidecar.
PROVENANCE_KEY = "ldae_provenance"
METADATA_VERSION = 1


def scan_metadata(scan: Scan) -> dict[str, Any]:
    """The ``layer.metadata["ldae_scan"]`` dict describing ``scan`` (see ``docs/data.md``)."""
    return {
        "version": METADATA_VERSION,
        "path": str(scan.path) if scan.path else None,
        "affine": scan.affine.tolist(),
        "shape": list(scan.shape),
        "header": bytes(scan.header.binaryblock),
        "reorientation": scan.display.ornt.astype(int).tolist(),
        "intensity_range": list(scan.intensity_range),
    }


def header_from_metadata(meta: dict[str, Any]) -> nib.Nifti1Header:
    """The NIfTI header kept in an ``ldae_scan`` dict (a fresh one when absent)."""
    block = meta.get("header") or b""
    if len(block) == 540:
        return nib.Nifti2Header(binaryblock=block)
    if len(block) == 348:
        return nib.Nifti1Header(binaryblock=block)
    return nib.Nifti1Header()


def scan_from_metadata(display_data: np.ndarray, meta: dict[str, Any]) -> Scan:
    """Rebuild a :class:`Scan` from a layer's display-ordered data and its ``ldae_scan`` dict."""
    affine = np.asarray(meta["affine"], dtype=np.float64)
    geom = DisplayGeometry.from_affine(affine, tuple(meta["shape"]))
    if tuple(display_data.shape[:3]) != geom.shape:
        raise ScanError(
            f"layer data shape {tuple(display_data.shape)} does not match its source scan "
            f"(display shape {geom.shape})"
        )
    data = geom.from_display(np.asarray(display_data, dtype=np.float32))
    path = Path(meta["path"]) if meta.get("path") else None
    return Scan(data, affine, header_from_metadata(meta), path)
