"""Learn VERA's guiding questions by verbalized learning (a frozen VLM as learner and optimizer).

    python training.py --dataset ucf --train Data/UCF_Instruct_train.json \\
        --val Data/UCF_Instruct_val.json --frames DIR --model PATH_OR_ID --output runs/ucf

Writes history.jsonl, validation.jsonl, best_questions.txt (for
Inference/generate_initial_score.py --questions), last.ckpt, run.json and
Lightning logs into --output; rerun the same command to resume. --devices N
runs N processes (DDP), one per GPU.
"""

from __future__ import annotations

from vera.options import Command, OneOf

COMMAND = Command(__doc__, [
    "dataset", "train", "val", OneOf(("frames", "videos")), "model", "backend", "dtype", "output", "epochs",
    "train_batch_size", "num_frames", "val_every", "max_steps", "limit_val", "val_batch_size", "select_by",
    "initial_questions", "prompt_file", "optimizer_prompt_file", "frame_layout", "max_new_tokens", "seed",
    "skip_bad_videos", "overwrite", "devices", "accelerator", "dump_inputs",
], prog="training.py")


def main(argv: list[str] | None = None) -> int:
    args = COMMAND.parse(argv)
    from vera.learning.loop import INITIAL_QUESTIONS, TrainingOptions, train_with_lightning
    from vera.vlm.backends import load_backend, model_type_of
    from vera.vlm.input_dump import enable_input_dumps
    from vera.vlm.prompts import load_questions, load_template, resolve_frame_layout

    options = TrainingOptions(
        dataset=args.dataset, train=args.train, val=args.val, output=args.output,
        frames_dir=args.frames, videos_dir=args.videos, model=args.model,
        epochs=args.epochs, batch_size=args.batch_size, num_frames=args.num_frames, val_every=args.val_every,
        max_steps=args.max_steps, limit_val=args.limit_val, val_batch_size=args.val_batch_size,
        select_by=args.select_by, prompt_file=args.prompt_file, optimizer_prompt_file=args.optimizer_prompt_file,
        frame_layout=resolve_frame_layout(args.frame_layout, model_type_of(args.model),
                                          load_template(args.prompt_file)),
        max_new_tokens=args.max_new_tokens,
        seed=args.seed, skip_bad_videos=args.skip_bad_videos, overwrite=args.overwrite,
        initial_questions=load_questions(args.questions) if args.questions else list(INITIAL_QUESTIONS),
    )
    options.check()

    def backend_on(device):
        backend = load_backend(args.backend, args.model, device=device, dtype=args.dtype)
        if args.dump_inputs is not None:
            enable_input_dumps(backend, args.dump_inputs)
        return backend

    train_with_lightning(options, backend_on, accelerator=args.accelerator, devices=args.devices)
    return 0
