"""The greedy decoding loop (``vera.vlm.greedy``) against transformers' ``generate`` on the tiny models.

The reference is ``generate`` itself (greedy, ``output_scores=True``), never the loop: the loop must give the
same tokens, the same number of steps and the same label logits, through the ``hf`` backend and alone.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_decoding import _label_ids, _ratio_by_loops

from vera.vlm import decoding, greedy
from vera.vlm.prompts import DEFAULT_LEARNER_TEMPLATE, build_learner_prompt, learner_request
from vera.constants import PRESET_QUESTIONS

ARCHS = ("internvl", "qwen2_vl")
ANSWER = 60

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _same_length_requests(count: int = 4, layout: str = "per-frame"):
    """Step 1's batches: one prompt, different frames, so no padding is needed."""
    prompt = build_learner_prompt(DEFAULT_LEARNER_TEMPLATE, PRESET_QUESTIONS["ucf"], 3, layout)
    return [learner_request(prompt, _noise(seed), f"s{seed}", layout) for seed in range(count)]


def _noise(seed: int, count: int = 3) -> list[np.ndarray]:
    return list(np.random.default_rng(seed).integers(0, 256, (count, 64, 64, 3), dtype=np.uint8))


def _generate(backend, inputs, max_new_tokens, **options):
    """``generate``'s greedy tokens after the prompt and its full-vocabulary scores per step."""
    with torch.inference_mode():
        output = backend.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                                        output_scores=True, return_dict_in_generate=True,
                                        pad_token_id=backend.tokenizer.pad_token_id, **options)
    return output.sequences[:, inputs["input_ids"].shape[1]:], torch.stack(output.scores, dim=1)


class _Spy:
    def __init__(self, function):
        self.function, self.calls = function, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.function(*args, **kwargs)


@pytest.mark.parametrize("arch", ARCHS)
def test_backend_answers_equal_generate_and_label_probabilities_its_scores(arch, tiny_models, monkeypatch):
    backend = tiny_models.backend(arch)
    monkeypatch.setattr(greedy, "CHUNK", 5)  # the cache grows several times within the answer
    requests = _same_length_requests(6)  # within ANSWER tokens each tiny model gives a label digit in one at least
    batch = backend._batch(requests)
    assert backend._uses_greedy_loop(batch)
    tokens, scores = _generate(backend, batch.inputs, ANSWER)
    loop = _Spy(greedy.greedy_decode)
    monkeypatch.setattr(greedy, "greedy_decode", loop)
    answers = backend.generate(requests, ANSWER)
    assert loop.calls == 1
    zeros, ones = _label_ids(backend.tokenizer)
    labelled = 0
    for row, answer in enumerate(answers):
        row_tokens = tokens[row].tolist()
        assert answer.text == backend.tokenizer.decode(row_tokens, skip_special_tokens=True)
        assert answer.extra["new_tokens"] == len(row_tokens)
        steps = [step for step, token in enumerate(row_tokens) if token in zeros + ones]
        if steps:
            labelled += 1
            expected = _ratio_by_loops(scores[row, steps[-1]], zeros, ones)
            assert answer.label_prob == pytest.approx(expected, rel=1e-12, abs=1e-15)
        else:
            assert answer.label_prob is None
    assert labelled >= 1
    assert len({answer.text for answer in answers}) > 1  # the answers depend on the frames


def _ending_tokens(first: torch.Tensor) -> set[int]:
    """End tokens that end the rows at different steps, all before the limit: for each row, its first token that
    no other row has produced by then."""
    ends = set()
    for row in range(first.shape[0]):
        others = torch.cat([first[:row], first[row + 1:]])
        for step, token in enumerate(first[row].tolist()):
            if token not in others[:, :step + 1]:
                ends.add(token)
                break
    return ends


@pytest.mark.parametrize("arch", ARCHS)
def test_rows_ending_at_different_steps_equal_generate(arch, tiny_models):
    backend = tiny_models.backend(arch)
    inputs = backend._batch(_same_length_requests()).inputs
    first, _ = _generate(backend, inputs, 12, eos_token_id=[])
    eos = _ending_tokens(first)
    expected, scores = _generate(backend, inputs, 40, eos_token_id=sorted(eos))
    assert expected.shape[1] < 40  # every row ended: generate stopped early
    pad = backend.tokenizer.pad_token_id
    assert (expected == pad).any()  # and rows that ended first were padded
    record = [3, 17, 42]
    for check_every in (1, 3, 64):  # the end is read from the device every few steps; extra steps are dropped
        tokens, logits = greedy.greedy_decode(backend.model, inputs, 40, eos, pad, record, check_every=check_every)
        assert torch.equal(tokens, expected)
        assert torch.equal(logits, scores[:, :, record])


@pytest.mark.parametrize("arch", ARCHS)
def test_without_an_end_token_in_the_config_both_decoders_end_at_the_tokenizers(arch, tiny_models, monkeypatch):
    backend = tiny_models.backend(arch)
    requests = _same_length_requests()
    first, _ = _generate(backend, backend._batch(requests).inputs, 12, eos_token_id=[])
    ending = first[1, 3].item()  # a token the rows produce: the tokenizer's end token from now on
    monkeypatch.setattr(backend.model.generation_config, "eos_token_id", None)
    monkeypatch.setattr(backend.tokenizer, "eos_token_id", ending)
    monkeypatch.setattr(backend, "eos_token_ids", backend._eos_token_ids())
    assert backend.eos_token_ids == [ending]
    loop = backend.generate(requests, 20)
    monkeypatch.setattr(backend, "decoder", "generate")
    reference = backend.generate(requests, 20)
    assert [a.text for a in loop] == [a.text for a in reference]
    assert [a.extra for a in loop] == [a.extra for a in reference]
    assert not loop[1].extra["truncated"]  # row 1 ended at that token


@pytest.mark.parametrize("arch", ARCHS)
def test_without_a_pad_token_rows_that_ended_repeat_the_first_end_token_as_generate_does(arch, tiny_models):
    backend = tiny_models.backend(arch)
    inputs = backend._batch(_same_length_requests()).inputs
    first, _ = _generate(backend, inputs, 12, eos_token_id=[])
    eos = sorted(_ending_tokens(first))
    with torch.inference_mode():
        expected = backend.model.generate(**inputs, max_new_tokens=40, do_sample=False, num_beams=1,
                                          eos_token_id=eos, pad_token_id=None)[:, inputs["input_ids"].shape[1]:]
    tokens, _ = greedy.greedy_decode(backend.model, inputs, 40, eos, None)
    assert torch.equal(tokens, expected)


@pytest.mark.parametrize("arch", ARCHS)
def test_min_new_tokens_forbids_the_end_as_generate_does(arch, tiny_models):
    backend = tiny_models.backend(arch)
    inputs = backend._batch(_same_length_requests(3)).inputs
    first, _ = _generate(backend, inputs, 12, eos_token_id=[])
    eos = _ending_tokens(first)
    expected, _ = _generate(backend, inputs, 30, eos_token_id=sorted(eos), min_new_tokens=6)
    assert expected.shape[1] >= 6
    tokens, none = greedy.greedy_decode(backend.model, inputs, 30, eos, backend.tokenizer.pad_token_id,
                                        min_new_tokens=6)
    assert torch.equal(tokens, expected) and none is None


def test_padding_or_an_unusual_generation_config_falls_back_to_generate(tiny_models, monkeypatch):
    backend = tiny_models.backend("internvl")
    prompt = build_learner_prompt(DEFAULT_LEARNER_TEMPLATE, ["1. Q?"], 3)
    padded = backend._batch(_same_length_requests(1) + [learner_request(prompt, _noise(9), "short", "per-frame")])
    assert greedy.supports(backend.model, padded.inputs) == "the prompts differ in length (padding)"
    assert not backend._uses_greedy_loop(padded)
    plain = backend._batch(_same_length_requests(2))
    monkeypatch.setattr(backend.model.generation_config, "repetition_penalty", 1.05)
    assert greedy.supports(backend.model, plain.inputs) == "the generation config sets repetition_penalty"
    monkeypatch.undo()
    for name, value in (("max_time", 5.0), ("stop_strings", ["Output"]), ("cache_implementation", "static")):
        monkeypatch.setattr(backend.model.generation_config, name, value)
        assert greedy.supports(backend.model, plain.inputs) == f"the generation config sets {name}"
        monkeypatch.undo()
    assert greedy.supports(backend.model, plain.inputs) is None
    monkeypatch.setattr(backend, "decoder", "generate")
    assert not backend._uses_greedy_loop(plain)
    spy = _Spy(backend.model.generate)
    monkeypatch.setattr(backend.model, "generate", spy)
    loop = _Spy(greedy.greedy_decode)
    monkeypatch.setattr(greedy, "greedy_decode", loop)
    backend.generate(_same_length_requests(2), 3)
    assert (spy.calls, loop.calls) == (1, 0)
    assert backend.describe()["decoding"]["decoder"] == "generate"


def test_the_cache_holds_exactly_what_was_written():
    layer = greedy.GrowingLayer(capacity=3, chunk=2)
    first = torch.arange(2 * 2 * 2 * 4, dtype=torch.float32).reshape(2, 2, 2, 4)
    keys, values = layer.update(first, -first)
    assert torch.equal(keys, first) and torch.equal(values, -first) and layer.get_seq_length() == 2
    for step in range(3):  # past the first capacity: the storage grows, the contents stay
        token = torch.full((2, 2, 1, 4), 100.0 + step)
        keys, values = layer.update(token, -token)
    expected = torch.cat([first] + [torch.full((2, 2, 1, 4), 100.0 + step) for step in range(3)], dim=2)
    assert torch.equal(keys, expected) and torch.equal(values, -expected)
    assert layer.get_seq_length() == 5 and layer.capacity >= 5


@pytest.mark.parametrize("arch", ARCHS)
def test_label_mode_dumps_the_prompt_and_the_forced_prefix(arch, tiny_models, tmp_path):
    backend = tiny_models.backend(arch)
    requests = _same_length_requests(2)
    try:
        backend.dump_inputs = tmp_path / "generate"
        backend.generate(requests, 1)
        backend.dump_inputs = tmp_path / "label"
        backend.score_labels(requests)
    finally:
        backend.dump_inputs = None
    context = backend._chat_text([{"type": "text", "text": "x"}])
    prefix = decoding.continuation_ids(backend.tokenizer, context, "Output:")
    for request in requests:
        with np.load(tmp_path / "generate" / f"{request.key}.npz") as generated, \
                np.load(tmp_path / "label" / f"{request.key}.npz") as label:
            assert label["input_ids"].tolist() == generated["input_ids"].tolist() + prefix
            assert np.array_equal(label["pixel_values"], generated["pixel_values"])


@pytest.mark.parametrize("arch", ARCHS)
def test_a_batch_answers_as_its_segments_one_at_a_time(arch, tiny_models):
    """The fast path's check: batched answers equal the released one-segment-per-call answers."""
    backend = tiny_models.backend(arch)
    requests = _same_length_requests(6)
    batched = backend.generate(requests, ANSWER)
    backend.decoder = "generate"  # the released pattern: one segment per generate call
    try:
        singles = [backend.generate([request], ANSWER)[0] for request in requests]
    finally:
        backend.decoder = "auto"
    assert [a.text for a in batched] == [a.text for a in singles]
    for a, b in zip(batched, singles, strict=True):
        assert (a.label_prob is None) == (b.label_prob is None)
        if a.label_prob is not None:
            assert a.label_prob == pytest.approx(b.label_prob, abs=1e-5)
