"""Write an annotation file for a folder of your own videos: see vera/commands/make_annotations.py."""

from vera.commands import run

if __name__ == "__main__":
    raise SystemExit(run("make_annotations"))
