"""Learn VERA's guiding questions by verbalized learning (a frozen VLM as learner and optimizer).

    python training.py --dataset ucf --train ../shared/data/annotations/UCF_Instruct_train.json \\
        --val ../shared/data/annotations/UCF_Instruct_val.json --frames DIR --model PATH_OR_ID --output runs/ucf

Writes ``history.jsonl``, ``validation.jsonl``, ``best_questions.txt`` (for
``Inference/generate_initial_score.py --questions``), ``last.ckpt``, ``run.json``
and a Lightning CSV log into ``--output``; rerun the same command to resume.
``--devices N`` runs N processes (DDP through Lightning Fabric), one per GPU.
"""

from vera.commands import run

if __name__ == "__main__":
    raise SystemExit(run("training"))
