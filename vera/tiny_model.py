"""``python -m vera.tiny_model``: kept as a documented command; see ``vera.vlm.tiny_model``."""

from vera.commands import run

if __name__ == "__main__":
    raise SystemExit(run("tiny_model"))
