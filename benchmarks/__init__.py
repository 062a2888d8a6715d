"""Speed and memory benchmarks of napari-ldae, reported as ratios measured within one run.

``python -m benchmarks --json OUT.json [--quick] [--tiny] [--only NAME ...]
[--markdown docs/benchmarks.md]``

Sections (one module each): ``dae`` (LDAE against a voxel-space DAE), ``sampler`` (our batched
inference sampler against a plain one), ``gui`` (slider latency, sweep scrubbing and memory in
the real manipulate widget), ``efficiency`` (FLOP/s of a decode against a dense matmul) and
``gpu`` (paper scale; skipped without CUDA). Every comparison runs its cases in interleaved
rounds and reports medians, so that a busy machine slows all cases alike.
"""
