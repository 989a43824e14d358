"""Where the project root is, for tests that run the top-level scripts as a user would (subprocess)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
