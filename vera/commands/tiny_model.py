"""Tiny random VLMs with offline tokenizers (``python -m vera.tiny_model``); see ``vera.vlm.tiny_model``."""

from __future__ import annotations


def main(argv: list[str] | None = None) -> int:
    from vera.vlm.tiny_model import main as tiny_main

    return tiny_main(argv)
