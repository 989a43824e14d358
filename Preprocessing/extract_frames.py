"""Extract every frame of every video under --videos to <frames>/<key>/%06d.jpg (0-based).

    python Preprocessing/extract_frames.py --videos DIR --frames DIR [--workers N]
        [--annotations FILE [--dataset ucf|xd]]

Videos are found anywhere below --videos (UCF-Crime keeps them in class
folders); the key is the file name without its extension. One video per worker
process; each video's folder appears only when complete, videos already
complete are skipped, so rerunning the same command resumes a killed run.
<frames>/manifest.json records each video's frame count, fps and size. With
--annotations, every video whose frame count differs from its annotated length
is listed. A video that cannot be decoded is reported and skipped.
"""

from vera.commands import run

if __name__ == "__main__":
    raise SystemExit(run("extract_frames"))
