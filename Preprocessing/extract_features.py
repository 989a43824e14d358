"""ImageBind segment features for Step 2: <output>/<key>.npy, one row per 16-frame segment.

    python Preprocessing/extract_features.py --annotations Data/UCF_Eval.json \\
        --frames Data/frames/ucf --output Data/features/ucf --checkpoint imagebind_huge.pth

Frames come from JPEG folders (--frames, as written by extract_frames.py) or
straight from the video files (--videos). The dataset is read from the
annotation file unless --dataset names it. --fps sets the segment windows as
in Inference/generate_initial_score.py; give both steps the same value.
Rerunning the same command resumes: finished videos are skipped and a video
cut short continues from its last saved rows; OUTPUT/run.json records the
model and settings, and a folder made with others is refused unless
--overwrite. A video whose frames are not as many as its annotated length
fails by name, as in Step 1 (--allow-length-mismatch reads a longer one up to
that length; --clamp-short repeats the last frame of a shorter one).
--random-init (ImageBind-huge's shape) and --random-init --tiny (a small
model of the same architecture) run the whole path without weights.
--devices N (one process per GPU) and
--num-nodes M split the videos across processes, started here by Lightning or
by torchrun / SLURM (see the README). --input-workers N reads the frames in N
processes (per GPU process) ahead of the model; the features are the same.
"""

from __future__ import annotations

from vera.options import Command, OneOf

COMMAND = Command(__doc__, [
    "annotations", "dataset_optional", OneOf(("frames", "videos")), "output", OneOf(("checkpoint", "random_init")),
    "tiny", "features_batch_size", "device", "dtype", "fps", "clamp_short", "allow_length_mismatch", "limit",
    "overwrite", "no_progress", "devices", "num_nodes", "accelerator", "input_workers",
], prog="extract_features.py")


def main(argv: list[str] | None = None) -> int:
    args = COMMAND.parse(argv)
    from vera.distributed import check_device_options

    check_device_options(args.device, args.accelerator, args.devices, args.num_nodes)
    from vera.data.annotations import infer_dataset, load_test_annotations
    from vera.data.loading import resolve_workers
    from vera.data.segments import half_window
    from vera.devices import resolve_device, resolve_dtype
    from vera.distributed import launch
    from vera.errors import VeraError
    from vera.features.feature_extraction import FeatureSettings, extract_features, feature_folder
    from vera.features.imagebind import HUGE, TINY, load_vision_encoder

    window = half_window(args.fps)
    # The kind of device decides the default precision (part of the folder's identity) before any process starts.
    device = resolve_device(args.device if args.device != "auto" else args.accelerator)
    # float32 on GPU too: LAVAD's recipe, which the released features followed, ran ImageBind in float32, and
    # float16's effect on Step 2's neighbour sets is unmeasured (benchmarks/bench_feature_precision.py).
    dtype = resolve_dtype(args.dtype, device, gpu_default="float32")
    dtype_name = str(dtype).removeprefix("torch.")
    dataset = args.dataset or infer_dataset(args.annotations)
    # Reads: the test annotation; each segment's 10-second window of frames (the segments of Step 1).
    videos = load_test_annotations(args.annotations, dataset)[: args.limit]
    if args.random_init:
        model = f"random-{(TINY if args.tiny else HUGE).name} (seed 0)"
    else:
        model = f"{args.checkpoint.name} ({args.checkpoint.stat().st_size} bytes)"
    settings = FeatureSettings(model=model, dtype=dtype_name, half_window=window)
    # The output folder is checked (writable, same settings or --overwrite) before the weights load.
    feature_folder(args.output, settings, args.overwrite).check()
    ranks = launch(args.accelerator, args.devices, args.num_nodes, args.device)
    device = resolve_device(ranks.device)
    encoder = ranks.together(lambda: load_vision_encoder(args.checkpoint, random_init=args.random_init, tiny=args.tiny,
                                                         device=device, dtype=dtype))
    # For Step 2's similarity (Sec. 3.3): each segment's ImageBind vision embedding, by LAVAD's recipe
    # (vera/features/imagebind.py). Writes OUTPUT/<key>.npy, one row per segment, and summary.json.
    report = extract_features(videos, encoder, args.output, settings, frames_dir=args.frames, videos_dir=args.videos,
                              batch_size=args.batch_size, clamp_short=args.clamp_short,
                              allow_length_mismatch=args.allow_length_mismatch,
                              show_progress=not args.no_progress, overwrite=args.overwrite, ranks=ranks,
                              input_workers=resolve_workers(args.input_workers, args.devices))
    if not ranks.is_main:
        # Rank 0 reports for all; a non-zero exit here would make Lightning's launcher kill rank 0 mid-report.
        return 0
    rate = report.segments / report.seconds if report.seconds > 0 else 0.0
    where = f"{ranks.world_size} processes ({device.type})" if ranks.active else str(device)
    print(f"{len(report.written)} written, {len(report.skipped)} already complete, {len(report.failed)} failed; "
          f"{report.segments} segments in {report.seconds:.1f} s ({rate:.2f} segments/s) on {where} {dtype_name}")
    if report.failed:
        listed = "; ".join(list(report.failed.values())[:3])
        raise VeraError(f"{len(report.failed)} of {len(videos)} videos failed ({listed}); fix them and rerun to resume")
    return 0


if __name__ == "__main__":
    from vera.errors import run_cli

    raise SystemExit(run_cli(main))
