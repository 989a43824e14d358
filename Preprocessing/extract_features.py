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

from vera.commands import run

if __name__ == "__main__":
    raise SystemExit(run("extract_features"))
