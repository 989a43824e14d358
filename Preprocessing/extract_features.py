r"""ImageBind segment features for Step 2: <output>/<key>.npy, one row per 16-frame segment.

    python Preprocessing/extract_features.py --annotations ../shared/data/annotations/UCF_Eval.json \
        --frames Data/frames/ucf --output Data/features/ucf --checkpoint imagebind_huge.pth

Frames come from JPEG folders (--frames, as written by extract_frames.py) or
straight from the video files (--videos). The dataset is read from the
annotation file unless --dataset names it. --fps sets the segment windows as
in Inference/generate_initial_score.py; give both steps the same value.
Rerunning the same command resumes: finished videos are skipped and a video
cut short continues from its last saved rows. --random-init (ImageBind-huge's shape) and --random-init --tiny
(a small model of the same architecture) run the whole path without weights.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vera.annotations import DATASETS, infer_dataset, load_test_annotations  # noqa: E402
from vera.devices import DTYPES, resolve_device, resolve_dtype  # noqa: E402
from vera.errors import VeraError, run_cli  # noqa: E402
from vera.features import FeatureSettings, extract_features  # noqa: E402
from vera.imagebind import CHECKPOINT_URL, load_vision_encoder  # noqa: E402
from vera.segments import HALF_WINDOW, half_window  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--annotations", required=True, type=Path, help="test annotations (UCF_Eval.json, xd_test_800.json)")
    parser.add_argument("--dataset", choices=DATASETS, help="default: inferred from the annotation file")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--frames", type=Path, help="folder of <key>/%%06d.jpg frame folders")
    source.add_argument("--videos", type=Path, help="folder holding <key>.mp4 (or .avi, …) anywhere below it")
    parser.add_argument("--output", required=True, type=Path, help="folder for <key>.npy")
    weights = parser.add_mutually_exclusive_group(required=True)
    weights.add_argument("--checkpoint", type=Path, help=f"the official imagebind_huge.pth ({CHECKPOINT_URL})")
    weights.add_argument("--random-init", action="store_true", help="seeded random weights of ImageBind-huge's shape")
    parser.add_argument("--tiny", action="store_true", help="with --random-init: a small model, for smoke runs")
    parser.add_argument("--batch-size", type=int, default=48, help="views per forward pass (3 per segment; default 48)")
    parser.add_argument("--device", default="auto", help="cpu or cuda[:N] (default auto: cuda if available)")
    parser.add_argument("--dtype", choices=["auto", *DTYPES], default="auto",
                        help="model precision (auto: float16 on GPU, float32 on CPU)")
    parser.add_argument("--fps", type=float,
                        help=f"frame rate for a true 10-second window, as in generate_initial_score.py "
                             f"(default: {HALF_WINDOW} frames each side, the released 30 fps assumption)")
    parser.add_argument("--clamp-short", action="store_true",
                        help="for a video with fewer frames than annotated, reuse its last frame (warns) instead of failing")
    parser.add_argument("--limit", type=int, help="only the first N videos of the annotation file")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.fps is not None and not (math.isfinite(args.fps) and half_window(args.fps) >= 1):
        raise VeraError(f"--fps must be a frame rate giving at least 1 frame each side of a segment centre, "
                        f"got {args.fps}")
    window = half_window(args.fps)
    if args.limit is not None and args.limit < 1:
        raise VeraError(f"--limit must be positive, got {args.limit}")
    source = args.frames or args.videos
    if not source.is_dir():
        raise VeraError(f"{'frames' if args.frames else 'videos'} folder not found: {source}")
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device, gpu_default="float16")
    dtype_name = str(dtype).removeprefix("torch.")
    dataset = args.dataset or infer_dataset(args.annotations)
    videos = load_test_annotations(args.annotations, dataset)[: args.limit]
    encoder = load_vision_encoder(args.checkpoint, random_init=args.random_init, tiny=args.tiny,
                                  device=device, dtype=dtype)
    if args.random_init:
        model = f"random-{encoder.config.name} (seed 0)"
    else:
        model = f"{args.checkpoint.name} ({args.checkpoint.stat().st_size} bytes)"
    settings = FeatureSettings(model=model, dtype=dtype_name, half_window=window)
    report = extract_features(videos, encoder, args.output, settings, frames_dir=args.frames, videos_dir=args.videos,
                              batch_size=args.batch_size, clamp_short=args.clamp_short)
    rate = report.segments / report.seconds if report.seconds > 0 else 0.0
    print(f"{len(report.written)} written, {len(report.skipped)} already complete, {len(report.failed)} failed; "
          f"{report.segments} segments in {report.seconds:.1f} s ({rate:.2f} segments/s) on {device} {dtype_name}")
    if report.failed:
        listed = "; ".join(list(report.failed.values())[:3])
        raise VeraError(f"{len(report.failed)} of {len(videos)} videos failed ({listed}); fix them and rerun to resume")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
