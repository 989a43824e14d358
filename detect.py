"""VERA on your own videos, one command: Step 1, ImageBind features, Steps 2-3, then an HTML report.

    python detect.py my_videos/ clip.mp4 --model OpenGVLab/InternVL3-8B-hf --preset ucf \\
        --features imagebind_huge.pth --output runs/mine
    python detect.py ../shared/data/clips --model runs/tiny-internvl --random-init --tiny \\
        --max-new-tokens 8 --output runs/smoke          # a smoke run on CPU, no weights needed

Frames are read straight from the files; no annotation is needed (--labels CSV adds a ground truth, as in
Data/make_annotations.py). Without --model the paper's InternVL2-8B is used, downloaded and converted once
into ~/.cache/vera (or $VERA_CACHE). Steps 2-3 follow the paper protocol with --dataset's hyper-parameters.
Writes OUTPUT/input, step1, features, scores and report/index.html; rerunning resumes where it stopped.
Every video is decoded and measured before Step 1: one that does not decode or is too short to score stops
the run, naming it, unless --skip-bad-videos leaves it out (named on the console and in the report).
"""

from __future__ import annotations

from vera.options import Command, OneOf

COMMAND = Command(__doc__, [
    "detect_inputs", "detect_model", OneOf(("questions", "preset"), required=False), "prompt_file", "frame_layout",
    OneOf(("detect_features", "random_init", "skip_step2")), "tiny", "output", "detect_dataset", "labels", "fps",
    "max_new_tokens", "step1_batch_size", "device", "dtype", "workers", "input_workers", "top_k", "max_explanations",
    "detect_skip_bad_videos", "overwrite", "no_progress",
], prog="detect.py")


def main(argv: list[str] | None = None) -> int:
    args = COMMAND.parse(argv)
    from vera.errors import VeraError

    if args.tiny and not args.random_init:
        raise VeraError("argument --tiny: only with --random-init (a small random ImageBind, for smoke runs)")
    from vera.data.own_videos import video_files
    from vera.vlm.backends.hub import locate_model
    from vera.vlm.paper_model import paper_model

    video_files(args.inputs)  # a missing path or a file that is no video is said at once

    # The model is found (or its absence explained) before any video is decoded.
    model, local_files_only = locate_model(args.model if args.model is not None else paper_model())
    from vera.data.loading import resolve_workers
    from vera.detection import DetectSettings, run_detect
    from vera.vlm.context import prompt_source
    from vera.vlm.prompts import load_questions, load_template, preset_questions

    settings = DetectSettings(
        inputs=args.inputs, output=args.output, model=model, local_files_only=local_files_only,
        questions=load_questions(args.questions) if args.questions else preset_questions(args.preset or "ucf"),
        template=load_template(args.prompt_file),
        template_source=str(args.prompt_file) if args.prompt_file else "default", frame_layout=args.frame_layout,
        checkpoint=args.features, random_init=args.random_init, tiny=args.tiny, skip_step2=args.skip_step2,
        dataset=args.dataset, labels=args.labels, fps=args.fps, max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size, device=args.device, dtype=args.dtype, workers=args.workers,
        input_workers=resolve_workers(args.input_workers), top_k=args.top_k,
        max_explanations=args.max_explanations, overwrite=args.overwrite, progress=not args.no_progress,
        skip_bad_videos=args.skip_bad_videos,
        prompt_source=prompt_source(args.questions, args.preset or "ucf", args.prompt_file),
    )
    index = run_detect(settings)
    print(f"report: {index}")
    return 0


if __name__ == "__main__":
    from vera.errors import run_cli

    raise SystemExit(run_cli(main))
