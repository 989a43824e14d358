"""User-facing errors: one clear line, never a bare traceback."""

from __future__ import annotations

import sys
from collections.abc import Callable


class VeraError(Exception):
    """A mistake in the user's input (a file, a video, an option), stated in one line."""


class InputWorkerError(RuntimeError):
    """A process reading frames ahead of the model died or got stuck: the run stops (not a bad video)."""


def run_cli(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> int:
    """Run a command-line entry point, turning ``VeraError`` into ``error: …`` and exit code 2
    (``InputWorkerError``: the same line, exit code 1)."""
    try:
        return main(argv) or 0
    except VeraError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except InputWorkerError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: finished work is saved; rerun the same command to resume", file=sys.stderr)
        return 130
