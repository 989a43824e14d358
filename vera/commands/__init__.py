"""Entry points of the top-level scripts, one module each, so they are importable and testable.

``Inference/compute_auc.py`` runs ``vera.commands.compute_auc.main`` and so
on; ``vera COMMAND …`` (installed with the package) reaches the same
functions. Each module parses its options with ``vera.options`` first and
imports its stage (torch, transformers) only afterwards, so ``--help`` and
argument errors are immediate.
"""

from __future__ import annotations

import importlib
import sys

from vera.errors import run_cli

COMMANDS = {
    "extract-frames": "extract_frames",
    "extract-features": "extract_features",
    "generate-initial-score": "generate_initial_score",
    "compute-auc": "compute_auc",
    "reproduce-tables": "reproduce_tables",
    "plot": "plot",
    "train": "training",
    "tiny-model": "tiny_model",
    "make-annotations": "make_annotations",
    "download": "download",
    "convert-internvl2": "convert_internvl2",
    "report": "report",
    "detect": "detect",
}


def run(module: str, argv: list[str] | None = None) -> int:
    """Run ``vera.commands.<module>.main`` as a command: one-line errors, exit status."""
    return run_cli(importlib.import_module(f"vera.commands.{module}").main, argv)


def main(argv: list[str] | None = None) -> int:
    """``vera COMMAND [options]``: the same commands as the top-level scripts."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        names = "\n  ".join(f"{name:24s} (python {script})" for name, script in _SCRIPTS.items())
        print(f"usage: vera COMMAND [options]\n\ncommands:\n  {names}", file=sys.stderr if argv else sys.stdout)
        return 0 if argv[:1] in (["-h"], ["--help"]) else 2
    return run(COMMANDS[argv[0]], argv[1:])


_SCRIPTS = {
    "extract-frames": "Preprocessing/extract_frames.py",
    "extract-features": "Preprocessing/extract_features.py",
    "generate-initial-score": "Inference/generate_initial_score.py",
    "compute-auc": "Inference/compute_auc.py",
    "reproduce-tables": "Inference/reproduce_tables.py",
    "plot": "Inference/plot.py",
    "train": "training.py",
    "tiny-model": "-m vera.tiny_model",
    "make-annotations": "Data/make_annotations.py",
    "download": "Data/download.py",
    "convert-internvl2": "-m vera.convert_internvl2",
    "report": "Inference/report.py",
    "detect": "detect.py",
}
