"""Carry a change the model made on its own grid onto the original scan, at the scan's resolution.

The model's change is the difference between its edit (or interpolation) and its reconstruction,
both decoded on the model grid at the same step counts. The scan itself keeps its detail; only the
change is carried over, in one of two ways (:data:`TRANSFERS`):

- ``warp``: a dense, invertible deformation from the reconstruction to the edit, estimated on the
  model grid by SimpleITK's diffeomorphic demons (:func:`estimate_deformation`; guided by the
  structure network's ventricles and hippocampal region when the grid's map to MNI is given),
  composed with the scan → model-grid map (an affine) and applied to the scan, so tissue moves
  crisply at full resolution. Its log-Jacobian is the map of local expansion (> 0) and
  shrinkage (< 0).
- ``intensity``: the scan plus the model's intensity change, resampled onto the scan's voxels.

Exactness: when the edit equals the reconstruction the scan comes back unchanged (the same
values, bit for bit); voxels outside ``inside`` (the brain), voxels the warp moves by less than
:data:`STILL_VOXELS` and voxels where the resampled intensity change is zero keep their values
exactly. Both ways resample only the box of scan voxels the change reaches. SimpleITK and scipy
are imported inside the functions. See ``docs/method.md`` for the measurements behind the defaults.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from napari_ldae.data.demons import bounding_box
from napari_ldae.errors import LDAEError

TRANSFERS = ("warp", "intensity")
#: The transfer the front ends use unless told otherwise (docs/method.md says why).
DEFAULT_TRANSFER = "warp"
#: Scan voxels the warp moves by less than this (in scan voxels) keep their values exactly.
STILL_VOXELS = 0.01
#: The warp moves the scan's detail (the scan minus its Gaussian blur of this σ, in voxels) by
#: whole voxels, so that it stays sharp, and its blurred part by linear interpolation.
DETAIL_SIGMA = 0.7
#: Diffeomorphic demons: shrink factors of its levels, iterations at each level (fewer at the
#: finest, which costs four fifths of the time) and Gaussian smoothing of the field (voxels of
#: the level): less smoothing reaches more of a sub-voxel displacement (docs/method.md).
DEMONS_LEVELS, DEMONS_ITERATIONS, DEMONS_SMOOTHING = (4, 2, 1), (15, 15, 10), 0.5
#: The deformation is estimated in the box of the brain (voxels above this fraction of the
#: edit's maximum) grown by CROP_MARGIN voxels, and is zero outside it.
BRAIN_FRACTION, CROP_MARGIN = 0.05, 3
#: Guided demons registers each volume minus this weight × the edit's maximum × the structure
#: network's fractions (:func:`~napari_ldae.data.structures.fractions_on_grid`), so that the
#: structures' outlines drive it as well as the intensities (docs/method.md says why).
GUIDE_WEIGHT = 1.0


@dataclass(frozen=True, eq=False)
class Deformation:
    """A deformation on the model grid, from the reconstruction to the edit.

    ``displacement`` (3, X, Y, Z), model voxels: the edit's voxel ``x`` shows the
    reconstruction at ``x + displacement[:, x]``. ``log_jacobian`` (X, Y, Z): the log of the
    edit's local volume over the reconstruction's (> 0 where tissue expands).
    """

    displacement: np.ndarray
    log_jacobian: np.ndarray


@dataclass(frozen=True, eq=False)
class Carried:
    """A change carried onto a scan: ``data`` on the scan's grid and units, and for ``warp``
    the log-Jacobian on the same grid (0 wherever the scan was left as it was)."""

    data: np.ndarray
    method: str
    log_jacobian: np.ndarray | None = None


def scan_to_model_voxels(scan_affine: np.ndarray, model_affine: np.ndarray) -> np.ndarray:
    """Scan voxel → model voxel (4×4) when both affines map to the same world (an MNI scan)."""
    return np.linalg.inv(np.asarray(model_affine, float)) @ np.asarray(scan_affine, float)


def carry(method: str, scan: np.ndarray, scan_to_model: np.ndarray, reconstruction: np.ndarray,
          edit: np.ndarray, *, scale: float = 1.0, inside: np.ndarray | None = None,
          blur: np.ndarray | None = None, grid_to_mni: np.ndarray | None = None) -> Carried:
    """Carry ``edit − reconstruction`` (model grid, [0, 1]) onto ``scan`` by ``method``.

    ``scan_to_model``: scan voxel → model voxel (4×4); ``scale``: scan units per model unit
    (the intensity transfer's only use of units); ``inside``: the scan voxels that may change
    (its brain mask), all when None; ``blur``: the scan's :func:`blurred` (for ``warp``; computed
    when None, the same for every edit of a scan); ``grid_to_mni``: model voxel → MNI mm, which
    guides the warp's demons by the structures (see :func:`estimate_deformation`).
    """
    if method not in TRANSFERS:
        raise LDAEError(f"unknown transfer {method!r}; choose one of {', '.join(TRANSFERS)}")
    reconstruction, edit = _model_pair(reconstruction, edit)
    scan, matrix, inside = _scan_inputs(scan, scan_to_model, inside)
    if np.array_equal(reconstruction, edit):
        zero = np.zeros(scan.shape, np.float32) if method == "warp" else None
        return Carried(scan.copy(), method, zero)
    if method == "intensity":
        return Carried(_carry_intensity(scan, matrix, edit - reconstruction, scale, inside), method)
    deformation = estimate_deformation(reconstruction, edit, grid_to_mni=grid_to_mni)
    data, log_jacobian = _carry_warp(scan, matrix, deformation, inside, blur)
    return Carried(data, method, log_jacobian)


def estimate_deformation(reconstruction: np.ndarray, edit: np.ndarray, *,
                         grid_to_mni: np.ndarray | None = None,
                         iterations: int | tuple[int, ...] = DEMONS_ITERATIONS,
                         smoothing: float = DEMONS_SMOOTHING) -> Deformation:
    """The diffeomorphic demons deformation (SimpleITK) that turns ``reconstruction`` into
    ``edit``: the edit is the fixed image, the reconstruction the moving one. Their intensities
    are compared as they are (one decoder made both): matching their histograms would undo
    part of a volume change, which changes the share of each intensity. With ``grid_to_mni``
    (model voxel → MNI mm) and a grid that reaches the structure network's box, each volume
    is registered minus :data:`GUIDE_WEIGHT` × the edit's maximum × its structure fractions."""
    import SimpleITK as sitk

    from napari_ldae.data.demons import demons, field_array, sitk_image

    reconstruction, edit = _model_pair(reconstruction, edit)
    brain = model_brain(reconstruction, edit)
    crop = bounding_box(brain, CROP_MARGIN) or tuple(slice(0, n) for n in edit.shape)
    if grid_to_mni is not None:
        reconstruction, edit = guided(reconstruction, edit, grid_to_mni)
    fixed, moving = sitk_image(edit[crop]), sitk_image(reconstruction[crop])
    field = demons(fixed, moving, DEMONS_LEVELS, iterations, smoothing, first_order_exp=True)
    jacobian = sitk.GetArrayFromImage(sitk.DisplacementFieldJacobianDeterminant(field))
    if jacobian.min() <= 0:  # pragma: no cover - the demons field is a diffeomorphism
        raise LDAEError("the estimated deformation folds (Jacobian ≤ 0); use the intensity "
                        "transfer for this edit")
    displacement = np.zeros((3, *edit.shape), np.float32)
    log_jacobian = np.zeros(edit.shape, np.float32)
    displacement[(slice(None), *crop)] = field_array(field)
    # the field maps the edit's points to the reconstruction's: volume grows by 1 / det
    log_jacobian[crop] = -np.log(jacobian.transpose(2, 1, 0))
    return Deformation(displacement, log_jacobian)


def guided(reconstruction: np.ndarray, edit: np.ndarray,
           grid_to_mni: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The pair as guided demons registers it (see :func:`estimate_deformation`); unchanged
    when either volume does not reach the structure network's box."""
    from napari_ldae.data.structures import fractions_on_grid

    guides = [fractions_on_grid(v, grid_to_mni) for v in (reconstruction, edit)]
    if any(g is None for g in guides):
        return reconstruction, edit
    weight = np.float32(GUIDE_WEIGHT * float(edit.max()))
    return tuple(v - weight * g for v, g in zip((reconstruction, edit), guides, strict=True))


def model_brain(reconstruction: np.ndarray, edit: np.ndarray) -> np.ndarray:
    """The model-grid voxels the deformation is estimated in: above :data:`BRAIN_FRACTION` of
    the edit's maximum in either volume."""
    return np.maximum(reconstruction, edit) > BRAIN_FRACTION * max(float(edit.max()), 1e-6)


def warp_scan(scan: np.ndarray, scan_to_model: np.ndarray, deformation: Deformation, *,
              inside: np.ndarray | None = None, blur: np.ndarray | None = None) -> Carried:
    """Apply a model-grid deformation to ``scan`` (see :func:`carry`)."""
    scan, matrix, inside = _scan_inputs(scan, scan_to_model, inside)
    if deformation.displacement.shape[1:] != deformation.log_jacobian.shape:
        raise LDAEError("deformation: displacement and log-Jacobian grids differ")
    data, log_jacobian = _carry_warp(scan, matrix, deformation, inside, blur)
    return Carried(data, "warp", log_jacobian)


# ----------------------------------------------------------------------------- the two ways
# Scan-sized images go to SimpleITK without a transposed copy: ITK index (k, j, i) is scan
# voxel [i, j, k], so ITK points of the scan are REVERSED voxel indices. Model-grid images
# (small) are transposed: their ITK index is their voxel index.
REVERSED = np.eye(4)[[2, 1, 0, 3]]


def _carry_warp(scan: np.ndarray, matrix: np.ndarray, deformation: Deformation,
                inside: np.ndarray | None,
                blur: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """The scan through the deformation and its log-Jacobian, at the voxels of the box the
    deformation reaches that are inside and move by at least :data:`STILL_VOXELS`; the others
    stay as they are. ``blur``: the scan's :func:`blurred`, computed when None."""
    step = np.einsum("ij,j...->i...", np.linalg.inv(matrix[:3, :3]),
                     deformation.displacement).astype(np.float32)  # in scan voxels
    moved_by = np.sqrt((step**2).sum(0))
    out, log_jacobian = scan.copy(), np.zeros(scan.shape, np.float32)
    box = _scan_box(moved_by >= STILL_VOXELS, matrix, scan.shape, inside)
    if box is None:
        return out, log_jacobian
    amount = _on_scan_box(np.concatenate([step, moved_by[None], deformation.log_jacobian[None]]),
                          box, matrix)
    keep = amount[3] >= STILL_VOXELS
    if inside is not None:
        keep &= inside[box]
    # float64 sums of whole voxels and float32 steps: exact, in any order
    source = np.stack(np.nonzero(keep)).astype(np.float64)
    for axis, b in enumerate(box):
        source[axis] += amount[axis][keep]
        source[axis] += b.start
    blur = blurred(scan) if blur is None else blur
    # the blurred part moves by linear interpolation, the detail by whole voxels (stays sharp)
    out[box][keep] = _sampled(scan, blur, source)
    log_jacobian[box][keep] = amount[4][keep]
    return out, log_jacobian


def blurred(scan: np.ndarray) -> np.ndarray:
    """The scan's Gaussian blur of σ :data:`DETAIL_SIGMA` voxels (what the warp interpolates;
    the rest, the detail, it moves by whole voxels): the same for every edit of a scan."""
    import SimpleITK as sitk

    image = sitk.SmoothingRecursiveGaussian(sitk.GetImageFromArray(np.asarray(scan, np.float32)),
                                            DETAIL_SIGMA)
    return sitk.GetArrayFromImage(image)


def _carry_intensity(scan: np.ndarray, matrix: np.ndarray, change: np.ndarray, scale: float,
                     inside: np.ndarray | None) -> np.ndarray:
    """The scan plus ``scale`` × the model-grid change at each voxel's position."""
    out = scan.copy()
    box = _scan_box(change != 0, matrix, scan.shape, inside)
    if box is None:
        return out
    delta = _on_scan_box(change[None], box, matrix)[0] * np.float32(scale)
    if inside is not None:
        delta[~inside[box]] = 0.0
    out[box] += delta
    return out


# ----------------------------------------------------------------------------- interpolation
# Linear interpolation as ITK's: within half a voxel beyond the edge voxels the edge value,
# farther out 0.
def _on_scan_box(volumes: np.ndarray, box: tuple[slice, ...], matrix: np.ndarray) -> np.ndarray:
    """Model-grid volumes (C, X, Y, Z), trilinear at the scan voxels of ``box``: (C, *box
    shape) float32. Axis by axis (one volume at a time: faster) when the scan's axes lie along
    the model grid's."""
    rzs = matrix[:3, :3]
    if np.abs(rzs - np.diag(np.diag(rzs))).max() > 1e-9:
        return _on_scan_box_itk(volumes, box, matrix)
    out = np.empty((len(volumes), *(s.stop - s.start for s in box)), np.float32)
    for volume, into in zip(np.asarray(volumes, dtype=np.float32), out, strict=True):
        for axis in (2, 1, 0):  # the first axis last: its rows are whole contiguous planes
            x = rzs[axis, axis] * np.arange(box[axis].start, box[axis].stop) + matrix[axis, 3]
            (lo, w_lo), (hi, w_hi) = _neighbours(x, volume.shape[axis])
            shape = [-1 if a == axis else 1 for a in range(3)]
            part = np.take(volume, lo, axis)
            part *= w_lo.reshape(shape)
            volume = np.take(volume, hi, axis, out=into if axis == 0 else None)
            volume *= w_hi.reshape(shape)
            volume += part
    return out


def _on_scan_box_itk(volumes: np.ndarray, box: tuple[slice, ...], matrix: np.ndarray):
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(np.ascontiguousarray(volumes.transpose(3, 2, 1, 0),
                                                        dtype=np.float32), isVector=True)
    reference = sitk.Image([int(s.stop - s.start) for s in reversed(box)], sitk.sitkFloat32)
    reference.SetOrigin([float(s.start) for s in reversed(box)])
    resampled = sitk.Resample(image, reference, _itk_affine(matrix @ REVERSED), sitk.sitkLinear,
                              0.0)
    out = sitk.GetArrayFromImage(resampled)
    return np.moveaxis(out, -1, 0) if out.ndim == 4 else out[None]


def _sampled(scan: np.ndarray, blur: np.ndarray, points: np.ndarray) -> np.ndarray:
    """The scan moved to ``points`` (3, N) of its voxel coordinates: its blur trilinear, its
    detail (scan − blur) from the nearest voxel (halves round up, as ITK's)."""
    from scipy import ndimage as ndi

    shape = np.array(scan.shape)[:, None]
    nearest = np.floor(points + 0.5)
    np.clip(nearest, 0, shape - 1, out=nearest)
    flat = np.ravel_multi_index(tuple(nearest.astype(np.intp)), scan.shape)
    out = ndi.map_coordinates(blur, points, order=1, mode="nearest", prefilter=False)
    out += np.ravel(scan).take(flat) - np.ravel(blur).take(flat)
    out[((points < -0.5) | (points > shape - 0.5)).any(0)] = 0.0
    return out


def _neighbours(x: np.ndarray, n: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(index, weight) of the two grid neighbours (clipped to ``0 … n − 1``) of positions
    ``x`` along an axis of ``n`` voxels; weight 0 beyond half a voxel outside."""
    inside = ((x >= -0.5) & (x <= n - 0.5)).astype(np.float32)
    lo = np.floor(x)
    f = (x - lo).astype(np.float32)
    lo = lo.astype(np.intp)
    return [(np.clip(lo, 0, n - 1), (1 - f) * inside), (np.clip(lo + 1, 0, n - 1), f * inside)]


# ----------------------------------------------------------------------------- geometry
def _scan_box(support: np.ndarray, matrix: np.ndarray, shape: tuple[int, ...],
              inside: np.ndarray | None) -> tuple[slice, ...] | None:
    """The box of scan voxels (within ``inside``'s box) whose model position lies within a
    voxel of ``support``."""
    model_box = bounding_box(support, 1)
    if model_box is None:
        return None
    corners = np.array(np.meshgrid(*[(s.start, s.stop - 1) for s in model_box],
                                   indexing="ij")).reshape(3, -1)
    back = np.linalg.inv(matrix)
    scan = back[:3, :3] @ corners + back[:3, 3:]
    start = np.clip(np.floor(scan.min(axis=1)).astype(int), 0, shape)
    stop = np.clip(np.ceil(scan.max(axis=1)).astype(int) + 1, 0, shape)
    limit = None if inside is None else bounding_box(inside, 0)
    if limit is not None:
        start = np.maximum(start, [s.start for s in limit])
        stop = np.minimum(stop, [s.stop for s in limit])
    if (limit is None and inside is not None) or np.any(stop <= start):
        return None
    return tuple(slice(a, b) for a, b in zip(start, stop, strict=True))


def _itk_affine(matrix: np.ndarray):
    """A SimpleITK affine transform of a 4×4 point → point matrix."""
    import SimpleITK as sitk

    return sitk.AffineTransform(matrix[:3, :3].ravel().tolist(), matrix[:3, 3].tolist())


# ----------------------------------------------------------------------------- input checks
def _model_pair(reconstruction, edit) -> tuple[np.ndarray, np.ndarray]:
    r = np.asarray(reconstruction, dtype=np.float32).squeeze()
    e = np.asarray(edit, dtype=np.float32).squeeze()
    if r.ndim != 3 or r.shape != e.shape:
        raise LDAEError(f"the reconstruction {np.shape(reconstruction)} and the edit "
                        f"{np.shape(edit)} must be two volumes on the same model grid")
    if not (np.isfinite(r).all() and np.isfinite(e).all()):
        raise LDAEError("the reconstruction or the edit holds NaN or infinite values")
    return r, e


def _scan_inputs(scan, scan_to_model, inside):
    data = np.asarray(scan)
    if data.ndim != 3 or not np.issubdtype(data.dtype, np.floating):
        raise LDAEError(f"the scan must be one 3D float volume, got {data.dtype} {data.shape}")
    matrix = np.asarray(scan_to_model, dtype=np.float64)
    if (matrix.shape != (4, 4) or not np.isfinite(matrix).all()
            or abs(np.linalg.det(matrix[:3, :3])) < 1e-9):
        raise LDAEError("scan_to_model must be an invertible 4×4 matrix (scan voxel → model "
                        "voxel)")
    if inside is not None:
        inside = np.asarray(inside, dtype=bool)
        if inside.shape != data.shape:
            raise LDAEError(f"the mask {inside.shape} is not on the scan's grid {data.shape}")
    return data, matrix, inside
