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
    assert parse_answer(text) == ParsedAnswer(score=score, well_formed=status == "ok", status=status)


# Answers in the shape the learner prompt asks for, each labelled by hand with the released rule:
# 0 if a "0" follows the last "Output", else 1; no "Output" at all: 0 if the text holds a "0".
REAL_LOOKING_ANSWERS = [
    ("Answers to Prompt Questions:\n1. Is there any suspicious person or object? No, the people walk normally.\n"
     "2. Is there any unusual behavior? No.\nOutput: 0", 0),
    ("Answers to Prompt Questions:\n1. Yes, a man breaks the shop window.\n2. Yes, he runs off with a bag.\n"
     "Output: 1", 1),
    ("Answers to Prompt Questions:\n1. No.\nOutput:\n1\n", 1),
    ("Answers to Prompt Questions:\n1. No.\n\nOutput: [0]", 0),
    # Quirks: any "0" after the marker counts, whatever it belongs to.
    ("Answers to Prompt Questions:\n1. Yes, a fight starts.\nOutput: 1 (the fight starts at 0:10)", 0),
    ("Answers to Prompt Questions:\n1. Yes.\nOutput: 1 (frames 3 to 7 show the fight)", 1),
    ("Answers to Prompt Questions:\n1. Yes, smoke rises.\nOutput: 1.0", 0),
    ("Output: 1\n\nExplanation: Frame1 to Frame8 show 2 cars colliding.", 1),
    ("Output: 1\n\nExplanation: Frame1 to Frame10 show 2 cars colliding.", 0),
    # "0" before the last marker does not count; the text after it does.
    ("Answers to Prompt Questions:\n1. At 10:30 a man enters.\nOutput: 1", 1),
    ("Answers to Prompt Questions:\n1. Nothing.\nOutput: 0\nOn reflection, Output: 1", 1),
    ("Answers to Prompt Questions:\n1. A man falls.\nOutput: 1\nFinal Output: 0", 0),
    ("Outputs: 0", 0),  # "Outputs" contains the marker
    # A garbled or cut answer counts as anomalous unless a "0" happens to be in it.
    ("Answers to Prompt Questions:\n1. The video shows a street with", 1),
    ("Answers to Prompt Questions:\n1. The video shows 20 people in a street with", 0),
    ("Answers to Prompt Questions:\n1. At 0:15 a man draws a gun.\nOutput:", 1),
    ("Output: No anomaly.", 1),
    ("OUTPUT: 0", 0),  # no marker (it is case-sensitive), but the whole text holds a "0"
    ("OUTPUT: 1", 1),
    ("", 1),
]


@pytest.mark.parametrize("text, label", REAL_LOOKING_ANSWERS)
def test_released_rule_on_real_looking_answers(text, label):
    assert released_score(text) == label
    assert parse_answer(text).score == label


# Answers that tell the released rule from every other reading of "the label after Output", each
# labelled by hand: the score by the rule above, the status by the number of 0/1 digits after the
# last marker (one: ok; none: no-label; several: ambiguous).
SEPARATING_ANSWERS = [
    # Several markers: only the text after the last one counts, and all of it.
    ("Output: 1\nExplanation: nobody draws a weapon.\nOutput: 0", 0, "ok"),
    ("Output: 0\nOn a second look the man is armed.\nOutput: 1", 1, "ok"),
    ("Output: Yes, there is an anomaly.\nOutput:", 1, "no-label"),
    ("Output: 0\noutput: 1", 0, "ambiguous"),  # the lower-case word is no marker: the 1 is part of the tail
    # A marker inside the explanation.
    ("Answers to Prompt Questions:\n1. The Output of the camera is dark at 0:00.\nOutput: 1", 1, "ok"),
    ("Output: 0\nExplanation: the Output shows 1 person walking.", 1, "ok"),
    # Digits before and after the label.
    ("Answers to Prompt Questions:\n1. 3 people stand still.\nOutput: 1\n10 frames checked.", 0, "ambiguous"),
    ("Output: 0 (2 people, 1 car)", 0, "ambiguous"),
    ("Answers to Prompt Questions:\n1. 10 cars pass.\nOutput: 1.", 1, "ok"),
    # No marker at all: the whole text is searched.
    ("No, there is no anomaly in 10 seconds of video.", 0, "no-marker"),
    ("Yes, there is an anomaly: 1 man falls.", 1, "no-marker"),
]

# Other readings of the rule that a reimplementation might make; the answers above must tell each from it.
OTHER_READINGS = {
    "after the first marker only": lambda t: 0 if "0" in (t.split("Output") + [t])[1] else 1,
    "after the first marker, to the end": lambda t: 0 if "0" in t.split("Output", 1)[-1] else 1,
    "first digit after the last marker": lambda t: next(
        (int(c) for c in t.split("Output")[-1] if c in "01"), 1),
    "last digit after the last marker": lambda t: next(
        (int(c) for c in reversed(t.split("Output")[-1]) if c in "01"), 1),
    "1 if a 1 follows the last marker": lambda t: 1 if "1" in t.split("Output")[-1] else 0,
    "the last character": lambda t: 1 if t[-1:] == "1" else 0,
    "marker in any case": lambda t: 0 if "0" in t.lower().split("output")[-1] else 1,
    "no marker means anomalous": lambda t: 0 if "Output" in t and "0" in t.split("Output")[-1] else 1,
    "a 0 anywhere": lambda t: 0 if "0" in t else 1,
}


@pytest.mark.parametrize("text, score, status", SEPARATING_ANSWERS)
def test_released_rule_on_answers_that_separate_the_readings(text, score, status):
    assert released_score(text) == score
    assert parse_answer(text) == ParsedAnswer(score=score, well_formed=status == "ok", status=status)


@pytest.mark.parametrize("reading", sorted(OTHER_READINGS))
def test_the_answers_tell_the_released_rule_from_each_other_reading(reading):
    differs = [text for text, score, _ in SEPARATING_ANSWERS if OTHER_READINGS[reading](text) != score]
    assert differs, f"no answer tells the released rule from {reading!r}"
