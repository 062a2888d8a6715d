"""``python -m benchmarks --json OUT.json [--quick] [--tiny] [--only NAME ...]
[--markdown docs/benchmarks.md]``."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shlex
import sys
import time
from pathlib import Path

import torch

from benchmarks import report
from benchmarks._common import MODES, machine_facts

#: In this order: the GUI first, so that its peak RSS is the GUI session's, not a DAE's.
SECTIONS = ("gui", "onto", "dae", "sampler", "efficiency", "gpu", "prepare")


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Speed and memory of napari-ldae as ratios measured within one run.")
    parser.add_argument("--json", required=True, type=Path, metavar="OUT",
                        help="results file (rewritten after every section)")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true",
                      help="fewer rounds, strengths and slider moves (minutes)")
    size.add_argument("--tiny", action="store_true",
                      help="tiny models, one round: checks that the code runs (seconds)")
    parser.add_argument("--only", nargs="+", choices=SECTIONS, metavar="NAME",
                        help=f"sections to run, of {', '.join(SECTIONS)} (default: all)")
    parser.add_argument("--markdown", type=Path, metavar="MD",
                        help="also render the results into this Markdown file")
    parser.add_argument("--note", default="", help="a remark printed with the results")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    mode = MODES["tiny" if args.tiny else "quick" if args.quick else "full"]
    command = "python -m benchmarks " + shlex.join(sys.argv[1:] if argv is None else argv)
    results = {"command": command, "mode": mode.name, "note": args.note,
               "machine": machine_facts(), "sections": {}}
    for name in [s for s in SECTIONS if s in (args.only or SECTIONS)]:
        print(f"benchmarks: {name} ({mode.name} mode)…", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        section = importlib.import_module(f"benchmarks.{name}").run(mode).to_dict()
        results["sections"][name] = {**section, "seconds": round(time.perf_counter() - t0, 1)}
        results["machine"]["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    if args.markdown:
        report.write(results, args.markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
