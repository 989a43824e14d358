"""Does half precision change Step 2? ImageBind features in float32 against float16 (or bfloat16).

    # the measurement that counts: the real weights, real videos, a GPU
    python benchmarks/bench_feature_precision.py --checkpoint imagebind_huge.pth --device cuda \\
        --annotations Data/UCF_Eval.json --frames Data/frames/ucf --limit 30 [--scores Data/scores/ucf]
    # the machinery alone (random weights say nothing about trained similarities)
    python benchmarks/bench_feature_precision.py --random-init --tiny --synthetic-videos 2 --synthetic-length 3000

Each video's features are computed twice with the same weights, in float32
and in ``--half``. Per video it reports:

- ``neighbour_sets_changed``: segments whose released Step 2 neighbour set
  (the k = int(0.15·h) most similar segments, k = 0 meaning all) differs;
- ``rounded_scores_changed``: segments whose score after the released Step 2,
  smoothing and rounding to 0.1 differs, for the Step 1 scores in ``--scores``
  or, without it, for ``--seeds`` sets of seeded random 0/1 answers;
- ``max_similarity_change``: the largest change of a cosine similarity.

Synthetic videos (no ``--annotations``) are real-length sequences made of the
frames of the two UCF-Crime clips in ../shared/data/clips, played forwards and
backwards with a brightness step per pass so that no two frames repeat.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from vera.data.annotations import load_test_annotations
from vera.data.frames import VideoFrames, open_frames
from vera.features.feature_extraction import video_features
from vera.features.imagebind import load_vision_encoder
from vera.scoring.steps import ScoringOptions, cosine_similarity, frame_scores, released_neighbour_count

CLIPS_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "clips"
UCF_CLIPS = ("Fighting033_x264_570_841", "RoadAccidents133_x264_270_451")
HALF = {"float16": torch.float16, "bfloat16": torch.bfloat16}


class SyntheticFrames(VideoFrames):
    """A real-length video from a short frame pool: pass p plays the pool forwards (p even) or backwards, +3·p grey."""

    def __init__(self, key: str, pool: np.ndarray, length: int) -> None:
        self.key, self.pool, self.num_frames, self.fps, self.source = key, pool, length, 30.0, Path("synthetic")

    def _read_sorted(self, unique: list[int]) -> list[np.ndarray]:
        frames = []
        for index in unique:
            passes, position = divmod(index, len(self.pool))
            frame = self.pool[position if passes % 2 == 0 else len(self.pool) - 1 - position]
            frames.append(np.clip(frame.astype(np.int16) + 3 * passes, 0, 255).astype(np.uint8))
        return frames


def clip_pool() -> np.ndarray:
    frames = []
    for key in UCF_CLIPS:
        capture = cv2.VideoCapture(str(CLIPS_DIR / f"{key}.mp4"))
        while True:
            ok, frame = capture.read()
            if not ok:
                break
            frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
        capture.release()
    return np.stack(frames)


def neighbour_sets(features: np.ndarray, k: int) -> list[frozenset]:
    order = np.argsort(cosine_similarity(features), axis=1)
    return [frozenset(row[-k:].tolist()) if k else frozenset(row.tolist()) for row in order]


def rounded_segment_scores(features: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Released UCF Step 2 + smoothing + rounding, one value per segment (no position weights)."""
    options = ScoringOptions(dataset="ucf", metric="auc", skip_position_weighting=True)
    return frame_scores(scores, features, 16, options)[::16]  # every segment repeated over its 16 frames


def compare(key: str, full: np.ndarray, half: np.ndarray, score_sets: list[np.ndarray]) -> dict:
    h = len(full)
    k = released_neighbour_count(h, "ucf", "auc")
    sets_changed = sum(a != b for a, b in zip(neighbour_sets(full, k), neighbour_sets(half, k), strict=True))
    rounded_changed = sum(int(np.count_nonzero(rounded_segment_scores(full, s) != rounded_segment_scores(half, s)))
                          for s in score_sets)
    return {"video": key, "segments": h, "k": k, "neighbour_sets_changed": sets_changed,
            "rounded_scores_changed": rounded_changed, "rounded_scores_compared": h * len(score_sets),
            "max_similarity_change": float(np.abs(cosine_similarity(full) - cosine_similarity(half)).max())}


def main() -> int:
    parser = argparse.ArgumentParser(allow_abbrev=False, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path)
    parser.add_argument("--random-init", action="store_true")
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--half", choices=tuple(HALF), default="float16")
    parser.add_argument("--annotations", type=Path, help="real videos (with --frames or --videos)")
    parser.add_argument("--frames", type=Path)
    parser.add_argument("--videos", type=Path)
    parser.add_argument("--limit", type=int, help="first N videos of --annotations")
    parser.add_argument("--scores", type=Path, help="Step 1 score folder; default: seeded random 0/1 answers")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--synthetic-videos", type=int, default=2)
    parser.add_argument("--synthetic-length", type=int, default=3000, help="frames (UCF-Crime test videos: 3,834 "
                                                                           "on average)")
    parser.add_argument("--batch-size", type=int, default=48, help="views per forward pass")
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args()

    device = torch.device(args.device)
    full_encoder = load_vision_encoder(args.checkpoint, random_init=args.random_init, tiny=args.tiny, device=device,
                                       dtype=torch.float32)
    half_encoder = copy.deepcopy(full_encoder).to(HALF[args.half])
    if args.annotations:
        dataset = "xd" if "xd" in args.annotations.name.lower() else "ucf"
        sources = [(video.key, video.length, lambda key=video.key: open_frames(
            key, frames_dir=args.frames, videos_dir=args.videos)) for video in
            load_test_annotations(args.annotations, dataset)[: args.limit]]
    else:
        pool = clip_pool()
        sources = [(f"synthetic{number}", args.synthetic_length,
                    lambda number=number: SyntheticFrames(f"synthetic{number}", np.roll(pool, 97 * number, axis=0),
                                                          args.synthetic_length))
                   for number in range(args.synthetic_videos)]
    results, started = [], time.perf_counter()
    for key, length, opener in sources:
        with opener() as frames:
            full = video_features(full_encoder, frames, length, batch_size=args.batch_size)
            half = video_features(half_encoder, frames, length, batch_size=args.batch_size)
        if args.scores:
            entries = json.loads((args.scores / f"{key}.json").read_text())
            score_sets = [np.array([entries[c]["score"] for c in sorted(entries, key=int)], dtype=np.float64)]
        else:
            rng = np.random.default_rng(0)
            score_sets = [rng.integers(0, 2, len(full)).astype(np.float64) for _ in range(args.seeds)]
        results.append(compare(key, full, half, score_sets))
        print(json.dumps(results[-1]), flush=True)
    totals = {key: sum(r[key] for r in results) for key in
              ("segments", "neighbour_sets_changed", "rounded_scores_changed", "rounded_scores_compared")}
    summary = {"weights": str(args.checkpoint) if args.checkpoint else f"random-{'tiny' if args.tiny else 'huge'}",
               "device": str(device), "half": args.half, "videos": len(results), **totals,
               "max_similarity_change": max(r["max_similarity_change"] for r in results),
               "seconds": round(time.perf_counter() - started, 1), "torch": torch.__version__}
    print(json.dumps(summary))
    if args.json_out:
        args.json_out.write_text(json.dumps({"summary": summary, "videos": results}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
