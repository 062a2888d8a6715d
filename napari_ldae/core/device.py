"""Devices and precisions that really work on this machine."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def available_devices() -> list[str]:
    """Devices a model can run on now: each CUDA device with free memory, MPS, then CPU."""
    devices = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            try:
                free, _ = torch.cuda.mem_get_info(i)
            except RuntimeError:
                continue
            if free > 256 * 2**20:
                devices.append(f"cuda:{i}")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        devices.append("mps")
    devices.append("cpu")
    return devices


def supported_precisions(device: str) -> list[str]:
    """Precisions worth offering on a device (reduced precision only where it is fast)."""
    if device.startswith("cuda"):
        index = torch.device(device).index or 0
        return ["bf16", "fp16", "fp32"] if torch.cuda.is_bf16_supported() and index >= 0 \
            else ["fp16", "fp32"]
    return ["fp32"]


def resolve(device: str | None, precision: str = "fp32") -> tuple[str, str]:
    """``(device, precision)`` checked to work here: None is the first available device and
    ``cuda`` is ``cuda:0``; anything else unavailable raises a clear ``LDAEError``."""
    from napari_ldae.errors import LDAEError

    devices = available_devices()
    device = {"cuda": "cuda:0"}.get(device, device) if device else devices[0]
    if device not in devices:
        raise LDAEError(f"device {device!r} is not available here; choose one of "
                        f"{', '.join(devices)}")
    if precision not in supported_precisions(device):
        raise LDAEError(f"precision {precision!r} is not supported on {device}; choose one of "
                        f"{', '.join(supported_precisions(device))}")
    return device, precision


def is_out_of_memory(err: BaseException) -> bool:
    """Whether an error is a device running out of memory (CUDA, MPS or the CPU allocator)."""
    return isinstance(err, torch.OutOfMemoryError) or "out of memory" in str(err).lower()


@contextlib.contextmanager
def autocast(device: str, precision: str) -> Iterator[None]:
    """Autocast the networks in reduced precision on CUDA; a no-op for fp32 or other devices."""
    if precision == "fp32" or not device.startswith("cuda"):
        yield
        return
    with torch.autocast("cuda", dtype=PRECISIONS[precision]):
        yield


class OneDNNConv3d(nn.Conv3d):
    """A ``Conv3d`` that always runs oneDNN on the CPU when no gradient is needed.

    PyTorch sends 3D convolutions of one volume with 3×3×3 kernels and small N·C·D·H (every
    convolution on the demo model's latent grid) to its unblocked ``slow_conv3d`` kernel,
    4-10× slower there than oneDNN. Same weights, same state dict; with gradients enabled,
    off the CPU or under ``torch.compile`` (which picks its own kernels), it is an ordinary
    ``Conv3d``.
    """

    def _conv_forward(self, input, weight, bias):
        if (input.device.type == "cpu" and input.dtype == torch.float32
                and not torch.is_grad_enabled() and self.padding_mode == "zeros"
                and not isinstance(self.padding, str) and not torch.compiler.is_compiling()):
            return torch.mkldnn_convolution(input, weight, bias, self.padding, self.stride,
                                            self.dilation, self.groups)
        return super()._conv_forward(input, weight, bias)


def use_onednn_convolutions(module: nn.Module, enabled: bool = True) -> nn.Module:
    """Make every ``Conv3d`` of ``module`` a :class:`OneDNNConv3d` (``enabled=False``: back)."""
    if not (torch.backends.mkldnn.is_available() and hasattr(torch, "mkldnn_convolution")):
        return module
    old, new = (nn.Conv3d, OneDNNConv3d) if enabled else (OneDNNConv3d, nn.Conv3d)
    for sub in module.modules():
        if type(sub) is old:
            sub.__class__ = new
    return module
