"""Paper scale on a GPU: a random paper-size model at 128×160×128, encode at T = 50, decode at
T = 10 / 50 / 100, peak memory, fp32 against bf16. Skipped (with a note) without CUDA.
"""

from __future__ import annotations

import torch

from benchmarks._common import Mode, Section, interleaved, median, random_codes, sync
from napari_ldae.core.presets import random_model

ENCODE_STEPS = 50
DECODE_STEPS = (10, 50, 100)
PRECISIONS = ("fp32", "bf16")


def run(mode: Mode) -> Section:
    if not torch.cuda.is_available():
        return Section("Paper scale on a GPU", "", skipped="no CUDA device on this machine: "
                       "run `python -m benchmarks --only gpu` where one is")
    return measure(mode, "cuda:0")


def measure(mode: Mode, device: str) -> Section:
    """The GPU section on ``device`` (tiny mode: the tiny preset and its step counts)."""
    preset = mode.preset if mode.name == "tiny" else "paper"
    encode_steps = 2 if mode.name == "tiny" else ENCODE_STEPS
    decode_steps = mode.steps if mode.name == "tiny" else DECODE_STEPS
    model = random_model(preset, device=device)[0]
    volume = torch.rand(1, 1, *model.input_shape, device=device)
    codes = random_codes(model)
    section = Section(
        "Paper scale on a GPU",
        f"{preset} preset with random weights at {'×'.join(map(str, model.input_shape))}, batch "
        f"1, {torch.cuda.get_device_name(0) if device.startswith('cuda') else device}.")
    for precision in PRECISIONS:
        model.to(device, precision)
        row = {"precision": precision}
        ops = {f"encode T={encode_steps}": lambda: model.encode(volume, encode_steps),
               **{f"decode T={t}": (lambda t=t: model.decode(codes, t)) for t in decode_steps}}
        for name, op in ops.items():
            row[f"{name} (s)"], row[f"{name} peak (GiB)"] = _time_and_peak(op, mode, device)
        section.rows.append(row)
    fp32, bf16 = section.rows
    key = f"decode T={decode_steps[-1]} (s)"
    section.notes.append(f"bf16 / fp32 speed-up at T = {decode_steps[-1]}: "
                         f"{fp32[key] / bf16[key]:.2f}×")
    return section


def _time_and_peak(op, mode: Mode, device: str) -> tuple[float, float]:
    def timed() -> None:
        op()
        sync(device)

    timed()  # warm-up
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    seconds = median(interleaved({"op": timed}, mode.reps)["op"])
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else 0.0
    return seconds, peak
