"""Training configuration: one YAML file with every knob, merged over :data:`DEFAULTS`.

The architecture comes from ``preset`` (``tiny``, ``demo`` or ``paper``, see
:mod:`napari_ldae.core.presets`) with ``model`` overriding any field of it. Each stage has its own
section; ``trainer`` holds what all stages share (devices, nodes, strategy, precision). Command
line overrides are ``key.path=value`` with YAML values (``latent.lr=1e-4``,
``trainer.devices=2``). Unknown keys are errors, so a typo never trains with a default silently.
"""

from __future__ import annotations

import copy
import difflib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from napari_ldae._resources import resource_path
from napari_ldae.errors import TrainingError
from napari_ldae.evaluate import PROBE_FITS

#: Configs shipped with napari-ldae, usable by name (``--config tiny``).
CONFIG_DIR = resource_path("configs")

STAGES = ("autoencoder", "decoder", "latent", "representation", "probe")
#: How the probe stage makes the bundle's directions (``probe.direction``).
DIRECTION_RULES = ("classifier", "longitudinal")
#: Stages trained by a Lightning ``Trainer`` (the probe stage is a few seconds of plain torch).
NETWORK_STAGES = STAGES[:4]
#: Stages that a config may switch off with ``max_steps: 0`` (``train all`` then skips them).
OPTIONAL_STAGES = ("decoder",)

_COMMON: dict[str, Any] = {
    "batch_size": 1,  # per device
    "lr": 1e-4,
    "lr_warmdown_steps": 0,  # the last N optimizer steps: lr falls linearly to 0
    "max_steps": 1000,  # optimizer steps
    "accumulate_grad_batches": 1,
    "gradient_clip_val": None,
    "precision": None,  # None: trainer.precision
    "val_every_n_steps": 500,  # optimizer steps
    "limit_val_batches": 1.0,  # fraction or number of validation batches per validation
    "checkpoint_every_n_steps": 500,
    "log_every_n_steps": None,  # None: trainer.log_every_n_steps
}

DEFAULTS: dict[str, Any] = {
    "preset": "tiny",
    "model": {},  # overrides of the preset: any bundle-config field (autoencoder, unet, ...)
    "seed": 0,
    "data": {
        "cohort": None,  # BIDS-like folder or CSV (the CLI's --data)
        "preprocessing": None,  # None: the preset's contract
        "val_fraction": 0.1,
        "test_fraction": 0.1,
        "split_seed": None,  # None: seed
        "cache_dir": None,  # None: OUT/cache
        "num_workers": 0,
    },
    "trainer": {
        "accelerator": "auto",  # cpu, gpu, auto
        "devices": 1,
        "num_nodes": 1,
        "strategy": "auto",  # auto, ddp
        "precision": "32",  # 32, bf16-mixed, 16-mixed (GPU only; 32 on CPU)
        # float32 matrix products on a GPU: null (torch's default, full float32) or "high"
        # (TF32 tensor cores) or "medium"; demo-gpu.yaml uses "high"
        "matmul_precision": None,
        "log_every_n_steps": 10,
        "num_sanity_val_steps": 0,
        "progress_bar": True,
    },
    "autoencoder": {
        **_COMMON,
        "lr": 5e-5,
        "lr_discriminator": 1e-4,
        "kl_weight": 1e-7,
        "adversarial_weight": 0.025,
        "adversarial_warmup_steps": 0,  # generator steps before the adversarial term starts
        "discriminator": {"channels": 64, "num_layers_d": 3},
        "perceptual_weight": 1e-3,
        "perceptual_weights": None,  # local LPIPS (SqueezeNet) state dict; None: no perceptual
        "ssim_kernel_size": 4,
        "crop_size": None,  # train on random windows of this size (validation: whole volumes)
    },
    # Optional stage 1b (train/decoder.py): the decoder refined on whole volumes, the encoder
    # frozen; max_steps 0 (the paper's recipe) switches it off.
    "decoder": {
        **_COMMON,
        "max_steps": 0,
        "lr": 1e-5,
        "ssim_weight": 1.0,  # loss: L1 + ssim_weight · (1 − SSIM)
        "ssim_kernel_size": 4,
        "bundle": None,  # refine this bundle's decoder (CLI: --bundle) instead of OUT's stage 1
    },
    "latent": {
        **_COMMON,
        "lr": 2.5e-5,
        "ema_decay": 0.999,
        # the EMA's decay rises as (1 + n) / (10 + n) up to ema_decay (diffusers' EMAModel);
        # false: the reference's constant decay
        "ema_warmup": False,
        "encode_batch_size": 4,
    },
    "representation": {
        **_COMMON,
        "lr": 2.5e-5,
        "ema_decay": 0.999,
        "ema_warmup": False,  # as latent.ema_warmup
        "snr_gamma": 0.1,
        "val_ddim_steps": 100,
        "ssim_kernel_size": 4,
        "early_stop_patience": None,  # validations without improvement; None: off
        # Anti-collapse term (0: the paper's objective): weight · mean over dimensions of
        # relu(1 − std of y across the batch); needs batch_size ≥ 2.
        "code_variance_weight": 0.0,
        # Extra loss weight x0_weight · (1 − ᾱ_t)² / ᾱ_t: the x̂₀ error weighted by the noise
        # variance (0: the paper's objective).
        "x0_weight": 0.0,
        # The encoder's learning rate is lr · encoder_lr_scale (the branch's is lr).
        "encoder_lr_scale": 1.0,
        # Refuse to start when stage 2's x̂₀ at high noise is more than this many times worse
        # than the mean latent (val/x0_vs_mean_t*); null: report and continue.
        "max_x0_vs_mean": 2.0,
        # Diagnostic: y from these ground-truth columns of the cohort instead of the encoder.
        "oracle": None,
        # Weights handed on: "best" (the paper's: best val/ssim of the semantic-only decode)
        # or "last" (the end of training, e.g. after a learning-rate warm-down).
        "weights": "best",
    },
    "probe": {
        "embed_batch_size": 4,
        **copy.deepcopy(PROBE_FITS),
        "bundle_dtype": "float32",  # float16 halves the bundle on disk (the demo bundle)
        # The directions: "classifier" (the paper's: the probes' weights) or "longitudinal"
        # (the mean change per year of the codes over AD, resp. CN, subjects' own visits).
        "direction": "classifier",
    },
}


def load_config(path: str | os.PathLike | None, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Read a YAML config, merge it over :data:`DEFAULTS` and apply ``key=value`` overrides."""
    user = read_user_config(Path(path).expanduser()) if path is not None else {}
    config = merge(DEFAULTS, user, where="config")
    for item in overrides:
        apply_override(config, item)
    validate(config)
    return config


def config_path(name_or_path: str | os.PathLike, beside: Path | None = None) -> Path:
    """A config file (named relative to ``beside`` when given), or the shipped one of that
    name (``paper``, ``demo``, ``tiny``, …)."""
    p = beside / name_or_path if beside is not None else Path(name_or_path).expanduser()
    if not p.exists() and (CONFIG_DIR / f"{name_or_path}.yaml").is_file():
        return CONFIG_DIR / f"{name_or_path}.yaml"
    return p


def read_user_config(p: Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A config file's mapping; ``extends: NAME`` (a shipped config or a file beside this one)
    is read first and this file's entries are merged over it."""
    import yaml

    if not p.is_file():
        raise TrainingError(f"no config file at {p}")
    if p.resolve() in _seen:
        raise TrainingError(f"{p}: 'extends' goes round in a circle")
    try:
        user = yaml_load(p.read_text()) or {}
    except yaml.YAMLError as err:
        raise TrainingError(f"{p} is not valid YAML: {err}") from err
    if not isinstance(user, dict):
        raise TrainingError(f"{p}: the config must be a mapping of sections")
    parent = user.pop("extends", None)
    if parent is None:
        return user
    base = config_path(str(parent), beside=p.parent)
    return merge(read_user_config(base, (*_seen, p.resolve())), user, where=str(p), free=True)


def merge(base: Mapping[str, Any], update: Mapping[str, Any], where: str,
          free: bool = False) -> dict[str, Any]:
    """Deep-merge ``update`` into a copy of ``base``; unknown keys are errors unless ``free``."""
    out = copy.deepcopy(dict(base))
    for key, value in update.items():
        if key not in out and not free:
            raise TrainingError(f"unknown {where} key {key!r}" + _hint(key, out))
        sub_free = free or key == "model"
        if isinstance(out.get(key), dict) and isinstance(value, Mapping):
            out[key] = merge(out[key], value, f"{where}.{key}", sub_free)
        else:
            out[key] = copy.deepcopy(value)
    return out


def apply_override(config: dict[str, Any], item: str) -> None:
    """Set ``a.b.c=value`` (value parsed as YAML) in place."""

    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise TrainingError(f"override {item!r} is not of the form key.path=value")
    *parents, leaf = key.strip().split(".")
    node = config
    for i, part in enumerate(parents):
        if part not in node and parents[0] != "model":
            raise TrainingError(f"unknown config key {'.'.join(parents[:i + 1])!r}"
                                + _hint(part, node))
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise TrainingError(f"config key {'.'.join(parents[:i + 1])!r} is not a section")
    if leaf not in node and (not parents or parents[0] != "model"):
        raise TrainingError(f"unknown config key {key!r}" + _hint(leaf, node))
    node[leaf] = yaml_load(raw)


def yaml_load(text: str) -> Any:
    """``yaml.safe_load``, but ``2e-3`` is a float as in YAML 1.2 (PyYAML's 1.1 makes it a
    string, and ``lr=2e-3`` then failed deep inside a run)."""
    import re

    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
        list("-+0123456789"))
    return yaml.load(text, Loader=Loader)


def validate(config: Mapping[str, Any]) -> None:
    """Check the values that would otherwise fail late, deep inside a run."""
    from napari_ldae.core.presets import PRESETS

    if config["preset"] not in PRESETS:
        raise TrainingError(f"preset must be one of {sorted(PRESETS)}, not {config['preset']!r}")
    for stage in NETWORK_STAGES:
        s = config[stage]
        for key in ("batch_size", "max_steps", "accumulate_grad_batches", "val_every_n_steps",
                    "checkpoint_every_n_steps"):
            off = key == "max_steps" and stage in OPTIONAL_STAGES and s[key] == 0
            if not off and (not isinstance(s[key], int) or s[key] < 1):
                raise TrainingError(f"{stage}.{key} must be a positive integer, got {s[key]!r}")
        if not isinstance(s["lr_warmdown_steps"], int) or s["lr_warmdown_steps"] < 0:
            raise TrainingError(f"{stage}.lr_warmdown_steps must be a non-negative integer, "
                                f"got {s['lr_warmdown_steps']!r}")
    model = model_config(config)  # the architecture and the contract fit together
    _check_code_variance(config["representation"], model)
    _check_recipe(config["representation"], model)
    t = config["trainer"]
    if not (t["devices"] == -1 or (isinstance(t["devices"], int) and t["devices"] >= 1)):
        raise TrainingError("trainer.devices must be a positive integer or -1 (all GPUs)")
    if not isinstance(t["num_nodes"], int) or t["num_nodes"] < 1:
        raise TrainingError("trainer.num_nodes must be a positive integer")
    if t["matmul_precision"] not in (None, "highest", "high", "medium"):
        raise TrainingError("trainer.matmul_precision must be null, highest, high or medium")
    if config["trainer"]["strategy"] not in ("auto", "ddp"):
        raise TrainingError("trainer.strategy must be 'auto' or 'ddp'")
    _check_crop(config["autoencoder"]["crop_size"], model)
    if config["probe"]["direction"] not in DIRECTION_RULES:
        raise TrainingError(f"probe.direction must be one of {DIRECTION_RULES}, got "
                            f"{config['probe']['direction']!r}")


def _check_recipe(rep: Mapping[str, Any], model: Mapping[str, Any]) -> None:
    """The latent normalisation, the schedule and stage 3's learning-rate split."""
    from napari_ldae.core.autoencoder import LATENT_NORMS
    from napari_ldae.core.diffusion import Schedule

    if model.get("latent_norm", "scale") not in LATENT_NORMS:
        raise TrainingError(f"model.latent_norm must be one of {LATENT_NORMS}, got "
                            f"{model.get('latent_norm')!r}")
    try:
        Schedule.from_dict(model["schedule"])
    except (ValueError, KeyError, TypeError) as err:
        raise TrainingError(f"model.schedule: {err}") from err
    if not isinstance(rep["encoder_lr_scale"], (int, float)) or rep["encoder_lr_scale"] <= 0:
        raise TrainingError("representation.encoder_lr_scale must be a positive number")
    if not isinstance(rep["x0_weight"], (int, float)) or rep["x0_weight"] < 0:
        raise TrainingError(f"representation.x0_weight must be ≥ 0, got {rep['x0_weight']!r}")
    if rep["weights"] not in ("best", "last"):
        raise TrainingError("representation.weights must be 'best' or 'last'")
    oracle = rep["oracle"]
    if oracle is not None and (not isinstance(oracle, list) or not oracle
                               or not all(isinstance(c, str) for c in oracle)):
        raise TrainingError("representation.oracle must be null or a list of cohort columns")
    limit = rep["max_x0_vs_mean"]
    if limit is not None and (not isinstance(limit, (int, float)) or limit <= 0):
        raise TrainingError("representation.max_x0_vs_mean must be a positive number or null")


def _check_code_variance(rep: Mapping[str, Any], model: Mapping[str, Any]) -> None:
    """The anti-collapse term measures y's spread over a batch of noise-free codes."""
    weight = rep["code_variance_weight"]
    if not isinstance(weight, (int, float)) or weight < 0:
        raise TrainingError(f"representation.code_variance_weight must be ≥ 0, got {weight!r}")
    if weight > 0 and rep["batch_size"] < 2:
        raise TrainingError("representation.code_variance_weight needs batch_size ≥ 2 per "
                            "device: it measures the spread of y between the scans of a batch")
    if weight > 0 and model["encoder"]["dropout"] > 0:
        raise TrainingError("representation.code_variance_weight needs model.encoder.dropout: "
                            "0; dropout noise would pass for spread between brains")


def _check_crop(crop: Any, model: Mapping[str, Any]) -> None:
    """``autoencoder.crop_size``: None, or a window inside the volume the autoencoder can halve."""
    if crop is None:
        return
    from napari_ldae.core.autoencoder import downsampling_factor

    shape = list(model["preprocessing"]["shape"])
    f = downsampling_factor(model["autoencoder"])
    if not (isinstance(crop, list) and len(crop) == len(shape)
            and all(isinstance(c, int) and 0 < c <= n and c % f == 0
                    for c, n in zip(crop, shape, strict=True))):
        raise TrainingError(f"autoencoder.crop_size must be null or {len(shape)} integers, each "
                            f"a multiple of {f} and at most the volume shape {shape}; got {crop!r}")


def model_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The bundle config of the networks: the preset, ``model`` overrides, the data contract."""
    from napari_ldae.core.presets import preset

    out = merge(preset(config["preset"]), config.get("model") or {}, "model", free=True)
    if config["data"].get("preprocessing"):
        out["preprocessing"] = merge(out["preprocessing"], config["data"]["preprocessing"],
                                     "data.preprocessing")
    _check_shapes(out)
    return out


def _check_shapes(model: Mapping[str, Any]) -> None:
    """The contract's shape must survive the autoencoder and the UNet's down-sampling."""
    from napari_ldae.core.autoencoder import downsampling_factor

    shape = list(model["preprocessing"]["shape"])
    f = downsampling_factor(model["autoencoder"])
    unet = 2 ** (len(model["unet"]["channel_mult"]) - 1)  # last two axes only
    need = [f, f * unet, f * unet]
    if any(s % n for s, n in zip(shape, need, strict=True)):
        raise TrainingError(f"preprocessing shape {shape} must be divisible by {need} "
                            "(autoencoder and UNet down-sampling)")
    if shape[2] > model["encoder"]["num_slices"]:
        raise TrainingError(f"the encoder takes at most {model['encoder']['num_slices']} axial "
                            f"slices; the preprocessing shape has {shape[2]}")


def stage_precision(config: Mapping[str, Any], stage: str, accelerator: str) -> str:
    """The stage's precision; reduced precision falls back to 32 off CUDA (with a note)."""
    precision = str(config[stage].get("precision") or config["trainer"]["precision"])
    if precision not in ("32", "bf16-mixed", "16-mixed"):
        raise TrainingError(f"{stage}: precision must be 32, bf16-mixed or 16-mixed")
    if precision != "32" and accelerator != "gpu":
        print(f"note: {stage}: precision {precision} needs a GPU; training in 32-bit on "
              f"{accelerator}")
        return "32"
    return precision


def resolve_accelerator(name: str) -> str:
    """``auto`` → ``gpu`` when CUDA is available, else ``cpu``."""
    import torch

    if name == "auto":
        return "gpu" if torch.cuda.is_available() else "cpu"
    if name not in ("cpu", "gpu"):
        raise TrainingError(f"accelerator must be cpu, gpu or auto, not {name!r}")
    if name == "gpu" and not torch.cuda.is_available():
        raise TrainingError("accelerator 'gpu' requested but CUDA is not available; "
                            "--accelerator cpu trains on the CPU (slowly for a GPU config)")
    return name


def _hint(key: str, known: Mapping[str, Any]) -> str:
    close = difflib.get_close_matches(key, list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else f"; known: {', '.join(known)}"
