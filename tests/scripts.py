"""The top-level scripts, for tests: where the project root is, and each script loaded from its path.

Tests run a script either as a user would (``subprocess`` with ``ROOT / "Inference/compute_auc.py"``)
or in this process through ``load_script(name)``, which loads the file once and keeps the module, so that a
test's monkeypatching reaches the same module that ``main`` runs in.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from vera.errors import run_cli

ROOT = Path(__file__).resolve().parents[1]

SCRIPTS = {
    "extract_frames": "Preprocessing/extract_frames.py",
    "extract_features": "Preprocessing/extract_features.py",
    "generate_initial_score": "Inference/generate_initial_score.py",
    "compute_auc": "Inference/compute_auc.py",
    "reproduce_tables": "Inference/reproduce_tables.py",
    "plot": "Inference/plot.py",
    "report": "Inference/report.py",
    "training": "training.py",
    "detect": "detect.py",
    "download": "Data/download.py",
    "make_annotations": "Data/make_annotations.py",
}


def load_script(name: str) -> ModuleType:
    """The script ``name`` (a key of ``SCRIPTS``) as a module, loaded once per process."""
    module_name = f"vera_script_{name}"
    if module_name not in sys.modules:
        spec = importlib.util.spec_from_file_location(module_name, ROOT / SCRIPTS[name])
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
    return sys.modules[module_name]


def run(name: str, argv: list[str] | None = None) -> int:
    """Run a script's ``main`` in this process as its command line would: one-line errors, exit status."""
    return run_cli(load_script(name).main, argv)
