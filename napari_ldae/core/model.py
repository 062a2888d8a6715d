"""``LDAEModel``: what users do with a trained LDAE.

Volumes are model-space tensors ``(B, 1, X, Y, Z)`` in [0, 1] (see ``data.preprocess`` for
getting there from a scan). Every operation is a generator ``iter_*`` yielding
:class:`~napari_ldae.core.progress.Progress` per network call and returning its result, with a
plain method on top. Many strengths or interpolation weights run as one batch (chunked by
``max_batch``).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from napari_ldae.core import diffusion
from napari_ldae.core.autoencoder import NORM_KEYS, LatentAutoencoder, latent_shape
from napari_ldae.core.device import autocast, use_onednn_convolutions
from napari_ldae.core.progress import Progress, ProgressGen, drain
from napari_ldae.errors import BundleError, LDAEError


class UnknownDirectionError(LDAEError, KeyError):
    """A direction name the model does not have."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


@dataclass
class Codes:
    """LDAE codes of B volumes: semantic ``y`` (B, d) and stochastic ``x_T`` (B, C, x, y, z)."""

    y: torch.Tensor
    x_T: torch.Tensor
    steps: int = 0  # DDIM steps of the inversion that produced x_T (0: sampled)

    def __len__(self) -> int:
        return self.y.shape[0]

    def __getitem__(self, index: int | slice) -> Codes:
        index = slice(index, index + 1) if isinstance(index, int) else index
        return Codes(self.y[index], self.x_T[index], self.steps)

    def to(self, device: str | torch.device) -> Codes:
        return Codes(self.y.to(device), self.x_T.to(device), self.steps)

    def cpu(self) -> Codes:
        return self.to("cpu")

    @staticmethod
    def cat(codes: Sequence[Codes]) -> Codes:
        return Codes(torch.cat([c.y for c in codes]), torch.cat([c.x_T for c in codes]),
                     codes[0].steps)


@dataclass(frozen=True)
class Direction:
    """A named direction in standardised semantic space, with a human-readable meaning."""

    name: str
    vector: torch.Tensor  # (d,), any norm: it is normalised when applied
    meaning: str  # e.g. "toward AD"
    source: str = ""  # e.g. "linear probe AD vs CN (ROC-AUC 0.91)"
    metrics: dict = field(default_factory=dict)
    calibration: dict = field(default_factory=dict)  # strength in years (train/calibration.py)


class LDAEModel:
    """A trained LDAE: autoencoder, frozen latent UNet with gradient estimator, semantic encoder.

    ``semantic_mean``/``semantic_std`` standardise ``y`` for manipulation; ``directions`` are
    named directions in that standardised space; ``input_shape`` is the (X, Y, Z) of the
    preprocessing contract.
    """

    def __init__(self, autoencoder: LatentAutoencoder, unet: torch.nn.Module,
                 encoder: torch.nn.Module, *, semantic_mean: torch.Tensor,
                 semantic_std: torch.Tensor, input_shape: Sequence[int] = (128, 160, 128),
                 directions: dict[str, Direction] | None = None,
                 schedule: diffusion.Schedule = diffusion.DEFAULT_SCHEDULE, clamp: bool = True,
                 device: str = "cpu", precision: str = "fp32", max_batch: int = 8) -> None:
        self.autoencoder = use_onednn_convolutions(autoencoder.eval())
        self.unet = use_onednn_convolutions(unet.eval())
        self.encoder = use_onednn_convolutions(encoder.eval())
        self.semantic_mean = semantic_mean.float()
        self.semantic_std = semantic_std.float()
        self.input_shape = tuple(int(n) for n in input_shape)
        self.directions = dict(directions or {})
        self.schedule = schedule
        self.clamp = clamp
        self.max_batch = max_batch
        self.device = "cpu"
        self.precision = precision
        self.to(device, precision)

    @classmethod
    def from_parts(cls, config: Mapping[str, Any], networks: Mapping[str, torch.nn.Module],
                   semantic: Mapping[str, torch.Tensor], **kwargs: Any) -> LDAEModel:
        """The model of a bundle config from its networks (:func:`build_networks`) and its
        semantic tensors (``mean``, ``std``, ``direction.<name>``); ``kwargs``: device,
        precision, max_batch."""
        return cls(networks["autoencoder"], networks["unet"], networks["encoder"],
                   semantic_mean=semantic["mean"], semantic_std=semantic["std"],
                   input_shape=config["preprocessing"]["shape"],
                   directions=_directions(config, semantic),
                   schedule=diffusion.Schedule.from_dict(config["schedule"]),
                   clamp=bool(config.get("clamp_x0", True)), **kwargs)

    # ----------------------------------------------------------------------------- set-up
    def to(self, device: str, precision: str | None = None) -> LDAEModel:
        """Move to a device (``cpu``, ``cuda:0``, ``mps``); reduced precision only on CUDA."""
        for module in (self.autoencoder, self.unet, self.encoder):
            module.to(device)
        self.semantic_mean = self.semantic_mean.to(device)
        self.semantic_std = self.semantic_std.to(device)
        self.device = str(device)
        if precision is not None:
            self.precision = precision
        return self

    @property
    def semantic_dim(self) -> int:
        return int(self.semantic_mean.numel())

    def _net(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor):
        with autocast(self.device, self.precision):
            eps, shift = self.unet(x, t, y)
        return eps.float(), shift.float()

    def _embed(self, volume: torch.Tensor, latent: torch.Tensor | None = None) -> torch.Tensor:
        if latent is None and self.encoder.needs_latent:
            latent = self._to_latent(volume)
        with autocast(self.device, self.precision):
            return self.encoder.code(volume, latent).float()

    def _to_latent(self, volume: torch.Tensor) -> torch.Tensor:
        with autocast(self.device, self.precision):
            return self.autoencoder.encode(volume).float()

    def _to_volume(self, z: torch.Tensor) -> torch.Tensor:
        with autocast(self.device, self.precision):
            return self.autoencoder.decode(z).float().clamp_(0.0, 1.0)

    def _batches(self, n: int) -> list[slice]:
        return [slice(i, min(i + self.max_batch, n)) for i in range(0, n, self.max_batch)]

    # ----------------------------------------------------------------------- generators
    @torch.inference_mode()
    def iter_encode(self, volume: torch.Tensor, steps: int) -> ProgressGen[Codes]:
        """Codes of volumes ``(B, 1, X, Y, Z)``: y = Enc(x), x_T = DDIM inversion of s·μ(x)."""
        volume = self._check_volume(volume)
        ys, xs = [], []
        batches = self._batches(volume.shape[0])
        total = len(batches) * steps
        for b, sl in enumerate(batches):
            z0 = self._to_latent(volume[sl])
            y = self._embed(volume[sl], z0)
            gen = diffusion.iter_ddim_invert(self._net, z0, y, steps, self.schedule, self.clamp)
            x_T = yield from _rebase(gen, b * steps, total, "encoding")
            ys.append(y)
            xs.append(x_T)
        return Codes(torch.cat(ys), torch.cat(xs), steps)

    @torch.inference_mode()
    def iter_decode(self, codes: Codes, steps: int) -> ProgressGen[torch.Tensor]:
        """Volumes ``(B, 1, X, Y, Z)`` decoded from codes with ``steps`` DDIM steps."""
        codes = codes.to(self.device)
        out = []
        batches = self._batches(len(codes))
        total = len(batches) * steps
        for b, sl in enumerate(batches):
            gen = diffusion.iter_ddim_sample(self._net, codes.x_T[sl], codes.y[sl], steps,
                                             self.schedule, self.clamp)
            z0 = yield from _rebase(gen, b * steps, total, "decoding")
            out.append(self._to_volume(z0))
        return torch.cat(out)

    def iter_reconstruct(self, volume: torch.Tensor, steps: int,
                         decode_steps: int | None = None) -> ProgressGen[torch.Tensor]:
        codes = yield from self.iter_encode(volume, steps)
        return (yield from self.iter_decode(codes, decode_steps or steps))

    def iter_manipulate(self, codes: Codes, direction: str | Direction | torch.Tensor,
                        strengths: Sequence[float], steps: int) -> ProgressGen[torch.Tensor]:
        """Decode each code moved along a direction by each strength: (B·S, 1, X, Y, Z),
        ordered code-major (all strengths of code 0 first)."""
        edited = self.edit_codes(codes, direction, strengths)
        return (yield from self.iter_decode(edited, steps))

    def iter_interpolate(self, codes_a: Codes, codes_b: Codes, alphas: Sequence[float],
                         steps: int) -> ProgressGen[torch.Tensor]:
        """Decode lerp(y) / slerp(x_T) between two single codes at each α: (A, 1, X, Y, Z)."""
        return (yield from self.iter_decode(self.interpolate_codes(codes_a, codes_b, alphas),
                                            steps))

    def iter_sample(self, y: torch.Tensor, steps: int, seed: int = 0,
                    n: int = 1) -> ProgressGen[torch.Tensor]:
        """Semantic-only decoding / stochastic variations: fixed y, x_T ~ N(0, I) (seeded)."""
        y = y.reshape(-1, self.semantic_dim).to(self.device).repeat_interleave(n, dim=0)
        gen = torch.Generator().manual_seed(seed)
        x_T = torch.randn((y.shape[0], *self.latent_shape), generator=gen).to(self.device)
        return (yield from self.iter_decode(Codes(y, x_T), steps))

    # ----------------------------------------------------------------------- code algebra
    def edit_codes(self, codes: Codes, direction: str | Direction | torch.Tensor,
                   strengths: Sequence[float]) -> Codes:
        """Move y along a direction in standardised space by strength·√d·w/‖w‖; keep x_T."""
        w = self._direction_vector(direction)
        s = torch.as_tensor(list(strengths), dtype=torch.float32, device=self.device)
        codes = codes.to(self.device)
        # destandardise(standardise(y) + s·√d·w/‖w‖) = y + s·√d·(w/‖w‖)·std: exact at s = 0
        step = math.sqrt(self.semantic_dim) * w / w.norm() * self.semantic_std
        y = (codes.y[:, None, :] + s[None, :, None] * step).reshape(-1, self.semantic_dim)
        x_T = codes.x_T.repeat_interleave(len(s), dim=0)
        return Codes(y, x_T, codes.steps)

    def interpolate_codes(self, codes_a: Codes, codes_b: Codes,
                          alphas: Sequence[float]) -> Codes:
        if len(codes_a) != 1 or len(codes_b) != 1:
            raise ValueError("interpolation takes one code at each end")
        a, b = codes_a.to(self.device), codes_b.to(self.device)
        al = torch.as_tensor(list(alphas), dtype=torch.float32, device=self.device)
        n = al.numel()
        y = diffusion.lerp(a.y.expand(n, -1), b.y.expand(n, -1), al)
        x_T = diffusion.slerp(a.x_T.expand(n, *a.x_T.shape[1:]),
                              b.x_T.expand(n, *b.x_T.shape[1:]), al)
        return Codes(y, x_T, a.steps)

    def _direction_vector(self, direction: str | Direction | torch.Tensor) -> torch.Tensor:
        if isinstance(direction, str):
            if direction not in self.directions:
                known = ", ".join(f"{k} ({d.meaning})" for k, d in self.directions.items())
                raise UnknownDirectionError(
                    f"unknown direction {direction!r}; this model has: {known or 'none'}")
            direction = self.directions[direction]
        vector = direction.vector if isinstance(direction, Direction) else direction
        vector = vector.reshape(-1).float().to(self.device)
        if vector.numel() != self.semantic_dim or not torch.isfinite(vector).all() \
                or vector.norm() == 0:
            raise ValueError(f"a direction must be a finite, non-zero {self.semantic_dim}-vector")
        return vector

    # ------------------------------------------------------------------------- shapes
    @property
    def latent_shape(self) -> tuple[int, ...]:
        """Shape of one x_T, (C, x, y, z), for the model's input shape."""
        return latent_shape(self.autoencoder.config, self.input_shape)

    def _check_volume(self, volume: torch.Tensor) -> torch.Tensor:
        if volume.dim() == 3:
            volume = volume[None, None]
        elif volume.dim() == 4:
            volume = volume[:, None]
        if volume.dim() != 5 or volume.shape[1] != 1:
            raise ValueError(f"expected volumes (B, 1, X, Y, Z), got {tuple(volume.shape)}")
        if tuple(volume.shape[2:]) != self.input_shape:
            raise ValueError(f"this model takes {self.input_shape} volumes (its preprocessing "
                             f"contract), got {tuple(volume.shape[2:])}")
        return volume.to(self.device, torch.float32)

    # ------------------------------------------------------------------- plain methods
    @torch.inference_mode()
    def embed(self, volume: torch.Tensor) -> torch.Tensor:
        """Semantic codes y ``(B, semantic_dim)`` of volumes, without the DDIM inversion."""
        volume = self._check_volume(volume)
        return torch.cat([self._embed(volume[sl]) for sl in self._batches(volume.shape[0])])

    @torch.inference_mode()
    def embed_with_latent(self, volume: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Codes y and the normalised latents ``(B, C, ...)`` they come from (one encoder pass)."""
        volume = self._check_volume(volume)
        ys, latents = [], []
        for sl in self._batches(volume.shape[0]):
            latents.append(self._to_latent(volume[sl]))
            ys.append(self._embed(volume[sl], latents[-1]))
        return torch.cat(ys), torch.cat(latents)

    @torch.inference_mode()
    def decode_latent(self, latent: torch.Tensor) -> torch.Tensor:
        """Volumes in [0, 1] of normalised latents (what :meth:`embed_with_latent` returns)."""
        return torch.cat([self._to_volume(latent[sl].to(self.device))
                          for sl in self._batches(latent.shape[0])])

    @torch.inference_mode()
    def autoencode(self, volume: torch.Tensor) -> torch.Tensor:
        """The autoencoder's own reconstruction (mean → decode) of volumes ``(B, 1, X, Y, Z)``,
        in [0, 1] on the CPU: the ceiling of every LDAE reconstruction."""
        return torch.cat([self._to_volume(self._to_latent(self._check_volume(volume[sl]))).cpu()
                          for sl in self._batches(volume.shape[0])])

    def encode(self, volume: torch.Tensor, steps: int = 50) -> Codes:
        return drain(self.iter_encode(volume, steps))

    def decode(self, codes: Codes, steps: int = 50) -> torch.Tensor:
        return drain(self.iter_decode(codes, steps))

    def reconstruct(self, volume: torch.Tensor, steps: int = 50,
                    decode_steps: int | None = None) -> torch.Tensor:
        return drain(self.iter_reconstruct(volume, steps, decode_steps))

    def manipulate(self, codes: Codes, direction: str | Direction | torch.Tensor,
                   strength: float | Sequence[float], steps: int = 50) -> torch.Tensor:
        strengths = [strength] if isinstance(strength, (int, float)) else list(strength)
        return drain(self.iter_manipulate(codes, direction, strengths, steps))

    def interpolate(self, codes_a: Codes, codes_b: Codes, alpha: float | Sequence[float],
                    steps: int = 50) -> torch.Tensor:
        alphas = [alpha] if isinstance(alpha, (int, float)) else list(alpha)
        return drain(self.iter_interpolate(codes_a, codes_b, alphas, steps))

    def sample(self, y: torch.Tensor, seed: int = 0, n: int = 1, steps: int = 50) -> torch.Tensor:
        return drain(self.iter_sample(y, steps, seed, n))


# ----------------------------------------------------------------------------- networks
def build_networks(config: Mapping[str, Any], empty: bool = False,
                   latent_stats: Mapping[str, torch.Tensor] | None = None,
                   ) -> dict[str, torch.nn.Module]:
    """Untrained networks of a bundle config.

    ``empty=True`` builds them on the meta device (no memory, no random initialisation) for
    weights to be loaded with ``assign``: loading a paper-size bundle then skips ~10 s of init.
    ``latent_stats``: the template-residual statistics (:data:`NORM_KEYS`), required exactly
    when ``config["latent_norm"]`` is ``template_residual``.
    """
    from napari_ldae.core.encoder import build_encoder
    from napari_ldae.core.unet import ShiftUNet, UNetConfig

    unet_config = UNetConfig.from_dict(config["unet"])
    stats = _latent_stats(config, latent_stats or {})
    with torch.device("meta") if empty else contextlib.nullcontext():
        return {
            "autoencoder": LatentAutoencoder(config["autoencoder"], config["scale_factor"],
                                             *stats),
            "unet": ShiftUNet(unet_config),
            "encoder": build_encoder(config),
        }


def _latent_stats(config: Mapping[str, Any], stats: Mapping[str, torch.Tensor]) -> tuple:
    norm = config.get("latent_norm", "scale")
    if norm == "scale":
        if stats:
            raise BundleError("autoencoder.safetensors holds template-residual statistics but "
                              "config.json's latent_norm is 'scale'")
        return (None, None)
    if any(k not in stats for k in NORM_KEYS):
        raise BundleError(f"latent_norm is {norm!r} but autoencoder.safetensors lacks "
                          f"{[k for k in NORM_KEYS if k not in stats]}")
    return stats[NORM_KEYS[0]], stats[NORM_KEYS[1]]


def _directions(config: Mapping[str, Any],
                semantic: Mapping[str, torch.Tensor]) -> dict[str, Direction]:
    out = {}
    for name, info in config.get("directions", {}).items():
        key = f"direction.{name}"
        if key not in semantic:
            raise BundleError(f"direction {name!r} is declared in config.json but "
                              f"semantic.safetensors has no {key!r}")
        out[name] = Direction(name, semantic[key], info.get("meaning", name),
                              info.get("source", ""), info.get("metrics", {}),
                              info.get("calibration", {}))
    return out


def _rebase(gen: ProgressGen, offset: int, total: int, message: str) -> ProgressGen:
    """Re-yield a sub-generator's progress as part of a larger count; return its result."""
    while True:
        try:
            p = next(gen)
        except StopIteration as stop:
            return stop.value
        yield Progress(offset + p.step, total, message)
