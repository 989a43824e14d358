"""Throughput of ImageBind segment-feature extraction (segments per second), end to end.

    python benchmarks/bench_features.py [--device cpu|cuda] [--huge-segments 2] [--parity-huge]

Runs on the real clips in ../shared/data/clips, read from the video files and
from JPEG frame folders written to a temporary folder: the tiny random model
over every segment of the clips (the pipeline's own cost: decoding, resizing,
cropping), and ImageBind-huge's shape with random weights over a few segments
(the model's cost). ``--parity-huge`` also compares the huge branch with the
reference implementation (``imagebind-packaged``, see tests/test_imagebind.py)
on one image and one 2-frame clip.
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import torch  # noqa: E402

from vera.features.extraction import video_features  # noqa: E402
from vera.data.frames import open_frames  # noqa: E402
from vera.features.imagebind import HUGE, TINY, load_vision_encoder, randomly_initialised  # noqa: E402
from vera.data.segments import num_segments  # noqa: E402
from video_fixtures import decode_to_jpegs  # noqa: E402

CLIPS_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "clips"


def rate(encoder, keys_lengths, source: dict, batch_size: int, max_segments: int | None = None) -> tuple[int, float]:
    """Segments computed and seconds taken over the clips (the first ``max_segments`` only, if given)."""
    segments, started = 0, time.perf_counter()
    for key, length in keys_lengths:
        if max_segments is not None:
            length = min(length, 16 * (max_segments - segments))  # the first segments of the clip
            if length <= 0:
                break
        with open_frames(key, **source) as frames:
            video_features(encoder, frames, length, batch_size=batch_size)
        segments += num_segments(length)
    if encoder.pos_embed.device.type == "cuda":
        torch.cuda.synchronize()
    return segments, time.perf_counter() - started


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
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--huge-segments", type=int, default=2, help="segments for the huge model (CPU: keep it small)")
    parser.add_argument("--batch-size", type=int, default=48, help="views per forward pass")
    parser.add_argument("--parity-huge", action="store_true")
    args = parser.parse_args()
    if not CLIPS_DIR.is_dir():
        sys.exit(f"the real clips are absent: {CLIPS_DIR}")
    device = torch.device(args.device)
    dtype = torch.float32  # extract_features.py's default on every device
    machine = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"
    print(f"device: {machine}; torch {torch.__version__}; dtype {str(dtype).removeprefix('torch.')}")

    ucf = ["Fighting033_x264_570_841", "RoadAccidents133_x264_270_451"]
    with tempfile.TemporaryDirectory() as temporary:
        frames_dir = Path(temporary)
        lengths = [(key, decode_to_jpegs(CLIPS_DIR / f"{key}.mp4", frames_dir / key)) for key in ucf]
        sources = {"video files": {"videos_dir": CLIPS_DIR}, "JPEG folders": {"frames_dir": frames_dir}}
        rows = []
        tiny = randomly_initialised(TINY).to(device=device, dtype=dtype).eval()
        rate(tiny, lengths[:1], sources["video files"], args.batch_size, max_segments=2)  # warm-up
        for name, source in sources.items():
            segments, seconds = rate(tiny, lengths, source, args.batch_size)
            rows.append(("tiny (random)", name, segments, seconds))
        started = time.perf_counter()
        huge = randomly_initialised(HUGE).to(device=device, dtype=dtype).eval()
        print(f"built ImageBind-huge (random) in {time.perf_counter() - started:.1f} s")
        segments, seconds = rate(huge, lengths, sources["JPEG folders"], args.batch_size, max_segments=args.huge_segments)
        rows.append(("huge (random)", "JPEG folders", segments, seconds))

    print("\n| model | frames from | segments | seconds | segments/s |\n|---|---|---|---|---|")
    for model, source, segments, seconds in rows:
        print(f"| {model} | {source} | {segments} | {seconds:.2f} | {segments / seconds:.3f} |")
    if args.parity_huge:
        del huge
        print(f"\nhuge parity with the reference (float32, random weights): max abs difference {huge_parity():.2e}")


if __name__ == "__main__":
    main()
