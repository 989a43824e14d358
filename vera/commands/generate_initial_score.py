"""Step 1 of VERA: the VLM answers the guiding questions for every segment of every test video.

    python Inference/generate_initial_score.py --dataset ucf --annotations Data/UCF_Eval.json \\
        --frames Data/frames/ucf --model OpenGVLab/InternVL3-8B-hf --preset ucf --output Data/scores/ucf

Writes OUTPUT/<key>.json (centre → start, end, score, response, parse_status,
well_formed, label_prob), OUTPUT/run.json and a summary of malformed answers.
Rerunning the same command resumes where it stopped.
"""

from __future__ import annotations

from vera.options import Command, OneOf

COMMAND = Command(__doc__, [
    "dataset", "annotations", OneOf(("frames", "videos")), "model", "backend",
    OneOf(("questions", "preset")), "output", "step1_batch_size", "shard", "limit", "prompt_file", "frame_layout",
    "fps", "max_new_tokens", "device", "dtype", "allow_length_mismatch", "overwrite", "no_progress", "dump_inputs",
], prog="generate_initial_score.py")


def main(argv: list[str] | None = None) -> int:
    args = COMMAND.parse(argv)
    from vera.data.annotations import load_test_annotations
    from vera.vlm.backends import load_backend, model_type_of
    from vera.vlm.prompts import load_questions, load_template, preset_questions, resolve_frame_layout
    from vera.vlm.step1 import Step1Runner, Step1Settings

    questions = load_questions(args.questions) if args.questions else preset_questions(args.preset)
    template = load_template(args.prompt_file)
    videos = load_test_annotations(args.annotations, args.dataset)
    settings = Step1Settings(
        output=args.output, frames_dir=args.frames, videos_dir=args.videos,
        frame_layout=resolve_frame_layout(args.frame_layout, model_type_of(args.model), template),
        fps=args.fps, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
        shard=args.shard, limit=args.limit, overwrite=args.overwrite,
        allow_length_mismatch=args.allow_length_mismatch,
        template_source=str(args.prompt_file) if args.prompt_file else "default", progress=not args.no_progress,
        dump_inputs=args.dump_inputs,
    )
    backend = load_backend(args.backend, args.model, device=args.device, dtype=args.dtype,
                           max_batch_size=args.batch_size)
    summary = Step1Runner(backend, template, questions, settings).run(videos)
    print(summary.text())
    return 1 if summary.failed else 0
