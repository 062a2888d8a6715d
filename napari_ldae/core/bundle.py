"""Model bundles: one directory (or the same files zipped into one ``.ldae`` file) holding
``config.json`` and safetensors weights. Loading never unpickles anything.

``config.json``::

    format: "napari-ldae-bundle", format_version: 1, name, description,
    autoencoder: MONAI AutoencoderKL arguments, scale_factor: s,
    latent_norm: "scale" (default) or "template_residual",
    unet: UNetConfig, encoder: EncoderConfig, schedule: Schedule, clamp_x0: bool,
    preprocessing: PreprocessContract, steps: {encode, decode, preview[, carry]},
    directions: {name: {meaning, source, metrics}}, metrics: {...}, provenance: {...}

Weights: ``autoencoder`` (with ``latent_norm.mean``/``latent_norm.std`` for a
template-residual latent), ``unet`` (ShiftUNet), ``encoder`` (SemanticEncoder without the
reference's duplicated backbone keys) and ``semantic`` (``mean``, ``std``,
``direction.<name>``) ``.safetensors``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import torch

from napari_ldae import BUNDLE_FORMAT_VERSION, __version__
from napari_ldae._files import atomic_write
from napari_ldae.core.autoencoder import LATENT_NORMS, NORM_KEYS, split_norm_state
from napari_ldae.core.diffusion import Schedule
from napari_ldae.core.model import LDAEModel, build_networks
from napari_ldae.errors import BundleError

FORMAT = "napari-ldae-bundle"
PARTS = ("autoencoder", "unet", "encoder", "semantic")
REQUIRED_KEYS = ("format", "format_version", "autoencoder", "scale_factor", "unet", "encoder",
                 "schedule", "preprocessing", "steps", "directions")
DEFAULT_STEPS = {"encode": 50, "decode": 50, "preview": 10}
#: The kinds of DDIM step counts a bundle sets: inversion, full-quality decoding, the slider's
#: live preview, and full quality carried onto the user's scan (``carry``, the decode's when
#: absent: docs/method.md, "How many steps a carried result needs").
STEP_KINDS = ("encode", "decode", "preview", "carry")
_PICKLE_HINT = ("it looks like a pickled PyTorch file (.pt/.pth/.ckpt); napari-ldae never "
                "unpickles files it is given to load. Convert official release files once with "
                "`napari-ldae import-official`")


@dataclass
class Bundle:
    """A validated bundle on disk: its config and a reader for its weights."""

    path: Path
    config: dict[str, Any]

    @property
    def name(self) -> str:
        return self.config.get("name", self.path.stem)

    def read(self, part: str) -> dict[str, torch.Tensor]:
        """The tensors of one part (``autoencoder``, ``unet``, ``encoder``, ``semantic``)."""
        from safetensors.torch import load

        try:
            tensors = load(self._bytes(f"{part}.safetensors"))
            return {k: v.float() if v.is_floating_point() else v for k, v in tensors.items()}
        except BundleError:
            raise
        except Exception as err:  # safetensors raises several types on corrupt data
            raise BundleError(f"{self.path}: {part}.safetensors is corrupt ({err})") from err

    def _bytes(self, member: str) -> bytes:
        if self.path.is_dir():
            return (self.path / member).read_bytes()
        with zipfile.ZipFile(self.path) as zf:
            return zf.read(member)

    @cached_property
    def sha256(self) -> str:
        """Content hash of config and weights (the key of cached codes)."""
        h = hashlib.sha256()
        for member in ["config.json", *(f"{p}.safetensors" for p in PARTS)]:
            h.update(member.encode())
            h.update(hashlib.sha256(self._bytes(member)).digest())
        return h.hexdigest()

    def load_model(self, device: str = "cpu", precision: str = "fp32",
                   max_batch: int = 8) -> LDAEModel:
        """Build the :class:`~napari_ldae.core.model.LDAEModel` of this bundle."""
        ae_state, norm = split_norm_state(self.read("autoencoder"))
        parts = build_networks(self.config, empty=True, latent_stats=norm)
        for part in ("unet", "encoder"):
            load_strict(parts[part], self.read(part), part)
        load_strict(parts["autoencoder"].net, ae_state, "autoencoder")
        _check_materialised(parts)
        semantic = self.read("semantic")
        _require(semantic, ("mean", "std"), "semantic")
        return LDAEModel.from_parts(self.config, parts, semantic, device=device,
                                    precision=precision, max_batch=max_batch)


def _check_materialised(parts: Mapping[str, torch.nn.Module]) -> None:
    for name, module in parts.items():
        for key, tensor in [*module.named_parameters(), *module.named_buffers()]:
            if tensor.is_meta:
                raise BundleError(f"{name}: {key} was not loaded from the bundle")


def load_strict(module: torch.nn.Module, state: Mapping[str, torch.Tensor], part: str) -> None:
    """Load one part's weights into its network: every key and shape must match."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if part == "encoder":  # our encoders accept state dicts without the duplicated backbone
        missing = [k for k in missing if not k.startswith("slice_distributed.module.")]
    if missing or unexpected:
        raise BundleError(f"{part}.safetensors does not match config.json: "
                          f"{len(missing)} missing keys {missing[:3]}, "
                          f"{len(unexpected)} unexpected keys {unexpected[:3]}")
    for key, tensor in state.items():
        if tuple(tensor.shape) != tuple(expected[key].shape):
            raise BundleError(f"{part}.safetensors: {key} has shape {tuple(tensor.shape)}, "
                              f"config.json implies {tuple(expected[key].shape)}")
    module.load_state_dict(dict(state), strict=part != "encoder", assign=True)


def _require(state: Mapping[str, torch.Tensor], keys: tuple[str, ...], part: str) -> None:
    missing = [k for k in keys if k not in state]
    if missing:
        raise BundleError(f"{part}.safetensors lacks {missing}")


# --------------------------------------------------------------------------------- loading
def load_bundle(path: str | os.PathLike) -> Bundle:
    """Open and validate a bundle directory or ``.ldae`` file (weights are read lazily)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise BundleError(f"no model bundle at {path}")
    if path.is_file() and not zipfile.is_zipfile(path):
        raise BundleError(f"{path} is not a model bundle: " + _describe_file(path))
    if path.is_file() and _is_torch_zip(path):
        raise BundleError(f"{path}: " + _PICKLE_HINT)
    bundle = Bundle(path, {})
    try:
        bundle.config = json.loads(bundle._bytes("config.json"))
    except (FileNotFoundError, KeyError) as err:
        raise BundleError(f"{path} is not a model bundle: it has no config.json") from err
    except json.JSONDecodeError as err:
        raise BundleError(f"{path}/config.json is not valid JSON ({err})") from err
    validate_config(bundle.config, path)
    for part in PARTS:
        _check_member(bundle, part)
    return bundle


def bundle_steps(config: Mapping[str, Any]) -> dict[str, int]:
    """The step counts of a bundle's config, with ``carry`` defaulting to ``decode``."""
    steps = {k: int(v) for k, v in config["steps"].items()}
    steps.setdefault("carry", steps["decode"])
    return steps


def validate_config(config: Mapping[str, Any], where: Path | str = "config.json") -> None:
    if not isinstance(config, Mapping) or config.get("format") != FORMAT:
        raise BundleError(f"{where}: config.json is not a napari-ldae bundle config "
                          f"(format must be {FORMAT!r})")
    version = config.get("format_version")
    if version != BUNDLE_FORMAT_VERSION:
        raise BundleError(f"{where}: bundle format version {version} is not supported by "
                          f"napari-ldae {__version__}, which reads version "
                          f"{BUNDLE_FORMAT_VERSION}; "
                          + ("upgrade napari-ldae" if isinstance(version, int)
                             and version > BUNDLE_FORMAT_VERSION else "re-export the bundle"))
    missing = [k for k in REQUIRED_KEYS if k not in config]
    if missing:
        raise BundleError(f"{where}: config.json lacks {missing}")
    scale = config["scale_factor"]
    if not isinstance(scale, (int, float)) or not scale > 0:
        raise BundleError(f"{where}: scale_factor must be a positive number, got {scale!r}")
    if config.get("latent_norm", "scale") not in LATENT_NORMS:
        raise BundleError(f"{where}: latent_norm must be one of {LATENT_NORMS}, got "
                          f"{config.get('latent_norm')!r}")
    try:
        Schedule.from_dict(config["schedule"])
    except (ValueError, KeyError, TypeError) as err:
        raise BundleError(f"{where}: schedule: {err}") from err
    steps = config["steps"]
    if (not isinstance(steps, Mapping) or any(k not in steps for k in STEP_KINDS[:3])
            or any(k not in STEP_KINDS or not isinstance(v, int) or isinstance(v, bool) or v < 1
                   for k, v in steps.items())):
        raise BundleError(f"{where}: steps must give positive integer step counts for "
                          f"{', '.join(STEP_KINDS[:3])} (and optionally carry), got {steps!r}")


def _check_member(bundle: Bundle, part: str) -> None:
    name = f"{part}.safetensors"
    try:
        head = bundle._bytes(name)[:16]
    except (FileNotFoundError, KeyError) as err:
        raise BundleError(f"{bundle.path}: {name} is missing") from err
    if head[:2] == b"PK" or head[:1] == b"\x80":
        raise BundleError(f"{bundle.path}/{name}: " + _PICKLE_HINT)
    if len(head) < 8:
        raise BundleError(f"{bundle.path}/{name} is truncated")


def _describe_file(path: Path) -> str:
    head = path.read_bytes()[:16] if path.stat().st_size else b""
    if head[:1] == b"\x80":
        return _PICKLE_HINT
    if path.suffix in {".pt", ".pth", ".ckpt", ".bin"}:
        return _PICKLE_HINT
    return "expected a bundle directory or a .ldae file"


def _is_torch_zip(path: Path) -> bool:
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
    return "config.json" not in names and any(n.endswith("data.pkl") for n in names)


# --------------------------------------------------------------------------------- saving
def save_bundle(out: str | os.PathLike, config: Mapping[str, Any],
                weights: Mapping[str, Mapping[str, torch.Tensor]], *,
                overwrite: bool = False, storage_dtype: str = "float32") -> Path:
    """Write a bundle directory atomically (or a zipped ``.ldae`` file if ``out`` ends so).

    ``storage_dtype="float16"`` halves the network weights on disk (the demo bundle); they are
    computed with in float32 after loading. Semantic and latent statistics stay float32.
    """
    from safetensors.torch import save_file

    out = Path(out).expanduser()
    config = {"format": FORMAT, "format_version": BUNDLE_FORMAT_VERSION, **dict(config)}
    config.setdefault("steps", dict(DEFAULT_STEPS))
    config["weights_dtype"] = storage_dtype
    dtype = {"float32": torch.float32, "float16": torch.float16}.get(storage_dtype)
    if dtype is None:
        raise BundleError(f"storage_dtype must be float32 or float16, not {storage_dtype!r}")
    config.setdefault("provenance", {}).setdefault("napari_ldae_version", __version__)
    validate_config(config, out)
    missing = [p for p in PARTS if p not in weights]
    if missing:
        raise BundleError(f"cannot save a bundle without {missing} weights")
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass overwrite=True (CLI: --overwrite) to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=False) + "\n")
        for part in PARTS:
            tensors = {k: _stored(v, torch.float32 if part == "semantic" or k in NORM_KEYS
                                  else dtype) for k, v in weights[part].items()}
            if part == "encoder":
                tensors = {k: v for k, v in tensors.items()
                           if not k.startswith("slice_distributed.module.")}
            save_file(tensors, str(tmp / f"{part}.safetensors"))
        _publish(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _stored(tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    tensor = tensor.detach().to("cpu", copy=True)
    return (tensor.to(dtype) if tensor.is_floating_point() else tensor).contiguous()


def _publish(tmp: Path, out: Path) -> None:
    """Move a finished bundle into place (replacing an old one only at the last moment)."""
    if out.suffix == ".ldae":
        def zip_into(target: Path) -> None:
            with zipfile.ZipFile(target, "w", zipfile.ZIP_STORED) as zf:
                for member in sorted(tmp.iterdir()):
                    zf.write(member, member.name)

        atomic_write(out, zip_into)
        return
    if out.exists():
        old = out.with_name(f".{out.name}.old")
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)


def model_weights(model) -> dict[str, dict[str, torch.Tensor]]:
    """The four weight groups of an :class:`LDAEModel`, ready for :func:`save_bundle`."""
    semantic = {"mean": model.semantic_mean, "std": model.semantic_std}
    for name, d in model.directions.items():
        semantic[f"direction.{name}"] = d.vector
    autoencoder = {**model.autoencoder.net.state_dict(), **model.autoencoder.norm_state()}
    return {"autoencoder": autoencoder, "unet": model.unet.state_dict(),
            "encoder": model.encoder.state_dict(), "semantic": semantic}
