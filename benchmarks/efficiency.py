"""How much of the machine a decode uses: its FLOP/s against a dense fp32 matmul's.

FLOPs are those of the matrix products and convolutions (``FlopCounterMode``); elementwise
work (normalisations, activations, the DDIM update) is not counted, so the fractions are a
slight underestimate of the arithmetic done.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from benchmarks._common import (
    Mode,
    Section,
    count_flops,
    interleaved,
    median,
    random_codes,
    random_model,
)


def _cases(model, mode: Mode) -> dict[str, Callable[[], object]]:
    steps = mode.steps[len(mode.steps) // 2]
    codes, batch = random_codes(model), max(mode.strengths)
    t = torch.full((batch,), 500, dtype=torch.long)
    x, y = torch.randn(batch, *model.latent_shape), torch.randn(batch, model.semantic_dim)
    z = torch.randn(1, *model.latent_shape)

    @torch.inference_mode()
    def unet(b: int) -> None:
        model.unet(x[:b], t[:b], y[:b])

    @torch.inference_mode()
    def autoencoder() -> None:
        model.autoencoder.decode(z)

    return {f"LDAE decode, T = {steps}, batch 1": lambda: model.decode(codes, steps),
            "one DDIM step (UNet + shift branch), batch 1": lambda: unet(1),
            f"one DDIM step (UNet + shift branch), batch {batch}": lambda: unet(batch),
            "autoencoder decode, batch 1": autoencoder}


def _matmuls(n: int) -> dict[str, Callable[[], object]]:
    """Two dense fp32 n×n products: torch's ``@`` (MKL) and oneDNN (a 1×1 convolution)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    x, w = a[None, :, :, None], b[:, :, None, None]
    return {f"fp32 matmul {n}×{n} (torch @, MKL)": lambda: a @ b,
            f"fp32 matmul {n}×{n} (oneDNN)":
                lambda: torch.mkldnn_convolution(x, w, None, (0, 0), (1, 1), (1, 1), 1)}


def run(mode: Mode) -> Section:
    model = random_model(mode)
    cases = _cases(model, mode)
    flops = {name: count_flops(fn) for name, fn in cases.items()}  # also a warm-up
    matmuls = _matmuls(mode.matmul_n)
    flops.update(dict.fromkeys(matmuls, 2 * mode.matmul_n**3))
    times = {k: median(v) for k, v in interleaved({**cases, **matmuls}, mode.reps).items()}
    peak = max(flops[k] / times[k] for k in matmuls)
    section = Section(
        "Efficiency against the machine",
        f"FLOPs of each operation divided by its time ({mode.preset} preset, CPU, "
        f"{torch.get_num_threads()} thread(s)), as a fraction of the faster dense fp32 matmul "
        "measured in the same rounds.")
    for name, fl in flops.items():
        rate = fl / times[name]
        section.rows.append({"operation": name, "GFLOP": fl / 1e9, "time (s)": times[name],
                             "GFLOP/s": rate / 1e9, "of matmul": rate / peak})
    section.notes += [
        "FLOPs count matrix products and convolutions only (FlopCounterMode).",
        "Two matmuls because MKL (torch's `@`) may not use AVX-512 on AMD CPUs while oneDNN "
        "(our convolutions) does: the faster one is the reference.",
    ]
    return section
