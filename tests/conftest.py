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


@pytest.fixture(scope="session")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight `tiny` bundle made once per session (CLI and evaluate tests)."""
    from napari_ldae.core.presets import save_random_bundle

    return save_random_bundle(tmp_path_factory.mktemp("bundle") / "tiny", "tiny")


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module: the CI machine's two cores are shared."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def session(one_torch_thread, tmp_path_factory: pytest.TempPathFactory):
    """A CPU session on the shared random tiny bundle, with a codes cache of its module (modules
    that need another bundle define their own ``session``)."""
    from ldae_factory import shared_tiny_bundle

    from napari_ldae.session import Session

    return Session(shared_tiny_bundle(), device="cpu",
                   cache_dir=tmp_path_factory.mktemp("session-cache"))


@pytest.fixture(scope="module")
def cli_environment(one_torch_thread, tmp_path_factory: pytest.TempPathFactory):
    """One torch thread, one codes cache for the module and no bundle from the environment."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NAPARI_LDAE_CACHE", str(tmp_path_factory.mktemp("cache")))
        mp.delenv("NAPARI_LDAE_BUNDLE", raising=False)
        yield


@pytest.fixture(scope="session")
def evaluate_one_section():
    """``fn(bundle, cohort, out, section)``: ``napari-ldae evaluate`` of one section on the
    whole cohort, 2 steps: (report, Markdown)."""
    return _evaluate_one_section


def _evaluate_one_section(bundle: Path, cohort: Path, out: Path, section: str,
                          steps: int = 2) -> tuple[dict, str]:
    import json

    from napari_ldae.cli import main
    from napari_ldae.evaluate import SECTIONS

    others = [s for s in SECTIONS if s != section]
    rc = main(["evaluate", "--bundle", str(bundle), "--cohort", str(cohort), "--out",
               str(out / "r.json"), "--markdown", str(out / "r.md"), "--split", "all",
               "--steps", str(steps), "--skip", *others, "-q"])
    assert rc == 0
    return json.loads((out / "r.json").read_text()), (out / "r.md").read_text()
