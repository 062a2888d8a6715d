"""The lateral ventricles and the hippocampal region of a brain, by a small 3D U-Net.

The network (MONAI's ``UNet``, weights in ``resources/regions/structures.safetensors``) sees a
fixed box of MNI space around both structures on a 1.5 mm grid (:data:`SHAPE` voxels from
:data:`ORIGIN_MM`), and returns each voxel's fraction of the synthetic cohort's two truth
structures; a structure's volume is their sum. It is trained by
:mod:`napari_ldae.train.structures` on synthetic scans whose truth masks are known, at 1.5 and
3 mm, with contrast and blur varied (docs/method.md, "Region volumes", says why a network and how
it was checked).
"""

from __future__ import annotations

import functools
from collections import OrderedDict

import numpy as np

from napari_ldae.errors import LDAEError

#: The box the network sees: MNI mm of its first voxel, its shape, its spacing (mm).
ORIGIN_MM = (-53.25, -73.25, -39.25)
SHAPE = (72, 80, 56)
SPACING_MM = 1.5
#: One box voxel in ml: a structure's volume is the sum of its fractions times this.
VOXEL_ML = SPACING_MM**3 / 1000.0
STRUCTURES = ("lateral_ventricles", "hippocampal_region")
WEIGHTS = "regions/structures.safetensors"
#: The network's input: intensities over this percentile of the box's voxels.
NORM_PERCENTILE = 99.0
#: How many volumes' :func:`fractions_on_grid` are remembered (a model grid's each).
REMEMBERED_GRIDS = 4
_ON_GRID: OrderedDict[str, np.ndarray | None] = OrderedDict()


def box_affine() -> np.ndarray:
    """Box voxel → MNI mm (4×4)."""
    affine = np.diag([SPACING_MM] * 3 + [1.0])
    affine[:3, 3] = ORIGIN_MM
    return affine


def box_input(volume: np.ndarray, grid_to_mni: np.ndarray) -> np.ndarray:
    """The volume sampled (trilinear) on the box and divided by its 99th percentile (float32)."""
    from napari_ldae.data.register import resample

    sampled = resample(volume, np.asarray(grid_to_mni, np.float64), np.eye(4), box_affine(), SHAPE)
    level = float(np.percentile(sampled, NORM_PERCENTILE))
    if not level > 0:
        raise LDAEError("this volume does not overlap the MNI152 brain's deep structures: region "
                        "volumes need a brain in MNI position (or its map to MNI)")
    return (sampled / level).astype(np.float32)


def structure_fractions(volume: np.ndarray, grid_to_mni: np.ndarray) -> np.ndarray:
    """(2, *SHAPE) fractions of :data:`STRUCTURES` on the box.

    Whatever the volume holds is read: whether it is a brain at all is
    :func:`napari_ldae.data.regions.measure_regions`' check (its registration's match).
    """
    import torch

    x = box_input(volume, grid_to_mni)
    net = shipped_network()
    with torch.inference_mode():
        logits = net(torch.from_numpy(x)[None, None])
    return torch.sigmoid(logits)[0].numpy()


def structures_ml(volume: np.ndarray, grid_to_mni: np.ndarray) -> dict[str, float]:
    """Structure → volume in MNI ml."""
    fractions = structure_fractions(volume, grid_to_mni)
    return {name: float(f.sum(dtype=np.float64)) * VOXEL_ML
            for name, f in zip(STRUCTURES, fractions, strict=True)}


def fractions_on_grid(volume: np.ndarray, grid_to_mni: np.ndarray) -> np.ndarray | None:
    """Both structures' fractions, summed, on ``volume``'s own grid (trilinear; 0 outside the
    box), float32 and read-only; None when the volume does not reach the box. Remembered by
    content: the guided warp reads a scan's reconstruction once for all its edits."""
    from napari_ldae.data.io import digest, remembered
    from napari_ldae.data.register import resample

    def compute() -> np.ndarray | None:
        try:
            fractions = structure_fractions(volume, grid_to_mni).sum(0)
        except LDAEError:
            return None
        out = resample(fractions, box_affine(), np.eye(4), np.asarray(grid_to_mni, np.float64),
                       np.shape(volume)).astype(np.float32)
        out.setflags(write=False)
        return out

    key = digest(volume, np.shape(volume), grid_to_mni)
    return remembered(_ON_GRID, key, compute, REMEMBERED_GRIDS)


def build_network():
    """The U-Net, untrained (its hyperparameters live here only)."""
    from monai.networks.nets import UNet

    return UNet(spatial_dims=3, in_channels=1, out_channels=len(STRUCTURES),
                channels=(16, 32, 64, 128), strides=(2, 2, 2), num_res_units=1)


def load_network(path):
    """The network with the weights of a ``structures.safetensors`` file, in eval mode."""
    from safetensors.torch import load_file

    net = build_network()
    net.load_state_dict(load_file(path))
    return net.eval()


@functools.lru_cache(maxsize=1)
def shipped_network():
    """The shipped weights, loaded once per process."""
    from napari_ldae._resources import resource_path

    path = resource_path(*WEIGHTS.split("/"))
    if not path.is_file():
        raise LDAEError(f"the structure network's weights are missing ({WEIGHTS}); reinstall "
                        "napari-ldae or train them with python -m napari_ldae.train.structures")
    return load_network(path)
