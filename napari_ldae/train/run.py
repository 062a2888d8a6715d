"""Run one stage or all of them in order, each feeding the next through files under OUT.

``OUT/<stage>/<stage>.json`` is written last by each network stage: with ``resume``, a stage
whose file reports at least ``max_steps`` steps is skipped, an interrupted one continues from
its ``last.ckpt``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from napari_ldae.errors import TrainingError
from napari_ldae.train.config import (
    NETWORK_STAGES,
    OPTIONAL_STAGES,
    STAGES,
    config_path,
    load_config,
    validate,
)


def resolve(config: str | os.PathLike | None, data: str | os.PathLike | None = None,
            overrides: Sequence[str] = (), *, devices: int | None = None,
            accelerator: str | None = None, num_nodes: int | None = None,
            max_steps: int | None = None, stages: Sequence[str] = NETWORK_STAGES,
            ) -> dict[str, Any]:
    """The full config: file, then ``key=value`` overrides, then the explicit arguments."""
    cfg = load_config(config_path(config) if config else None, overrides)
    if data is not None:
        cfg["data"]["cohort"] = str(Path(data).expanduser())  # as given (it is recorded)
    for key, value in (("devices", devices), ("accelerator", accelerator),
                       ("num_nodes", num_nodes)):
        if value is not None:
            cfg["trainer"][key] = value
    if max_steps is not None:
        for stage in stages:
            if stage in NETWORK_STAGES and not _switched_off(cfg, stage, len(stages) > 1):
                cfg[stage]["max_steps"] = int(max_steps)
    validate(cfg)
    return cfg


def _switched_off(config: Mapping[str, Any], stage: str, among_others: bool) -> bool:
    """An optional stage with ``max_steps: 0``, run among others (asked alone, it errs)."""
    return among_others and stage in OPTIONAL_STAGES and config[stage]["max_steps"] == 0


def stage_done(config: Mapping[str, Any], out: Path, stage: str) -> bool:
    """Whether a network stage finished at least its ``max_steps`` in ``out``."""
    import json

    info = out / stage / f"{stage}.json"
    if stage not in NETWORK_STAGES or not info.is_file():
        return False
    return json.loads(info.read_text()).get("global_step", -1) >= config[stage]["max_steps"]


def train(stage: str, config: Mapping[str, Any], out: str | os.PathLike,
          resume: bool = False, callbacks: Sequence = ()) -> Path | None:
    """Train ``stage`` (or ``"all"``) into ``out``; returns the bundle after the probe stage.

    ``callbacks``: extra Lightning callbacks for every network stage (progress, tests).
    """
    from napari_ldae.train import autoencoder, decoder, latent, probe, representation

    runners = {"autoencoder": autoencoder.run, "decoder": decoder.run, "latent": latent.run,
               "representation": representation.run, "probe": probe.run}
    if stage != "all" and stage not in STAGES:
        raise TrainingError(f"unknown stage {stage!r}; choose one of {', '.join(STAGES)}, all")
    if stage != "decoder" and config["decoder"]["bundle"]:
        raise TrainingError("decoder.bundle (--bundle) refines a finished bundle: use it with "
                            "`train decoder` only")
    out = Path(out).expanduser().resolve()
    _record(config, out)
    result = None
    for name in STAGES if stage == "all" else (stage,):
        if _switched_off(config, name, stage == "all"):
            print(f"{name}: off ({name}.max_steps is 0); skipping")
            continue
        if resume and stage_done(config, out, name):
            print(f"{name}: already trained in {out / name}; skipping")
            continue
        result = runners[name](config, out, resume, callbacks)
    return result if isinstance(result, Path) and result.name == "bundle" else None


def _record(config: Mapping[str, Any], out: Path) -> None:
    """Write the resolved config and the subject splits (rank 0)."""
    import yaml

    from napari_ldae._files import atomic_write
    from napari_ldae.train.common import is_global_zero
    from napari_ldae.train.data import load_splits, write_splits

    if not is_global_zero():
        return
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "config.yaml", yaml.safe_dump(dict(config), sort_keys=False).encode())
    write_splits(load_splits(config), out / "splits.json")
