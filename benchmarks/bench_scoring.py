"""Time Steps 2-3 and the evaluation over the full UCF-Crime test set (290 videos, 1,111,808 frames).

    python benchmarks/bench_scoring.py [--width 1024] [--workdir DIR]

Generates synthetic scores and features for every video of UCF_Eval.json
(once, in --workdir), then times ``vera.evaluate.evaluate`` stage by stage
and, for comparison, the naive per-segment loop of tests/released_reference.py
(a transcription of the released script). Each run happens in a fresh process
so that peak memory (max RSS) is its own.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

ANNOTATIONS = ROOT.parent / "shared" / "data" / "annotations" / "UCF_Eval.json"


def run_ours(workdir: Path) -> dict:
    import numpy as np

    import vera.scoring.steps as scoring
    from vera.data.annotations import load_test_annotations
    from vera.scoring.evaluate import evaluate
    from vera.scoring.steps import ScoringOptions

    stages = {"similarity (BLAS)": 0.0, "neighbours": 0.0}
    for name, attribute in (("similarity (BLAS)", "cosine_similarity"), ("neighbours", "released_neighbours")):
        original = getattr(scoring, attribute)

        def timed(*args, _original=original, _name=name):
            start = time.perf_counter()
            result = _original(*args)
            stages[_name] += time.perf_counter() - start
            return result

        setattr(scoring, attribute, timed)
    videos = load_test_annotations(ANNOTATIONS, "ucf")
    start_cpu, start = time.process_time(), time.perf_counter()
    evaluation = evaluate(videos, workdir / "scores", workdir / "features", ScoringOptions())
    wall, cpu = time.perf_counter() - start, time.process_time() - start_cpu
    return {"auc": evaluation.metrics["value"], "wall_s": wall, "cpu_s": cpu, **{k: v for k, v in stages.items()},
            "frames": int(sum(np.size(v.scores) for v in evaluation.videos))}


def run_reference(workdir: Path) -> dict:
    import numpy as np
    from sklearn.metrics import auc, roc_curve

    from released_reference import reference_labels, reference_video

    entries = json.loads(ANNOTATIONS.read_text())
    start_cpu, start = time.process_time(), time.perf_counter()
    all_scores, all_labels = [], []
    for entry in entries:
        key = Path(entry["video"]).name.split(".")[0]
        content = json.loads((workdir / "scores" / f"{key}.json").read_text())
        all_scores.extend(reference_video([int(c) for c in content], [content[c]["end"] for c in content],
                                          [content[c]["score"] for c in content],
                                          np.load(workdir / "features" / f"{key}.npy"), "ucf", "auc"))
        all_labels.extend(reference_labels(entry["length"], entry["temporal_label"]))
    fpr, tpr, _ = roc_curve(all_labels, all_scores)
    value = auc(fpr, tpr)
    return {"auc": value, "wall_s": time.perf_counter() - start, "cpu_s": time.process_time() - start_cpu}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--width", type=int, default=1024, help="feature width (ImageBind: 1024)")
    parser.add_argument("--workdir", type=Path, help="where generated inputs go (default: a temporary folder)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", choices=["ours", "reference"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        result = (run_ours if args.child == "ours" else run_reference)(args.workdir)
        result["max_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(result))
        return
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="vera-bench-"))
    if not (workdir / "features").is_dir():
        from vera.data.annotations import load_test_annotations
        from vera.scoring.synthetic import write_synthetic_inputs

        write_synthetic_inputs(load_test_annotations(ANNOTATIONS, "ucf"), workdir / "scores", workdir / "features",
                               width=args.width)
    for child in ("ours", "reference"):
        runs = [json.loads(subprocess.run([sys.executable, __file__, "--child", child, "--workdir", str(workdir)],
                                          check=True, capture_output=True, text=True).stdout)
                for _ in range(args.repeats if child == "ours" else 1)]
        best = min(runs, key=lambda r: r["wall_s"])
        print(child, json.dumps({k: round(v, 3) if isinstance(v, float) and k != "auc" else v for k, v in best.items()}))


if __name__ == "__main__":
    main()
