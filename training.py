"""Learn VERA's guiding questions by verbalized learning (a frozen VLM as learner and optimizer).

    python training.py --dataset ucf --train ../shared/data/annotations/UCF_Instruct_train.json \\
        --val ../shared/data/annotations/UCF_Instruct_val.json --frames DIR --model PATH_OR_ID --output runs/ucf

Writes ``history.jsonl``, ``validation.jsonl``, ``best_questions.txt`` (for
``Inference/generate_initial_score.py --questions``), ``last.ckpt``, ``run.json``
and Lightning CSV/TensorBoard logs into ``--output``; rerun the same command to
resume. ``--devices N`` runs N processes (DDP), one per GPU.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from vera.annotations import DATASETS  # noqa: E402
from vera.backends import BACKENDS, load_backend  # noqa: E402
from vera.devices import DTYPES  # noqa: E402
from vera.errors import run_cli  # noqa: E402
from vera.prompts import DEFAULT_FRAME_LAYOUT, FRAME_LAYOUTS  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True, choices=DATASETS)
    parser.add_argument("--train", required=True, type=Path, help="training list (UCF_Instruct_train.json, xd_train.json)")
    parser.add_argument("--val", required=True, type=Path, help="validation list (UCF_Instruct_val.json, xd_val.json)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--frames", type=Path, help="extracted frames: DIR/<key>/%%06d.jpg")
    source.add_argument("--videos", type=Path, help="video files: DIR/**/<key>.mp4")
    parser.add_argument("--model", required=True, help="local folder or Hugging Face id of the VLM")
    parser.add_argument("--backend", choices=BACKENDS, default="hf", help="VLM backend (default: %(default)s)")
    parser.add_argument("--dtype", default="auto", choices=["auto", *DTYPES],
                        help="auto (bfloat16 on GPU, float32 on CPU), bfloat16, float16 or float32")
    parser.add_argument("--output", required=True, type=Path)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=2, help="training videos per step")
    parser.add_argument("--num-frames", type=int, default=8)
    parser.add_argument("--val-every", type=int, default=100, help="validate every N steps")
    parser.add_argument("--max-steps", type=int, help="stop after N steps in all")
    parser.add_argument("--limit-val", type=int, help="validate on the first N videos of --val only")
    parser.add_argument("--val-batch-size", type=int, default=8, help="validation videos per model call")
    parser.add_argument("--select-by", choices=("accuracy", "auc"), default="accuracy")
    parser.add_argument("--questions", type=Path, help="initial questions, one per line (default: the released two)")
    parser.add_argument("--prompt-file", type=Path, help="learner template (e.g. VERA_learner_instruct.txt)")
    parser.add_argument("--optimizer-prompt-file", type=Path, help="optimizer template (e.g. VERA_optimizer_instruct.txt)")
    parser.add_argument("--frame-layout", choices=FRAME_LAYOUTS, default=DEFAULT_FRAME_LAYOUT,
                        help="how the <image> lines reach the model (see Step 1); default: %(default)s")
    parser.add_argument("--max-new-tokens", type=int, default=1024)
    parser.add_argument("--seed", type=int, default=0, help="seed of the per-epoch shuffling")
    parser.add_argument("--skip-bad-videos", action="store_true", help="skip videos whose frames cannot be read")
    parser.add_argument("--overwrite", action="store_true", help="start again in an --output that holds another run")
    parser.add_argument("--devices", type=int, default=1, help="processes (GPUs); more than 1 runs DDP")
    parser.add_argument("--accelerator", default="auto", choices=("auto", "cuda", "cpu"))
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from vera.prompts import load_questions
    from vera.training import INITIAL_QUESTIONS, TrainingOptions, train_with_lightning

    options = TrainingOptions(
        dataset=args.dataset, train=args.train, val=args.val, output=args.output,
        frames_dir=args.frames, videos_dir=args.videos, model=args.model,
        epochs=args.epochs, batch_size=args.batch_size, num_frames=args.num_frames, val_every=args.val_every,
        max_steps=args.max_steps, limit_val=args.limit_val, val_batch_size=args.val_batch_size,
        select_by=args.select_by, prompt_file=args.prompt_file, optimizer_prompt_file=args.optimizer_prompt_file,
        frame_layout=args.frame_layout, max_new_tokens=args.max_new_tokens,
        seed=args.seed, skip_bad_videos=args.skip_bad_videos, overwrite=args.overwrite,
        initial_questions=load_questions(args.questions) if args.questions else list(INITIAL_QUESTIONS),
    )
    options.check()
    train_with_lightning(
        options, lambda device: load_backend(args.backend, args.model, device=device, dtype=args.dtype),
        accelerator=args.accelerator, devices=args.devices,
    )
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
