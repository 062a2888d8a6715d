"""Small NIfTI files like real-world ones, for the I/O, preprocessing and napari tests."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np


def rotation(deg_x: float = 0.0, deg_y: float = 0.0, deg_z: float = 0.0) -> np.ndarray:
    """3×3 rotation about x, then y, then z (degrees)."""
    ax, ay, az = np.radians([deg_x, deg_y, deg_z])
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def make_affine(zooms=(1.0, 1.0, 1.0), flips=(1, 1, 1), rot=None, perm=(0, 1, 2),
                origin=(-40.0, -50.0, -30.0)) -> np.ndarray:
    """Voxel-to-world affine: voxel axis i → world axis perm[i], scaled, flipped, rotated."""
    m = np.zeros((3, 3))
    for i, (axis, z, f) in enumerate(zip(perm, zooms, flips, strict=True)):
        m[axis, i] = z * f
    aff = np.eye(4)
    aff[:3, :3] = (rot if rot is not None else np.eye(3)) @ m
    aff[:3, 3] = origin
    return aff


def blob(shape=(40, 48, 36), seed: int = 0) -> np.ndarray:
    """A smooth float32 image: a Gaussian 'brain' with a gradient, values about 100–1100."""
    g = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    r2 = sum(c**2 for c in g)
    shift = np.random.default_rng(seed).normal(0, 0.05)
    return (1000 * np.exp(-2.5 * r2) + 60 * (g[0] + shift) + 100).astype(np.float32)


# The kinds of files met in practice: (name, affine, dtype, slope, inter).
KINDS = {
    "int16_slope_ras": (make_affine((1.0, 1.0, 1.0)), np.int16, 0.5, 10.0),
    "float32_lps": (make_affine((1.0, 1.0, 1.0), flips=(-1, -1, 1)), np.float32, 1.0, 0.0),
    "oblique_aniso": (make_affine((0.9, 1.2, 2.5), rot=rotation(10, -5, 15)), np.float32, 1, 0),
    "uint8_head_permuted": (make_affine((1.1, 1.0, 1.0), flips=(-1, 1, -1), perm=(2, 0, 1)),
                                np.uint8, 1.0, 0.0),
}


def head(shape=(40, 48, 36)) -> np.ndarray:
    """A uint8-range 'head with skull': bright shell, dark CSF gap, brain inside."""
    g = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    r = np.sqrt(sum(c**2 for c in g))
    return np.select([r < 0.6, r < 0.7, r < 0.85], [150.0, 20.0, 250.0], 0.0).astype(np.float32)


def save(path: Path, data: np.ndarray, affine: np.ndarray, dtype=np.float32, slope=1.0,
         inter=0.0, nifti2: bool = False) -> Path:
    """Save ``data`` with on-disk ``dtype`` and scaling (stored = (data - inter) / slope)."""
    klass = nib.Nifti2Image if nifti2 else nib.Nifti1Image
    stored = np.round((data - inter) / slope) if np.issubdtype(dtype, np.integer) else data
    img = klass(stored.astype(dtype), affine)
    img.header.set_slope_inter(slope, inter)
    img.header.set_xyzt_units("mm", "sec")
    img.set_qform(affine, 1)
    img.set_sform(affine, 4 if nifti2 else 2)
    nib.save(img, path)
    return Path(path)


def make_kind(tmp: Path, kind: str, shape=(40, 48, 36)) -> tuple[Path, np.ndarray]:
    """Write one file of ``kind`` (see :data:`KINDS`); return its path and true intensities."""
    affine, dtype, slope, inter = KINDS[kind]
    data = head(shape) if dtype == np.uint8 else blob(shape)
    if np.issubdtype(dtype, np.integer):
        data = (np.round((data - inter) / slope) * slope + inter).astype(np.float32)
    return save(tmp / f"{kind}.nii.gz", data, affine, dtype, slope, inter), data
