"""Load the top-level command-line scripts (Inference/, Preprocessing/, training.py) as modules."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]


def load_script(relative_path: str) -> ModuleType:
    """Import ``ROOT/relative_path`` (e.g. ``"Inference/compute_auc.py"``) so tests can call its ``main``."""
    name = relative_path.replace("/", "_").removesuffix(".py")
    spec = importlib.util.spec_from_file_location(name, ROOT / relative_path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
