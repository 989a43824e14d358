"""Every scoring table of the VERA paper from one set of Step 1 scores and features.

    python Inference/reproduce_tables.py --dataset ucf --annotations Data/UCF_Eval.json \
        --scores Data/scores/ucf --features Data/features/ucf --output runs/ucf_tables

Writes OUTPUT/<table>.md, OUTPUT/<table>.csv and OUTPUT/tables.json.
"""

from vera.commands import run

if __name__ == "__main__":
    raise SystemExit(run("reproduce_tables"))
