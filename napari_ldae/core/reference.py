"""Entry points that take the paper's reference code formats and return napari-ldae objects:
the networks from reference constructor arguments and state dicts (so that independent checks
can compare this implementation with the reference), and :func:`import_official`, which
converts the official release files into a bundle. This is the only place that reads
reference formats.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from napari_ldae.core import REFERENCE_SCALE_FACTOR
from napari_ldae.core.bundle import load_strict, save_bundle
from napari_ldae.core.encoder import EncoderConfig, SemanticEncoder
from napari_ldae.core.model import build_networks
from napari_ldae.core.presets import preset
from napari_ldae.core.unet import ShiftUNet, UNetConfig, _check_keys, _load
from napari_ldae.errors import BundleError


def load_shift_unet(config: Mapping, state_dict: Mapping[str, torch.Tensor]) -> ShiftUNet:
    """Build the latent UNet with its gradient-estimator branch from reference constructor
    arguments (the ``"shift_unet"`` entry of ``shift_unet_tiny_config.json``, or the whole
    file) and load a reference ``ShiftUNet`` state dict strictly.

    The model is built on the meta device and takes the (float32) tensors of ``state_dict``
    without copying them: no random initialisation, no second copy of the weights in memory.
    The returned module is in eval mode; calling it with ``(x_t, t, y)`` returns
    ``(eps, shift)``.
    """
    ref = config.get("shift_unet", config)
    with torch.device("meta"):
        model = ShiftUNet(UNetConfig.from_reference(ref))
    _check_keys(state_dict, set(model.state_dict()), "ShiftUNet")
    weights = {k: v.float() if v.is_floating_point() else v for k, v in state_dict.items()}
    _load(model, weights, strict=True, assign=True)
    return model.eval()


def load_semantic_encoder(config: Mapping,
                          state_dict: Mapping[str, torch.Tensor]) -> SemanticEncoder:
    """Build the 2.5D semantic encoder from a reference configuration
    (``semantic_encoder_tiny_config.json``; the backbone is read from the state dict's shapes)
    and load a reference ``AttentionSemanticEncoder`` state dict strictly.

    The returned module is in eval mode and maps ``(B, 1, slices, H, W)`` to ``(B, emb)``.
    """
    sd = dict(state_dict)
    model = SemanticEncoder(EncoderConfig.from_reference(config, sd))
    model.load_state_dict(sd, strict=True)
    return model.eval()


# ---------------------------------------------------------------------- official release
def _torch_load(path: str | os.PathLike, what: str) -> Any:
    """Read one official (pickled) release file, safely: tensors and containers only."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise BundleError(f"{what}: no file at {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise BundleError(f"{what}: cannot read {path} as PyTorch weights ({err}). Only "
                          "tensors are accepted (weights_only=True).") from err


def _state_dict(obj: Any, what: str, strip: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    """The tensor dict inside a checkpoint (plain, or under ``state_dict``), prefixes removed."""
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise BundleError(f"{what}: expected a state dict of tensors")
    out = {}
    for key, value in obj.items():
        for prefix in strip:
            if key.startswith(prefix):
                key = key[len(prefix):]
        out[key] = value
    return out


def _tensor(obj: Any, what: str) -> torch.Tensor:
    if isinstance(obj, Mapping) and len(obj) == 1:
        obj = next(iter(obj.values()))
    if not isinstance(obj, torch.Tensor):
        raise BundleError(f"{what}: expected a tensor, got {type(obj).__name__}")
    return obj.reshape(-1).float()


def _classifier_direction(obj: Any, dim: int) -> torch.Tensor:
    """The AD direction from the reference ``Linear(d, 1)`` whose positive class is CN."""
    sd = _state_dict(obj, "classifier")
    weights = [v for k, v in sd.items() if k.endswith("weight") and tuple(v.shape) == (1, dim)]
    if len(weights) != 1:
        raise BundleError(f"classifier: expected one Linear({dim}, 1) weight, found keys "
                          f"{sorted(sd)}")
    return -weights[0].reshape(-1).float()  # labels sorted AD=0, CN=1: +w points toward CN


def import_official(*, unet: str | os.PathLike, encoder: str | os.PathLike,
                    autoencoder: str | os.PathLike, semantic_mean: str | os.PathLike,
                    semantic_std: str | os.PathLike, classifier: str | os.PathLike | None,
                    out: str | os.PathLike, scale_factor: float = REFERENCE_SCALE_FACTOR,
                    config: Mapping[str, Any] | None = None, overwrite: bool = False) -> Path:
    """Convert the official LDAE release files into a bundle.

    ``config`` is a bundle config (architectures, preprocessing); the paper's by default. Each
    part is loaded strictly into the configured networks, so a file of another architecture
    is refused instead of silently leaving random weights.
    """
    config = dict(config or preset("paper"))
    config["scale_factor"] = float(scale_factor)
    nets = build_networks(config)
    unet_sd = _state_dict(_torch_load(unet, "unet (decoder.pth)"), "unet",
                          strip=("ema_decoder.", "decoder."))
    load_strict(nets["unet"], unet_sd, "unet")
    enc_sd = _state_dict(_torch_load(encoder, "encoder (encoder.pth)"), "encoder",
                         strip=("ema_encoder.", "encoder."))
    load_strict(nets["encoder"], enc_sd, "encoder")
    ae_sd = _state_dict(_torch_load(autoencoder, "autoencoder"), "autoencoder")
    nets["autoencoder"].load_generative_state_dict(ae_sd)
    dim = config["encoder"]["emb_dim"]
    semantic = {"mean": _tensor(_torch_load(semantic_mean, "semantic mean"), "semantic mean"),
                "std": _tensor(_torch_load(semantic_std, "semantic std"), "semantic std")}
    for key, value in semantic.items():
        if value.numel() != dim:
            raise BundleError(f"semantic {key} has {value.numel()} values, the encoder {dim}")
    config["directions"] = {}
    if classifier is not None:
        semantic["direction.AD"] = _classifier_direction(
            _torch_load(classifier, "classifier"), dim)
        config["directions"]["AD"] = {
            "meaning": "toward AD",
            "source": "official linear probe AD vs CN (its positive class is CN; negated)",
        }
    config["provenance"] = {"imported_from": "official LDAE release",
                            "files": {k: str(Path(v).name) for k, v in {
                                "unet": unet, "encoder": encoder, "autoencoder": autoencoder,
                                "semantic_mean": semantic_mean, "semantic_std": semantic_std,
                                "classifier": classifier}.items() if v is not None}}
    weights = {"autoencoder": nets["autoencoder"].net.state_dict(),
               "unet": nets["unet"].state_dict(), "encoder": nets["encoder"].state_dict(),
               "semantic": semantic}
    return save_bundle(out, config, weights, overwrite=overwrite)
