"""The ``hf`` backend on the tiny random models: image tokens per frame layout, batching, label probability, OOM."""

from __future__ import annotations

import logging
import socket
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from vera.vlm.backends import load_backend
from vera.vlm.backends.base import VLMRequest
from vera.errors import VeraError
from vera.vlm.prompts import DEFAULT_LEARNER_TEMPLATE, build_learner_prompt, learner_request
from vera.constants import PRESET_QUESTIONS

ARCHS = ("internvl", "qwen2_vl")


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _frames(seed: int, count: int = 8) -> list[np.ndarray]:
    """Frames different enough (flat grey levels) that the random model answers differently."""
    levels = np.random.default_rng(seed).integers(0, 256, count)
    return [np.full((448, 448, 3), level, np.uint8) for level in levels]


def _requests(num_frames: int = 8) -> list[VLMRequest]:
    """Mixed layouts and prompt lengths, so that a batch needs left padding."""
    long_prompt = build_learner_prompt(DEFAULT_LEARNER_TEMPLATE, PRESET_QUESTIONS["xd"], num_frames)
    short_prompt = build_learner_prompt(DEFAULT_LEARNER_TEMPLATE, ["1. Anything odd?"], num_frames)
    return [
        learner_request(long_prompt, _frames(0, num_frames), "a", "released"),
        learner_request(short_prompt, _frames(1, num_frames), "b", "per-frame"),
        learner_request(short_prompt, _frames(2, num_frames), "c", "released"),
        learner_request(long_prompt, _frames(0, num_frames), "d", "per-frame"),
    ]


@pytest.mark.parametrize("arch", ARCHS)
def test_tiny_model_loads_offline_and_describes_itself(arch, tiny_models):
    backend = tiny_models.backend(arch)
    assert backend.model_type == arch
    description = backend.describe()
    assert description["model"] == str(tiny_models.path(arch))
    assert description["device"] == "cpu" and description["dtype"] == "float32"
    assert backend.tokenizer.padding_side == "left"
    for label, ids in backend.label_token_ids.items():
        assert ids and all(backend.tokenizer.decode([i]).strip() == label for i in ids)


@pytest.mark.parametrize("arch", ARCHS)
def test_batched_answers_equal_one_by_one(arch, tiny_models):
    backend = tiny_models.backend(arch)
    requests = _requests()
    batched = backend.generate(requests, max_new_tokens=6)
    single = [backend.generate([request], max_new_tokens=6)[0] for request in requests]
    assert [a.text for a in batched] == [a.text for a in single]
    for a, b in zip(batched, single, strict=True):
        assert (a.label_prob is None) == (b.label_prob is None)
        if a.label_prob is not None:
            assert a.label_prob == pytest.approx(b.label_prob, abs=1e-4)
        assert a.extra["new_tokens"] <= 6
    # The answers depend on the input: the same frames in another layout, other frames, other prompts.
    assert len({a.text for a in batched}) >= 3
    if arch == "qwen2_vl":  # its random answers hold a label digit, so the probabilities above were compared
        assert any(a.label_prob is not None for a in batched)


def test_internvl_released_layout_is_one_image_block(tiny_models):
    backend = tiny_models.backend("internvl")
    processor = backend.processor
    tokenizer = backend.tokenizer
    requests = _requests()
    inputs = backend._batch(requests).inputs
    start = tokenizer.convert_tokens_to_ids(processor.start_image_token)
    end = tokenizer.convert_tokens_to_ids(processor.end_image_token)
    context = tokenizer.convert_tokens_to_ids(processor.image_token)
    assert inputs["pixel_values"].shape[0] == 8 * len(requests)  # one tile per frame
    for row, request in zip(inputs["input_ids"].tolist(), requests, strict=True):
        text = tokenizer.decode(row, skip_special_tokens=False)
        blocks = row.count(start)
        assert blocks == row.count(end) == (1 if request.image_block else 8)
        assert row.count(context) == 8 * processor.image_seq_length
        if request.image_block:
            first = row.index(start)
            tokens = 8 * processor.image_seq_length
            assert row[first + 1:first + 1 + tokens] == [context] * tokens
            # The other seven placeholders stay plain text, as InternVL2's chat helper left them.
            assert text.count("<image>") == 7 and "Frame1: <img>" in text and "Frame2: <image>" in text
        else:
            assert "<image>" not in text and "Frame8: <img>" in text


def test_qwen_layouts_put_images_where_asked(tiny_models):
    backend = tiny_models.backend("qwen2_vl")
    tokenizer = backend.tokenizer
    requests = _requests()
    inputs = backend._batch(requests).inputs
    start = tokenizer.convert_tokens_to_ids("<|vision_start|>")
    for row, request in zip(inputs["input_ids"].tolist(), requests, strict=True):
        text = tokenizer.decode(row, skip_special_tokens=False)
        assert row.count(start) == 8
        if request.image_block:
            assert text.count("<image>") == 7
            last_image = text.rindex("<|vision_end|>")
            assert text.index("Frame1: <|vision_start|>") < last_image < text.index("Frame2: <image>")
        else:
            assert "<image>" not in text
            assert all(f"Frame{n}: <|vision_start|>" in text for n in range(1, 9))


def test_per_frame_needs_one_image_per_placeholder(tiny_models):
    backend = tiny_models.backend("internvl")
    prompt = build_learner_prompt(DEFAULT_LEARNER_TEMPLATE, ["1. Q?"], 8)
    request = VLMRequest(prompt, _frames(0, 3), "video-x segment 0", image_block=False)
    with pytest.raises(VeraError, match="video-x segment 0: 8 <image> placeholders for 3 images"):
        backend.generate([request], max_new_tokens=2)


def test_out_of_memory_halves_the_batch_and_says_so(monkeypatch, caplog, tiny_models):
    backend = tiny_models.backend("internvl")
    requests = _requests()
    expected = [a.text for a in backend.generate(requests, max_new_tokens=3)]
    real = backend._generate_batch
    sizes = []

    def fragile(batch, max_new_tokens):
        sizes.append(len(batch))
        if len(batch) > 1:
            raise torch.OutOfMemoryError("simulated")
        return real(batch, max_new_tokens)

    monkeypatch.setattr(backend, "_generate_batch", fragile)
    monkeypatch.setattr(backend, "max_batch_size", None)
    with caplog.at_level(logging.WARNING):
        answers = backend.generate(requests, max_new_tokens=3)
    assert [a.text for a in answers] == expected
    assert sizes == [4, 2, 1, 1, 2, 1, 1] and backend.max_batch_size == 1
    assert "out of memory on a batch of 4" in caplog.text and "batches of 2" in caplog.text

    def broken(batch, max_new_tokens):
        raise torch.OutOfMemoryError("simulated")

    monkeypatch.setattr(backend, "_generate_batch", broken)
    with pytest.raises(VeraError, match="a: out of memory on a single request"):
        backend.generate(requests[:1], max_new_tokens=3)


def test_load_errors(tmp_path, tiny_models):
    with pytest.raises(VeraError, match=f"^model folder not found: {tmp_path / 'absent'}$"):
        load_backend("hf", str(tmp_path / "absent"), device="cpu", local_files_only=True)
    (tmp_path / "empty").mkdir()
    with pytest.raises(VeraError, match=f"^model folder {tmp_path / 'empty'} has no config.json "):
        load_backend("hf", str(tmp_path / "empty"), device="cpu")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text('{"model_type": "internvl"}')
    with pytest.raises(VeraError, match=f"^cannot load model {tmp_path / 'broken'}: "):
        load_backend("hf", str(tmp_path / "broken"), device="cpu")
    with pytest.raises(VeraError, match="unknown backend 'vllm'"):
        load_backend("vllm", "x")
    with pytest.raises(VeraError, match="unknown dtype"):
        load_backend("hf", str(tiny_models.path("internvl")), device="cpu", dtype="int3")


@pytest.mark.parametrize("layout", ["released", "per-frame"])
def test_authors_prompt_reaches_internvl_token_for_token(shared_data, layout, tiny_models):
    from vera.vlm.prompts import load_template

    backend = tiny_models.backend("internvl")
    processor = backend.processor
    prompt = build_learner_prompt(load_template(shared_data / "prompts" / "VERA_learner_instruct.txt"),
                                  PRESET_QUESTIONS["ucf"])
    request = learner_request(prompt, _frames(3), "k", layout)
    row = backend._batch([request]).inputs["input_ids"][0].tolist()
    tile = processor.image_token * processor.image_seq_length
    if layout == "released":
        # All 8 tiles in one <img>…</img> at Frame1; "Frame2: <image>" … stay as they were.
        expected = prompt.replace("<image>", "<img>" + tile * 8 + "</img>", 1)
    else:
        expected = prompt.replace("<image>", "<img>" + tile + "</img>")
    chat = "<|im_start|>user\n" + expected + "<|im_end|>\n<|im_start|>assistant\n"
    assert backend.tokenizer.decode(row, skip_special_tokens=False) == chat


# --------------------------------------------------------------------------- Hub ids without a network


@pytest.fixture
def no_network(monkeypatch):
    """Any connection attempt fails at once, as on a machine without a network (and no test reaches out)."""
    attempts = []

    def refuse(address, *args, **kwargs):
        attempts.append(address)
        raise OSError("network is unreachable")

    monkeypatch.setattr(socket, "create_connection", refuse)
    return attempts


def test_a_hub_id_offline_fails_in_seconds_naming_the_model(monkeypatch, no_network):
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    started = time.monotonic()
    with pytest.raises(VeraError) as error:
        load_backend("hf", "vera-tests/no-such-model", device="cpu")
    assert time.monotonic() - started < 5
    assert str(error.value) == ("model vera-tests/no-such-model is neither a local folder nor in the Hugging Face "
                                f"cache ({constants.HF_HUB_CACHE}), and the network is off (HF_HUB_OFFLINE=1)")
    assert no_network == []  # offline: not even a reachability check


def test_a_hub_id_with_the_hub_out_of_reach_fails_in_seconds(monkeypatch, no_network):
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    started = time.monotonic()
    with pytest.raises(VeraError, match=r"^model vera-tests/no-such-model is neither a local folder nor in the "
                                        r"Hugging Face cache \(.*\), and the network is off \(the Hub at "
                                        r"https://\S+ does not answer within 3 s\)$"):
        load_backend("hf", "vera-tests/no-such-model", device="cpu")
    assert time.monotonic() - started < 5 and len(no_network) == 1


def test_a_cached_hub_id_loads_from_the_cache_when_offline(monkeypatch, tmp_path, no_network):
    """The cache layout huggingface_hub writes: refs/main names the snapshot that holds the files."""
    from huggingface_hub import constants

    from vera.vlm.backends.hub import locate_model

    snapshot = tmp_path / "models--vera-tests--cached" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (tmp_path / "models--vera-tests--cached" / "refs").mkdir()
    (tmp_path / "models--vera-tests--cached" / "refs" / "main").write_text("abc123")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert locate_model("vera-tests/cached") == ("vera-tests/cached", True)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    assert locate_model("vera-tests/cached") == ("vera-tests/cached", True)  # the Hub does not answer: the cache
    with pytest.raises(VeraError, match="vera-tests/absent is neither a local folder nor in the Hugging Face cache"):
        locate_model("vera-tests/absent")


@pytest.mark.parametrize("command", ["training", "generate_initial_score"])
def test_the_commands_stop_in_seconds_on_a_hub_id_they_cannot_have(command, tmp_path, capsys, monkeypatch,
                                                                    no_network):
    from huggingface_hub import constants

    from fixtures.scripts import run

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    annotation = tmp_path / "ann.json"
    annotation.write_text('[{"video": "frames/Abuse/Abuse001_x264.mp4", "temporal_label": [-1, -1], "length": 20}]')
    (tmp_path / "frames" / "Abuse001_x264").mkdir(parents=True)
    common = ["--dataset", "ucf", "--frames", str(tmp_path / "frames"), "--model", "vera-tests/no-such-model",
              "--output", str(tmp_path / "out")]
    inputs = (["--train", str(annotation), "--val", str(annotation)] if command == "training"
              else ["--annotations", str(annotation), "--preset", "ucf"])
    started = time.monotonic()
    assert run(command, common + inputs) == 2
    assert time.monotonic() - started < 5
    assert capsys.readouterr().err == ("error: model vera-tests/no-such-model is neither a local folder nor in the "
                                       f"Hugging Face cache ({constants.HF_HUB_CACHE}), and the network is off "
                                       "(HF_HUB_OFFLINE=1)\n")
    assert not (tmp_path / "out").exists()
