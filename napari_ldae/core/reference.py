"""Entry points that take the paper's reference code formats (constructor arguments and state
dicts with the reference key names) and return napari-ldae modules.

They exist so that independent checks can compare this implementation with the reference, and
they are the only place that loads reference formats (the bundle importer reads the official
release files through the networks' own strict loading).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from napari_ldae.core.encoder import EncoderConfig, SemanticEncoder
from napari_ldae.core.unet import ShiftUNet, UNetConfig, _check_keys, _load


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
