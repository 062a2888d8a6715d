"""Our sampler against a plain one: one code decoded at several strengths of a direction.

Plain: one strength at a time, autograd on (no ``inference_mode``/``no_grad``), and the frozen
UNet and the shift branch called separately, so the frozen encoder half runs twice per step.
Ours: ``LDAEModel.manipulate`` (all strengths in one batch, encoder half once, inference mode,
oneDNN 3D convolutions). "Ours, stock conv3d" is ours with PyTorch's own convolution dispatch
(what ``LDAEModel`` did before ``OneDNNConv3d``), to show each change's share.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from benchmarks._common import Mode, Section, interleaved, median, random_codes, random_model, ratio
from napari_ldae.core import diffusion
from napari_ldae.core.device import use_onednn_convolutions
from napari_ldae.core.unet import LatentUNet

TARGET = 1.5
DIRECTION = "AD"


def plain_manipulate(model, codes, direction: str, strengths: list[float],
                     steps: int) -> torch.Tensor:
    """What a straightforward implementation does (see the module docstring)."""
    unet = model.unet

    def net(x: torch.Tensor, t: torch.Tensor, y: torch.Tensor):
        eps = LatentUNet.forward(unet, x, t)
        return eps, unet.shift(*unet.encode(x, t), y)

    out = []
    with torch.enable_grad():
        for s in strengths:
            edited = model.edit_codes(codes, direction, [s])
            z0 = diffusion.ddim_sample(net, edited.x_T, edited.y, steps, model.schedule,
                                       model.clamp)
            out.append(model.autoencoder.decode(z0).clamp(0.0, 1.0))
    return torch.cat(out)


@contextlib.contextmanager
def stock_convolutions(model) -> Iterator[None]:
    """PyTorch's own conv3d dispatch inside the block (the state before ``OneDNNConv3d``)."""
    nets = (model.autoencoder, model.unet)
    for net in nets:
        use_onednn_convolutions(net, False)
    try:
        yield
    finally:
        for net in nets:
            use_onednn_convolutions(net, True)


def strengths_of(n: int) -> list[float]:
    return torch.linspace(-2.0, 2.0, n).tolist() if n > 1 else [1.0]


def run(mode: Mode) -> Section:
    model = random_model(mode)
    codes = random_codes(model)
    steps = mode.sampler_steps
    section = Section(
        "Our sampler vs a plain one",
        f"Decode one code at n strengths of a direction, {steps} DDIM steps, "
        f"{mode.preset} preset, CPU. Plain and ours as described below.")
    model.manipulate(codes, DIRECTION, [0.0], 1)  # warm-up
    speedups = {}
    for n in mode.strengths:
        s = strengths_of(n)

        def stock(s=s) -> None:
            with stock_convolutions(model):
                model.manipulate(codes, DIRECTION, s, steps)

        times = interleaved({
            "plain": lambda s=s: plain_manipulate(model, codes, DIRECTION, s, steps),
            "stock": stock,
            "ours": lambda s=s: model.manipulate(codes, DIRECTION, s, steps),
        }, mode.reps)
        r = ratio(times["plain"], times["ours"])
        speedups[n] = r["median"]
        section.rows.append({
            "strengths": n, "plain (s)": median(times["plain"]),
            "ours, stock conv3d (s)": median(times["stock"]), "ours (s)": median(times["ours"]),
            "ours / plain": r["median"], "range over rounds": f"{r['min']:.2f}–{r['max']:.2f}",
            "batching + inference": ratio(times["plain"], times["stock"])["median"],
            "oneDNN conv3d": ratio(times["stock"], times["ours"])["median"]})
    n = max(mode.strengths)
    section.target(f"ours/plain speed-up at {n} strengths", speedups[n], TARGET, unit="×")
    section.notes += [
        "Plain: one strength at a time, autograd on, frozen UNet and shift branch called "
        "separately (encoder half twice per step). Ours: `LDAEModel.manipulate`, all strengths "
        "in one batch (max_batch 8), encoder half once, inference mode, `OneDNNConv3d`.",
        "Columns 'batching + inference' = plain / ours-stock and 'oneDNN conv3d' = "
        "ours-stock / ours: their product is about the total speed-up.",
        "torch.compile: not used (see docs/benchmarks.md, Open problems).",
    ]
    return section
