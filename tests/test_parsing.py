"""The released parse rule, and the well-formedness record beside it."""

from __future__ import annotations

import pytest

from vera.vlm.parsing import ParsedAnswer, parse_answer, released_score


@pytest.mark.parametrize("text, score, status", [
    ("Answers to Prompt Questions: 1. No. 2. No.\nOutput:\n0", 0, "ok"),
    ("Answers to Prompt Questions: a man falls.\nOutput: 1", 1, "ok"),
    ("Answers to Prompt Questions: ...\nOutput:\n[1]\n", 1, "ok"),
    ("Output: 0. Nothing unusual; 2 people walk.", 0, "ok"),
    # The label digit is judged after the LAST marker only.
    ("Output: 0 was my first thought.\nOutput: 1", 1, "ok"),
    ("", 1, "empty"),
    ("   \n", 1, "empty"),
    # No marker: the released rule searches the whole text for a '0'.
    ("There are 10 people fighting.", 0, "no-marker"),
    ("Yes, there is an anomaly.", 1, "no-marker"),
    ("output: 0", 0, "no-marker"),  # the marker is case-sensitive, as released
    # Truncated right after the marker, or a label that is not 0/1.
    ("Answers to Prompt Questions: 1. The car", 1, "no-marker"),
    ("Answers to Prompt Questions: fine.\nOutput:", 1, "no-label"),
    ("Output: 2", 1, "no-label"),
    ("Output: 0 or 1", 0, "ambiguous"),
    ("Output: 10", 0, "ambiguous"),
    ("Output: 1\nThere are 11 cars.", 1, "ambiguous"),
])
def test_parse_answer(text, score, status):
    parsed = parse_answer(text)
    assert parsed == ParsedAnswer(score=score, well_formed=status == "ok", status=status)
    assert parsed.score == released_score(text)


def test_released_rule_matches_its_definition():
    # Independent statement of the rule: find the last 'Output', look for '0' after it.
    for text in ["a Output b 0", "Output 0 Output 1", "0 Output 1", "no marker 0", "no marker", "Output"]:
        index = text.rfind("Output")
        after = text if index == -1 else text[index + len("Output"):]
        assert released_score(text) == (0 if "0" in after else 1)
