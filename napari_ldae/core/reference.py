"""Entry points that take the paper's reference code formats (constructor arguments and state
dicts with the reference key names) and return napari-ldae modules.

They exist so that independent checks can compare this implementation with the reference.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch


def load_shift_unet(config: Mapping, state_dict: Mapping[str, torch.Tensor]) -> torch.nn.Module:
    """Build the latent UNet with its gradient-estimator branch from reference constructor
    arguments (``shift_unet_tiny_config.json``) and load a reference ``ShiftUNet`` state dict.

    The returned module is in eval mode; calling it with ``(x_t, t, y)`` returns ``(eps, shift)``.
    """
    from napari_ldae.core.unet import shift_unet_from_reference

    return shift_unet_from_reference(config, state_dict)


def load_semantic_encoder(
    config: Mapping, state_dict: Mapping[str, torch.Tensor]
) -> torch.nn.Module:
    """Build the 2.5D semantic encoder from a reference configuration
    (``semantic_encoder_tiny_config.json``; the backbone is read from the state dict's shapes)
    and load a reference ``AttentionSemanticEncoder`` state dict.

    The returned module is in eval mode and maps ``(B, 1, slices, H, W)`` to ``(B, emb)``.
    """
    from napari_ldae.core.encoder import semantic_encoder_from_reference

    return semantic_encoder_from_reference(config, state_dict)
