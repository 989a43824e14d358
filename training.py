"""Learn VERA's guiding questions by verbalized learning (a frozen VLM as learner and optimizer).

    python training.py --dataset ucf --train Data/UCF_Instruct_train.json \\
        --val Data/UCF_Instruct_val.json --frames DIR --model PATH_OR_ID --output runs/ucf

Writes history.jsonl, validation.jsonl, best_questions.txt (for
Inference/generate_initial_score.py --questions), last.ckpt, run.json and
a Lightning CSV log (logs/version_0/metrics.csv) into --output; rerun the same
command to resume. --devices N runs N processes (DDP), one per GPU;
--num-nodes M runs them on M machines.
"""

from __future__ import annotations

from vera.options import Command, OneOf, check_backend_options

COMMAND = Command(__doc__, [
    "dataset", "train", "val", OneOf(("frames", "videos")), OneOf(("model", "served_model")), "backend", "dtype",
    "output", "epochs",
    "train_batch_size", "num_frames", "val_every", "max_steps", "limit_val", "val_batch_size", "select_by",
    "initial_questions", "prompt_file", "optimizer_prompt_file", "frame_layout", "max_new_tokens", "seed",
    "skip_bad_videos", "overwrite", "devices", "accelerator", "num_nodes", "input_workers", "dump_inputs",
    "base_url", "concurrency", "request_timeout", "retries", "image_format",
    "frame_sampling", "num_questions", "no_optimizer_frames",
], prog="training.py", checks=(check_backend_options,))


def main(argv: list[str] | None = None) -> int:
    args = COMMAND.parse(argv)
    from vera.vlm.backends import choose_model, load_backend, server_settings

    chosen = choose_model(args.backend, args.model, args.served_model)  # before Lightning and its processes
    model, local_files_only = chosen.name, chosen.local_files_only
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    from vera.data.loading import resolve_workers
    from vera.errors import VeraError
    from vera.learning.launch import train
    from vera.learning.settings import TrainingOptions
    from vera.vlm.context import check_context, prompt_source
    from vera.vlm.input_dump import enable_input_dumps
    from vera.vlm.prompts import build_learner_prompt, load_template, questions_from, resolve_frame_layout
    from vera.constants import INITIAL_QUESTIONS

    # Reads: the training and validation lists (video-level 0/1 labels only), the initial questions Q0 and the
    # learner's and optimizer's prompts.
    options = TrainingOptions(
        dataset=args.dataset, train=args.train, val=args.val, output=args.output,
        frames_dir=args.frames, videos_dir=args.videos, model=args.model or args.served_model,
        epochs=args.epochs, batch_size=args.batch_size, num_frames=args.num_frames, val_every=args.val_every,
        max_steps=args.max_steps, limit_val=args.limit_val, val_batch_size=args.val_batch_size,
        select_by=args.select_by, prompt_file=args.prompt_file, optimizer_prompt_file=args.optimizer_prompt_file,
        frame_layout=resolve_frame_layout(args.frame_layout, chosen.model_type(), load_template(args.prompt_file)),
        max_new_tokens=args.max_new_tokens,
        seed=args.seed, skip_bad_videos=args.skip_bad_videos, overwrite=args.overwrite,
        initial_questions=questions_from(args.questions) if args.questions else list(INITIAL_QUESTIONS),
        frame_sampling=args.frame_sampling, num_questions=args.num_questions,
        optimizer_frames=not args.no_optimizer_frames,
    )

    server = server_settings(args.backend, base_urls=args.base_url, concurrency=args.concurrency,
                             timeout=args.request_timeout, retries=args.retries, image_format=args.image_format)

    def backend_on(device):
        backend = load_backend(args.backend, model, device=device, dtype=args.dtype,
                               local_files_only=local_files_only, server=server)
        # The learner's prompt with the initial questions, counted once before the first model call.
        prompt = build_learner_prompt(load_template(args.prompt_file), options.initial_questions, options.num_frames,
                                      options.frame_layout)
        check_context(backend, prompt, options.frame_layout, options.num_frames, options.image_size,
                      options.max_new_tokens,
                      prompt_source(args.questions, None, args.prompt_file, "the two initial questions"))
        if args.dump_inputs is not None:
            enable_input_dumps(backend, args.dump_inputs)
        return backend

    # Algorithm 1 (vera/learning/algorithm1.py): for each batch the frozen VLM as learner answers with the
    # current questions (Eq. (1)), as optimizer rewrites them from the frames, predictions and labels (Eq. (2));
    # validation accuracy selects the best questions. Writes best_questions.txt, the history and a checkpoint.
    try:
        train(options, backend_on, accelerator=args.accelerator, devices=args.devices, num_nodes=args.num_nodes,
              input_workers=resolve_workers(args.input_workers, args.devices))
    except VeraError:
        if rank_zero_only.rank != 0:
            return 2  # every rank meets the same error; rank 0 says it, once
        raise
    return 0


if __name__ == "__main__":
    from vera.errors import run_cli

    raise SystemExit(run_cli(main))
