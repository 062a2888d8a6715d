"""Linear probes on standardised semantic codes (AD vs CN, age), shared by the trainer's
probe stage and ``napari-ldae evaluate``. Plain torch: no Lightning.

``z`` and ``recs`` map split names (``train``, ``val``, ``test``) to codes and their records.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from napari_ldae.data.cohort import ScanRecord
from napari_ldae.errors import TrainingError
from napari_ldae.evaluate.metrics import binary_metrics, regression_metrics

SPLITS = ("train", "val", "test")


def fit_linear(x: Mapping[str, torch.Tensor], y: Mapping[str, torch.Tensor], loss: str,
               optimizer: str, lr: float, steps: int, seed: int) -> nn.Linear:
    """One linear layer trained for ``steps`` full-batch steps on ``x["train"]``.

    No step is picked on the validation split: with the few subjects a validation split
    holds, its loss is noisier than the probe's progress, and picking its minimum chose the
    untrained initialisation (a random direction) on the demo cohort.
    """
    torch.manual_seed(seed)
    layer = nn.Linear(x["train"].shape[1], 1)
    opt_cls = {"adam": torch.optim.Adam, "sgd": torch.optim.SGD}.get(optimizer.lower())
    if opt_cls is None:
        raise TrainingError(f"probe optimizer must be adam or sgd, not {optimizer!r}")
    opt = opt_cls(layer.parameters(), lr=lr)
    loss_fn = F.binary_cross_entropy_with_logits if loss == "bce" else F.mse_loss
    for _ in range(steps):
        opt.zero_grad()
        loss_fn(layer(x["train"]).squeeze(1), y["train"]).backward()
        opt.step()
    return layer


def _select(records: Sequence[ScanRecord], z: torch.Tensor, keep) -> tuple[torch.Tensor, list]:
    idx = [i for i, r in enumerate(records) if keep(r)]
    return z[idx], [records[i] for i in idx]


def classifier_probe(z: Mapping[str, torch.Tensor], recs: Mapping[str, list[ScanRecord]],
                     hp: Mapping[str, Any], seed: int) -> tuple[torch.Tensor, dict] | None:
    """AD-vs-CN probe: its weight (+ → AD) and test metrics; ``None`` without both classes."""
    pos, neg = hp["positive"], hp["negative"]
    x, y = {}, {}
    for split in (s for s in SPLITS if s in z):
        x[split], kept = _select(recs[split], z[split], lambda r: r.diagnosis in (pos, neg))
        y[split] = torch.tensor([float(r.diagnosis == pos) for r in kept])
    if len(set(y["train"].tolist())) < 2:
        print(f"note: probe: the training split lacks {pos} or {neg} scans; no '{pos}' direction")
        return None
    c = hp["classifier"]
    layer = fit_linear(x, y, "bce", c["optimizer"], c["lr"], c["steps"], seed)
    with torch.no_grad():
        scores = torch.sigmoid(layer(x["test"]).squeeze(1))
    return layer.weight.detach()[0], binary_metrics(y["test"], scores)


def age_probe(z: Mapping[str, torch.Tensor], recs: Mapping[str, list[ScanRecord]],
              hp: Mapping[str, Any], seed: int) -> tuple[torch.Tensor, dict] | None:
    """Age regression probe on the standardised age: its weight (+ → older), test MAE/RMSE."""
    x, age = {}, {}
    for split in (s for s in SPLITS if s in z):
        x[split], kept = _select(recs[split], z[split], lambda r: r.age is not None)
        age[split] = torch.tensor([float(r.age) for r in kept])
    if len(age["train"]) < 2:
        print("note: probe: too few training scans with an age; no 'age' direction")
        return None
    mu, sd = age["train"].mean(), age["train"].std().clamp_min(1e-6)
    target = {s: (a - mu) / sd for s, a in age.items()}
    a = hp["age"]
    layer = fit_linear(x, target, "mse", a["optimizer"], a["lr"], a["steps"], seed)
    with torch.no_grad():
        pred = layer(x["test"]).squeeze(1) * sd + mu
    return layer.weight.detach()[0], regression_metrics(age["test"], pred)
