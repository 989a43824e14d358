"""Step 1 of VERA: the VLM answers the guiding questions for every segment of every test video.

The options and what the command writes: ``python Inference/generate_initial_score.py --help``; the code: ``vera/commands/generate_initial_score.py``.
"""

from vera.commands import run

if __name__ == "__main__":
    raise SystemExit(run("generate_initial_score"))
