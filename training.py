"""Learn VERA's guiding questions by verbalized learning (a frozen VLM as learner and optimizer).

The options and what the command writes: ``python training.py --help``; the code: ``vera/commands/training.py``.
"""

from vera.commands import run

if __name__ == "__main__":
    raise SystemExit(run("training"))
