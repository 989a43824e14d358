"""Decoding for the ``hf`` backend: label probabilities kept on the device, the label-only score mode, cache options.

Label probability. The probability that an answer's label is "1" is
P("1") / (P("0") + P("1")) at the step that generated the last label token.
The softmax's normaliser cancels in that ratio, so only the logits of the label
tokens are needed: ``LabelLogits`` gathers those few columns at every step and
keeps them on the device; they reach the host once, after generation, instead
of a full-vocabulary softmax and a host copy (a device synchronisation) per
token. The ratio is then a softmax over the label logits alone, in float64.

Label-only mode (``--score-mode label``), a faster approximation of Step 1, not
the paper's protocol. The prompt asks the model to answer the guiding
questions and then give the label after ``Output:``. Here the model answers
nothing: the assistant's turn is forced to start with the answer prefix
(``vera.vlm.parsing.answer_prefix``) and one forward pass over prompt plus
prefix gives the logits at the answer position, the next token. Its score is 1 when
P("1") ≥ P("0") there (ties count as anomalous, as the released parser's
default does), and ``label_prob`` is the same ratio as above. Skipping the
reasoning changes what the label is conditioned on, so scores differ from the
generated answers' labels.

Cache options. ``static_cache`` pre-allocates the key-value cache (transformers'
``cache_implementation="static"``); ``compile`` adds transformers' automatic
compilation of the decoding step (``torch.compile``, mode ``reduce-overhead``:
CUDA graphs on a GPU), which needs the static cache. Both leave greedy answers
unchanged (tested on the tiny models).
"""

from __future__ import annotations

import torch
from transformers import CompileConfig, LogitsProcessor

from vera.errors import VeraError

# Model inputs that run along the token sequence, and the value an appended text token takes in each.
SEQUENCE_INPUTS = {"attention_mask": 1, "token_type_ids": 0, "mm_token_type_ids": 0}


class LabelLogits(LogitsProcessor):
    """Keeps, at every decoding step, the logits of the label tokens on the device (scores unchanged)."""

    def __init__(self, token_ids: list[int]):
        self.token_ids = list(token_ids)
        self.steps: list[torch.Tensor] = []
        self._index: torch.Tensor | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self._index is None or self._index.device != scores.device:
            self._index = torch.tensor(self.token_ids, device=scores.device)
        # A new (batch, labels) tensor on the device: no host copy, so no synchronisation per step.
        self.steps.append(scores.index_select(1, self._index))
        return scores

    def collect(self) -> torch.Tensor | None:
        """All steps, ``(batch, steps, labels)`` on the host, in one copy."""
        return torch.stack(self.steps, dim=1).cpu() if self.steps else None


def label_ratio(label_logits: torch.Tensor, zeros: int) -> float | None:
    """P("1") / (P("0") + P("1")) from one step's label logits: the "0" tokens' columns first, then the "1" tokens'."""
    logits = label_logits.double()
    if not torch.isfinite(logits.max()):
        return None
    weights = (logits - logits.max()).exp()
    return float(weights[zeros:].sum() / weights.sum())


def label_probability(tokens: list[int], step_logits: torch.Tensor, zero_ids: list[int],
                      one_ids: list[int]) -> float | None:
    """The label ratio at the last generated label token (the one the parser reads); None without one."""
    label_ids = set(zero_ids) | set(one_ids)
    positions = [step for step, token in enumerate(tokens) if token in label_ids]
    if not positions or not zero_ids or not one_ids:
        return None
    return label_ratio(step_logits[positions[-1]], len(zero_ids))


def continuation_ids(tokenizer, context: str, text: str) -> list[int]:
    """The token ids of ``text`` as the tokenizer splits it right after ``context``.

    Tokenized alone, a text can split differently (a sentencepiece tokenizer
    prefixes a word-start marker), so ``text`` is tokenized after the context
    and the context's own tokens are removed.
    """
    whole = tokenizer.encode(context + text, add_special_tokens=False)
    head = tokenizer.encode(context, add_special_tokens=False)
    if whole[:len(head)] != head or len(whole) == len(head):
        raise VeraError(f"the tokenizer does not split {text!r} apart from the text before it; "
                        "label-only mode cannot append it")
    return whole[len(head):]


def append_tokens(inputs: dict, token_ids: list[int]) -> dict:
    """Model inputs with ``token_ids`` appended to every row (a left-padded batch ends at its last column)."""
    input_ids = inputs["input_ids"]
    rows, length = input_ids.shape
    extended = dict(inputs)
    for name, value in inputs.items():
        if name == "input_ids":
            tail = torch.tensor(token_ids, dtype=value.dtype, device=value.device)
        elif name in SEQUENCE_INPUTS and isinstance(value, torch.Tensor) and value.shape == (rows, length):
            tail = torch.full((len(token_ids),), SEQUENCE_INPUTS[name], dtype=value.dtype, device=value.device)
        else:
            continue
        extended[name] = torch.cat([value, tail.expand(rows, -1)], dim=1)
    return extended


def without_full_mask(inputs: dict) -> dict:
    """The inputs without ``attention_mask`` when it masks nothing (every row the same length, no padding).

    Step 1's prompts of a run all have the same length, so its batches need no
    mask; without one, attention takes the causal fast path without first
    checking the mask on the device. Only the label-only forward pass uses
    this: ``generate`` builds an all-ones mask itself when given none.
    """
    mask = inputs.get("attention_mask")
    if mask is None or not bool(mask.all()):
        return inputs
    return {name: value for name, value in inputs.items() if name != "attention_mask"}


def generate_options(static_cache: bool, compile: bool) -> dict:
    """Keyword arguments of ``generate`` for the cache options."""
    if not (static_cache or compile):
        return {}
    options: dict = {"cache_implementation": "static"}
    if compile:
        config = CompileConfig()  # transformers' defaults: inductor, mode "reduce-overhead"
        # transformers compiles only on accelerators unless this flag is set; it is set so that --compile means
        # the same on every device (on a CPU it is slower to start, and what the tests exercise).
        config._compile_all_devices = True
        options["compile_config"] = config
    else:
        # On a GPU, transformers would compile a static-cache generation by itself; --static-cache alone must not.
        options["disable_compile"] = True
    return options
