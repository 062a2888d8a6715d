"""The benchmarks keep running: tiny mode (seconds) writes every JSON key and the Markdown.
No time is asserted (CI machines are not benchmark machines)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from benchmarks import report
from benchmarks.__main__ import SECTIONS
from benchmarks._common import MODES

ROOT = Path(__file__).resolve().parent.parent
MACHINE_KEYS = {"cpu", "cores", "torch", "threads", "commit", "date", "load_average"}


def test_tiny_run_writes_json_and_keeps_hand_written_markdown(tmp_path):
    out, md = tmp_path / "bench.json", tmp_path / "benchmarks.md"
    md.write_text(f"# Benchmarks\n\nintro\n\n{report.BEGIN}\nold numbers\n{report.END}\n\nafter\n")
    subprocess.run([sys.executable, "-m", "benchmarks", "--tiny", "--threads", "1", "--json",
                    str(out), "--markdown", str(md)], cwd=ROOT, check=True, timeout=300)

    results = json.loads(out.read_text())
    assert results["mode"] == "tiny" and set(results["machine"]) >= MACHINE_KEYS
    assert results["machine"]["threads"] == 1
    sections = results["sections"]
    assert list(sections) == list(SECTIONS)
    for name in ("dae", "sampler", "gui", "onto", "efficiency", "prepare"):
        assert sections[name]["skipped"] is None and sections[name]["rows"], name
    for name in ("dae", "sampler", "gui", "onto", "prepare"):
        assert all(isinstance(t["met"], bool) for t in sections[name]["targets"]), name
    assert sections["dae"]["rows"][0].keys() >= {"steps", "DAE / LDAE"}
    steps = [row["step"] for row in sections["prepare"]["rows"]]
    assert steps == ["skull stripping", "registration", "resampling and QC", "QC figure", "total"]

    text = md.read_text()
    assert text.startswith("# Benchmarks\n\nintro\n") and text.rstrip().endswith("after")
    assert "old numbers" not in text and "### Targets" in text
    assert all(s["title"] in text for s in sections.values())


def test_gpu_section_code_path_runs_on_cpu():
    """The GPU section's measurements, on the CPU with the tiny preset (no CUDA needed)."""
    from benchmarks import gpu

    section = gpu.measure(MODES["tiny"], "cpu")
    assert [row["precision"] for row in section.rows] == list(gpu.PRECISIONS)
    assert all(v > 0 for row in section.rows for k, v in row.items() if k.endswith("(s)"))
