"""User-facing errors: one clear line, never a bare traceback.

Exit codes of every command: 0 done, 2 a problem the message names and the
user can fix (bad input or option, a folder in use, a full disk), 130
interrupted (finished work is kept), 1 a run that cannot go on for a reason outside its input (an
input worker killed, say by the out-of-memory killer: one line too; ``Data/download.py`` with files the
mirror did not give) or a bug (a traceback).
"""

from __future__ import annotations

import errno
import sys
from collections.abc import Callable

# Write errors that are the machine's state, not a bug: said in one line, the work done so far kept.
_FULL = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded"}


class VeraError(Exception):
    """A mistake in the user's input (a file, a video, an option), stated in one line."""


class InputWorkerError(RuntimeError):
    """A process reading frames ahead of the model died or got stuck: the run stops (not a bad video)."""


def run_cli(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> int:
    """Run a command-line entry point, turning ``VeraError`` into ``error: …`` and exit code 2
    (``InputWorkerError``: the same line, exit code 1).

    The run folders the command held are let go when it returns, as they
    would be when its process exits.
    """
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
    except OSError as error:
        if error.errno not in _FULL:
            raise
        print(f"error: {_where(error)}: {_FULL[error.errno]}; finished work is saved: free some space and rerun the "
              "same command to resume", file=sys.stderr)
        return 2
    finally:
        runs = sys.modules.get("vera.runs")  # not imported: no folder held (and --help stays light)
        if runs is not None:
            runs.release_folders()


def _where(error: OSError) -> str:
    """The file a failed write names, else the output folders this process holds (where it was writing)."""
    if error.filename is not None:
        return str(error.filename)
    runs = sys.modules.get("vera.runs")
    folders = runs.held_folders() if runs is not None else []
    return f"writing into {', '.join(folders)}" if folders else "writing"
