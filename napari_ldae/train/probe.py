"""Stage 4: linear probes, directions and the final bundle.

Every scan is embedded by the stage-3 EMA encoder; y is standardised with the training split's
per-dimension mean/std. Two linear probes are fitted on the training split (the validation
split is not used): AD vs CN (one linear layer, BCE, Adam 1e-3 by default; AD is the
positive class) and age (one linear layer, MSE on the standardised age, SGD 1e-3 by default).
Their weights become the bundle's directions ``"AD"`` ("toward AD": + raises the AD logit) and
``"age"`` ("older"), or with ``probe.direction: longitudinal`` the mean change per year of the
codes over the AD (CN for "age") subjects' own visits. The probes' test-split metrics go with
them, and so does each direction's calibration in years (train/calibration.py: AD subjects'
visits for "AD", every subject's, or CN's longitudinally, for "age"). The bundle lands in
``OUT/bundle``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from napari_ldae import __version__
from napari_ldae._resources import shown_path
from napari_ldae.core.autoencoder import NORM_KEYS, LatentAutoencoder
from napari_ldae.core.bundle import save_bundle
from napari_ldae.core.encoder import build_encoder, drop_aliases
from napari_ldae.data.cohort import Cohort
from napari_ldae.data.preprocess import PreprocessContract
from napari_ldae.errors import TrainingError
from napari_ldae.evaluate.probes import age_probe, classifier_probe
from napari_ldae.train import common
from napari_ldae.train import latent as stage2
from napari_ldae.train import representation as stage3
from napari_ldae.train.calibration import mean_change_per_year, projection_per_year
from napari_ldae.train.config import (
    NETWORK_STAGES,
    OPTIONAL_STAGES,
    model_config,
    resolve_accelerator,
)
from napari_ldae.train.data import SPLITS, cache_volumes, load_splits, load_volume
from napari_ldae.train.decoder import autoencoder_weights


# ----------------------------------------------------------------------------- embedding
@torch.inference_mode()
def embed(encoder: torch.nn.Module, cache: Path, keys: Sequence[str], device: str,
          batch_size: int = 4, autoencoder: LatentAutoencoder | None = None) -> torch.Tensor:
    """Semantic codes (N, d) of cached volumes (``autoencoder``: the latents' encoder, for an
    encoder that reads latents)."""
    encoder.eval().to(device)
    if autoencoder is not None:
        autoencoder.eval().to(device)
    out = []
    for i in range(0, len(keys), batch_size):
        x = torch.stack([torch.from_numpy(load_volume(cache, k)) for k in keys[i:i + batch_size]])
        x = x[:, None].to(device)
        latent = autoencoder.encode(x) if encoder.needs_latent else None
        out.append(encoder.code(x, latent).float().cpu())
    return torch.cat(out) if out else torch.zeros((0, encoder.config.emb_dim))


def load_encoder(config: Mapping[str, Any], path: Path) -> torch.nn.Module:
    encoder = build_encoder(model_config(config))
    state = common.load_safetensors(path, "probe stage: the stage-3 EMA encoder")
    missing, unexpected = encoder.load_state_dict(state, strict=False)
    if drop_aliases(dict.fromkeys(missing)) or unexpected:
        raise TrainingError(f"{path} does not fit the configured encoder (missing "
                            f"{missing[:3]}, unexpected {unexpected[:3]})")
    return encoder


# ----------------------------------------------------------------------------- stage
def run(config: Mapping[str, Any], out: Path, resume: bool = False,
        callbacks: Sequence = ()) -> Path | None:
    """Embed, fit the probes and write ``OUT/bundle``; returns it (``None`` off rank 0).

    ``resume`` and ``callbacks`` are accepted for symmetry with the other stages (unused).
    """
    if not common.is_global_zero():
        return None
    if common.read_json(out / "representation" / "representation.json",
                        "representation stage").get("oracle"):
        raise TrainingError("stage 3 of this run was an oracle check (representation.oracle): "
                            "its decoder takes ground truth, not scans, so it makes no bundle")
    model = model_config(config)
    contract = PreprocessContract.from_dict(model["preprocessing"])
    encoder = load_encoder(config, out / "representation" / stage3.ENCODER)
    splits = load_splits(config)
    cache = common.cache_dir(config, out)
    recs = {s: list(splits[s].records) for s in SPLITS}
    device = "cuda" if resolve_accelerator(config["trainer"]["accelerator"]) == "gpu" else "cpu"
    hp = config["probe"]
    autoencoder = _latent_encoder(config, out) if encoder.needs_latent else None
    z_raw = {s: embed(encoder, cache, cache_volumes(recs[s], contract, cache,
                                                    config["data"]["num_workers"]),
                      device, hp["embed_batch_size"], autoencoder) for s in SPLITS}
    mean, std = z_raw["train"].mean(0), z_raw["train"].std(0).clamp_min(1e-6)
    z = {s: (v - mean) / std for s, v in z_raw.items()}
    semantic = {"mean": mean, "std": std}
    directions, metrics = {}, {}
    for name, meaning, probe in (("AD", f"toward {hp['positive']}", classifier_probe),
                                 ("age", "older", age_probe)):
        result = probe(z, recs, hp, config["seed"])
        if result is None:
            continue
        w, m = result
        group = _group(name, hp)
        if hp["direction"] == "longitudinal":
            try:
                w = mean_change_per_year(z["train"], recs["train"], group)
            except ValueError as err:
                raise TrainingError(f"probe.direction longitudinal, direction {name}: {err}; "
                                    "use probe.direction classifier") from err
        semantic[f"direction.{name}"] = F.normalize(w, dim=0)
        metrics[name] = _clean(m)
        directions[name] = {"meaning": meaning, "source": _source(name, hp), "metrics":
                            metrics[name], "calibration": projection_per_year(
                                z["train"], recs["train"], w, group)}
        print(f"probe {name}: " + ", ".join(f"{k} {v:.4g}" for k, v in metrics[name].items()
                                              if isinstance(v, float)))
    common.save_safetensors(out / "probe" / "embeddings.safetensors",
                            {f"{s}.y": v for s, v in z_raw.items()})
    common.write_json(out / "probe" / "metrics.json", {
        "metrics": metrics, "scans": {s: [f"{r.subject}/{r.session}" for r in recs[s]]
                                      for s in SPLITS}})
    return write_bundle(config, out, model, semantic, directions, metrics, splits)


def _latent_encoder(config: Mapping[str, Any], out: Path) -> LatentAutoencoder:
    """The stage-1 autoencoder with stage 2's latent normalisation: what a latent encoder reads."""
    stats = stage2.read_latent_stats(out)
    autoencoder = LatentAutoencoder(model_config(config)["autoencoder"],
                                    stage2.read_scale_factor(out), *(stats or (None, None)))
    autoencoder.net.load_state_dict(common.load_safetensors(
        autoencoder_weights(out), "probe stage: the autoencoder"))
    return autoencoder


def _group(name: str, hp: Mapping[str, Any]) -> str | None:
    """Whose visits calibrate a direction (and make it, longitudinally): the positive class's
    for "AD"; for "age" the negative class's (healthy ageing) longitudinally, else everyone's."""
    if name == "AD":
        return hp["positive"]
    return hp["negative"] if hp["direction"] == "longitudinal" else None


def _source(name: str, hp: Mapping[str, Any]) -> str:
    if hp["direction"] == "longitudinal":
        return (f"mean change per year of the standardised y over the training split's "
                f"{_group(name, hp)} subjects' visits (probe.direction: longitudinal); the "
                "metrics are the linear probe's")
    if name == "AD":
        c = hp["classifier"]
        return (f"linear probe {hp['positive']} vs {hp['negative']} on standardised y (BCE, "
                f"{c['optimizer']} lr {c['lr']}); positive class {hp['positive']}")
    a = hp["age"]
    return f"linear age regression on standardised y (MSE, {a['optimizer']} lr {a['lr']})"


def _clean(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """JSON-safe metrics: undefined values (nan) become null."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
            for k, v in metrics.items()}


def write_bundle(config: Mapping[str, Any], out: Path, model: dict[str, Any],
                 semantic: dict[str, torch.Tensor], directions: dict, metrics: dict,
                 splits) -> Path:
    stage_info = {s: common.read_json(out / s / f"{s}.json", s) for s in NETWORK_STAGES
                  if s not in OPTIONAL_STAGES or (out / s / f"{s}.json").is_file()}
    bundle_config = {
        **model,
        "name": f"{model.get('name', 'ldae')}-trained",
        "description": f"trained by napari-ldae {__version__} on "
                       f"{shown_path(config['data']['cohort'])}",
        "scale_factor": stage2.read_scale_factor(out),
        "directions": directions,
        "metrics": {"probe": metrics,
                    "autoencoder_val_ssim": stage_info.get(
                        "decoder", stage_info["autoencoder"])["best_val_ssim"],
                    "semantic_val_ssim": stage_info["representation"]["best_val_ssim"],
                    "stage2_x0_vs_mean": stage_info["latent"].get("x0_vs_mean"),
                    "code_use": stage_info["representation"].get("code_use")},
        "provenance": {
            "trained": True, "trainer": "napari-ldae train", "config": config,
            # as the user gave it, plus the table's hash: no machine's absolute path
            "cohort": shown_path(config["data"]["cohort"]),
            "cohort_sha256": Cohort([r for s in SPLITS for r in splits[s]],
                                    splits["train"].root).sha256(),
            "seed": config["seed"],
            "split_seed": config["data"]["split_seed"], "git_commit": common.git_commit(),
            "splits": {s: len(splits[s].subjects()) for s in SPLITS},
            "steps": {s: i["global_step"] for s, i in stage_info.items()},
        },
    }
    stats = stage2.read_latent_stats(out)
    weights = {
        "autoencoder": {**common.load_safetensors(autoencoder_weights(out), "AE"),
                        **(dict(zip(NORM_KEYS, stats, strict=True)) if stats else {})},
        "unet": common.load_safetensors(out / "representation" / stage3.UNET, "ShiftUNet"),
        "encoder": common.load_safetensors(out / "representation" / stage3.ENCODER, "encoder"),
        "semantic": semantic,
    }
    path = save_bundle(out / "bundle", bundle_config, weights, overwrite=True,
                       storage_dtype=config["probe"]["bundle_dtype"])
    print(f"wrote bundle {path}")
    return path

