"""Step 1's input pipeline alone: segments/s with 0, 1 and 2 input workers, from video files and JPEG folders.

    python benchmarks/bench_input.py [--clips DIR] [--workers 0 1 2] [--repeats 3] [--json OUT]

The measurement is ``bench_step1.input_pipeline`` (its docstring says what is timed). This script runs only
that, and imports nothing heavy before it: input workers are started by spawning, which runs the main
script's imports again in each worker, so a heavy main script would slow their start.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

CLIPS = Path(__file__).resolve().parents[2] / "shared" / "data" / "clips"


def main() -> int:
    parser = argparse.ArgumentParser(allow_abbrev=False, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=Path, default=CLIPS, help="folder of the real clips (*.mp4)")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--repeats", type=int, default=2, help="times the clips are read over per measurement")
    parser.add_argument("--json", type=Path, help="write the results here too")
    args = parser.parse_args()
    if not args.clips.is_dir():
        parser.error(f"no clips folder {args.clips}")
    from bench_step1 import cpu_name, input_pipeline

    results = {"machine": f"{cpu_name()}, {len(os.sched_getaffinity(0))} CPUs", "python": platform.python_version(),
               "load_average_before": os.getloadavg()}
    print(json.dumps(results), flush=True)
    results["rows"] = input_pipeline(args.clips, workers=tuple(args.workers), repeats=args.repeats)
    results["load_average_after"] = os.getloadavg()
    print(f"\n{results['machine']}; load average {results['load_average_before'][0]:.1f} before, "
          f"{results['load_average_after'][0]:.1f} after\n")
    rates = list(results["rows"][0]["with_model_per_s"]) if results["rows"] else []
    print("| frames from | input workers | read + resize (seg/s) | normalise, main process (seg/s) | together (seg/s) | "
          + " | ".join(f"with a {rate} seg/s model" for rate in rates) + " |")
    print("|---" * (5 + len(rates)) + "|")
    for row in results["rows"]:
        print(f"| {row['source']} | {row['workers']} | {row['read_resize_per_s']:.1f} | {row['normalise_per_s']:.1f} "
              f"| {row['total_per_s']:.1f} | " + " | ".join(f"{row['with_model_per_s'][rate]:.1f}" for rate in rates)
              + " |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
