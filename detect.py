"""VERA on your own videos in one command: answers, frame scores and an HTML report with the explanations.

    python detect.py VIDEO_OR_FOLDER [...] [--model PATH_OR_ID] [--preset ucf] --features imagebind_huge.pth --output DIR
"""

from vera.commands import run

if __name__ == "__main__":
    raise SystemExit(run("detect"))
