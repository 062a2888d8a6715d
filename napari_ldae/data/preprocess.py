"""The preprocessing contract (scan → model input) and its inverse (model space → scan).

The model sees every scan on one grid: reoriented to ``orientation`` (RAS), resampled to
``spacing`` (1.5 mm), padded/cropped about the centre to ``shape`` (128×160×128) and scaled to
[0, 1]. :func:`preprocess` runs that with MONAI transforms; the grid is a 4×4 affine
(:func:`model_affine`), so :func:`to_scan_space` can map any model-space volume (an edit, an
interpolated visit, a difference map) back onto the scan's own voxel grid with one affine
resampling, and :func:`from_unit_range` undoes the intensity scaling.

The intensity rule ``"minmax"`` uses the scan's own minimum and maximum *before* resampling,
so that :func:`from_unit_range` is its exact inverse (linear interpolation commutes with it).
MONAI and torch are imported inside the functions (``import monai`` takes seconds).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_ldae.errors import BundleError, ScanError

if TYPE_CHECKING:
    from napari_ldae.data.io import Scan

INTENSITY_RULES = ("minmax",)
_RAS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))


@dataclass(frozen=True)
class PreprocessContract:
    """What the model expects; stored under ``"preprocessing"`` in a bundle's ``config.json``.

    ``orientation``: axis codes of the model grid; ``spacing``: voxel size (mm);
    ``shape``: voxels per axis; ``intensity``: ``"minmax"`` (scan min → 0, max → 1).
    """

    orientation: str = "RAS"
    spacing: tuple[float, float, float] = (1.5, 1.5, 1.5)
    shape: tuple[int, int, int] = (128, 160, 128)
    intensity: str = "minmax"

    def __post_init__(self) -> None:
        codes = str(self.orientation).upper()
        if not _valid_axcodes(codes):
            raise BundleError(
                f"preprocessing contract: orientation {self.orientation!r} is not three axis "
                "codes, one of L/R, P/A, I/S each (e.g. 'RAS')"
            )
        spacing = _triple(self.spacing, float, "spacing")
        shape = _triple(self.shape, int, "shape")
        if min(spacing) <= 0 or min(shape) < 1:
            raise BundleError(
                f"preprocessing contract: spacing {spacing} and shape {shape} must be positive"
            )
        if self.intensity not in INTENSITY_RULES:
            raise BundleError(
                f"preprocessing contract: unknown intensity rule {self.intensity!r}; "
                f"supported: {', '.join(INTENSITY_RULES)}"
            )
        object.__setattr__(self, "orientation", codes)
        object.__setattr__(self, "spacing", spacing)
        object.__setattr__(self, "shape", shape)

    @classmethod
    def paper(cls) -> PreprocessContract:
        """The paper's contract: RAS, 1.5 mm, 128×160×128, min-max to [0, 1]."""
        return cls()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (lists, not tuples)."""
        d = asdict(self)
        d["spacing"], d["shape"] = list(self.spacing), list(self.shape)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PreprocessContract:
        """Inverse of :meth:`to_dict`; unknown keys are a :class:`BundleError`."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise BundleError(
                f"preprocessing contract: unknown key(s) {', '.join(unknown)}; "
                f"expected {', '.join(sorted(known))}"
            )
        return cls(**d)


def _valid_axcodes(codes: str) -> bool:
    return len(codes) == 3 and all(sum(c in pair for c in codes) == 1 for pair in _RAS_LABELS)


def _triple(value, cast, name: str) -> tuple:
    try:
        vals = tuple(cast(v) for v in (value if np.iterable(value) else (value,) * 3))
    except (TypeError, ValueError) as exc:
        raise BundleError(f"preprocessing contract: bad {name} {value!r}") from exc
    if len(vals) != 3:
        raise BundleError(f"preprocessing contract: {name} needs 3 values, got {value!r}")
    return vals


# ----------------------------------------------------------------------------- forward
def monai_transforms(contract: PreprocessContract, *, intensity: bool = True, lazy: bool = False):
    """The MONAI pipeline of ``contract`` for channel-first ``MetaTensor`` volumes.

    Do not execute it with ``lazy=True``: in MONAI 1.6.1 a lazily fused Spacing + pad/crop
    misplaces the data (the affine is right); lazy mode is used here only to compute affines.
    """
    import torch
    from monai.transforms import Compose, Orientation, ResizeWithPadOrCrop, ScaleIntensity, Spacing

    steps = [ScaleIntensity(minv=0.0, maxv=1.0)] if intensity else []
    steps += [
        Orientation(axcodes=contract.orientation, labels=_RAS_LABELS, lazy=lazy),
        Spacing(pixdim=contract.spacing, mode="bilinear", padding_mode="zeros",
                dtype=torch.float32, lazy=lazy),
        ResizeWithPadOrCrop(spatial_size=contract.shape, mode="constant", lazy=lazy),
    ]
    return Compose(steps)


def preprocess(scan: Scan, contract: PreprocessContract | None = None) -> np.ndarray:
    """The model input for ``scan``: float32 ``contract.shape`` volume in [0, 1].

    Its voxel-to-world affine is :func:`model_affine` ``(scan, contract)``.
    """
    contract = contract or PreprocessContract()
    out = monai_transforms(contract)(_metatensor(scan.data, scan.affine))
    return np.clip(out[0].numpy(), 0.0, 1.0).astype(np.float32, copy=False)


def model_affine(scan: Scan, contract: PreprocessContract | None = None) -> np.ndarray:
    """Voxel-to-world affine (4×4, float64) of the model grid for ``scan``.

    Computed by MONAI from the geometry alone (no resampling), so it is the affine that
    :func:`preprocess` produces.
    """
    import torch

    contract = contract or PreprocessContract()
    placeholder = torch.zeros((1, 1, 1), dtype=torch.float32).expand(*scan.shape)
    mt = _metatensor(placeholder, scan.affine)
    for t in monai_transforms(contract, intensity=False, lazy=True).transforms:
        mt = t(mt)
    shape = tuple(int(s) for s in mt.peek_pending_shape())
    if shape != contract.shape:  # pragma: no cover - guards a change in MONAI
        raise ScanError(f"model grid shape {shape} differs from the contract's {contract.shape}")
    return np.asarray(mt.peek_pending_affine(), dtype=np.float64)


def _metatensor(data, affine: np.ndarray):
    import torch
    from monai.data import MetaTensor

    arr = data if isinstance(data, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(data))
    return MetaTensor(arr[None], affine=torch.as_tensor(affine, dtype=torch.float64))


# ----------------------------------------------------------------------------- inverse
def to_scan_space(
    volume,
    scan: Scan,
    contract: PreprocessContract | None = None,
    *,
    fill: float = 0.0,
    order: int = 1,
) -> np.ndarray:
    """Map a model-space volume onto ``scan``'s voxel grid (the file's axis order).

    ``volume`` is a numpy array or torch tensor of shape ``contract.shape``; leading axes of
    size 1 are dropped, and a batch (``(N, X, Y, Z)`` or ``(N, 1, X, Y, Z)``) gives
    ``(N, *scan.shape)``. Each scan voxel takes the model volume's value at its world position
    (``order``: 0 nearest, 1 trilinear, 3 cubic); voxels farther than one model voxel outside
    the model grid get ``fill``. Returns float32; intensities stay as given (see
    :func:`from_unit_range`).
    """
    contract = contract or PreprocessContract()
    vol = _as_numpy(volume)
    if vol.ndim == 5 and vol.shape[1] == 1:  # (N, 1, X, Y, Z)
        vol = vol[:, 0]
    while vol.ndim > 3 and vol.shape[0] == 1:
        vol = vol[0]
    if vol.shape[-3:] != contract.shape or vol.ndim not in (3, 4):
        raise ScanError(
            f"model-space volume has shape {tuple(volume.shape)}; expected {contract.shape} "
            "(optionally with leading batch/channel axes of size 1, or one batch axis)"
        )
    if vol.ndim == 4:
        return np.stack([to_scan_space(v, scan, contract, fill=fill, order=order) for v in vol])
    matrix = np.linalg.inv(model_affine(scan, contract)) @ scan.affine
    return _resample(vol, matrix, scan.shape, fill=fill, order=order)


def _resample(vol: np.ndarray, matrix: np.ndarray, shape, *, fill: float, order: int):
    """Sample ``vol`` at ``matrix @ index`` for every index of ``shape`` (one voxel of edge)."""
    from scipy import ndimage

    padded = np.pad(vol.astype(np.float32, copy=False), 1, mode="edge")
    offset = matrix[:3, 3] + 1.0
    return ndimage.affine_transform(
        padded, matrix[:3, :3], offset, output_shape=tuple(shape), order=order,
        mode="constant", cval=float(fill), prefilter=order > 1,
    ).astype(np.float32, copy=False)


def from_unit_range(volume01, scan: Scan) -> np.ndarray:
    """Undo the ``"minmax"`` scaling: 0 → the scan's minimum, 1 → its maximum (float32)."""
    lo, hi = scan.intensity_range
    return (_as_numpy(volume01) * np.float32(hi - lo) + np.float32(lo)).astype(np.float32)


def _as_numpy(volume) -> np.ndarray:
    if hasattr(volume, "detach"):
        volume = volume.detach().to("cpu").float().numpy()
    return np.asarray(volume, dtype=np.float32)
