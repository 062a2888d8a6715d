"""LDAE against a voxel-space DAE at the same image resolution and DDIM steps (decode only).

The DAE is our own ``ShiftUNet`` run on the image (1 channel) instead of the latent: the
latent UNet's settings, with one more down-sampling level (same width) per factor 2 of the
autoencoder's down-sampling, so that its bottom (where the middle block's attention runs) has
the latent UNet's in-plane size, and attention only where the latent UNet's attention is,
scaled by that factor. A DAE decode is T identical network calls and no autoencoder, so its
time at T steps is T × the time of one step (measured as a ``dae_steps``-step decode).
"""

from __future__ import annotations

import dataclasses
import math

import torch

from benchmarks._common import (
    Mode,
    Section,
    count_flops,
    interleaved,
    median,
    random_codes,
    random_model,
    ratio,
)
from napari_ldae.core import diffusion
from napari_ldae.core.device import use_onednn_convolutions
from napari_ldae.core.unet import ShiftUNet, UNetConfig

TARGET = 20.0


def dae_config(latent: UNetConfig, factor: int) -> UNetConfig:
    """The voxel-space DAE's UNet for an autoencoder that down-samples by ``factor``."""
    extra = int(math.log2(factor))
    return dataclasses.replace(
        latent, in_channels=1,
        channel_mult=(*latent.channel_mult, *(latent.channel_mult[-1],) * extra),
        attention_resolutions=tuple(r * factor for r in latent.attention_resolutions))


def step_flops(config: UNetConfig, shape: tuple[int, ...]) -> int:
    """FLOPs of one network call at batch 1 (counted on the meta device: no memory, no time)."""
    with torch.device("meta"):
        net = ShiftUNet(config)
        x, y = torch.empty(1, *shape), torch.empty(1, config.latent_dim)
        t = torch.zeros(1, dtype=torch.long)
        return count_flops(lambda: net(x, t, y))


def run(mode: Mode) -> Section:
    model = random_model(mode)
    factor = 2 ** (len(model.autoencoder.config["channels"]) - 1)
    config = dae_config(model.unet.config, factor)
    dae = use_onednn_convolutions(ShiftUNet(config).eval())
    codes = random_codes(model)
    x_T = torch.randn(1, 1, *model.input_shape)

    @torch.inference_mode()
    def dae_decode() -> None:
        diffusion.ddim_sample(dae, x_T, codes.y, mode.dae_steps, model.schedule, model.clamp)

    cases = {f"ldae T={t}": (lambda t=t: model.decode(codes, t)) for t in mode.steps}
    model.decode(codes, 1)  # warm-up (oneDNN primitives, allocator)
    times = interleaved({**cases, "dae": dae_decode}, mode.reps)
    dae_step = [s / mode.dae_steps for s in times["dae"]]

    section = Section(
        "LDAE vs voxel-space DAE",
        f"One decode of one volume ({'×'.join(map(str, model.input_shape))}) at T DDIM steps, "
        "batch 1, random weights, inference mode: LDAE = latent DDIM + autoencoder decode; "
        "DAE = image-space DDIM with the UNet described below.")
    ratios = []
    for t in mode.steps:
        r = ratio([s * t for s in dae_step], times[f"ldae T={t}"])
        ratios.append(r["median"])
        section.rows.append({"steps": t, "LDAE decode (s)": median(times[f"ldae T={t}"]),
                             "DAE decode (s)": t * median(dae_step),
                             "DAE / LDAE": r["median"],
                             "range over rounds": f"{r['min']:.1f}–{r['max']:.1f}"})
    section.target(f"LDAE/DAE speed-up at T = {', '.join(map(str, mode.steps))} (lowest)",
                   min(ratios), TARGET, unit="×")
    section.notes += _describe(model, config, dae, mode)
    return section


def _describe(model, config: UNetConfig, dae: ShiftUNet, mode: Mode) -> list[str]:
    def millions(net: torch.nn.Module) -> float:
        return sum(p.numel() for p in net.parameters()) / 1e6

    latent_gf = step_flops(model.unet.config, model.latent_shape) / 1e9
    dae_gf = step_flops(config, (1, *model.input_shape)) / 1e9
    return [
        f"DAE UNet: ShiftUNet with in_channels 1, base_channels {config.base_channels}, "
        f"channel_mult {list(config.channel_mult)}, num_res_blocks {config.num_res_blocks}, "
        f"attention_resolutions {list(config.attention_resolutions)} (and the middle block), "
        f"num_heads {config.num_heads}: {millions(dae):.1f} M parameters, {dae_gf:.0f} GFLOP "
        "per step on the image.",
        f"LDAE latent UNet ({mode.preset} preset): {millions(model.unet):.1f} M parameters, "
        f"{latent_gf:.1f} GFLOP per step on the {'×'.join(map(str, model.latent_shape))} "
        "latent, plus one autoencoder decode.",
        f"DAE decode time = T × one step, timed as a {mode.dae_steps}-step decode per round "
        f"({mode.reps} rounds interleaved with the LDAE decodes).",
    ]
