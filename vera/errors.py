"""User-facing errors: one clear line, never a bare traceback."""

from __future__ import annotations

import sys
from collections.abc import Callable


class VeraError(Exception):
    """A mistake in the user's input (a file, a video, an option), stated in one line."""


def run_cli(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> int:
    """Run a command-line entry point, turning ``VeraError`` into ``error: …`` and exit code 2."""
    try:
        return main(argv) or 0
    except VeraError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished work is saved; rerun the same command to resume", file=sys.stderr)
        return 130
