"""The perceptual (LPIPS) loss from local weights: a loss term of autoencoder training and a
metric of ``napari-ldae evaluate``. No Lightning here, so that both can import it (``train``
may import ``evaluate``'s Lightning-free modules; ``evaluate`` never imports ``train``).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from napari_ldae.errors import TrainingError


def perceptual_loss(weights: str | None) -> nn.Module | None:
    """MONAI's fake-3D LPIPS (SqueezeNet) with weights from a local file, or ``None``.

    Nothing is ever downloaded: the networks are built with random weights, then the file (the
    state dict of an ``lpips.LPIPS(net="squeeze")``, safetensors or PyTorch, read with
    ``weights_only``) is loaded strictly.
    """
    if not weights:
        return None
    path = Path(weights).expanduser()
    if not path.is_file():
        raise TrainingError(f"autoencoder.perceptual_weights: no file {path}")
    try:
        import lpips
        from monai.losses import PerceptualLoss
        from monai.losses import perceptual as monai_perceptual
    except ImportError as err:
        raise TrainingError(
            "autoencoder.perceptual_weights is set but the perceptual loss cannot be built "
            f"offline here ({err}); it needs the `lpips` package and a working torchvision. "
            "Set autoencoder.perceptual_weights: null to train with L1 + KL + adversarial "
            "losses only.") from err
    with _no_downloads(), contextlib.ExitStack() as stack:
        stack.callback(setattr, monai_perceptual, "LPIPS", monai_perceptual.LPIPS)
        monai_perceptual.LPIPS = functools.partial(lpips.LPIPS, pnet_rand=True)
        loss = PerceptualLoss(spatial_dims=3, network_type="squeeze", is_fake_3d=True,
                              fake_3d_ratio=0.5, pretrained=False)
    state = _read_weights(path)
    try:
        loss.perceptual_function.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise TrainingError(f"{path} is not an LPIPS-SqueezeNet state dict ({err})") from err
    return loss.eval().requires_grad_(False)


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as err:
            raise TrainingError(f"{path} is not a readable safetensors file ({err})") from err
    return torch.load(path, map_location="cpu", weights_only=True)


@contextlib.contextmanager
def _no_downloads() -> Iterator[None]:
    """Make any torch.hub download attempt a clear error."""
    def refuse(url, *args, **kwargs):
        raise TrainingError(f"the perceptual loss tried to download {url}; napari-ldae never "
                            "downloads: give local weights or set perceptual_weights: null")

    with contextlib.ExitStack() as stack:
        for name in ("download_url_to_file", "load_state_dict_from_url"):
            stack.callback(setattr, torch.hub, name, getattr(torch.hub, name))
            setattr(torch.hub, name, refuse)
        yield
