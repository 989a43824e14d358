"""Seconds per segment of Step 1 on the CPU with the tiny random models, end to end.

    python benchmarks/bench_step1.py [--archs internvl qwen2_vl] [--max-new-tokens 16 128] [--batch-sizes 1 8]

Runs ``vera.vlm.step1.Step1Runner`` on the real clip RoadAccidents133 (181 frames,
12 segments, read from the .mp4) with the ``hf`` backend and each tiny model
(written once into --workdir), for every max-new-tokens × batch-size pair, into
a fresh output folder each time; model loading is not timed. A scripted backend
(no model) gives the cost of reading, resizing and bookkeeping alone. The
random models often run to max-new-tokens without stopping, so these are
close to worst-case times for that answer length.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CLIPS = ROOT.parent / "shared" / "data" / "clips"
CLIP_KEY, CLIP_LENGTH = "RoadAccidents133_x264_270_451", 181


def timed_run(backend, settings_kwargs: dict, output: Path) -> dict:
    from vera.data.annotations import TestVideo
    from vera.vlm.prompts import PRESET_QUESTIONS, load_template
    from vera.vlm.step1 import Step1Runner, Step1Settings

    shutil.rmtree(output, ignore_errors=True)  # a fresh folder: nothing to resume
    settings = Step1Settings(output=output, videos_dir=CLIPS, progress=False, **settings_kwargs)
    runner = Step1Runner(backend, load_template(None), PRESET_QUESTIONS["ucf"], settings)
    start = time.perf_counter()
    summary = runner.run([TestVideo(CLIP_KEY, CLIP_LENGTH)])
    seconds = time.perf_counter() - start
    return {"segments": summary.segments_generated, "seconds": round(seconds, 3),
            "s_per_segment": round(seconds / summary.segments_generated, 4)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archs", nargs="+", default=["internvl", "qwen2_vl"])
    parser.add_argument("--max-new-tokens", nargs="+", type=int, default=[16, 128])
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per setting; the fastest counts (default 1)")
    parser.add_argument("--workdir", type=Path, help="where the tiny models and outputs go (default: a temp dir)")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import torch

    from vera import tiny_model
    from vera.vlm.backends.hf import HFBackend
    from vera.vlm.backends.scripted import ScriptedBackend

    if args.threads:
        torch.set_num_threads(args.threads)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-step1-"))
    header = {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
              "load_average": os.getloadavg(), "python": platform.python_version(), "torch": torch.__version__}
    print(json.dumps(header))
    rows = []
    result = timed_run(ScriptedBackend(lambda request: "Output: 0"), {}, workdir / "out-scripted")
    rows.append({"backend": "scripted (no model)", "max_new_tokens": "-", "batch_size": 8, **result})
    print(json.dumps(rows[-1]))
    for arch in args.archs:
        folder = workdir / f"tiny-{arch}"
        if not (folder / "config.json").is_file():
            tiny_model.write_tiny_model(arch, folder)
        backend = HFBackend(str(folder), device="cpu", local_files_only=True)
        for max_new_tokens in args.max_new_tokens:
            for batch_size in args.batch_sizes:
                backend.max_batch_size = batch_size
                output = workdir / f"out-{arch}-{max_new_tokens}-{batch_size}"
                settings = {"batch_size": batch_size, "max_new_tokens": max_new_tokens}
                result = min((timed_run(backend, settings, output) for _ in range(args.repeat)),
                             key=lambda r: r["seconds"])
                statuses = Counter(e["parse_status"] for e in json.loads((output / f"{CLIP_KEY}.json").read_text())
                                   .values())
                result["truncated"] = statuses["truncated"]
                rows.append({"backend": f"hf, tiny {arch}", "max_new_tokens": max_new_tokens,
                             "batch_size": batch_size, **result})
                print(json.dumps(rows[-1]), flush=True)
    print("\n| backend | max new tokens | batch | segments (cut at the limit) | s / segment |\n|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['backend']} | {row['max_new_tokens']} | {row['batch_size']} | {row['segments']} "
              f"({row.get('truncated', '-')}) | {row['s_per_segment']:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
