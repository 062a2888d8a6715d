"""The MNI template the preparation registers to, and the model's grid in MNI space.

The template is the ICBM152 2009a nonlinear symmetric T1 (skull-stripped) shipped inside the
``nilearn`` wheel, with its brain mask (the template's non-zero voxels, holes filled); it is read
from the wheel's files, never downloaded. The model grid of a preprocessing contract is the
synthetic cohort's: RAS, the contract's spacing and shape, centred on MNI ``FOV_CENTER_MM``.
"""

from __future__ import annotations

import functools

import numpy as np

from napari_ldae.data.synthetic_template import FOV_CENTER_MM

TEMPLATE_NAME = "ICBM152 2009a nonlinear symmetric T1 (nilearn wheel), skull-stripped"
TEMPLATE_SPACE = "MNI152NLin2009aSym"


def model_grid(contract) -> tuple[np.ndarray, tuple[int, int, int]]:
    """(affine, shape) of the model input grid of ``contract`` in MNI mm (RAS)."""
    spacing = np.asarray(contract.spacing, dtype=float)
    shape = tuple(int(s) for s in contract.shape)
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = np.asarray(FOV_CENTER_MM) - (np.asarray(shape) - 1) / 2 * spacing
    return affine, shape  # type: ignore[return-value]


@functools.lru_cache(maxsize=4)
def template(spacing: float = 2.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The template at ``spacing`` mm: T1 in [0, 1] (float32), brain mask (bool), affine."""
    from scipy import ndimage as ndi

    from napari_ldae.data.synthetic_template import _icbm_images

    img = _icbm_images()["t1"]
    t1 = np.asarray(img.get_fdata(dtype=np.float32))  # type: ignore[attr-defined]
    t1 /= t1.max()
    affine = np.asarray(img.affine, dtype=np.float64)  # type: ignore[attr-defined]
    factor = float(spacing) / float(np.linalg.norm(affine[:3, 0]))
    if abs(factor - 1.0) > 1e-6:
        t1 = ndi.gaussian_filter(t1, 0.42 * factor)  # anti-aliasing (FWHM ≈ the new spacing)
        shape = tuple(int(np.floor((n - 1) / factor)) + 1 for n in t1.shape)
        t1 = ndi.affine_transform(t1, np.diag([factor] * 3), output_shape=shape, order=1)
        affine = affine @ np.diag([factor, factor, factor, 1.0])
    mask = ndi.binary_fill_holes(t1 > 0.02)
    t1 = np.where(mask, t1, 0.0).astype(np.float32)
    t1.setflags(write=False)
    mask.setflags(write=False)
    return t1, mask, affine


def template_on(affine: np.ndarray, shape) -> tuple[np.ndarray, np.ndarray]:
    """The 1 mm template T1 and brain mask resampled onto an MNI grid (``affine``, ``shape``)."""
    from napari_ldae.data.register import resample

    t1, mask, t_aff = template(1.0)
    eye = np.eye(4)
    return (resample(t1, t_aff, eye, affine, shape),
            resample(mask.astype(np.float32), t_aff, eye, affine, shape) > 0.5)
