"""Metrics (napari_ldae.evaluate.metrics) against hand-computed values, and how they are shown."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from napari_ldae.evaluate.metrics import binary_metrics, regression_metrics, roc_auc, ssim


def test_binary_metrics_by_hand():
    labels = [1, 1, 1, 0, 0, 0, 0, 1]
    scores = [0.9, 0.8, 0.3, 0.6, 0.2, 0.1, 0.4, 0.7]  # at 0.5: TP 3, FN 1, FP 1, TN 3
    m = binary_metrics(labels, scores)
    assert m["accuracy"] == pytest.approx(6 / 8)
    assert m["precision"] == pytest.approx(3 / 4) and m["recall"] == pytest.approx(3 / 4)
    assert m["f1"] == pytest.approx(3 / 4)
    assert m["mcc"] == pytest.approx((3 * 3 - 1 * 1) / math.sqrt(4 * 4 * 4 * 4))
    assert m["roc_auc"] == pytest.approx(14 / 16)  # 0.3 (AD) ranks below 0.6 and 0.4 (CN)


def test_roc_auc_counts_ties_as_half_and_matches_pairwise_definition():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 40)
    scores = rng.integers(0, 5, 40).astype(float)  # many ties
    pos, neg = scores[labels == 1], scores[labels == 0]
    pairs = [(p > n) + 0.5 * (p == n) for p, n in itertools.product(pos, neg)]
    assert roc_auc(torch.tensor(labels), torch.tensor(scores)) == pytest.approx(np.mean(pairs))


def test_undefined_metrics_are_nan():
    m = binary_metrics([1, 1], [0.9, 0.8])
    assert m["accuracy"] == 1.0 and math.isnan(m["roc_auc"]) and math.isnan(m["mcc"])
    assert math.isnan(binary_metrics([0, 1], [0.1, 0.2])["precision"])


def test_regression_metrics():
    m = regression_metrics([70.0, 80.0, 60.0], [72.0, 77.0, 60.0])
    assert m["mae"] == pytest.approx(5 / 3) and m["rmse"] == pytest.approx(math.sqrt(13 / 3))


def test_ssim_is_one_for_identical_volumes_and_lower_otherwise():
    x = torch.rand(2, 1, 16, 16, 16, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(ssim(x, x), torch.ones(2), atol=1e-5)
    assert (ssim(x, x.flip(2)) < 0.5).all()


def test_ssim_in_the_head_ignores_the_background_and_sees_the_head():
    from napari_ldae.evaluate.image_metrics import ssim_and_head

    def ssim_head(pred, target):
        whole, head = ssim_and_head(pred, target)
        assert whole == pytest.approx(ssim(pred, target).tolist(), abs=1e-6)  # one map, both
        return head

    g = torch.Generator().manual_seed(0)
    head = torch.zeros(1, 1, 24, 24, 24)
    head[..., 6:18, 6:18, 6:18] = 0.2 + 0.8 * torch.rand(1, 1, 12, 12, 12, generator=g)
    noisy_background = head + 0.02 * (head == 0) * torch.rand(head.shape, generator=g)
    assert ssim(noisy_background, head).item() < 0.9  # the whole volume's SSIM drops
    assert ssim_head(noisy_background, head)[0] > ssim(noisy_background, head).item() + 0.05
    assert ssim_head(head, head)[0] == pytest.approx(1.0, abs=1e-5)
    blurred = head.clone()
    blurred[..., 6:18, 6:18, 6:18] = head[..., 6:18, 6:18, 6:18].mean()
    assert ssim_head(blurred, head)[0] < ssim(blurred, head).item()  # the head is what differs


def test_semantic_spread_is_zero_for_a_collapsed_encoder():
    from napari_ldae.evaluate.metrics import semantic_spread

    same = torch.tensor([[1.0, -2.0, 3.0]]).repeat(4, 1)
    assert semantic_spread(same) == pytest.approx(0.0)
    varied = same + torch.tensor([[0.5], [-0.5], [0.5], [-0.5]])
    assert semantic_spread(varied) == pytest.approx(float(varied.std(0).mean() / 2.0))
    with pytest.raises(ValueError, match="N ≥ 2"):
        semantic_spread(same[:1])


def test_model_panel_rounds_metrics():
    from napari_ldae.gui.model_widget import _facts_html

    info = {"parameters": 1_000_000, "directions": {}, "input_shape": [4, 4, 4],
            "spacing": [3.0, 3.0, 3.0], "trained": True, "name": "b", "device": "cpu",
            "precision": "fp32", "orientation": "RAS", "bundle_sha256": "0" * 64,
            "metrics": {"autoencoder_val_ssim": 0.8739361763000488, "steps": 1200}}
    text = _facts_html(info)
    assert "autoencoder_val_ssim 0.874" in text and "steps 1200" in text
    assert "0.87393" not in text
