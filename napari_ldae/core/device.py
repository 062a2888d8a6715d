"""Devices and precisions that really work on this machine."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

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


def default_device() -> str:
    return available_devices()[0]


def supported_precisions(device: str) -> list[str]:
    """Precisions worth offering on a device (reduced precision only where it is fast)."""
    if device.startswith("cuda"):
        index = torch.device(device).index or 0
        return ["bf16", "fp16", "fp32"] if torch.cuda.is_bf16_supported() and index >= 0 \
            else ["fp16", "fp32"]
    return ["fp32"]


@contextlib.contextmanager
def autocast(device: str, precision: str) -> Iterator[None]:
    """Autocast the networks in reduced precision on CUDA; a no-op for fp32 or other devices."""
    if precision == "fp32" or not device.startswith("cuda"):
        yield
        return
    with torch.autocast("cuda", dtype=PRECISIONS[precision]):
        yield
