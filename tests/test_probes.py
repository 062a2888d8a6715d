"""Linear probes: they learn from the training split whatever the validation split says."""

from __future__ import annotations

from pathlib import Path

import torch

from napari_ldae.data.cohort import ScanRecord
from napari_ldae.evaluate.probes import (
    PENALTIES,
    age_probe,
    classifier_probe,
    regularised_age_probe,
    regularised_classifier_probe,
)
from napari_ldae.train.config import DEFAULTS


def _split(n: int, sign: float, seed: int) -> tuple[torch.Tensor, list[ScanRecord]]:
    """Codes whose first dimension carries the diagnosis (with ``sign``) and the age."""
    gen = torch.Generator().manual_seed(seed)
    ad = torch.arange(n) % 2 == 1
    z = torch.randn(n, 8, generator=gen)
    z[:, 0] += sign * torch.where(ad, 1.5, -1.5)
    ages = 70.0 + 5.0 * sign * z[:, 0]
    recs = [ScanRecord(Path(f"s{seed}-{i}.nii.gz"), f"sub-{seed}{i}", "ses-M00", 0.0,
                       "AD" if a else "CN", float(age)) for i, (a, age) in enumerate(
                           zip(ad.tolist(), ages.tolist(), strict=True))]
    return z, recs


def test_probes_are_not_picked_on_a_misleading_validation_split():
    # the validation split says the opposite of train and test: a probe selected by its
    # validation loss would stay at its random initialisation
    parts = {"train": _split(200, 1.0, 0), "val": _split(40, -1.0, 1), "test": _split(100, 1.0, 2)}
    z = {s: p[0] for s, p in parts.items()}
    recs = {s: p[1] for s, p in parts.items()}
    weight, metrics = classifier_probe(z, recs, DEFAULTS["probe"], seed=0)
    assert metrics["roc_auc"] > 0.95 and metrics["accuracy"] > 0.85
    assert weight[0] > 0 and weight[0].abs() == weight.abs().max()  # + → AD
    age_weight, age_metrics = age_probe(z, recs, DEFAULTS["probe"], seed=0)
    assert age_weight[0] > 0  # + → older
    assert age_metrics["mae"] < 4.0  # the ages spread ±8 years around 70


def test_regularised_probes_choose_a_penalty_by_subject_and_beat_the_unregularised_on_few_scans():
    """128 noisy dimensions, 40 training scans: the unregularised probe overfits, the L2 one,
    its penalty chosen by inner cross-validation over subjects, does not."""
    def codes(n: int, seed: int) -> tuple[torch.Tensor, list[ScanRecord]]:
        z, recs = _split(n, 1.0, seed)
        noise = torch.randn(n, 120, generator=torch.Generator().manual_seed(seed + 50))
        return torch.cat([z * 0.5, noise], 1), recs

    parts = {"train": codes(40, 3), "test": codes(200, 4)}
    z = {s: p[0] for s, p in parts.items()}
    recs = {s: p[1] for s, p in parts.items()}
    weight, metrics = regularised_classifier_probe(z, recs, DEFAULTS["probe"], seed=0)
    _, plain = classifier_probe(z, recs, DEFAULTS["probe"], seed=0)
    assert metrics["penalty"] in PENALTIES and weight.shape == (128,)
    assert metrics["roc_auc"] > plain["roc_auc"] + 0.1
    assert weight[0] > 0 and weight[0].abs() == weight.abs().max()  # + → AD
    age_weight, age_metrics = regularised_age_probe(z, recs, DEFAULTS["probe"], seed=0)
    _, plain_age = age_probe(z, recs, DEFAULTS["probe"], seed=0)
    assert age_metrics["penalty"] in PENALTIES and age_weight[0] > 0  # + → older
    assert age_metrics["mae"] < plain_age["mae"]
