"""Diffusion math of LDAE: the noise schedules (linear, cosine; ε- or v-prediction), the
training coefficients of the shifted objective, deterministic DDIM sampling and inversion
guided by the gradient estimator, and the interpolation of codes.

Notation follows ``docs/method.md``: ᾱ_t is ``alphas_cumprod[t]``, the network returns
``(eps, shift)`` and the guided noise of a DDIM step is ``eps - sqrt(1 - ᾱ_t) * shift``.
Coefficients are computed in float64 and used in float32, as the reference code does.

MONAI's ``DDIMScheduler.reversed_step`` is not used: its stride disagrees with its timestep
list, so inversion followed by sampling does not return to the start.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch

from napari_ldae.core.progress import Progress, ProgressGen, drain

#: ``net(x_t, t, y) -> (eps, shift)`` with ``t`` the original (training) timesteps, long (B,).
GuidedNet = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


SCHEDULE_TYPES = ("linear", "cosine")
PREDICTIONS = ("eps", "v")
SHIFTS = ("eps", "x0")


@dataclass(frozen=True)
class Schedule:
    """A DDPM noise schedule and what the UNet predicts.

    ``linear`` (the paper's): 1000 β from 1e-4 to 0.02. ``cosine``: improved DDPM's
    ᾱ_t = cos²(((t/T) + s)/(1 + s)·π/2) with s = 0.008 and β ≤ 0.999, as in the reference
    code's ``get_named_beta_schedule("cosine")``. ``prediction`` ``eps`` (the paper's) or
    ``v`` (v = √ᾱ ε − √(1−ᾱ) z₀); :meth:`to_eps` turns a v output into ε so that the shift
    formula and the samplers only ever see ε. ``shift`` ``eps`` (the paper's) adds the branch's
    G to the guided noise as it is; ``x0`` scales it by √ᾱ_t first, so that its x̂₀ change is
    (1 − ᾱ_t)·G, bounded at every t (:meth:`scale_shift`).
    """

    num_steps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02
    type: str = "linear"
    prediction: str = "eps"
    shift: str = "eps"

    @cached_property
    def betas(self) -> np.ndarray:
        if self.type == "cosine":
            s, n = 0.008, self.num_steps
            f = np.cos((np.arange(n + 1, dtype=np.float64) / n + s) / (1 + s) * np.pi / 2) ** 2
            return np.minimum(1.0 - f[1:] / f[:-1], 0.999)
        return np.linspace(self.beta_start, self.beta_end, self.num_steps, dtype=np.float64)

    @cached_property
    def alphas_cumprod(self) -> np.ndarray:
        return np.cumprod(1.0 - self.betas)

    @cached_property
    def shift_coef(self) -> np.ndarray:
        """k_t = −√α_t (1 − ᾱ_{t−1}) / √(1 − ᾱ_t): the gradient estimator's training weight."""
        prev = np.append(1.0, self.alphas_cumprod[:-1])
        return -np.sqrt(1.0 - self.betas) * (1.0 - prev) / np.sqrt(1.0 - self.alphas_cumprod)

    def snr_weight(self, gamma: float = 0.1) -> np.ndarray:
        """λ_t = SNR_t^γ / (1 + SNR_t), SNR_t = ᾱ_t / (1 − ᾱ_t)."""
        snr = self.alphas_cumprod / (1.0 - self.alphas_cumprod)
        return snr**gamma / (1.0 + snr)

    def target(self, z0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """What the UNet is trained to output: ε, or v = √ᾱ ε − √(1−ᾱ) z₀."""
        if self.prediction == "eps":
            return noise
        ac = self.alphas_cumprod
        return gather(np.sqrt(ac), t, z0) * noise - gather(np.sqrt(1.0 - ac), t, z0) * z0

    def to_eps(self, out: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """ε from the UNet's output at x_t (identity for ε-prediction; ε = √ᾱ v + √(1−ᾱ) x_t)."""
        if self.prediction == "eps":
            return out
        ac = self.alphas_cumprod
        return gather(np.sqrt(ac), t, out) * out + gather(np.sqrt(1.0 - ac), t, out) * x_t

    def scale_shift(self, shift: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The branch's output as the shift of the guided noise (× √ᾱ_t for ``shift: x0``)."""
        if self.shift == "eps":
            return shift
        return gather(np.sqrt(self.alphas_cumprod), t, shift) * shift

    def to_dict(self) -> dict:
        out = {"type": self.type, "num_steps": self.num_steps}
        if self.type == "linear":
            out |= {"beta_start": self.beta_start, "beta_end": self.beta_end}
        out |= {"prediction": self.prediction} if self.prediction != "eps" else {}
        return out | ({"shift": self.shift} if self.shift != "eps" else {})

    @classmethod
    def from_dict(cls, d: dict) -> Schedule:
        kind, prediction = d.get("type", "linear"), d.get("prediction", "eps")
        shift = d.get("shift", "eps")
        if shift not in SHIFTS:
            raise ValueError(f"unsupported shift {shift!r} (one of {SHIFTS})")
        if kind not in SCHEDULE_TYPES:
            raise ValueError(f"unsupported noise schedule {kind!r} (one of {SCHEDULE_TYPES})")
        if prediction not in PREDICTIONS:
            raise ValueError(f"unsupported prediction {prediction!r} (one of {PREDICTIONS})")
        return cls(int(d.get("num_steps", 1000)), float(d.get("beta_start", 1e-4)),
                   float(d.get("beta_end", 0.02)), kind, prediction, shift)


def eps_net(net: GuidedNet, schedule: Schedule) -> GuidedNet:
    """``net`` with its outputs turned into ε and the noise's shift by the schedule."""
    if schedule.prediction == "eps" and schedule.shift == "eps":
        return net

    def wrapped(x: torch.Tensor, t: torch.Tensor, y: torch.Tensor):
        out, shift = net(x, t, y)
        return schedule.to_eps(out.float(), x.float(), t), schedule.scale_shift(shift, t)

    return wrapped


DEFAULT_SCHEDULE = Schedule()


def gather(values: np.ndarray, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Per-sample coefficients ``values[t]`` shaped to broadcast against ``like``."""
    out = torch.as_tensor(values, dtype=torch.float32, device=t.device)[t]
    return out.reshape(-1, *([1] * (like.dim() - 1))).to(like.dtype)


def q_sample(z0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor,
             schedule: Schedule = DEFAULT_SCHEDULE) -> torch.Tensor:
    """z_t = √ᾱ_t z_0 + √(1−ᾱ_t) ε."""
    ac = schedule.alphas_cumprod
    return gather(np.sqrt(ac), t, z0) * z0 + gather(np.sqrt(1.0 - ac), t, z0) * noise


def ddim_grid(steps: int, num_train_steps: int = 1000) -> list[int]:
    """The respaced DDIM timesteps ``{int(v) for v in linspace(0, T−1, steps+1)}``, ascending.

    ``steps`` network calls walk between consecutive entries (``[0, 199, …, 999]`` for 5).
    """
    if not 1 <= steps < num_train_steps:
        raise ValueError(f"DDIM steps must be between 1 and {num_train_steps - 1}, got {steps}")
    return sorted({int(v) for v in np.linspace(0, num_train_steps - 1, steps + 1)})


def _ddim_move(net: GuidedNet, x: torch.Tensor, y: torch.Tensor, t: int, ac_t: float,
               ac_to: float, clamp: bool) -> torch.Tensor:
    """One deterministic DDIM move from ᾱ_t to ᾱ_to with the shift-guided noise."""
    tt = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)
    eps, shift = net(x, tt, y)
    eps = eps.to(x.dtype) - float(np.sqrt(1.0 - ac_t)) * shift.to(x.dtype)
    recip, recip_m1 = float(np.sqrt(1.0 / ac_t)), float(np.sqrt(1.0 / ac_t - 1.0))
    x0 = recip * x - recip_m1 * eps
    if clamp:
        x0 = x0.clamp(-1.0, 1.0)
        eps = (recip * x - x0) / recip_m1
    return x0 * float(np.sqrt(ac_to)) + float(np.sqrt(1.0 - ac_to)) * eps


def iter_ddim_sample(net: GuidedNet, x_T: torch.Tensor, y: torch.Tensor, steps: int,
                     schedule: Schedule = DEFAULT_SCHEDULE, clamp: bool = True,
                     ) -> ProgressGen[torch.Tensor]:
    """Deterministic shifted DDIM from x_T (grid index N) down to grid index 0 (t = 0)."""
    grid = ddim_grid(steps, schedule.num_steps)
    ac = schedule.alphas_cumprod[grid]
    net, x = eps_net(net, schedule), x_T
    n = len(grid) - 1
    for k, i in enumerate(range(n, 0, -1), start=1):
        x = _ddim_move(net, x, y, grid[i], ac[i], ac[i - 1], clamp)
        yield Progress(k, n, "decoding")
    return x


def iter_ddim_invert(net: GuidedNet, z0: torch.Tensor, y: torch.Tensor, steps: int,
                     schedule: Schedule = DEFAULT_SCHEDULE, clamp: bool = True,
                     ) -> ProgressGen[torch.Tensor]:
    """Deterministic shifted DDIM inversion of a clean latent z0 (grid index 0) up to x_T."""
    grid = ddim_grid(steps, schedule.num_steps)
    ac = schedule.alphas_cumprod[grid]
    net, x = eps_net(net, schedule), z0
    n = len(grid) - 1
    for i in range(n):
        x = _ddim_move(net, x, y, grid[i], ac[i], ac[i + 1], clamp)
        yield Progress(i + 1, n, "inverting")
    return x


def ddim_sample(net: GuidedNet, x_T: torch.Tensor, y: torch.Tensor, steps: int,
                schedule: Schedule = DEFAULT_SCHEDULE, clamp: bool = True) -> torch.Tensor:
    """Decode x_T conditioned on y with ``steps`` shifted DDIM steps (reference clamp on)."""
    return drain(iter_ddim_sample(net, x_T, y, steps, schedule, clamp))


def ddim_invert(net: GuidedNet, z0: torch.Tensor, y: torch.Tensor, steps: int,
                schedule: Schedule = DEFAULT_SCHEDULE, clamp: bool = True) -> torch.Tensor:
    """Invert the clean latent z0 to x_T conditioned on y (reference clamp on)."""
    return drain(iter_ddim_invert(net, z0, y, steps, schedule, clamp))


def lerp(a: torch.Tensor, b: torch.Tensor, alpha: torch.Tensor | float) -> torch.Tensor:
    """(1 − α) a + α b, with α a scalar or one value per sample."""
    alpha = _per_sample(alpha, a)
    return (1.0 - alpha) * a + alpha * b


def slerp(a: torch.Tensor, b: torch.Tensor, alpha: torch.Tensor | float) -> torch.Tensor:
    """Spherical interpolation with the angle computed per sample over the flattened tensor.

    Falls back to :func:`lerp` for (nearly) parallel inputs, where the angle is undefined.
    """
    alpha = _per_sample(alpha, a)
    fa, fb = a.flatten(1), b.flatten(1)
    cos = (fa * fb).sum(1) / (fa.norm(dim=1) * fb.norm(dim=1))
    theta = torch.acos(cos.clamp(-1.0, 1.0)).reshape(-1, *([1] * (a.dim() - 1)))
    sin = torch.sin(theta)
    parallel = sin.abs() < 1e-6
    safe = torch.where(parallel, torch.ones_like(sin), sin)
    out = torch.sin((1.0 - alpha) * theta) / safe * a + torch.sin(alpha * theta) / safe * b
    return torch.where(parallel, lerp(a, b, alpha), out)


def _per_sample(alpha: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor:
    alpha = torch.as_tensor(alpha, dtype=like.dtype, device=like.device)
    return alpha.reshape(-1, *([1] * (like.dim() - 1))) if alpha.dim() else alpha
