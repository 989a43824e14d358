"""Decoding in the ``hf`` backend (``vera.vlm.decoding``): label probabilities against a reference built from
``generate(output_scores=True)``, batch against one-at-a-time in every mode, the label-only mode, cache options."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from test_backends import _frames

from vera.errors import VeraError
from vera.vlm import decoding
from vera.vlm.parsing import answer_prefix
from vera.vlm.prompts import DEFAULT_LEARNER_TEMPLATE, build_learner_prompt, learner_request
from vera.constants import PRESET_QUESTIONS
from fixtures.scripts import load_script

ARCHS = ("internvl", "qwen2_vl")
TOKENS = 24


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _requests():
    """Two prompt lengths (a batch needs left padding) and both layouts; with the ucf questions each tiny model
    answers at least one of these with a label digit within ``TOKENS`` tokens."""
    long_prompt = build_learner_prompt(DEFAULT_LEARNER_TEMPLATE, PRESET_QUESTIONS["ucf"])
    short_prompt = build_learner_prompt(DEFAULT_LEARNER_TEMPLATE, ["1. Anything odd?"])
    return [learner_request(long_prompt, _frames(2), "a", "released"),
            learner_request(short_prompt, _frames(1), "b", "per-frame"),
            learner_request(long_prompt, _frames(3), "c", "per-frame"),
            learner_request(short_prompt, _frames(2), "d", "released")]


def _label_ids(tokenizer) -> tuple[list[int], list[int]]:
    """The vocabulary's tokens that are exactly a label digit, with or without one leading space."""
    ids = {label: [i for i in range(len(tokenizer)) if tokenizer.decode([i]) in (label, " " + label)]
           for label in ("0", "1")}
    return ids["0"], ids["1"]


def _ratio_by_loops(row_scores, zeros, ones) -> float:
    """P(1) / (P(0) + P(1)) from one step's full-vocabulary scores: a softmax written out in float64 loops."""
    values = [float(v) for v in row_scores]
    top = max(values)
    total = sum(math.exp(v - top) for v in values)
    p0 = sum(math.exp(values[i] - top) / total for i in zeros)
    p1 = sum(math.exp(values[i] - top) / total for i in ones)
    return p1 / (p0 + p1)


def _reference(backend, requests, max_new_tokens):
    """Texts and label probabilities from plain ``generate(output_scores=True)`` and a loop-based softmax."""
    batch = backend._batch(requests)
    zeros, ones = _label_ids(backend.tokenizer)
    with torch.inference_mode():
        output = backend.model.generate(**batch.inputs, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                                        output_scores=True, return_dict_in_generate=True,
                                        pad_token_id=backend.tokenizer.pad_token_id)
    texts, probs = [], []
    for row in range(len(requests)):
        tokens = output.sequences[row, batch.prompt_length:].tolist()
        texts.append(backend.tokenizer.decode(tokens, skip_special_tokens=True))
        steps = [step for step, token in enumerate(tokens) if token in zeros + ones]
        probs.append(_ratio_by_loops(output.scores[steps[-1]][row], zeros, ones) if steps else None)
    return texts, probs


@pytest.mark.parametrize("arch", ARCHS)
def test_label_probability_equals_generate_scores_reference(arch, tiny_models):
    backend = tiny_models.backend(arch)
    requests = _requests()
    texts, probs = _reference(backend, requests, TOKENS)
    answers = backend.generate(requests, TOKENS)
    assert [a.text for a in answers] == texts
    assert sum(p is not None for p in probs) >= 1
    for answer, expected in zip(answers, probs, strict=True):
        # Both in float64 from the same float32 logits; only the summation order differs.
        assert answer.label_prob == (None if expected is None else pytest.approx(expected, rel=1e-12, abs=1e-15))


def test_label_probability_is_read_at_the_last_label_token():
    zeros, ones, other = [5, 6], [7], 9

    def step(p0: float, p1: float) -> list[float]:
        # Label logits: the "0" tokens' columns, then the "1" token's; the spaced "0" is never likely.
        return [math.log(p0), -1e9, math.log(p1)]

    steps = torch.tensor([step(0.5, 0.5), step(0.1, 0.3), step(0.2, 0.6)])
    assert decoding.label_probability([other, zeros[0], ones[0]], steps, zeros, ones) == pytest.approx(0.6 / 0.8)
    assert decoding.label_probability([zeros[1], other, other], steps, zeros, ones) == pytest.approx(0.5)
    assert decoding.label_probability([other, other, other], steps, zeros, ones) is None
    assert decoding.label_probability([zeros[0]], steps, zeros, []) is None
    # Large logits do not overflow: the ratio depends on differences only.
    large = torch.tensor([1000.0, 1000.0 + math.log(3.0)], dtype=torch.float64)
    assert decoding.label_ratio(large, 1) == pytest.approx(0.75)


def test_label_logits_stay_on_the_device_until_collected():
    recorder = decoding.LabelLogits([2, 0])
    scores = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    assert recorder(None, scores) is scores
    recorder(None, scores + 100)
    collected = recorder.collect()
    assert collected.shape == (3, 2, 2)
    assert collected[1].tolist() == [[6.0, 4.0], [106.0, 104.0]]
    assert decoding.LabelLogits([1]).collect() is None


def _check_batch_equals_singles(batched, singles):
    assert [a.text for a in batched] == [a.text for a in singles]
    assert [a.extra.get("score") for a in batched] == [a.extra.get("score") for a in singles]
    for a, b in zip(batched, singles, strict=True):
        assert (a.label_prob is None) == (b.label_prob is None)
        if a.label_prob is not None:
            assert a.label_prob == pytest.approx(b.label_prob, abs=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
def test_static_cache_batch_equals_default_singles(arch, tiny_models, monkeypatch):
    backend = tiny_models.backend(arch)
    requests = _requests()
    singles = [backend.generate([request], TOKENS)[0] for request in requests]
    monkeypatch.setattr(backend, "static_cache", True)
    assert decoding.generate_options(True, False) == {"cache_implementation": "static", "disable_compile": True}
    batched = backend.generate(requests, TOKENS)
    _check_batch_equals_singles(batched, singles)
    assert any(a.label_prob is not None for a in batched)
    assert backend.describe()["decoding"]["cache"] == "static"


def test_compiled_batch_equals_default_singles(tiny_models, monkeypatch):
    # About 35 s on a 2-core CPU the first time (inductor compiles C++), about 10 s once its cache holds the kernels.
    backend = tiny_models.backend("internvl")
    requests = _requests()
    singles = [backend.generate([request], TOKENS)[0] for request in requests]
    monkeypatch.setattr(backend, "static_cache", True)
    monkeypatch.setattr(backend, "compile", True)
    for _ in range(2):  # the second call runs the compiled step without compiling again
        batched = backend.generate(requests, TOKENS)
        _check_batch_equals_singles(batched, singles)
    assert getattr(backend.model, "_compiled_call", None) is not None  # transformers did compile the decode step


# -- label-only mode --------------------------------------------------------------------------------


def test_answer_prefix_follows_the_prompts_reply_format(shared_data):
    from vera.vlm.prompts import load_template

    assert answer_prefix(build_learner_prompt(DEFAULT_LEARNER_TEMPLATE, ["1. Q?"])) == "Output:"  # "Output: [0 or 1]"
    authors = load_template(shared_data / "prompts" / "VERA_learner_instruct.txt")
    assert answer_prefix(build_learner_prompt(authors, ["1. Q?"])) == "Output:\n"  # the label on its own line
    assert answer_prefix("no format given") == "Output:"
    assert answer_prefix("Output: x\nthen Output:  \r\n[label]") == "Output:\n"


@pytest.mark.parametrize("arch", ARCHS)
def test_label_mode_equals_one_generated_token_after_the_forced_prefix(arch, tiny_models, monkeypatch):
    backend = tiny_models.backend(arch)
    requests = _requests()
    answers = backend.score_labels(requests)
    prefix = answer_prefix(requests[0].prompt)
    # Reference: the prefix appended to the rendered chat text before tokenizing, then one greedy step.
    render = backend._chat_text
    monkeypatch.setattr(backend, "_chat_text", lambda content: render(content) + prefix)
    _, probs = _reference(backend, requests, 1)
    zeros, ones = _label_ids(backend.tokenizer)
    with torch.inference_mode():
        scores = backend.model(**backend._batch(requests).inputs).logits[:, -1]
    for row, answer in enumerate(answers):
        expected = _ratio_by_loops(scores[row], zeros, ones)
        assert answer.text == "" and answer.label_prob == pytest.approx(expected, abs=1e-6)
        assert answer.extra["score"] == (1 if expected >= 0.5 else 0)
        if probs[row] is not None:  # the greedy token was a label: the same ratio from generate's scores
            assert answer.label_prob == pytest.approx(probs[row], abs=1e-6)
    assert {a.extra["score"] for a in answers} == {0, 1}  # the labels depend on the input


@pytest.mark.parametrize("arch", ARCHS)
def test_label_mode_batch_equals_singles(arch, tiny_models):
    backend = tiny_models.backend(arch)
    requests = _requests()
    _check_batch_equals_singles(backend.score_labels(requests),
                                [backend.score_labels([request])[0] for request in requests])


def test_appended_prefix_tokens_equal_tokenizing_the_whole_text(tiny_models):
    backend = tiny_models.backend("qwen2_vl")
    context = backend._chat_text([{"type": "text", "text": "Frames: x"}])
    for prefix in ("Output:", "Output:\n"):
        ids = decoding.continuation_ids(backend.tokenizer, context, prefix)
        whole = backend.tokenizer.encode(context + prefix, add_special_tokens=False)
        assert whole == backend.tokenizer.encode(context, add_special_tokens=False) + ids
    inputs = {"input_ids": torch.tensor([[0, 5, 6], [7, 8, 9]]), "attention_mask": torch.tensor([[0, 1, 1], [1, 1, 1]]),
              "mm_token_type_ids": torch.tensor([[0, 1, 0], [1, 1, 0]]), "pixel_values": torch.ones(2, 3)}
    extended = decoding.append_tokens(inputs, [3, 4])
    assert extended["input_ids"].tolist() == [[0, 5, 6, 3, 4], [7, 8, 9, 3, 4]]
    assert extended["attention_mask"].tolist() == [[0, 1, 1, 1, 1], [1, 1, 1, 1, 1]]
    assert extended["mm_token_type_ids"].tolist() == [[0, 1, 0, 0, 0], [1, 1, 0, 0, 0]]
    assert extended["pixel_values"] is inputs["pixel_values"]
    assert "attention_mask" in decoding.without_full_mask(extended)
    unpadded = decoding.without_full_mask({"input_ids": inputs["input_ids"], "attention_mask": torch.ones(2, 3)})
    assert list(unpadded) == ["input_ids"]


def test_label_mode_needs_single_token_labels(tiny_models, monkeypatch):
    backend = tiny_models.backend("internvl")
    monkeypatch.setitem(backend.label_token_ids, "1", [])
    with pytest.raises(VeraError, match="no single token stands for the label 0 or 1"):
        backend.score_labels(_requests()[:1])


# -- Step 1 in label-only mode ----------------------------------------------------------------------


def test_step1_label_mode_records_scores_and_keeps_folders_apart(tmp_path, tiny_models):
    import cv2

    from vera.data.annotations import TestVideo
    from vera.vlm.backends.scripted import ScriptedBackend
    from vera.vlm.step1 import Step1Runner, Step1Settings

    frames = tmp_path / "frames" / "v"
    frames.mkdir(parents=True)
    for index in range(40):
        cv2.imwrite(str(frames / f"{index:06d}.jpg"), np.full((32, 32, 3), (index * 37) % 256, np.uint8))
    backend = tiny_models.backend("internvl")
    videos = [TestVideo("v", 40)]

    def run(mode, backend=backend, **options):
        settings = Step1Settings(output=tmp_path / "out", frames_dir=tmp_path / "frames", progress=False,
                                 image_size=32, batch_size=2, score_mode=mode, **options)
        return Step1Runner(backend, DEFAULT_LEARNER_TEMPLATE, ["1. Q?"], settings).run(videos)

    summary = run("label")
    entries = json.loads((tmp_path / "out" / "v.json").read_text())
    assert list(entries) == ["0", "16", "32"] and summary.by_status == {"label-only": 3}
    for entry in entries.values():
        assert entry["response"] == "" and entry["parse_status"] == "label-only" and entry["well_formed"]
        assert entry["score"] == (1 if entry["label_prob"] >= 0.5 else 0)
    record = json.loads((tmp_path / "out" / "run.json").read_text())
    assert record["identity"]["score_mode"] == "label" and record["answer_prefix"] == "Output:"
    with pytest.raises(VeraError, match=r"\(score_mode differ;"):
        run("generate")
    with pytest.raises(VeraError, match="backend scripted has no label-only mode"):
        run("label", backend=ScriptedBackend(lambda request: "Output: 0"))


def test_score_mode_and_cache_options_on_the_command_line(tmp_path, capsys, tiny_models):
    import cv2

    cli = load_script("generate_initial_score")
    from vera.errors import run_cli

    frames = tmp_path / "frames" / "v"
    frames.mkdir(parents=True)
    for index in range(20):
        cv2.imwrite(str(frames / f"{index:06d}.jpg"), np.full((32, 32, 3), index * 9, np.uint8))
    annotation = tmp_path / "ann.json"
    annotation.write_text(json.dumps([{"video": "v.mp4", "temporal_label": [-1, -1, -1, -1], "length": 20}]))
    base = ["--dataset", "ucf", "--annotations", str(annotation), "--frames", str(tmp_path / "frames"),
            "--model", str(tiny_models.path("internvl")), "--preset", "ucf", "--device", "cpu", "--no-progress"]
    capsys.readouterr()  # the tiny model may have been written (with progress on stderr) just now
    args = cli.COMMAND.parse(base + ["--output", "x"])
    assert (args.score_mode, args.static_cache, args.compile, args.decoder) == ("generate", False, False, "auto")
    assert run_cli(cli.main, base + ["--output", "x", "--score-mode", "logits"]) == 2
    assert capsys.readouterr().err.startswith("error: argument --score-mode: invalid choice: 'logits'")

    assert cli.main(base + ["--output", str(tmp_path / "label"), "--score-mode", "label"]) == 0
    entries = json.loads((tmp_path / "label" / "v.json").read_text())
    assert [e["parse_status"] for e in entries.values()] == ["label-only", "label-only"]
    assert cli.main(base + ["--output", str(tmp_path / "static"), "--static-cache", "--max-new-tokens", "3"]) == 0
    record = json.loads((tmp_path / "static" / "run.json").read_text())
    assert record["identity"]["score_mode"] == "generate"
    assert record["backend"]["decoding"] == {"do_sample": False, "num_beams": 1, "cache": "static", "compile": False,
                                             "decoder": "generate"}  # the static cache is generate's
    generated = json.loads((tmp_path / "static" / "v.json").read_text())
    assert all(e["parse_status"] != "label-only" for e in generated.values())
