"""Reading the 0/1 label out of a learner answer.

The score follows the released rule exactly: split the answer on ``Output``
and take 0 if a ``0`` appears in the last piece, else 1. So an answer without
the marker is judged on its whole text, and an empty, truncated or garbled
answer usually counts as anomalous. Alongside the score we record whether the
answer was well formed, so a run can say how many answers the rule had to guess.
Training's validation in the qwen-video layout reads the last character
instead, as the authors' Qwen2-VL training script did (``last_character_label``).
"""

from __future__ import annotations

from dataclasses import dataclass

OUTPUT_MARKER = "Output"
LABEL_DIGITS = ("0", "1")

LABEL_ONLY = "label-only"  # Step 1's --score-mode label: the label was read from the logits, there is no answer
PARSE_STATUSES = ("ok", "empty", "no-marker", "no-label", "ambiguous", "truncated", LABEL_ONLY)


@dataclass(frozen=True)
class ParsedAnswer:
    """A learner answer's score and how trustworthy the parse is.

    ``status``: ``ok`` (marker, then exactly one label digit), ``empty`` (blank
    answer), ``no-marker`` (no ``Output``), ``no-label`` (no 0/1 after the last
    marker), ``ambiguous`` (several 0/1 digits after it). ``truncated`` is set
    by callers that know generation stopped at the token limit.
    """

    score: int
    well_formed: bool
    status: str


def released_score(text: str) -> int:
    """0 if a ``0`` appears after the last ``Output`` (the whole text when there is none), else 1."""
    return 0 if "0" in text.split(OUTPUT_MARKER)[-1] else 1


UNREADABLE = 2  # the last-character rule's label for an answer that ends in neither digit: never right


def last_character_label(text: str) -> int:
    """The validation rule of the authors' Qwen2-VL training script: 1 or 0 if the answer's last character is that
    digit, else ``UNREADABLE`` (an empty answer too), which matches no label."""
    last = text[-1:]
    return int(last) if last in LABEL_DIGITS else UNREADABLE


def parse_answer(text: str) -> ParsedAnswer:
    """Score an answer by the released rule and classify its form."""
    score = released_score(text)
    if not text.strip():
        return ParsedAnswer(score, False, "empty")
    if OUTPUT_MARKER not in text:
        return ParsedAnswer(score, False, "no-marker")
    tail = text.rsplit(OUTPUT_MARKER, 1)[1]
    labels = sum(tail.count(digit) for digit in LABEL_DIGITS)
    if labels == 0:
        return ParsedAnswer(score, False, "no-label")
    if labels > 1:
        return ParsedAnswer(score, False, "ambiguous")
    return ParsedAnswer(score, True, "ok")


def answer_prefix(prompt: str) -> str:
    """The text that label-only mode forces at the start of the answer.

    ``Output:``, the marker after which the parser reads the label, plus a
    line break where the prompt's reply format puts the label on its own line
    (the authors' template: ``Output:`` then a line with the label). A space
    is left to the label token: tokenizers attach a space to the word after it,
    and the label tokens include the spaced digits.
    """
    marker = OUTPUT_MARKER + ":"
    position = prompt.rfind(marker)
    if position == -1:
        return marker
    rest = prompt[position + len(marker):]
    return marker + ("\n" if rest.lstrip(" \t").startswith(("\n", "\r\n")) else "")
