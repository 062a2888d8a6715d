"""NIfTI scans in and out.

A :class:`Scan` keeps the file's voxels in the file's own axis order (``data``), the true
voxel-to-world affine (RAS+ millimetres, nibabel's convention), the header and the path, and its
napari :class:`~napari_ldae.data.display_geometry.DisplayGeometry`. :func:`read_scan` reads and
checks a file; :func:`write_scan` writes volumes back in the scan's own space and header,
atomically, with a JSON sidecar, and never replaces a file unless asked. A scan's geometry in a
napari layer's metadata is :mod:`napari_ldae.data.layer_metadata`.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import weakref
import zlib
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import nibabel as nib
import numpy as np

from napari_ldae._files import atomic_write, nifti_stem
from napari_ldae.data.display_geometry import DisplayGeometry
from napari_ldae.errors import ScanError

#: Limits on what counts as a plausible brain scan.
MIN_DIM, MAX_DIM = 8, 1024
MAX_VOXEL_MM = 20.0

NanPolicy = Literal["raise", "zero"]
Space = Literal["scan", "model"]
_SUFFIXES = (".nii.gz", ".nii")


# ----------------------------------------------------------------------------- the scan
def voxel_sizes(affine: np.ndarray) -> np.ndarray:
    """Voxel edge lengths (mm) along the three voxel axes of ``affine``."""
    return np.linalg.norm(np.asarray(affine, dtype=float)[:3, :3], axis=0)


@dataclass(eq=False)
class Scan:
    """One 3D scan: float32 voxels in the file's axis order, its affine, header and path."""

    data: np.ndarray
    affine: np.ndarray
    header: nib.Nifti1Header = field(repr=False)
    path: Path | None = None
    display: DisplayGeometry = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.affine = np.asarray(self.affine, dtype=np.float64)
        self.display = DisplayGeometry.from_affine(self.affine, self.data.shape)

    @classmethod
    def from_array(
        cls,
        data: np.ndarray,
        affine: np.ndarray,
        *,
        header: nib.Nifti1Header | None = None,
        path: str | os.PathLike | None = None,
        nan_policy: NanPolicy = "raise",
    ) -> Scan:
        """A scan from an in-memory volume, checked like a file (see :func:`read_scan`)."""
        name = Path(path).name if path else "volume"
        affine = np.asarray(affine, dtype=np.float64)
        arr = _squeeze_volumes(np.asarray(data), name)
        _check_geometry(arr.shape, affine, name)
        arr = _check_values(arr.astype(np.float32, copy=False), name, nan_policy)
        hdr = header.copy() if header is not None else nib.Nifti1Header()
        if header is None:
            hdr.set_qform(affine, 1)
            hdr.set_sform(affine, 1)
            hdr.set_xyzt_units("mm")
        return cls(arr, affine, hdr, Path(path) if path else None)

    @property
    def shape(self) -> tuple[int, int, int]:
        """Shape in the file's axis order."""
        return tuple(int(s) for s in self.data.shape)  # type: ignore[return-value]

    @property
    def zooms(self) -> tuple[float, float, float]:
        """Voxel sizes (mm) along the file's axes, from the affine."""
        return tuple(float(z) for z in voxel_sizes(self.affine))  # type: ignore[return-value]

    @property
    def intensity_range(self) -> tuple[float, float]:
        """(min, max) of the voxel values."""
        return float(self.data.min()), float(self.data.max())

    @property
    def display_data(self) -> np.ndarray:
        """The voxels in display (closest RAS) order, for napari."""
        return self.display.to_display(self.data)


# ----------------------------------------------------------------------------- reading
def digest(volume: np.ndarray, *parts) -> str:
    """A content key: sha256 of the volume's float32 voxels, then of each part as float64."""
    h = hashlib.sha256(np.ascontiguousarray(volume, dtype=np.float32).tobytes())
    for part in parts:
        h.update(np.ascontiguousarray(part, dtype=np.float64).tobytes())
    return h.hexdigest()


def remembered(cache: OrderedDict, key: str, compute, size: int):
    """``cache[key]``, computed (outside the lock) when missing or None; the newest ``size``
    kept. The caches of results remembered by content (:func:`digest`) share this."""
    with _REMEMBERED_LOCK:
        hit = cache.get(key)
    if hit is None:
        hit = compute()
        with _REMEMBERED_LOCK:
            cache[key] = hit
            while len(cache) > size:
                cache.popitem(last=False)
    return hit


_REMEMBERED_LOCK = threading.Lock()


def content_key(scan: Scan) -> str:
    """The :func:`digest` of a scan's voxels, shape and affine: the key of everything
    remembered about a scan (its codes, preparation, brain mask). Hashed once per scan object:
    a scan's voxels are never changed in place."""
    with _KEYS_LOCK:
        key = _KEYS.get(scan)
    if key is None:
        key = digest(scan.data, scan.shape, scan.affine)
        with _KEYS_LOCK:
            _KEYS[scan] = key
    return key


_KEYS_LOCK = threading.Lock()
_KEYS: weakref.WeakKeyDictionary[Scan, str] = weakref.WeakKeyDictionary()


def read_scan(path: str | os.PathLike, *, nan_policy: NanPolicy = "raise") -> Scan:
    """Read a 3D ``.nii``/``.nii.gz`` scan; every problem is one clear :class:`ScanError`.

    Scaling (``scl_slope``/``scl_inter``) is applied and voxels become float32. A 4D file with
    a single volume is squeezed to 3D. ``nan_policy="zero"`` replaces NaN/Inf voxels by 0
    instead of refusing the file.
    """
    p = Path(path)
    name = p.name
    if not p.is_file():
        raise ScanError(f"{p}: no such file")
    if not is_nifti_path(p):
        raise ScanError(
            f"{name}: not a NIfTI file (expected .nii or .nii.gz). Convert it first, e.g. "
            "`dcm2niix` for DICOM or `mri_convert in.mgz out.nii.gz` for FreeSurfer files."
        )
    img = _load_image(p)
    shape = tuple(int(s) for s in img.shape)
    spatial = _squeeze_shape(shape, name)
    _check_geometry(spatial, img.affine, name)
    try:
        data = img.get_fdata(dtype=np.float32, caching="unchanged")
    except (OSError, EOFError, ValueError, zlib.error) as exc:
        raise ScanError(
            f"{name}: the file is truncated or corrupt ({exc}); copy or export it again"
        ) from exc
    data = _check_values(data.reshape(spatial), name, nan_policy)
    return Scan(data, np.asarray(img.affine, dtype=np.float64), img.header.copy(), p)


def is_nifti_path(path: str | os.PathLike) -> bool:
    """Whether ``path`` is named like a NIfTI file (``.nii`` or ``.nii.gz``, any case)."""
    return str(path).lower().endswith(_SUFFIXES)


def _load_image(p: Path) -> nib.Nifti1Image:
    try:
        img = nib.load(p, mmap=False)
    except (nib.filebasedimages.ImageFileError, OSError, EOFError, ValueError,
            zlib.error) as exc:
        raise ScanError(
            f"{p.name}: not a readable NIfTI file ({exc}); it may be truncated, "
            "mis-named or another format"
        ) from exc
    if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
        raise ScanError(f"{p.name}: not a NIfTI image (nibabel read it as {type(img).__name__})")
    dtype = img.get_data_dtype()
    if not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)):
        raise ScanError(
            f"{p.name}: voxel type {dtype} (RGB or complex) is not a scalar "
            "intensity image; a T1-weighted scan is needed"
        )
    return img


def _squeeze_shape(shape: tuple[int, ...], name: str) -> tuple[int, int, int]:
    if len(shape) < 3 or 1 in shape[:3]:
        raise ScanError(f"{name}: the image is 2D (shape {shape}); a 3D volume is needed")
    n_volumes = int(np.prod(shape[3:])) if len(shape) > 3 else 1
    if n_volumes != 1:
        out = f"{nifti_stem(name)}_vol0.nii.gz"
        raise ScanError(
            f"{name}: the image holds {n_volumes} volumes (shape {shape}); a single 3D volume "
            f"is needed. Extract one first, e.g. `fslroi {name} {out} 0 1` or, in Python, "
            f"`nibabel.save(nibabel.load('{name}').slicer[..., 0], '{out}')`."
        )
    return (shape[0], shape[1], shape[2])


def _squeeze_volumes(arr: np.ndarray, name: str) -> np.ndarray:
    return arr.reshape(_squeeze_shape(tuple(arr.shape), name))


def _check_geometry(shape: tuple[int, ...], affine: np.ndarray, name: str) -> None:
    if any(s > MAX_DIM or s < MIN_DIM for s in shape):
        raise ScanError(
            f"{name}: implausible size {tuple(shape)} for a brain scan (each dimension must "
            f"be {MIN_DIM} to {MAX_DIM} voxels)"
        )
    if not np.all(np.isfinite(affine)):
        raise ScanError(f"{name}: the affine (voxel-to-world transform) has NaN/Inf entries")
    zooms = voxel_sizes(affine)
    if np.any(zooms <= 0) or np.any(zooms > MAX_VOXEL_MM) or abs(np.linalg.det(affine)) == 0:
        sizes = ", ".join(f"{z:g}" for z in zooms)
        raise ScanError(
            f"{name}: implausible voxel size ({sizes}) mm; each must be above 0 and at most "
            f"{MAX_VOXEL_MM:g} mm. Fix the header (pixdim, qform/sform) first."
        )


def _check_values(data: np.ndarray, name: str, nan_policy: NanPolicy) -> np.ndarray:
    bad = ~np.isfinite(data)
    n_bad = int(bad.sum())
    if n_bad:
        if nan_policy != "zero":
            raise ScanError(
                f"{name}: {n_bad} voxels are NaN or infinite; pass nan_policy=\"zero\" "
                "to replace them by 0"
            )
        data = np.where(bad, np.float32(0), data)
    lo, hi = float(data.min()), float(data.max())
    if lo == hi:
        raise ScanError(
            f"{name}: the image is constant (every voxel is {lo:g}); it holds no anatomy"
        )
    return data


# ----------------------------------------------------------------------------- writing
def write_scan(
    path: str | os.PathLike,
    data: np.ndarray,
    like: Scan | None = None,
    *,
    affine: np.ndarray | None = None,
    header: nib.Nifti1Header | None = None,
    space: Space = "scan",
    source: str | os.PathLike | None = None,
    provenance: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``data`` (3D, or 4D with volumes last) as float32 NIfTI with a JSON sidecar.

    ``like`` gives the affine and header (the scan the volume belongs to); ``affine`` and
    ``header`` override them (``space="model"`` needs the model ``affine``). The sidecar records
    ``space``, the source file (``source``, else ``like.path``) and ``provenance``. Scaling and the
    display window of the header are reset. The image and ``<name>.json`` are written to
    temporary files in the same folder and moved into place; an existing file is an error
    unless ``overwrite=True``. Returns the image path.
    """
    out = Path(path)
    if not is_nifti_path(out):
        raise ScanError(f"{out.name}: an output name must end in .nii or .nii.gz")
    side = sidecar_path(out)
    for target in (out, side):
        if target.exists() and not overwrite:
            raise FileExistsError(
                f"{target} already exists; pass overwrite=True to replace it"
            )
    arr, aff, hdr = _prepare(data, like, affine, header, space, out.name)
    img = _make_image(arr, aff, hdr)
    if source is None and like is not None:
        source = like.path
    meta = _sidecar(space, source, provenance)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, lambda tmp: nib.save(img, tmp))
    atomic_write(side, json.dumps(meta, indent=2, default=_jsonable))
    return out


def sidecar_path(path: str | os.PathLike) -> Path:
    """``scan.nii.gz`` → ``scan.json`` (the BIDS convention)."""
    return Path(path).with_name(nifti_stem(path) + ".json")


def _prepare(data, like, affine, header, space, name):
    if space not in ("scan", "model"):
        raise ScanError(f"space must be 'scan' or 'model', not {space!r}")
    arr = np.asarray(data, dtype=np.float32)
    if arr.ndim not in (3, 4):
        raise ScanError(f"{name}: can only write 3D or 4D volumes, got shape {arr.shape}")
    if space == "model" and affine is None:
        raise ScanError(f"{name}: writing a model-space volume needs its affine (model_affine)")
    if affine is None and like is None:
        raise ScanError(f"{name}: give the scan the volume belongs to (like=) or an affine")
    if space == "scan" and like is not None and affine is None and arr.shape[:3] != like.shape:
        raise ScanError(
            f"{name}: volume shape {arr.shape[:3]} differs from the scan's {like.shape}; "
            "map model-space volumes back with to_scan_space() first"
        )
    aff = np.asarray(affine if affine is not None else like.affine, dtype=np.float64)
    hdr = header if header is not None else (like.header if like is not None else None)
    return arr, aff, hdr


def _make_image(arr: np.ndarray, affine: np.ndarray, header) -> nib.Nifti1Image:
    klass = nib.Nifti2Image if isinstance(header, nib.Nifti2Header) else nib.Nifti1Image
    hdr = header.copy() if header is not None else None
    sform_code = int(hdr["sform_code"]) if hdr is not None else 0
    qform_code = int(hdr["qform_code"]) if hdr is not None else 0
    img = klass(arr, affine, hdr)
    img.set_data_dtype(np.float32)
    img.header.set_slope_inter(1.0, 0.0)
    img.header["cal_min"] = 0
    img.header["cal_max"] = 0
    img.header["descrip"] = b"napari-ldae"
    img.set_sform(affine, sform_code or 2)
    img.set_qform(affine, qform_code or sform_code or 2)
    return img


def _sidecar(space: str, source, provenance: dict | None) -> dict[str, Any]:
    from napari_ldae import __version__

    return {
        "space": space,
        "source": str(source) if source else None,
        "software": f"napari-ldae {__version__}",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "provenance": dict(provenance or {}),
    }


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    return repr(obj)
