"""ImageBind segment features for Step 2: <output>/<key>.npy, one row per 16-frame segment.

The options and what the command writes: ``python Preprocessing/extract_features.py --help``; the code: ``vera/commands/extract_features.py``.
"""

from vera.commands import run

if __name__ == "__main__":
    raise SystemExit(run("extract_features"))
