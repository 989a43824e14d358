"""Time Steps 2-3 and the evaluation over the full UCF-Crime test set (290 videos, 1,111,808 frames).

    python benchmarks/bench_scoring.py [--width 1024] [--workdir DIR] [--annotations FILE] [--repeats 3]

Generates synthetic scores and features for every video of UCF_Eval.json
(once, in --workdir), then measures, each in a fresh process (so that peak
memory, max RSS, is its own):

- compare: in ONE process, on the same inputs, alternating, --repeats times
  each (the fastest counts): the released algorithm (the per-segment loop of
  tests/reference/released.py, a transcription of the released script, with
  sklearn's ROC AUC), a plain ``compute_auc.py`` run (its ``main``, writing
  every output and the curves), and ``reproduce_tables.py``'s sweep of the
  default setting alone and of every table; prints the ratio of the plain
  run to the released algorithm and the cost of each extra sweep setting;
- floor: read the features and compute the float32 similarity products;
- ours: ``vera.scoring.evaluate.evaluate`` stage by stage;
- cli: one plain ``Inference/compute_auc.py`` run, a whole process, writing its outputs;
- sweep: the sweep of every table against a sweep of the default setting alone;
- reference: the released algorithm alone.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

ANNOTATIONS = ROOT.parent / "shared" / "data" / "annotations" / "UCF_Eval.json"


def run_floor(workdir: Path, annotations: Path) -> dict:
    import numpy as np

    from vera.data.annotations import load_test_annotations
    from vera.scoring.steps import cosine_similarity

    keys = [video.key for video in load_test_annotations(annotations, "ucf")]
    start_cpu, start = time.process_time(), time.perf_counter()
    for key in keys:
        cosine_similarity(np.load(workdir / "features" / f"{key}.npy"))
    return {"wall_s": time.perf_counter() - start, "cpu_s": time.process_time() - start_cpu}


def run_ours(workdir: Path, annotations: Path) -> dict:
    import numpy as np

    import vera.scoring.steps as steps
    from vera.data.annotations import load_test_annotations
    from vera.scoring.evaluate import evaluate
    from vera.scoring.steps import ScoringOptions

    stages = {"similarity (BLAS)": 0.0, "neighbours": 0.0}
    for name, attribute in (("similarity (BLAS)", "cosine_similarity"), ("neighbours", "released_neighbours")):
        original = getattr(steps, attribute)

        def timed(*args, _original=original, _name=name, **kwargs):
            start = time.perf_counter()
            result = _original(*args, **kwargs)
            stages[_name] += time.perf_counter() - start
            return result

        setattr(steps, attribute, timed)
    videos = load_test_annotations(annotations, "ucf")
    start_cpu, start = time.process_time(), time.perf_counter()
    evaluation = evaluate(videos, workdir / "scores", workdir / "features", ScoringOptions())
    wall, cpu = time.perf_counter() - start, time.process_time() - start_cpu
    return {"auc": evaluation.metrics["value"], "wall_s": wall, "cpu_s": cpu, **stages,
            "frames": int(sum(np.size(v.scores) for v in evaluation.videos))}


def _sweep_settings(tables, base) -> int:
    from dataclasses import replace

    from vera.scoring.sweep import _scoring_part

    return len({(_scoring_part(replace(base, **{k: v for k, v in c.setting.items() if k != "scores"})),
                 c.setting.get("classes"), c.setting.get("with_normal")) for t in tables for c in t.cells})


def run_compare(workdir: Path, annotations: Path, repeats: int = 3) -> dict:
    """The released algorithm, a plain compute_auc.py run and the sweep, alternating in this one process."""
    import importlib

    from vera.data.annotations import NORMAL_CLASS, load_test_annotations
    from vera.scoring.steps import ScoringOptions
    from vera.scoring.sweep import sweep
    from vera.scoring.tables import reproduce

    from fixtures.scripts import load_script

    compute_auc = load_script("compute_auc")
    output = Path(tempfile.mkdtemp(prefix="vera-bench-out-"))
    argv = ["--dataset", "ucf", "--annotations", str(annotations), "--scores", str(workdir / "scores"),
            "--features", str(workdir / "features"), "--output", str(output), "--overwrite"]
    videos = load_test_annotations(annotations, "ucf")
    classes = tuple(sorted({video.video_class for video in videos} - {NORMAL_CLASS}))
    base = ScoringOptions()
    names = ("released", "compute_auc", "sweep_one", "sweep_all")
    times: dict[str, list[float]] = {f"{name}_{clock}": [] for name in names for clock in ("s", "cpu_s")}
    released_auc = settings = None

    def timed(name, work):
        start, start_cpu = time.perf_counter(), time.process_time()
        result = work()
        times[f"{name}_s"].append(time.perf_counter() - start)
        times[f"{name}_cpu_s"].append(time.process_time() - start_cpu)
        return result

    def plain_run():
        with contextlib.redirect_stdout(io.StringIO()):
            compute_auc.main(argv)

    for _ in range(repeats):
        released_auc = timed("released", lambda: run_reference(workdir, annotations))["auc"]
        timed("compute_auc", plain_run)
        timed("sweep_one", lambda: sweep(videos, workdir / "scores", workdir / "features", [base]))
        tables = timed("sweep_all", lambda: reproduce(videos, base, classes, workdir / "scores", workdir / "features"))
        settings = _sweep_settings(tables, base)
    best = {name: min(values) for name, values in times.items()}
    ours_auc = json.loads((output / "metrics.json").read_text())["value"]
    return {**best, "all_runs": times, "settings": settings, "auc_equal": ours_auc == released_auc,
            "compute_auc_over_released": best["compute_auc_s"] / best["released_s"],
            "compute_auc_over_released_cpu": best["compute_auc_cpu_s"] / best["released_cpu_s"],
            "per_additional_setting_s": (best["sweep_all_s"] - best["sweep_one_s"]) / (settings - 1),
            "per_additional_setting_cpu_s": (best["sweep_all_cpu_s"] - best["sweep_one_cpu_s"]) / (settings - 1)}


def run_sweep(workdir: Path, annotations: Path) -> dict:
    from vera.data.annotations import NORMAL_CLASS, load_test_annotations
    from vera.scoring.steps import ScoringOptions
    from vera.scoring.sweep import sweep
    from vera.scoring.tables import reproduce

    videos = load_test_annotations(annotations, "ucf")
    base = ScoringOptions()
    start = time.perf_counter()
    sweep(videos, workdir / "scores", workdir / "features", [base])
    single = time.perf_counter() - start
    classes = tuple(sorted({video.video_class for video in videos} - {NORMAL_CLASS}))
    start_cpu, start = time.process_time(), time.perf_counter()
    tables = reproduce(videos, base, classes, workdir / "scores", workdir / "features")
    wall, cpu = time.perf_counter() - start, time.process_time() - start_cpu
    settings = _sweep_settings(tables, base)
    return {"single_setting_s": single, "all_tables_s": wall, "all_tables_cpu_s": cpu, "settings": settings,
            "per_additional_setting_s": (wall - single) / (settings - 1)}


def run_cli(workdir: Path, annotations: Path) -> dict:
    output = Path(tempfile.mkdtemp(prefix="vera-bench-out-"))
    start = time.perf_counter()
    subprocess.run([sys.executable, str(ROOT / "Inference" / "compute_auc.py"), "--dataset", "ucf", "--annotations",
                    str(annotations), "--scores", str(workdir / "scores"), "--features", str(workdir / "features"),
                    "--output", str(output)], check=True, capture_output=True)
    wall = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime, "child_max_rss_mb": usage.ru_maxrss / 1024}


def run_floor_process(workdir: Path, annotations: Path) -> dict:
    """A whole process that imports what a scoring run imports, reads the inputs and computes only the products."""
    code = ("import sys, numpy as np; sys.path.insert(0, sys.argv[3]); from bench_scoring import run_floor; "
            "import vera.scoring.evaluate; from pathlib import Path; run_floor(Path(sys.argv[1]), Path(sys.argv[2]))")
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code, str(workdir), str(annotations), str(Path(__file__).parent)],
                   check=True, capture_output=True)
    return {"wall_s": time.perf_counter() - start}


def run_reference(workdir: Path, annotations: Path) -> dict:
    import numpy as np
    from sklearn.metrics import auc, roc_curve

    from reference.released import reference_labels, reference_video

    entries = json.loads(annotations.read_text())
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


CHILDREN = {"compare": run_compare, "floor": run_floor, "floor_process": run_floor_process, "ours": run_ours, "cli": run_cli,
            "sweep": run_sweep, "reference": run_reference}


def main() -> None:
    parser = argparse.ArgumentParser(allow_abbrev=False, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--width", type=int, default=1024, help="feature width (ImageBind: 1024)")
    parser.add_argument("--workdir", type=Path, help="where generated inputs go (default: a temporary folder)")
    parser.add_argument("--annotations", type=Path, default=ANNOTATIONS, help="UCF_Eval.json")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each measurement; the fastest counts")
    parser.add_argument("--only", nargs="+", choices=list(CHILDREN), default=list(CHILDREN))
    parser.add_argument("--child", choices=list(CHILDREN), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        extra = {"repeats": args.repeats} if args.child == "compare" else {}
        result = CHILDREN[args.child](args.workdir, args.annotations, **extra)
        result["max_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(result))
        return
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="vera-bench-"))
    if not (workdir / "features").is_dir():
        from vera.data.annotations import load_test_annotations
        from vera.scoring.synthetic import write_synthetic_inputs

        write_synthetic_inputs(load_test_annotations(args.annotations, "ucf"), workdir / "scores",
                               workdir / "features", width=args.width)
    print(f"load average before: {os.getloadavg()}")
    for child in args.only:
        runs = [json.loads(subprocess.run([sys.executable, __file__, "--child", child, "--workdir", str(workdir),
                                           "--annotations", str(args.annotations), "--repeats", str(args.repeats)],
                                          check=True, capture_output=True, text=True).stdout)
                for _ in range(1 if child in ("reference", "compare") else args.repeats)]
        best = min(runs, key=lambda r: r.get("wall_s", r.get("all_tables_s", r.get("compute_auc_s", 0))))
        print(child, json.dumps({k: round(v, 3) if isinstance(v, float) and k != "auc" else v for k, v in best.items()}))
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
