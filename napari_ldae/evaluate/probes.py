"""Linear probes on standardised semantic codes (AD vs CN, age), shared by the trainer's
probe stage and ``napari-ldae evaluate``. Plain torch: no Lightning.

``z`` and ``recs`` map split names (``train``, ``val``, ``test``) to codes and their records.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
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


# ----------------------------------------------------------------------------- regularised
#: Penalty grid of the regularised probes (scikit-learn's C = 1/λ for the classifier, α for ridge).
PENALTIES = tuple(10.0 ** k for k in range(-3, 6))
INNER_FOLDS = 3
#: The penalty used when a fold's training subjects are too few for inner cross-validation.
FALLBACK_PENALTY = 1.0


def _train_test(z: Mapping[str, torch.Tensor], recs: Mapping[str, list[ScanRecord]],
                keep) -> tuple[dict[str, np.ndarray], dict[str, list[ScanRecord]]]:
    """The kept scans' codes (numpy, for scikit-learn) and records of the train and test splits."""
    x, kept = {}, {}
    for split in ("train", "test"):
        codes, kept[split] = _select(recs[split], z[split], keep)
        x[split] = codes.numpy()
    return x, kept


def _inner_splits(recs: Sequence[ScanRecord], labels: Sequence[int] | None = None) -> list:
    """Subject-grouped inner folds of one outer training split (a subject's scans together;
    stratified by ``labels``); empty when there are too few subjects (or of one class)."""
    from sklearn.model_selection import GroupKFold, StratifiedGroupKFold

    groups = [r.subject for r in recs]
    if labels is None:
        n = min(INNER_FOLDS, len(set(groups)))
        return list(GroupKFold(n).split(recs, groups=groups)) if n >= 2 else []
    per_class = [len({g for g, c in zip(groups, labels, strict=True) if c == k}) for k in (0, 1)]
    n = min(INNER_FOLDS, *per_class)
    return list(StratifiedGroupKFold(n).split(recs, labels, groups)) if n >= 2 else []


def regularised_classifier_probe(z: Mapping[str, torch.Tensor],
                                 recs: Mapping[str, list[ScanRecord]], hp: Mapping[str, Any],
                                 seed: int) -> tuple[torch.Tensor, dict] | None:
    """L2 logistic regression, its penalty chosen by subject-grouped inner CV on ROC-AUC."""
    from sklearn.linear_model import LogisticRegression, LogisticRegressionCV

    pos, neg = hp["positive"], hp["negative"]
    x, kept = _train_test(z, recs, lambda r: r.diagnosis in (pos, neg))
    y = [int(r.diagnosis == pos) for r in kept["train"]]
    if len(set(y)) < 2:
        return None
    splits = _inner_splits(kept["train"], y)
    fit = (LogisticRegressionCV(Cs=[1 / p for p in PENALTIES], scoring="roc_auc", cv=splits,
                                max_iter=5000, random_state=seed) if splits else
           LogisticRegression(C=1 / FALLBACK_PENALTY, max_iter=5000))
    with warnings.catch_warnings():  # scikit-learn 1.9 announces new defaults, same fit
        warnings.simplefilter("ignore", FutureWarning)
        fit.fit(x["train"], y)
    scores = torch.from_numpy(fit.predict_proba(x["test"])[:, 1]).float()
    truth = torch.tensor([float(r.diagnosis == pos) for r in kept["test"]])
    penalty = float(1 / np.ravel(fit.C_)[0]) if splits else FALLBACK_PENALTY
    return (torch.from_numpy(np.ravel(fit.coef_)).float(),
            binary_metrics(truth, scores) | {"penalty": penalty})


def regularised_age_probe(z: Mapping[str, torch.Tensor], recs: Mapping[str, list[ScanRecord]],
                          hp: Mapping[str, Any], seed: int) -> tuple[torch.Tensor, dict] | None:
    """Ridge regression of age, its penalty chosen by subject-grouped inner CV on the MAE."""
    from scipy.linalg import LinAlgWarning
    from sklearn.linear_model import Ridge, RidgeCV

    x, kept = _train_test(z, recs, lambda r: r.age is not None)
    if len(kept["train"]) < 2:
        return None
    splits = _inner_splits(kept["train"])
    fit = (RidgeCV(alphas=PENALTIES, scoring="neg_mean_absolute_error", cv=splits) if splits
           else Ridge(alpha=FALLBACK_PENALTY))
    with warnings.catch_warnings():  # collinear truth columns (brain_ml, brain_scale) at small α
        warnings.simplefilter("ignore", LinAlgWarning)
        fit.fit(x["train"], [float(r.age) for r in kept["train"]])
    pred = torch.from_numpy(fit.predict(x["test"])).float()
    truth = torch.tensor([float(r.age) for r in kept["test"]])
    penalty = float(fit.alpha_) if splits else FALLBACK_PENALTY
    return (torch.from_numpy(np.ravel(fit.coef_)).float(),
            regression_metrics(truth, pred) | {"penalty": penalty})
