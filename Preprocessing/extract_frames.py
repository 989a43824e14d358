"""Extract every frame of every video under --videos to <frames>/<key>/%06d.jpg (0-based).

    python Preprocessing/extract_frames.py --videos DIR --frames DIR [--workers N]
        [--annotations FILE [--dataset ucf|xd]] [--allow-short]

Videos are found anywhere below --videos (UCF-Crime keeps them in class
folders); the key is the file name without its video extension (dots inside
the name are kept; vera.data.annotations.video_key). One video per worker
process; each video's folder appears only when complete, videos already
complete are skipped, so rerunning the same command resumes a killed run.
<frames>/manifest.json records each video's frame count, fps and size, and
<frames>/run.json the decoder and JPEG quality. With
--annotations, every video whose frame count differs from its annotated length
is listed. A video that cannot be decoded, or decodes fewer frames than it
declares (unless --allow-short), is reported and skipped; the exit status is 2.
"""

from __future__ import annotations

from vera.options import Command

COMMAND = Command(__doc__, ["videos_in", "frames_out", "workers", "annotations_check", "dataset_optional",
                            "allow_short", "no_progress", "overwrite"], prog="extract_frames.py")


def main(argv: list[str] | None = None) -> int:
    args = COMMAND.parse(argv)
    from vera.data.frame_extraction import annotated_lengths, extract_videos, length_mismatches, read_manifest
    from vera.data.frames import list_videos
    from vera.errors import VeraError

    # Reads every video under --videos; writes each one's frames as JPEG folders (as the released script),
    # every frame in decode order, resumably; with --annotations, checks the frame counts against it.
    lengths = annotated_lengths(args.annotations, args.dataset) if args.annotations else None
    videos = list_videos(args.videos)
    if not videos:
        raise VeraError(f"no videos found under {args.videos}")
    report = extract_videos(videos, args.frames, workers=args.workers, progress=not args.no_progress,
                            overwrite=args.overwrite, allow_short=args.allow_short)

    if lengths is not None:
        manifest = read_manifest(args.frames)
        mismatches = length_mismatches(manifest, lengths)
        for key, annotated, extracted in mismatches:
            print(f"length mismatch: {key}: annotated {annotated} frames, extracted {extracted}")
        checked = sum(key in manifest for key in lengths)
        missing = [key for key in lengths if key not in manifest]
        print(f"length check against {args.annotations}: {checked - len(mismatches)} of {checked} extracted "
              f"videos match, {len(mismatches)} differ; {len(missing)} annotated videos have no frames"
              + (f" (e.g. {', '.join(missing[:3])})" if missing else ""))
    print(report.summary)
    failed = report.of("failed")
    if failed:
        listed = "; ".join(outcome.message for outcome in failed[:3])
        raise VeraError(f"{len(failed)} of {len(videos)} videos failed ({listed}); fix them and rerun to resume")
    return 0


if __name__ == "__main__":
    from vera.errors import run_cli

    raise SystemExit(run_cli(main))
