"""The learner prompt must fit the model's context: its tokens are counted once, before the model runs.

A question file far longer than the context (200,000 characters) would
otherwise run for minutes per request and answer nothing meaningful. The
count is the backend's own (``prompt_tokens``): the input ids the model would
be fed for one request, text and image tokens, built from blank frames of the
size the layout shows (448×448; in the ``qwen-video`` layout the true frames
keep each video's size, so their tokens are counted at 448×448).

The limit is the language model's ``max_position_embeddings`` (its text
config): the positions the model is built for. The tokenizer's
``model_max_length`` is not used: it is often unset (a huge placeholder) or
the length of a fine-tuning run, below what the model handles. The prompt and
the longest answer asked for (``--max-new-tokens``) must fit together, since
an answer that ran past the last position would go on without a word. Backends
that do not count (``openai``: the servers enforce their own limit and say
so) are not checked here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vera.errors import VeraError
from vera.vlm.prompts import learner_request


def prompt_source(questions: Path | str | None, preset: str | None, prompt_file: Path | None,
                  default_questions: str = "the default questions") -> str:
    """Where a learner prompt's questions and template came from, as the options name them."""
    if questions is not None:
        asked = f"--questions {questions}"
    else:
        asked = f"--preset {preset}" if preset else default_questions
    return f"{asked}, {f'--prompt-file {prompt_file}' if prompt_file else 'the default template'}"


def check_context(backend, prompt: str, frame_layout: str, num_frames: int, image_size: int, answer_tokens: int,
                  source: str) -> int | None:
    """The prompt's token count, or a one-line ``VeraError`` where it (with ``answer_tokens`` more) exceeds the
    model's context; None for a backend that cannot count."""
    count_tokens = getattr(backend, "prompt_tokens", None)
    limit = getattr(backend, "context_length", None)
    if count_tokens is None or limit is None:
        return None
    frames = [np.zeros((image_size, image_size, 3), np.uint8)] * num_frames
    count = count_tokens(learner_request(prompt, frames, "context check", frame_layout))
    model = getattr(backend, "model_id", "the model")
    if count > limit:
        raise VeraError(f"the learner prompt ({source}) is {count} tokens with its {num_frames} frames, more than "
                        f"model {model}'s context of {limit} tokens (max_position_embeddings); shorten the questions")
    if count + answer_tokens > limit:
        raise VeraError(f"the learner prompt ({source}) is {count} tokens with its {num_frames} frames, and "
                        f"--max-new-tokens {answer_tokens} would let the answer run past model {model}'s context of "
                        f"{limit} tokens (max_position_embeddings); use --max-new-tokens {limit - count} or fewer, or "
                        "shorter questions")
    return count
