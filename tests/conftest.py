"""Fixtures shared by several test modules."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic BIDS-like cohort made once per session: 6 subjects (3 CN, 3 AD), 2 visits
    each, 6 mm (32×40×32 scans) — what the `tiny` training config expects."""
    from napari_ldae.data.synthetic import make_cohort

    return make_cohort(tmp_path_factory.mktemp("tiny_cohort") / "bids", subjects=6, seed=0,
                       spacing=6.0, visits=(2, 2))


@pytest.fixture(scope="session")
def longitudinal_cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic cohort with visit triplets: 4 subjects (2 CN, 2 AD), 3 visits each, 6 mm,
    with the true ventricle volumes (the evaluation tests)."""
    from napari_ldae.data.synthetic import make_cohort

    return make_cohort(tmp_path_factory.mktemp("longitudinal_cohort") / "bids", subjects=4,
                       seed=1, spacing=6.0, visits=(3, 3))
