"""The volume change of a structure between two volumes of one brain on one grid, read from the
deformation between them (tensor-based morphometry with a region of interest).

The structure network (:mod:`.structures`) reads each volume on its own. Between two volumes of
one brain, a small change is also read from how tissue moves: the
diffeomorphic demons deformation from ``before`` to ``after`` (:func:`~napari_ldae.data.transfer.
estimate_deformation` without the structure guide of the change transfer's warp, so that this
reading does not lean on the network) pulls the structure's template region,
placed on ``before``, into ``after``'s frame; the difference of the two regions' volumes is the
change. The regions are the template's own, as the synthetic cohort defines them (the ICBM152
2009a lateral ventricles and the hippocampal region), sampled onto the grid of an MNI-aligned
volume. Validated in ``docs/method.md``: on real visit pairs it has the sign of the true
hippocampal change and sees about half of it (a registration regularised at the model grid's
scale), so its edit slopes are underestimates and their sign is the reading to trust.
"""

from __future__ import annotations

import functools

import numpy as np

#: The structures measured, by region-volume name.
STRUCTURES = ("lateral_ventricles", "hippocampal_region")


def template_region(name: str, affine: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """The template's region ``name`` on an MNI grid: a fraction per voxel (float32, read-only),
    blurred to the grid's voxel size; remembered per grid (0.1 s each)."""
    return _region(name, np.asarray(affine, np.float64).round(6).tobytes(),
                   tuple(int(n) for n in shape))


@functools.lru_cache(maxsize=8)
def _region(name: str, affine_bytes: bytes, shape: tuple[int, ...]) -> np.ndarray:
    from scipy import ndimage as ndi

    from napari_ldae.data.register import resample
    from napari_ldae.data.synthetic_template import template_mni, ventricle_mask_mni

    affine = np.frombuffer(affine_bytes, dtype=np.float64).reshape(4, 4)
    if name == "lateral_ventricles":
        mask, mni_affine = ventricle_mask_mni()
    elif name == "hippocampal_region":
        _, mask, mni_affine = template_mni()
    else:
        raise ValueError(f"unknown structure {name!r}; choose one of {', '.join(STRUCTURES)}")
    # blurred to the grid's voxel size (a Gaussian of FWHM √(s² − 1), the mask is at 1 mm)
    spacing = float(np.mean(np.linalg.norm(affine[:3, :3], axis=0)))
    sigma = max(spacing**2 - 1.0, 0.0) ** 0.5 / 2.3548
    smooth = ndi.gaussian_filter(mask, sigma) if sigma > 0.1 else mask
    region = resample(smooth, mni_affine, np.eye(4), affine, shape)
    if region.max() < 0.5:
        raise ValueError(f"this grid does not cover the template's {name.replace('_', ' ')}; "
                         "the deformation measurement needs MNI-aligned volumes")
    region.setflags(write=False)
    return region


def structure_changes(before: np.ndarray, after: np.ndarray, affine: np.ndarray,
                      names: tuple[str, ...] = STRUCTURES) -> dict[str, float]:
    """The change (ml, > 0 where a structure grows) of each structure from ``before`` to
    ``after``: two volumes of one brain in [0, 1] on the same MNI-aligned grid ``affine``."""
    from scipy import ndimage as ndi

    from napari_ldae.data.io import voxel_sizes
    from napari_ldae.data.transfer import estimate_deformation

    before, after = (np.asarray(v, dtype=np.float32).squeeze() for v in (before, after))
    if before.ndim != 3 or before.shape != after.shape:
        raise ValueError(f"need two 3D volumes on one grid, got {before.shape} and {after.shape}")
    voxel_ml = float(np.prod(voxel_sizes(affine))) / 1000.0
    regions = {name: template_region(name, affine, before.shape) for name in names}
    if np.array_equal(before, after):
        return dict.fromkeys(names, 0.0)
    # after's voxel x shows before at x + displacement(x): the region seen in after's frame
    points = np.indices(before.shape, dtype=np.float32)
    points += estimate_deformation(before, after).displacement
    return {name: (float(ndi.map_coordinates(region, points, order=1).sum(dtype=np.float64))
                   - float(region.sum(dtype=np.float64))) * voxel_ml
            for name, region in regions.items()}
