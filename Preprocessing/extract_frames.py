"""Extract every frame of every video to <frames>/<key>/%06d.jpg (0-based).

The options and what the command writes: ``python Preprocessing/extract_frames.py --help``; the code: ``vera/commands/extract_frames.py``.
"""

from vera.commands import run

if __name__ == "__main__":
    raise SystemExit(run("extract_frames"))
