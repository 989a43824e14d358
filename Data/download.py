"""Fetch the authors' released artifacts into Data/: see vera/commands/download.py."""

from vera.commands import run

if __name__ == "__main__":
    raise SystemExit(run("download"))
