"""Train the structure network of :mod:`napari_ldae.data.structures` on synthetic scans.

``python -m napari_ldae.train.structures examples DIR --subjects N --first-seed S``
writes one ``.npz`` per synthetic subject: each visit rendered at 1.5, 3 and 6 mm (both varieties
that the project's cohorts use, alternately), sampled on the network's box exactly as a scan to be
measured is, with the truth masks' fractions on the box.

``python -m napari_ldae.train.structures fit DIR OUT --steps N [--resume]`` trains the U-Net on
them (soft Dice plus binary cross-entropy on the fractions, plus the structures' relative volume
error), with
MONAI's random contrast (gamma), blur and left–right flips, checkpointing every 250 steps, and
writes ``OUT/structures.safetensors`` with how it was made in its metadata.
"""

from __future__ import annotations

import argparse
import json
import math
from multiprocessing import Pool
from pathlib import Path

import numpy as np

GRIDS_MM = (1.5, 3.0, 6.0)
VISITS = 3
CHECKPOINT_EVERY = 250
#: Weight of the relative volume error against the voxel-wise cross-entropy.
VOLUME_WEIGHT = 0.1


def _example(job: tuple[int, str]) -> dict[str, np.ndarray]:
    from napari_ldae.data.structures import SHAPE, box_affine, box_input
    from napari_ldae.data.synthetic_subject import make_subject

    seed, variety = job
    fine = make_subject(seed, GRIDS_MM[0], VISITS, variety=variety, labels=True)
    coarse = [make_subject(seed, g, VISITS, variety=variety).visits for g in GRIDS_MM[1:]]
    inputs, labels, truth = [], [], []
    for f, *others in zip(fine.visits, *coarse, strict=True):
        for visit in (f, *others):
            inputs.append(box_input(visit.data, visit.affine).astype(np.float16))
        # the box is a sub-grid of the 1.5 mm grid: its labels are a slice
        start = np.rint(np.linalg.inv(f.affine) @ box_affine()[:, 3])[:3].astype(int)
        labels.append(f.labels[(slice(None), *(slice(s, s + n) for s, n in zip(start, SHAPE,
                                                                             strict=True)))])
        truth.append([f.truth["ventricle_ml"], f.truth["hippocampus_ml"]])
    return {"inputs": np.stack(inputs), "labels": np.stack(labels).astype(np.float16),
            "truth": np.asarray(truth, np.float32), "seed": np.asarray(seed)}


def make_examples(out: Path, subjects: int, first_seed: int, workers: int = 2) -> None:
    """One ``sub-SEED.npz`` per subject (skipped when present, so it resumes)."""
    from tqdm import tqdm

    out.mkdir(parents=True, exist_ok=True)
    jobs = [(first_seed + i, ("realistic", "registered")[i % 2]) for i in range(subjects)
            if not (out / f"sub-{first_seed + i}.npz").exists()]
    with Pool(workers) as pool:
        for example in tqdm(pool.imap_unordered(_example, jobs), total=len(jobs),
                            desc="synthetic subjects"):
            tmp = out / f".sub-{int(example['seed'])}.tmp.npz"
            np.savez(tmp, **example)
            tmp.replace(out / f"sub-{int(example['seed'])}.npz")


def _load(folder: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Inputs (N, X, Y, Z), the index of each input's labels, and labels (M, 2, X, Y, Z),
    filled in place (a few GB for hundreds of subjects: no second copy while stacking)."""
    from napari_ldae.data.structures import SHAPE

    paths = sorted(folder.glob("sub-*.npz"))
    counts = []
    for path in paths:
        with np.load(path) as ex:
            counts.append(len(ex["truth"]))  # one row per visit: a small array to read
    grids = len(GRIDS_MM)
    inputs = np.empty((sum(counts) * grids, *SHAPE), np.float16)
    labels = np.empty((sum(counts), 2, *SHAPE), np.float16)
    first = 0
    for path, n in zip(paths, counts, strict=True):
        with np.load(path) as ex:
            inputs[first * grids:(first + n) * grids] = ex["inputs"]
            labels[first:first + n] = ex["labels"]
        first += n
    return inputs, np.repeat(np.arange(len(labels)), grids), labels


def _augment():
    from monai.transforms import (
        Compose,
        RandAdjustContrastd,
        RandFlipd,
        RandGaussianSmoothd,
        RandScaleIntensityd,
    )

    return Compose([
        RandAdjustContrastd("image", prob=0.5, gamma=(0.8, 1.25)),
        RandGaussianSmoothd("image", prob=0.3, sigma_x=(0.3, 1.2), sigma_y=(0.3, 1.2),
                            sigma_z=(0.3, 1.2)),
        RandScaleIntensityd("image", factors=0.05, prob=0.5),
        RandFlipd(("image", "label"), prob=0.5, spatial_axis=0),  # both structures bilateral
    ])


def _batch(rng, inputs, owner, labels, size, augment):
    import torch

    pick = rng.integers(len(inputs), size=size)
    xs, ys = [], []
    for i in pick:
        item = augment({"image": torch.from_numpy(inputs[i].astype(np.float32))[None],
                        "label": torch.from_numpy(labels[owner[i]].astype(np.float32))})
        xs.append(torch.as_tensor(item["image"]))
        ys.append(torch.as_tensor(item["label"]))
    return torch.stack(xs), torch.stack(ys)


def _loss(logits, y):
    import torch.nn.functional as F
    from monai.losses import DiceLoss

    p = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, y)
    dice = DiceLoss(sigmoid=True)(logits, y)
    volume = ((p.sum((2, 3, 4)) - y.sum((2, 3, 4))).abs() / y.sum((2, 3, 4)).clamp_min(1.0))
    return ce + dice + VOLUME_WEIGHT * volume.mean()


def fit(examples: Path, out: Path, steps: int, batch: int = 2, lr: float = 2e-3,
        resume: bool = False, seed: int = 0) -> Path:
    """Train, checkpointing to ``out/checkpoint.pt``; returns the written weights."""
    import torch
    from safetensors.torch import save_file
    from tqdm import tqdm

    from napari_ldae.data.structures import build_network

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    inputs, owner, labels = _load(examples)
    net = build_network()
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    start, runs = 0, []
    out.mkdir(parents=True, exist_ok=True)
    ckpt = out / "checkpoint.pt"
    if resume and ckpt.exists():
        state = torch.load(ckpt, weights_only=True)
        net.load_state_dict(state["net"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        start = int(state["step"])
        runs = list(state.get("runs", [[0, start]]))
        rng = np.random.default_rng([seed, start])
    runs.append([start, steps])  # with more steps, the cosine is the longer run's from here
    augment = _augment().set_random_state(seed=int(rng.integers(2**32)))
    net.train()
    bar = tqdm(range(start, steps), initial=start, total=steps, desc="structure network")
    for step in bar:
        x, y = _batch(rng, inputs, owner, labels, batch, augment)
        loss = _loss(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if (step + 1) % CHECKPOINT_EVERY == 0 or step + 1 == steps:
            tmp = out / "checkpoint.tmp"
            torch.save({"net": net.state_dict(), "opt": opt.state_dict(),
                        "sched": sched.state_dict(), "step": step + 1, "runs": runs}, tmp)
            tmp.replace(ckpt)
    info = {"steps": steps, "batch": batch, "lr": lr, "examples": len(inputs),
            "subjects": len(list(examples.glob("sub-*.npz"))), "grids_mm": list(GRIDS_MM),
            "visits": VISITS, "volume_weight": VOLUME_WEIGHT, "seed": seed,
            "runs": runs or [[0, steps]]}
    weights = out / "structures.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, weights,
              metadata={"training": json.dumps(info)})
    return weights


def validate(examples: Path, net=None) -> dict[str, dict[str, float]]:
    """Mean (max) absolute relative volume error per grid and structure on ``examples``."""
    import torch

    from napari_ldae.data.structures import STRUCTURES, VOXEL_ML, shipped_network

    net = (net or shipped_network()).eval()
    errors: dict[str, list[np.ndarray]] = {f"{g:g} mm": [] for g in GRIDS_MM}
    for path in sorted(examples.glob("sub-*.npz")):
        with np.load(path) as ex:
            x = torch.from_numpy(ex["inputs"].astype(np.float32))[:, None]
            with torch.inference_mode():
                ml = net(x).sigmoid().sum((2, 3, 4)).double().numpy() * VOXEL_ML
            for i, grid in enumerate(errors):
                errors[grid].append(ml[i::len(GRIDS_MM)] / ex["truth"] - 1.0)
    out = {}
    for grid, e in errors.items():
        e = np.abs(np.concatenate(e))
        out[grid] = {name: f"{e[:, k].mean():.3f} ({e[:, k].max():.3f})"
                     for k, name in enumerate(STRUCTURES)}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m napari_ldae.train.structures",
                                     description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    ex = sub.add_parser("examples")
    ex.add_argument("out", type=Path)
    ex.add_argument("--subjects", type=int, required=True)
    ex.add_argument("--first-seed", type=int, required=True)
    ex.add_argument("--workers", type=int, default=2)
    ft = sub.add_parser("fit")
    ft.add_argument("examples", type=Path)
    ft.add_argument("out", type=Path)
    ft.add_argument("--steps", type=int, required=True)
    ft.add_argument("--batch", type=int, default=2)
    ft.add_argument("--lr", type=float, default=2e-3)
    ft.add_argument("--resume", action="store_true")
    ft.add_argument("--val", type=Path, help="examples to report the volume error on")
    args = parser.parse_args(argv)
    if args.command == "examples":
        make_examples(args.out, args.subjects, args.first_seed, args.workers)
        return 0
    weights = fit(args.examples, args.out, args.steps, args.batch, args.lr, args.resume)
    print(weights)
    if args.val:
        from napari_ldae.data.structures import load_network

        print(json.dumps(validate(args.val, load_network(weights)), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
