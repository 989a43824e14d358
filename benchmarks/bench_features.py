"""ImageBind segment-feature throughput (segments/s), per precision, with the input overlapped as in a run.

    python benchmarks/bench_features.py --shape huge [--dtypes float32 float16] [--segments 240] [--json OUT]
    python benchmarks/bench_features.py --shape tiny            # a quick check of the script itself, on any CPU
    python benchmarks/bench_features.py --shape tiny --frames-from videos --input-workers 0 1 2
    python benchmarks/bench_features.py --shape huge --parity-huge   # also: our huge branch against the reference

The encoder has random weights of ImageBind-huge's shape (or the tiny test
shape), built on the device; nothing is downloaded. Measured for each
precision, after a warm-up:

- end to end: ``vera.features.feature_extraction.video_features`` on the real clips
  (``--clips``, read from JPEG folders written to a temporary folder or from
  the clips, repeated until ``--segments`` segments), the way a run computes
  them: the frames read by ``--input-workers`` processes ahead of the model
  (``vera.data.loading``; 0: in this process, before each batch; default
  auto, as a run). Timed in steady state: a one-segment warm-up video goes
  first through the same workers (their start, a few seconds with the server
  they are forked from, happens once a run), and the clock starts when it is
  done;
- model only: batches of ready views on the device, repeated (3 distinct
  views per segment, see ``vera.features.imagebind``);
- input only, once, on one CPU core: reading the frames (what an input
  worker does), and reading plus making the views on the CPU.

The full UCF-Crime test set (69,634 segments) is then given in hours at the
end-to-end rate. Peak memory: the GPU's peak allocation, or on a CPU the
process's peak resident size so far.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from vera.data.frames import open_frames  # noqa: E402
from vera.data.loading import read_ahead, resolve_workers  # noqa: E402
from vera.data.segments import num_segments, segment_centres  # noqa: E402
from vera.constants import HALF_WINDOW  # noqa: E402
from vera.features.feature_extraction import feature_job, video_features  # noqa: E402
from vera.features.imagebind import (  # noqa: E402
    HUGE, NUM_CROPS, TINY, VIEW_SIZE, crop_views, load_vision_encoder, prepare_frames, randomly_initialised,
    segment_clips,
)
from vera.options import workers_or_auto  # noqa: E402

CLIPS = Path(__file__).resolve().parents[2] / "shared" / "data" / "clips"
UCF_TEST_SEGMENTS = 69_634
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").is_file() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def clip_plan(lengths: dict[str, int], segments: int) -> list[tuple[str, int]]:
    """(key, length) pairs, the clips repeated and the last one cut, holding exactly ``segments`` segments."""
    plan, total = [], 0
    while total < segments:
        for key, length in lengths.items():
            length = min(length, 16 * (segments - total))  # the first segments of the clip
            if length <= 0:
                break
            plan.append((key, length))
            total += num_segments(length)
    return plan


def end_to_end(encoder, warm_up, plan, source: dict, batch_size: int, device: torch.device,
               workers: int) -> tuple[int, float, float]:
    """The ``plan``'s videos as a run computes them, timed after the ``warm_up`` videos of the same run."""
    jobs = [feature_job(key, length, batch_size=batch_size, **source) for key, length in [*warm_up, *plan]]
    started, segments = None, 0
    # As vera.features.feature_extraction reads them.
    with read_ahead(jobs, workers, chunk=1, pin_memory=device.type == "cuda") as video_reads:
        for number, ((key, length), reads) in enumerate(zip([*warm_up, *plan], video_reads, strict=True)):
            if number == len(warm_up):
                reset_peak(device)
                started = time.perf_counter()
            with reads as frames:
                # the first segments of a longer clip, on purpose
                video_features(encoder, frames, length, batch_size=batch_size, reads=reads, allow_length_mismatch=True)
            segments += num_segments(length) if started is not None else 0
        synchronize(device)
    return segments, time.perf_counter() - started, peak_memory(device)


def model_only(encoder, batch_size: int, segments: int, device: torch.device, dtype: torch.dtype):
    views = torch.randn(batch_size, 3, 2, VIEW_SIZE, VIEW_SIZE, generator=torch.Generator().manual_seed(0))
    views = views.to(device=device, dtype=dtype)
    calls = max(1, -(-segments * NUM_CROPS // batch_size))
    with torch.inference_mode():
        encoder(views)  # warm-up
        reset_peak(device)
        started = time.perf_counter()
        for _ in range(calls):
            encoder(views)
        synchronize(device)
    return calls * batch_size / NUM_CROPS, time.perf_counter() - started, peak_memory(device)


def input_only(lengths: dict[str, int], source: dict) -> dict:
    """Segments/s of reading each segment's frames, and of reading plus making its views, on one CPU core."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    read_s = views_s = 0.0
    segments = 0
    for key, length in lengths.items():
        with open_frames(key, **source) as frames:
            for centre in segment_centres(length).tolist():
                clips = np.array([clip.frames for clip in segment_clips(centre, length, HALF_WINDOW)])
                started = time.perf_counter()
                wanted, positions = np.unique(clips, return_inverse=True)
                pixels = frames.read(wanted)
                middle = time.perf_counter()
                crop_views(prepare_frames(torch.from_numpy(pixels)), torch.from_numpy(positions.reshape(clips.shape)))
                read_s += middle - started
                views_s += time.perf_counter() - middle
                segments += 1
    torch.set_num_threads(threads)
    return {"segments": segments, "read_per_s": round(segments / read_s, 1),
            "read_and_views_per_s": round(segments / (read_s + views_s), 1)}


def huge_parity() -> float:
    """Max abs difference between the reference's huge vision branch and ours, same random weights, float32.

    The weights go through a checkpoint file in the official layout and
    ``load_vision_encoder``, the path ``--checkpoint imagebind_huge.pth`` takes.
    """
    from test_imagebind import _reference, _reference_model  # the test's reference loader (skips become errors)

    reference = _reference()
    model = _reference_model(reference, HUGE)
    with tempfile.TemporaryDirectory() as temporary:
        checkpoint = Path(temporary) / "imagebind_huge_random.pth"
        torch.save({name: value for name, value in model.state_dict().items() if ".vision." in name}, checkpoint)
        ours = load_vision_encoder(checkpoint)
        generator = torch.Generator().manual_seed(0)
        image = torch.randn(1, 3, 224, 224, generator=generator)
        clip = torch.randn(1, 3, 2, 224, 224, generator=generator)
        with torch.no_grad():
            differences = [
                (model({"vision": image})["vision"] - ours(image)).abs().max().item(),
                (model({"vision": clip[:, None]})["vision"] - ours(clip)).abs().max().item(),
            ]
        return max(differences)


def main() -> None:
    parser = argparse.ArgumentParser(allow_abbrev=False, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=("tiny", "huge"), default="tiny")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtypes", nargs="+", choices=tuple(DTYPES), default=["float32", "float16"])
    parser.add_argument("--segments", type=int, help="segments timed per measurement (default: 240 on a GPU; on a "
                        "CPU 60 tiny, 2 huge)")
    parser.add_argument("--batch-size", type=int, default=48, help="views per forward pass (default: 48)")
    parser.add_argument("--clips", type=Path, default=CLIPS)
    parser.add_argument("--input-workers", type=workers_or_auto, nargs="+", default=[None], metavar="N|auto",
                        help="end to end with each of these numbers of input workers (default: auto, as a run)")
    parser.add_argument("--frames-from", choices=("jpeg", "videos"), default="jpeg",
                        help="end to end from JPEG folders decoded from the clips first (OpenCV), or from the "
                             "clips themselves (PyAV; no OpenCV needed) (default: %(default)s)")
    parser.add_argument("--parity-huge", action="store_true")
    parser.add_argument("--json", type=Path, help="write the results here too")
    args = parser.parse_args()
    if not args.clips.is_dir():
        sys.exit(f"the real clips are absent: {args.clips}")
    device = torch.device(args.device)
    dtype = torch.float32  # extract_features.py's default on every device
    segments = args.segments or (240 if device.type == "cuda" else 60 if args.shape == "tiny" else 2)
    machine = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"{cpu_name()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"
    results: dict = {"shape": args.shape, "device": machine, "torch": torch.__version__, "batch_size_views":
                     args.batch_size, "segments": segments, "load_average": os.getloadavg()[0], "rows": []}
    print(json.dumps({k: v for k, v in results.items() if k != "rows"}), flush=True)

    with tempfile.TemporaryDirectory() as temporary:
        keys = sorted(path.stem for path in args.clips.glob("*.mp4"))
        sources = {"video files": {"videos_dir": args.clips}}
        if args.frames_from == "jpeg":
            from fixtures.videos import decode_to_jpegs  # OpenCV: only where JPEG folders are wanted

            lengths = {key: decode_to_jpegs(args.clips / f"{key}.mp4", Path(temporary) / key) for key in keys}
            sources["JPEG folders"] = {"frames_dir": Path(temporary)}
        else:
            lengths = {}
            for key in keys:
                with open_frames(key, videos_dir=args.clips) as frames:
                    lengths[key] = frames.num_frames
        source = sources["JPEG folders" if args.frames_from == "jpeg" else "video files"]
        results["end_to_end_from"] = args.frames_from
        results["input_only_one_core"] = {name: input_only(lengths, where) for name, where in sources.items()}
        print(json.dumps(results["input_only_one_core"]), flush=True)
        started = time.perf_counter()
        base = randomly_initialised(HUGE if args.shape == "huge" else TINY)
        results["build_s"] = round(time.perf_counter() - started, 1)
        plan = clip_plan(lengths, segments)
        for name in args.dtypes:
            # In place: later precisions start from the earlier ones' rounded weights (random anyway).
            encoder = base.to(device=device, dtype=DTYPES[name]).eval().requires_grad_(False)
            try:
                views, model_s, model_memory = model_only(encoder, args.batch_size, segments, device, DTYPES[name])
                for workers in dict.fromkeys(resolve_workers(requested) for requested in args.input_workers):
                    done, seconds, memory = end_to_end(encoder, clip_plan(lengths, 1), plan, source,
                                                       args.batch_size, device, workers)
                    rate = done / seconds
                    results["rows"].append({
                        "dtype": name, "input_workers": workers, "segments": done,
                        "end_to_end_per_s": round(rate, 3), "peak_gib": round(memory, 2),
                        "model_only_per_s": round(views / model_s, 3), "model_only_peak_gib": round(model_memory, 2),
                        "ucf_test_hours": round(UCF_TEST_SEGMENTS / rate / 3600, 2)})
                    print(json.dumps(results["rows"][-1]), flush=True)
            except RuntimeError as error:  # e.g. a precision this device does not compute
                results["rows"].append({"dtype": name, "input_workers": "", "error": str(error).splitlines()[0]})
                print(json.dumps(results["rows"][-1]), flush=True)

    print(f"\nImageBind-{args.shape} (random) on {machine}; {segments} segments, {args.batch_size} views per pass\n")
    print("| precision | input workers | end to end (segments/s) | model only (segments/s) | peak memory (GiB) | "
          "UCF test set |\n|---|---|---|---|---|---|")
    for row in results["rows"]:
        if "error" in row:
            print(f"| {row['dtype']} | {row['input_workers']} | {row['error']} | | | |")
        else:
            print(f"| {row['dtype']} | {row['input_workers']} | {row['end_to_end_per_s']:.3f} | "
                  f"{row['model_only_per_s']:.3f} | {row['peak_gib']:.2f} | {row['ucf_test_hours']:.2f} h |")
    print()
    for name, io in results["input_only_one_core"].items():
        print(f"input only, one core, {name}, {io['segments']} segments: reading {io['read_per_s']}/s, "
              f"reading and views on the CPU {io['read_and_views_per_s']}/s")
    if args.parity_huge:
        del base
        results["huge_parity_max_abs"] = huge_parity()
        print(f"\nhuge parity with the reference (float32, random weights): max abs difference "
              f"{results['huge_parity_max_abs']:.2e}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
