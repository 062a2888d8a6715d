"""Data for every stage: the cohort, its subject-grouped splits and on-disk caches.

Each scan is read and preprocessed once (``read_scan`` + ``preprocess``) into
``CACHE/volumes/<key>.npy``, the key hashing the file's bytes and the preprocessing contract;
``manifest.json`` says which scan and contract each file holds. Latent means of the autoencoder
are cached the same way under ``CACHE/latents/<autoencoder hash>/``. Caches are written by one
process per node (Lightning's ``prepare_data``) with atomic renames, and read by every rank.

Training batches come from :class:`StepSampler`: an endless shuffled stream that is a pure
function of the seed and the position, so a run resumed at step k sees exactly the batches an
uninterrupted run would, and each DDP rank its own share.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from napari_ldae._files import atomic_write
from napari_ldae.data.cohort import Cohort, ScanRecord, read_cohort
from napari_ldae.data.preprocess import PreprocessContract
from napari_ldae.data.subject_splits import SPLITS, split_subjects
from napari_ldae.errors import TrainingError


# ----------------------------------------------------------------------------- cohort
def load_splits(config: Mapping[str, Any]) -> dict[str, Cohort]:
    """The cohort of ``data.cohort`` split by subject (``split_seed``, default ``seed``)."""
    data = config["data"]
    if not data.get("cohort"):
        raise TrainingError("no cohort given: pass --data COHORT (a BIDS-like folder or a CSV)")
    cohort = read_cohort(data["cohort"])
    seed = data["split_seed"] if data["split_seed"] is not None else config["seed"]
    splits = split_subjects(cohort, data["val_fraction"], data["test_fraction"], seed)
    if not len(splits["train"]):
        raise TrainingError(f"{data['cohort']}: the training split is empty")
    return splits


def write_splits(splits: Mapping[str, Cohort], path: Path) -> None:
    """Record which subject went where (provenance)."""
    table = {name: c.subjects() for name, c in splits.items()}
    atomic_write(path, (json.dumps(table, indent=1) + "\n").encode())


# ----------------------------------------------------------------------------- caches
def save_npy(path: Path, array: np.ndarray) -> None:
    """Write one cached array atomically (``_files.atomic_write``)."""
    atomic_write(path, lambda tmp: np.save(tmp, np.ascontiguousarray(array)))


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def volume_key(file_hash: str, contract: PreprocessContract) -> str:
    """Cache key of one preprocessed scan: its bytes and the contract."""
    spec = json.dumps(contract.to_dict(), sort_keys=True)
    return hashlib.sha256(f"{file_hash}|{spec}".encode()).hexdigest()[:24]


class _Preprocess(Dataset):
    """Read + preprocess scans (a Dataset so a DataLoader can run it in worker processes)."""

    def __init__(self, jobs: Sequence[tuple[str, Path]], contract: PreprocessContract) -> None:
        self.jobs, self.contract = list(jobs), contract

    def __len__(self) -> int:
        return len(self.jobs)

    def __getitem__(self, i: int) -> tuple[str, np.ndarray]:
        from napari_ldae.data.io import read_scan
        from napari_ldae.data.preprocess import preprocess

        key, path = self.jobs[i]
        return key, preprocess(read_scan(path), self.contract)


def cache_volumes(records: Sequence[ScanRecord], contract: PreprocessContract, cache: Path,
                  num_workers: int = 0, progress: bool = True) -> list[str]:
    """Preprocess every scan not cached yet; returns the cache key of each record."""
    folder = cache / "volumes"
    manifest_path = folder / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    keys, todo = [], []
    for r in records:
        sha = file_sha256(r.path)
        key = volume_key(sha, contract)
        keys.append(key)
        if not (folder / f"{key}.npy").is_file():
            todo.append((key, r.path))
        manifest[key] = {"source": str(r.path), "sha256": sha, "contract": contract.to_dict()}
    if todo:
        loader = DataLoader(_Preprocess(todo, contract), batch_size=None,
                            num_workers=num_workers)
        for key, volume in _bar(loader, progress, f"preprocessing {len(todo)} scans"):
            save_npy(folder / f"{key}.npy", volume)
    atomic_write(manifest_path, (json.dumps(manifest, indent=1) + "\n").encode())
    return keys


def volume_keys(records: Sequence[ScanRecord], contract: PreprocessContract,
                cache: Path) -> list[str]:
    """Cache keys of records already cached by :func:`cache_volumes` (no preprocessing)."""
    keys = [volume_key(file_sha256(r.path), contract) for r in records]
    missing = [r.path for r, k in zip(records, keys, strict=True)
               if not (cache / "volumes" / f"{k}.npy").is_file()]
    if missing:
        raise TrainingError(f"{len(missing)} scans are not in the cache {cache}, e.g. "
                            f"{missing[0]}")
    return keys


def load_volume(cache: Path, key: str) -> np.ndarray:
    return np.load(cache / "volumes" / f"{key}.npy")


def latent_folder(cache: Path, autoencoder_path: Path) -> Path:
    """Where an autoencoder's latents are cached: keyed by the weights that make a latent, so
    that a refined decoder (train/decoder.py) reuses its stage 1's latents."""
    from napari_ldae.core.autoencoder import ENCODER_PREFIXES
    from napari_ldae.train.common import load_safetensors

    state = load_safetensors(autoencoder_path, "autoencoder")
    h = hashlib.sha256()
    for name in sorted(k for k in state if k.startswith(ENCODER_PREFIXES)):
        h.update(name.encode())
        h.update(state[name].contiguous().numpy().tobytes())
    return cache / "latents" / h.hexdigest()[:24]


@torch.inference_mode()
def cache_latents(keys: Sequence[str], cache: Path, autoencoder_path: Path,
                  autoencoder_config: Mapping[str, Any], device: torch.device | str,
                  batch_size: int = 4, progress: bool = True) -> Path:
    """Cache the (unscaled) latent mean of every cached volume; returns the latent folder."""
    from napari_ldae.core.autoencoder import LatentAutoencoder
    from napari_ldae.train.common import load_safetensors

    folder = latent_folder(cache, autoencoder_path)
    todo = [k for k in dict.fromkeys(keys) if not (folder / f"{k}.npy").is_file()]
    if not todo:
        return folder
    ae = LatentAutoencoder(autoencoder_config, scale_factor=1.0)
    ae.net.load_state_dict(load_safetensors(autoencoder_path, "autoencoder"))
    ae.to(device)
    chunks = [todo[i:i + batch_size] for i in range(0, len(todo), batch_size)]
    for chunk in _bar(chunks, progress, f"encoding {len(todo)} scans"):
        x = torch.stack([torch.from_numpy(load_volume(cache, k)) for k in chunk])[:, None]
        z = ae.encode(x.to(device)).float().cpu().numpy()
        for k, zk in zip(chunk, z, strict=True):
            save_npy(folder / f"{k}.npy", zk)
    return folder


def scale_factor(latents: np.ndarray) -> float:
    """s = 1 / std(latents), over every element of the training latents."""
    std = float(np.std(latents.astype(np.float64)))
    if not std > 0:
        raise TrainingError("the training latents have zero spread; the autoencoder is broken")
    return 1.0 / std


def _bar(items, progress: bool, desc: str):
    if not progress:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, leave=False)


# ----------------------------------------------------------------------------- datasets
class CachedScans(Dataset):
    """Cached scans as ``{"image": (1, X, Y, Z)}`` and/or ``{"latent": s·μ (C, x, y, z)}``."""

    def __init__(self, cache: Path, keys: Sequence[str], latents: np.ndarray | None = None,
                 images: bool = True, truth: np.ndarray | None = None) -> None:
        self.cache, self.keys, self.latents, self.images = cache, list(keys), latents, images
        self.truth = truth

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        item = {"index": torch.tensor(i)}
        if self.images:
            item["image"] = torch.from_numpy(load_volume(self.cache, self.keys[i]))[None]
        if self.latents is not None:
            item["latent"] = torch.from_numpy(self.latents[i])
        if self.truth is not None:
            item["truth"] = torch.from_numpy(self.truth[i])
        return item


class StepSampler(Sampler[int]):
    """Endless shuffled indices, a pure function of ``(seed, position)``.

    The global stream concatenates one permutation of ``range(n)`` per pass (seeded by
    ``seed`` and the pass); rank ``r`` of ``world`` takes every ``world``-th entry from ``r``.
    ``start`` skips the first ``start`` entries of this rank's stream (the batches already
    trained on before a resume).
    """

    def __init__(self, n: int, seed: int, start: int = 0, rank: int = 0, world: int = 1) -> None:
        if n < 1:
            raise TrainingError("cannot sample from an empty training split")
        self.n, self.seed, self.start, self.rank, self.world = n, seed, start, rank, world

    def __iter__(self) -> Iterator[int]:
        i, cached_pass, perm = self.start, -1, None
        while True:
            g = i * self.world + self.rank
            p, j = divmod(g, self.n)
            if p != cached_pass:
                gen = torch.Generator().manual_seed(self.seed * 1_000_003 + p)
                perm, cached_pass = torch.randperm(self.n, generator=gen).tolist(), p
            yield perm[j]
            i += 1


class ShardSampler(Sampler[int]):
    """This rank's share of an evaluation set (no padding, no duplicates)."""

    def __init__(self, n: int, rank: int = 0, world: int = 1) -> None:
        self.indices = list(range(rank, n, world))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


# ----------------------------------------------------------------------------- datamodule
class CohortData(pl.LightningDataModule):
    """Cached images and/or latents of the cohort's splits, for one training stage.

    ``latents``: also cache and serve the autoencoder's latent means (``autoencoder_path``),
    normalised by the model's ``latent_norm``: multiplied by ``scale`` (``None``: s = 1/std of
    the training latents, see :attr:`scale_factor`), or for ``template_residual`` made
    ``(z − mean) / std`` with ``stats`` = (mean, std) (``None``: fitted on the training split,
    see :attr:`latent_stats`).
    """

    def __init__(self, config: Mapping[str, Any], stage: str, cache: Path, *,
                 images: bool = True, latents: bool = False,
                 autoencoder_path: Path | None = None, scale: float | None = None,
                 stats: tuple[torch.Tensor, torch.Tensor] | None = None,
                 truth: Sequence[str] | None = None) -> None:
        super().__init__()
        from napari_ldae.train.config import model_config

        self.config, self.stage, self.cache = config, stage, cache
        self.model = model_config(config)
        self.contract = PreprocessContract.from_dict(self.model["preprocessing"])
        self.splits = load_splits(config)
        self.images, self.latents = images, latents
        self.autoencoder_path, self.scale_factor = autoencoder_path, scale
        self.residual = self.model.get("latent_norm", "scale") == "template_residual"
        self.latent_stats = stats
        self.truth = list(truth or [])
        self.datasets: dict[str, CachedScans] = {}

    def records(self) -> list[ScanRecord]:
        return [r for name in SPLITS for r in self.splits[name]]

    def _index(self) -> Path:
        """Where prepare_data leaves each split's cache keys for every rank's setup."""
        ident = json.dumps([[str(r.path) for r in self.splits[s]] for s in SPLITS]
                           + [self.contract.to_dict()])
        return self.cache / "index" / f"{hashlib.sha256(ident.encode()).hexdigest()[:24]}.json"

    def prepare_data(self) -> None:
        """Once per node: preprocess the scans, then (if asked) encode them to latents."""
        keys = cache_volumes(self.records(), self.contract, self.cache,
                             self.config["data"]["num_workers"])
        sizes = [len(self.splits[s]) for s in SPLITS]
        bounds = np.cumsum([0, *sizes])
        index = {s: keys[bounds[i]:bounds[i + 1]] for i, s in enumerate(SPLITS)}
        atomic_write(self._index(), json.dumps(index).encode())
        if self.latents:
            cache_latents(keys, self.cache, self.autoencoder_path, self.model["autoencoder"],
                          self.trainer.strategy.root_device if self.trainer else "cpu",
                          self.config["latent"]["encode_batch_size"])

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        index = self._index()
        for name in SPLITS:
            keys = json.loads(index.read_text())[name] if index.is_file() else \
                volume_keys(self.splits[name].records, self.contract, self.cache)
            z = self._latents(keys) if self.latents else None
            self.datasets[name] = CachedScans(self.cache, keys, z, self.images,
                                              self._truth(name) if self.truth else None)
        if self.truth:  # standardised with the training split's statistics
            mean, std = self.datasets["train"].truth.mean(0), self.datasets["train"].truth.std(0)
            for ds in self.datasets.values():
                ds.truth = ((ds.truth - mean) / np.where(std > 0, std, 1.0)).astype(np.float32)
        if self.latents:
            self._normalise()

    def _normalise(self) -> None:
        train = self.datasets["train"].latents
        if self.scale_factor is None:
            self.scale_factor = 1.0 if self.residual else scale_factor(train)
        if self.residual and self.latent_stats is None:
            from napari_ldae.core.autoencoder import residual_stats

            self.latent_stats = residual_stats(torch.from_numpy(train))
        for ds in self.datasets.values():
            if self.residual:
                mean, std = (v.numpy() for v in self.latent_stats)
                ds.latents = ((ds.latents - mean) / std.reshape(-1, 1, 1, 1)).astype(np.float32)
            else:
                ds.latents = ds.latents * np.float32(self.scale_factor)

    def _truth(self, split: str) -> np.ndarray:
        """The oracle's ground-truth columns of a split's scans, (N, columns)."""
        rows = []
        for r in self.splits[split].records:
            values = {"age": r.age, "months": r.months, **r.extra}
            missing = [c for c in self.truth if values.get(c) is None]
            if missing:
                raise TrainingError(f"the oracle needs the cohort columns {missing}, which "
                                    f"{r.subject}/{r.session} lacks")
            rows.append([float(values[c]) for c in self.truth])
        return np.asarray(rows, np.float32).reshape(-1, len(self.truth))

    @functools.cached_property
    def _latent_folder(self) -> Path:
        return latent_folder(self.cache, self.autoencoder_path)  # reads the weights: once

    def _latents(self, keys: Sequence[str]) -> np.ndarray:
        if not keys:
            return np.zeros((0,), np.float32)
        return np.stack([np.load(self._latent_folder / f"{k}.npy") for k in keys])

    def _rank_world(self) -> tuple[int, int]:
        t = self.trainer
        return (t.global_rank, t.world_size) if t is not None else (0, 1)

    def train_dataloader(self) -> DataLoader:
        s = self.config[self.stage]
        rank, world = self._rank_world()
        done = self.trainer.global_step if self.trainer is not None else 0
        start = done * s["accumulate_grad_batches"] * s["batch_size"]
        sampler = StepSampler(len(self.datasets["train"]), self.config["seed"], start, rank,
                              world)
        return self._loader(self.datasets["train"], sampler, s["batch_size"])

    def val_dataloader(self) -> DataLoader:
        rank, world = self._rank_world()
        ds = self.datasets["val"]
        if not len(ds):
            print(f"note: {self.stage}: the validation split is empty; validating on the "
                  "training split")
            ds = self.datasets["train"]
        return self._loader(ds, ShardSampler(len(ds), rank, world),
                            self.config[self.stage]["batch_size"])

    def _loader(self, ds: Dataset, sampler: Sampler, batch_size: int) -> DataLoader:
        workers = self.config["data"]["num_workers"]
        return DataLoader(ds, batch_size=batch_size, sampler=sampler, num_workers=workers,
                          persistent_workers=workers > 0,
                          pin_memory=torch.cuda.is_available())
