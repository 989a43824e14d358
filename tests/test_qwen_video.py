"""The qwen-video frame layout against the authors' Qwen2-VL construction, and --dump-inputs against the originals.

References are written here from the description of the authors' scripts:
their chat string, a message with one video of frame *files* at
fps 1.0 through ``qwen_vl_utils.process_vision_info``, and the processor of
their era, which kept qwen-vl-utils' frame size and normalised in numpy
(float64 rescale rounded to float32, then float32 ``(x - mean) / std``).
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import cv2
import numpy as np
import torchvision.transforms as T
import pytest
import torch
from PIL import Image
from qwen_vl_utils import process_vision_info

from vera.data.frames import open_frames
from vera.errors import VeraError
from vera.vlm.backends.base import VLMRequest
from vera.vlm.backends.scripted import ScriptedBackend
from vera.vlm.input_dump import enable_input_dumps
from vera.vlm.prompts import DEFAULT_LEARNER_TEMPLATE, build_learner_prompt, learner_frames, learner_request, load_template, resolve_frame_layout
from vera.constants import PRESET_QUESTIONS
from vera.vlm.qwen_video import chat_text
from fixtures.scripts import load_script

SYS_START = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
SYS_END = "<|im_end|>\n<|im_start|>assistant\n"
VIDEO_PREFIX = "<|vision_start|><|video_pad|><|vision_end|>"
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
FIGHTING = "Fighting033_x264_570_841"  # 320×240


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


# -- the authors' construction, written from its description -----------------------------------

def authors_text(instruct: str, questions: list[str]) -> str:
    new_qs = "".join(question + "\n" for question in questions)
    question = instruct.replace("[$Data]", VIDEO_PREFIX)
    at = question.find("Based on the analysis above")
    return SYS_START + question[:at] + new_qs + question[at:] + SYS_END


def authors_frames(paths: list[Path]) -> list[Image.Image]:
    """qwen-vl-utils' frames for one video item of frame files, as the authors called it."""
    message = [{"role": "user", "content": [{"type": "video", "video": [str(p) for p in paths], "fps": 1.0}]}]
    images, videos = process_vision_info(message)
    assert images is None and len(videos) == 1
    return videos[0]


def era_pixels(frames: list[Image.Image]) -> np.ndarray:
    """pixel_values_videos of the numpy image processor, patch by patch: rows t, block row, block col, 2×2 inside;
    each row is channel, then the 2 frames, then a 14×14 patch."""
    x = np.stack([np.asarray(frame) for frame in frames]).astype(np.float64) * (1 / 255)
    x = (x.astype(np.float32) - np.array(CLIP_MEAN, np.float32)) / np.array(CLIP_STD, np.float32)
    x = x.transpose(0, 3, 1, 2)
    rows = []
    for t in range(x.shape[0] // 2):
        for block_row in range(x.shape[2] // 28):
            for block_col in range(x.shape[3] // 28):
                for inner_row in range(2):
                    for inner_col in range(2):
                        top, left = (2 * block_row + inner_row) * 14, (2 * block_col + inner_col) * 14
                        patch = x[2 * t:2 * t + 2, :, top:top + 14, left:left + 14]  # (frames, C, 14, 14)
                        rows.append(patch.transpose(1, 0, 2, 3).reshape(-1))
    return np.stack(rows)


def authors_reference(processor, paths: list[Path], text: str) -> dict[str, np.ndarray]:
    """input_ids, video_grid_thw and pixel_values_videos as the authors' script fed them."""
    frames = authors_frames(paths)
    height, width = frames[0].height, frames[0].width
    grid = [len(frames) // 2, height // 14, width // 14]
    tokens = grid[0] * grid[1] * grid[2] // 4
    expanded = text.replace("<|video_pad|>", "<|video_pad|>" * tokens)
    return {"input_ids": np.array(processor.tokenizer.encode(expanded, add_special_tokens=False), np.int64),
            "video_grid_thw": np.array([grid], np.int64), "pixel_values_videos": era_pixels(frames)}


def window_indices(centre: int, length: int) -> list[int]:
    """The released Step 1 frames: 8 at arange(start, end, (end - start) / 8) of the ±150 window."""
    start, end = max(centre - 150, 0), min(centre + 150, length)
    return np.arange(start, end, (end - start) / 8).astype(int).tolist()


def write_jpegs(video: Path, folder: Path, count: int, size: tuple[int, int] | None = None) -> None:
    folder.mkdir(parents=True)
    capture = cv2.VideoCapture(str(video))
    for index in range(count):
        ok, frame = capture.read()
        assert ok
        if size is not None:
            frame = cv2.resize(frame, size, interpolation=cv2.INTER_AREA)
        cv2.imwrite(str(folder / f"{index:06d}.jpg"), frame)
    capture.release()


@pytest.fixture(scope="module")
def authors_template(shared_data) -> str:
    return load_template(shared_data / "prompts" / "VERA_learner_instruct.txt")


# -- prompt, frames and layout choice -----------------------------------------------------------

def test_prompt_is_the_authors_string(authors_template):
    questions = PRESET_QUESTIONS["ucf-qwen"]
    prompt = build_learner_prompt(authors_template, questions, 8, "qwen-video")
    assert chat_text(prompt) == authors_text(authors_template, questions)
    assert "Frame1" not in prompt and "[$Data]" not in prompt and prompt.count(VIDEO_PREFIX) == 1
    with pytest.raises(VeraError, match=r"holds 0 times"):
        build_learner_prompt(DEFAULT_LEARNER_TEMPLATE.replace("[$Data]", "$Data"), questions, 8, "qwen-video")


def test_qwen_vl_utils_resizes_each_frame_as_in_the_authors_era(tmp_path):
    """Up to 0.0.11 each frame file is resized on its own to multiples of 28 (rounded) within 4·28² … 16384·28²
    pixels (a 40×30 frame: scaled by √(3136/1200), sides rounded up to 84×56), and an odd count is padded with
    the last frame; 0.0.13+ would give 392×280 for a 320×240 frame."""
    expected = {(320, 240): (308, 252), (640, 360): (644, 364), (640, 346): (644, 336), (40, 30): (84, 56)}
    for (width, height), size in expected.items():
        paths = []
        for index in range(7):
            path = tmp_path / f"{width}x{height}_{index}.jpg"
            cv2.imwrite(str(path), np.full((height, width, 3), 30 * index, np.uint8))
            paths.append(path)
        frames = authors_frames(paths)
        assert len(frames) == 8 and all(frame.size == size for frame in frames)
        assert np.array_equal(np.asarray(frames[7]), np.asarray(frames[6]))


def test_default_layout_follows_the_model_and_template(authors_template):
    assert resolve_frame_layout(None, "qwen2_vl", authors_template) == "qwen-video"
    assert resolve_frame_layout(None, "qwen2_vl", DEFAULT_LEARNER_TEMPLATE) == "qwen-video"
    assert resolve_frame_layout(None, "internvl", authors_template) == "released"
    assert resolve_frame_layout(None, "qwen2_vl", authors_template.replace("[$Data]", "$Data")) == "released"
    assert resolve_frame_layout("per-frame", "qwen2_vl", authors_template) == "per-frame"
    with pytest.raises(VeraError, match="qwen-video feeds Qwen2-VL .* this model is 'internvl'"):
        resolve_frame_layout("qwen-video", "internvl", authors_template)


def test_jpeg_frames_are_decoded_like_the_files_qwen_vl_utils_opens(shared_data, tmp_path):
    write_jpegs(shared_data / "clips" / f"{FIGHTING}.mp4", tmp_path / FIGHTING, 20)
    with open_frames(FIGHTING, frames_dir=tmp_path) as frames:
        got = learner_frames(frames, [0, 7, 7, 19], "qwen-video", 448)
        with pytest.raises(VeraError, match=f"video {FIGHTING}: frame 20 is out of range"):
            learner_frames(frames, [19, 20], "qwen-video", 448)
    for image, index in zip(got, [0, 7, 7, 19], strict=True):
        assert image.shape == (240, 320, 3)  # unresized
        assert np.array_equal(image, np.asarray(Image.open(tmp_path / FIGHTING / f"{index:06d}.jpg").convert("RGB")))
    (tmp_path / FIGHTING / "000003.jpg").write_bytes(b"not a jpeg")
    with open_frames(FIGHTING, frames_dir=tmp_path) as frames:
        with pytest.raises(VeraError, match=f"video {FIGHTING}: cannot read frame 3"):
            learner_frames(frames, [3], "qwen-video", 448)


# -- the backend's inputs -----------------------------------------------------------------------

def test_backend_feeds_qwen2_vl_as_the_authors_did(shared_data, tmp_path, authors_template, tiny_models):
    backend = tiny_models.backend("qwen2_vl")
    write_jpegs(shared_data / "clips" / f"{FIGHTING}.mp4", tmp_path / FIGHTING, 48)
    indices = window_indices(16, 48)
    questions = PRESET_QUESTIONS["ucf-qwen"]
    prompt = build_learner_prompt(authors_template, questions, 8, "qwen-video")
    with open_frames(FIGHTING, frames_dir=tmp_path) as frames:
        request = learner_request(prompt, learner_frames(frames, indices, "qwen-video", 448), "k", "qwen-video")
    inputs = backend._batch([request]).inputs
    text = authors_text(authors_template, questions)
    reference = authors_reference(backend.processor, [tmp_path / FIGHTING / f"{i:06d}.jpg" for i in indices], text)
    # 320×240 frames → 308×252 → 22×18 patches, 8 frames → 4 temporal: 4·18·22/4 = 396 video tokens.
    assert reference["video_grid_thw"].tolist() == [[4, 18, 22]]
    assert np.array_equal(inputs["video_grid_thw"].numpy(), reference["video_grid_thw"])
    assert np.array_equal(inputs["input_ids"][0].numpy(), reference["input_ids"])
    assert int((inputs["input_ids"][0] == backend.tokenizer.convert_tokens_to_ids("<|video_pad|>")).sum()) == 396
    assert np.array_equal(inputs["pixel_values_videos"].numpy(), reference["pixel_values_videos"])
    # transformers 5's own call (fused normalisation) differs by at most one float32 ulp, and not after bfloat16.
    message = [{"role": "user", "content": [{"type": "video", "fps": 1.0, "video": [
        str(tmp_path / FIGHTING / f"{i:06d}.jpg") for i in indices]}]}]
    _, videos = process_vision_info(message)
    current = backend.processor(text=[text], videos=videos, do_resize=False, cap_pixels_per_frame=False,
                                return_tensors="pt")
    assert torch.equal(current["input_ids"], inputs["input_ids"])
    assert np.abs(current["pixel_values_videos"].numpy() - reference["pixel_values_videos"]).max() <= 2.4e-7
    assert torch.equal(current["pixel_values_videos"].bfloat16(), inputs["pixel_values_videos"].bfloat16())


def test_video_requests_decode_with_the_checkpoint_generation_config(monkeypatch, authors_template, tiny_models):
    backend = tiny_models.backend("qwen2_vl")
    seen = []
    original = backend.model.generate

    def spy(**kwargs):
        seen.append(sorted(key for key, value in kwargs.items() if not isinstance(value, torch.Tensor)))
        return original(**kwargs)

    frames = [np.full((60, 80, 3), level, np.uint8) for level in range(0, 240, 30)]
    video = learner_request(build_learner_prompt(authors_template, ["1. Q?"], 8, "qwen-video"), frames, "v",
                            "qwen-video")
    images = learner_request(build_learner_prompt(DEFAULT_LEARNER_TEMPLATE, ["1. Q?"], 8), frames, "i", "released")
    monkeypatch.setattr(backend.model, "generate", spy)
    backend.generate([video], max_new_tokens=2)  # generate even where the greedy loop could decode (decoder auto)
    monkeypatch.setattr(backend, "decoder", "generate")  # the other layouts would take the greedy loop
    backend.generate([images], max_new_tokens=2)
    assert seen == [["logits_processor", "max_new_tokens"],
                    ["do_sample", "eos_token_id", "logits_processor", "max_new_tokens", "num_beams", "pad_token_id"]]
    with pytest.raises(VeraError, match="mixes qwen-video requests with other frame layouts"):
        backend._batch([video, images])
    with pytest.raises(VeraError, match="the qwen-video frame layout is for Qwen2-VL; model .* is 'internvl'"):
        tiny_models.backend("internvl")._batch([video])


# -- --dump-inputs ------------------------------------------------------------------------------

def _dump(folder: Path, name: str) -> tuple[dict[str, np.ndarray], str]:
    with np.load(folder / f"{name}.npz") as arrays:
        return {key: arrays[key] for key in arrays.files}, (folder / f"{name}.txt").read_text()


def _mixed_requests(arch: str, authors_template: str) -> list[list[VLMRequest]]:
    """Batches whose prompts differ in length (left padding) and frames that differ in size."""
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (48, 64, 3), dtype=np.uint8) for _ in range(8)]
    wide = [rng.integers(0, 256, (36, 100, 3), dtype=np.uint8) for _ in range(8)]
    long_prompt = build_learner_prompt(DEFAULT_LEARNER_TEMPLATE, PRESET_QUESTIONS["xd"])
    short_prompt = build_learner_prompt(DEFAULT_LEARNER_TEMPLATE, ["1. Q?"])
    batches = [[learner_request(long_prompt, frames, "a", "released"),
                learner_request(short_prompt, wide, "b", "per-frame", dump_name="b_16")]]
    if arch == "qwen2_vl":
        batches.append([learner_request(build_learner_prompt(authors_template, qs, 8, "qwen-video"), f, k,
                                        "qwen-video") for qs, f, k in
                        ((PRESET_QUESTIONS["ucf"], frames, "c"), (["1. Q?"], wide, "d segment 32"))])
    return batches


@pytest.mark.parametrize("arch", ["internvl", "qwen2_vl"])
def test_dumps_of_a_batch_equal_the_requests_alone(arch, tmp_path, authors_template, tiny_models):
    backend = tiny_models.backend(arch)
    try:
        for batch in _mixed_requests(arch, authors_template):
            backend.dump_inputs = tmp_path / "batched"
            backend.generate(batch, max_new_tokens=1)
            backend.dump_inputs = tmp_path / "single"
            for request in batch:
                backend.generate([request], max_new_tokens=1)
    finally:
        backend.dump_inputs = None
    names = sorted(path.stem for path in (tmp_path / "single").glob("*.npz"))
    assert names == (["a", "b_16", "c", "d_segment_32"] if arch == "qwen2_vl" else ["a", "b_16"])
    for name in names:
        batched, batched_text = _dump(tmp_path / "batched", name)
        single, single_text = _dump(tmp_path / "single", name)
        assert batched.keys() == single.keys() and batched_text == single_text
        assert all(np.array_equal(batched[key], single[key]) for key in single)
        assert single["input_ids"].dtype == np.int64 and single["input_ids"].ndim == 1
        assert backend.tokenizer.pad_token_id not in single["input_ids"].tolist()
        assert single_text == backend.tokenizer.decode(single["input_ids"].tolist(), skip_special_tokens=False)
    expected_keys = {"internvl": {"input_ids", "pixel_values"},
                     "qwen2_vl": {"input_ids", "mm_token_type_ids", "pixel_values", "image_grid_thw"}}[arch]
    assert set(_dump(tmp_path / "single", "a")[0]) == expected_keys


def test_only_a_backend_that_can_dump_is_asked_to(tmp_path):
    with pytest.raises(VeraError, match="backend scripted cannot dump its inputs"):
        enable_input_dumps(ScriptedBackend(lambda request: ""), tmp_path)


def _annotation(tmp_path: Path, key: str, length: int) -> Path:
    path = tmp_path / "ann.json"
    path.write_text(json.dumps([{"video": f"frames/Fighting/{key}.mp4", "temporal_label": [-1, -1, -1, -1],
                                 "length": length}]))
    return path


def test_cli_dumps_qwen2_vl_inputs_as_the_authors_built_them(shared_data, tmp_path, tiny_models, capsys):
    """Default layout for Qwen2-VL with the authors' prompt file, every segment dumped and checked."""
    length = 181
    write_jpegs(shared_data / "clips" / f"{FIGHTING}.mp4", tmp_path / "frames" / FIGHTING, length, size=(96, 72))
    prompt_file = shared_data / "prompts" / "VERA_learner_instruct.txt"
    cli = load_script("generate_initial_score")
    dumps, out = tmp_path / "dumps", tmp_path / "scores"
    assert cli.main(["--dataset", "ucf", "--annotations", str(_annotation(tmp_path, FIGHTING, length)),
                     "--frames", str(tmp_path / "frames"), "--model", str(tiny_models.path("qwen2_vl")),
                     "--preset", "ucf-qwen", "--prompt-file", str(prompt_file), "--output", str(out),
                     "--max-new-tokens", "1", "--device", "cpu", "--no-progress", "--dump-inputs", str(dumps)]) == 0
    assert json.loads((out / "run.json").read_text())["identity"]["frame_layout"] == "qwen-video"
    processor = tiny_models.backend("qwen2_vl").processor
    text = authors_text(prompt_file.read_text(), PRESET_QUESTIONS["ucf-qwen"])
    centres = list(range(0, length, 16))
    assert sorted(path.name for path in dumps.iterdir()) == sorted(
        f"{FIGHTING}_{c}.{suffix}" for c in centres for suffix in ("npz", "txt"))
    for centre in centres:
        paths = [tmp_path / "frames" / FIGHTING / f"{i:06d}.jpg" for i in window_indices(centre, length)]
        reference = authors_reference(processor, paths, text)
        dumped, decoded = _dump(dumps, f"{FIGHTING}_{centre}")
        assert set(dumped) == {"input_ids", "mm_token_type_ids", "pixel_values_videos", "video_grid_thw"}
        for key, value in reference.items():
            assert dumped[key].dtype == value.dtype and np.array_equal(dumped[key], value), (centre, key)
        assert decoded == processor.tokenizer.decode(reference["input_ids"].tolist(), skip_special_tokens=False)
        assert decoded.startswith(SYS_START) and decoded.endswith(SYS_END)


def test_cli_dumps_internvl_inputs_as_the_released_code_built_them(shared_data, tmp_path, tiny_models):
    """The released layout: <img> + IMG_CONTEXT × tokens · 8 + </img> at the first <image>, frames 448² bicubic."""
    length = 40
    write_jpegs(shared_data / "clips" / f"{FIGHTING}.mp4", tmp_path / "frames" / FIGHTING, length)
    prompt_file = shared_data / "prompts" / "VERA_learner_instruct.txt"
    cli = load_script("generate_initial_score")
    dumps = tmp_path / "dumps"
    assert cli.main(["--dataset", "ucf", "--annotations", str(_annotation(tmp_path, FIGHTING, length)),
                     "--frames", str(tmp_path / "frames"), "--model", str(tiny_models.path("internvl")),
                     "--preset", "ucf", "--prompt-file", str(prompt_file), "--output", str(tmp_path / "out"),
                     "--max-new-tokens", "1", "--device", "cpu", "--no-progress", "--dump-inputs", str(dumps)]) == 0
    backend = tiny_models.backend("internvl")
    processor = backend.processor
    # The released prompt: $Data → Frame lines (brackets kept), questions before "Based on the analysis above".
    query = prompt_file.read_text().replace("$Data", "".join(f"Frame{i + 1}: <image>\n" for i in range(8)))
    at = query.find("Based on the analysis above")
    query = query[:at] + "".join(q + "\n" for q in PRESET_QUESTIONS["ucf"]) + query[at:]
    # InternVL2's batch_chat replaced only the first <image> with all 8 frames' tokens.
    tokens = "<IMG_CONTEXT>" * (processor.image_seq_length * 8)
    query = query.replace("<image>", "<img>" + tokens + "</img>", 1)
    chat = "<|im_start|>user\n" + query + "<|im_end|>\n<|im_start|>assistant\n"  # the tiny model's template
    for centre in range(0, length, 16):
        paths = [tmp_path / "frames" / FIGHTING / f"{i:06d}.jpg" for i in window_indices(centre, length)]
        tiles = [Image.open(path).convert("RGB").resize((448, 448), Image.Resampling.BICUBIC) for path in paths]
        # InternVL2's load_image: torchvision Resize (PIL bicubic) to the tile size, ToTensor, Normalize.
        size = processor.image_processor.size
        transform = T.Compose([T.Resize((size["height"], size["width"]), interpolation=T.InterpolationMode.BICUBIC),
                               T.ToTensor(), T.Normalize(processor.image_processor.image_mean,
                                                         processor.image_processor.image_std)])
        pixels = torch.stack([transform(tile) for tile in tiles])
        dumped, decoded = _dump(dumps, f"{FIGHTING}_{centre}")
        assert set(dumped) == {"input_ids", "pixel_values"}
        assert decoded == chat
        assert np.array_equal(dumped["input_ids"], np.array(backend.tokenizer.encode(chat, add_special_tokens=False)))
        assert np.array_equal(dumped["pixel_values"], pixels.numpy())
