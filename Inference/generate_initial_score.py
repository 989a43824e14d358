"""Step 1 of VERA: the VLM answers the guiding questions for every segment of every test video.

    python Inference/generate_initial_score.py --dataset ucf --annotations ../shared/data/annotations/UCF_Eval.json \
        --frames Data/frames/ucf --model OpenGVLab/InternVL3-8B-hf --preset ucf --output Data/scores/ucf

Writes OUTPUT/<key>.json (centre → start, end, score, response, parse_status,
well_formed, label_prob), OUTPUT/run.json and a summary of malformed answers.
Rerunning the same command resumes where it stopped.
"""

from vera.commands import run

if __name__ == "__main__":
    raise SystemExit(run("generate_initial_score"))
