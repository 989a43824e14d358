"""Step 1 of VERA: the VLM answers the guiding questions for every segment of every test video.

    python Inference/generate_initial_score.py --dataset ucf --annotations Data/UCF_Eval.json \\
        --frames Data/frames/ucf --model OpenGVLab/InternVL3-8B-hf --preset ucf --output Data/scores/ucf

Writes OUTPUT/<key>.json (centre → start, end, score, response, parse_status,
well_formed, label_prob), OUTPUT/run.json and a summary of malformed answers.
Rerunning the same command resumes where it stopped. --devices N (one
process per GPU) and --num-nodes M split the videos across processes, started
here by Lightning or by torchrun / SLURM (see the README).
"""

from __future__ import annotations

from vera.options import Command, OneOf, check_backend_options

COMMAND = Command(__doc__, [
    "dataset", "annotations", OneOf(("frames", "videos")), OneOf(("model", "served_model")), "backend",
    OneOf(("questions", "preset")), "output", "step1_batch_size", "shard", "limit", "prompt_file", "frame_layout",
    "fps", "max_new_tokens", "device", "dtype", "allow_length_mismatch", "overwrite", "no_progress", "dump_inputs",
    "score_mode", "decoder", "static_cache", "compile", "devices", "num_nodes", "accelerator", "input_workers",
    "base_url", "concurrency", "request_timeout", "retries", "image_format",
], prog="generate_initial_score.py", checks=(check_backend_options,))


def main(argv: list[str] | None = None) -> int:
    args = COMMAND.parse(argv)
    from vera.distributed import check_device_options

    check_device_options(args.device, args.accelerator, args.devices, args.num_nodes)
    from vera.data.annotations import load_test_annotations
    from vera.data.loading import resolve_workers
    from vera.distributed import launch
    from vera.errors import VeraError
    from vera.vlm.backends import choose_model, load_backend, server_settings
    from vera.vlm.context import check_context, prompt_source
    from vera.vlm.prompts import (build_learner_prompt, load_template, preset_questions, questions_from,
                                  resolve_frame_layout)
    from vera.vlm.step1 import Step1Runner, Step1Settings, step1_folder, step1_identity

    # The frozen VLM (never fine-tuned) and the guiding questions learned by training.py (or a preset).
    chosen = choose_model(args.backend, args.model, args.served_model)
    model, local_files_only = chosen.name, chosen.local_files_only
    questions = questions_from(args.questions) if args.questions else preset_questions(args.preset)
    template = load_template(args.prompt_file)
    # Reads: the test annotation; every 16 frames a segment, its 10-second window, 8 frames of it.
    videos = load_test_annotations(args.annotations, args.dataset)
    settings = Step1Settings(
        output=args.output, frames_dir=args.frames, videos_dir=args.videos,
        frame_layout=resolve_frame_layout(args.frame_layout, chosen.model_type(), template),
        fps=args.fps, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
        shard=args.shard, limit=args.limit, overwrite=args.overwrite,
        allow_length_mismatch=args.allow_length_mismatch,
        template_source=str(args.prompt_file) if args.prompt_file else "default", progress=not args.no_progress,
        dump_inputs=args.dump_inputs, score_mode=args.score_mode,
        input_workers=resolve_workers(args.input_workers, args.devices),
    )
    # The learner prompt: the template with the questions and one slot per frame (vera/vlm/prompts.py).
    prompt = build_learner_prompt(template, questions, settings.num_frames, settings.frame_layout)
    # The output folder is checked (writable, same settings or --overwrite) before the model loads.
    image_format = args.image_format if args.backend == "openai" else None  # as the backend's describe() gives it
    step1_folder(settings, step1_identity(args.backend, model, questions, prompt, settings, image_format),
                 videos).check()
    server = server_settings(args.backend, base_urls=args.base_url, concurrency=args.concurrency,
                             timeout=args.request_timeout, retries=args.retries, image_format=args.image_format)
    ranks = launch(args.accelerator, args.devices, args.num_nodes, args.device)

    def load_checked():
        backend = load_backend(
            args.backend, model, device=ranks.device, dtype=args.dtype, max_batch_size=args.batch_size,
            local_files_only=local_files_only, server=server, static_cache=args.static_cache,
            compile=args.compile, decoder=args.decoder)
        # label mode appends only the answer's few prefix tokens; generate may add --max-new-tokens
        check_context(backend, prompt, settings.frame_layout, settings.num_frames, settings.image_size,
                      args.max_new_tokens if args.score_mode == "generate" else 0,
                      prompt_source(args.questions, args.preset, args.prompt_file))
        return backend

    backend = ranks.together(load_checked)
    # Step 1 (Sec. 3.3, Eq. (3)): the VLM answers the questions for each segment (the explanation) and ends
    # with a 0/1 after "Output" (vera/vlm/parsing.py). Writes OUTPUT/<key>.json per video, resuming where a run stopped.
    summary = Step1Runner(backend, template, questions, settings).run(videos, ranks)
    if not ranks.is_main:
        # Rank 0 reports for all; a non-zero exit here would make Lightning's launcher kill rank 0 mid-report.
        return 0
    print(summary.text())
    if summary.failed:
        listed = "; ".join(list(summary.failed.values())[:3])
        raise VeraError(f"{len(summary.failed)} of {summary.videos} videos failed ({listed}); fix them and rerun to "
                        "resume")
    return 0


if __name__ == "__main__":
    from vera.errors import run_cli

    raise SystemExit(run_cli(main))
