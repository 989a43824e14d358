"""A converted InternVL2 checkpoint against InternVL2's original modeling code, on the same random weights.

    python benchmarks/compare_internvl2_original.py --original-code DIR --original-python PYTHON \
        [--max-new-tokens 20] [--max-position-embeddings 32768] [--work DIR] [--json OUT]

``DIR`` holds InternVL2's original remote code as a flat package
(``modeling_internvl_chat.py``, ``modeling_intern_vit.py``,
``modeling_internlm2.py``, ``configuration_*.py``, ``conversation.py``,
``tokenization_internlm2.py`` and an ``__init__.py``); it is never part of the
project. ``PYTHON`` is an interpreter with transformers < 4.50, where that code
still runs; ``internvl2_original_side.py`` runs there, and only there is the
original code imported. Tensors go between the two through ``.npz`` files.

1. A small random checkpoint in the original layout, written by the test
   suite's own builder (``tests/test_convert_internvl2.py``: InternLM2 with
   fused ``wqkv``, InternViT, ``mlp1``, a SentencePiece ``tokenizer.model``),
   at InternVL2's tile geometry (448 px, patch 14, 256 tokens a tile) with
   grouped-query attention (4 query heads, 2 key-value heads) and
   InternLM2.5's position settings (rope θ 10⁶, dynamic NTK ×2 from
   ``--max-position-embeddings``, 32768 as InternVL2-8B);
2. converted with ``python -m vera.vlm.convert_internvl2``;
3. the Step 1 input of the released layout: the authors' learner prompt
   (``../shared/data/prompts``) with the UCF questions, 8 frames of a real clip
   (``../shared/data/clips``) at Step 1's indices, resized to 448×448;
4. original side, float32, eager attention, no flash-attn: (a) the query that
   ``batch_chat`` builds for one request and the original forward's logits;
   (b) ``batch_chat`` on two requests (the second with two questions, so the
   first is left-padded), greedy, ``--max-new-tokens``;
5. project side: the ``hf`` backend on the converted folder, float32 on CPU,
   given the same frames and prompts; what it passes to ``generate`` is
   recorded, and (a)'s logits are the native model's forward on those inputs.

Compared: input ids and attention masks (exactly), pixel values (exactly),
logits (maximum absolute difference, float32), greedy tokens (exactly).
Exits 1 when an exact comparison fails.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
CLIP_A = "Fighting033_x264_570_841.mp4"
CLIP_B = "RoadAccidents133_x264_270_451.mp4"
# The checkpoint's shape: InternVL2's tile geometry, a small InternViT and a small InternLM2 with GQA.
SIZES = dict(IMAGE=448, PATCH=14, TOKENS_PER_TILE=256, VIT_HIDDEN=32, VIT_HEADS=2,
             HIDDEN=64, HEADS=4, KV_HEADS=2, HEAD_DIM=16, LAYERS=2)


def write_checkpoint(src: Path, max_position_embeddings: int, sizes: dict[str, int] = SIZES) -> None:
    """The test suite's original-layout builder, at ``sizes`` (its sizes are module constants)."""
    spec = importlib.util.spec_from_file_location("_internvl2_builder", ROOT / "tests" / "test_convert_internvl2.py")
    builder = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(builder)
    for name, value in sizes.items():
        setattr(builder, name, value)
    builder.write_original(src)
    for shard in src.glob("*.safetensors"):  # published shards say their format; transformers 4.44 requires it
        save_file(load_file(shard), str(shard), metadata={"format": "pt"})
    config = json.loads((src / "config.json").read_text())
    config["llm_config"]["max_position_embeddings"] = max_position_embeddings
    (src / "config.json").write_text(json.dumps(config))


def step1_frames(clip: Path) -> np.ndarray:
    """The 8 frames of the clip's middle Step 1 segment, 448×448 bicubic as Step 1 shows them."""
    from vera.data.frames import VLM_IMAGE_SIZE, VideoFileFrames
    from vera.data.segments import half_window
    from vera.vlm.prompts import learner_frames
    from vera.vlm.step1 import plan_segments

    with VideoFileFrames(clip) as frames:
        segments = plan_segments(frames.num_frames, half_window())
        segment = segments[len(segments) // 2]
        return np.stack(learner_frames(frames, segment.indices, "released", VLM_IMAGE_SIZE))


class GenerateRecorder:
    """Stands in for the native model's ``generate``: records what the backend passed and what came back."""

    def __init__(self, generate):
        self.generate = generate
        self.calls: list[dict] = []

    def __call__(self, **kwargs):
        output = self.generate(**kwargs)
        self.calls.append({name: kwargs[name] for name in ("input_ids", "attention_mask", "pixel_values")}
                          | {"output": output})
        return output


def project_side(dst: Path, question_a: str, questions_b: list[str], frames: dict[str, np.ndarray],
                 max_new_tokens: int) -> tuple[dict[str, np.ndarray], dict]:
    from vera.vlm.backends import load_backend
    from vera.vlm.prompts import learner_request

    backend = load_backend("hf", str(dst), device="cpu", dtype="float32", local_files_only=True)
    recorder = GenerateRecorder(backend.model.generate)
    backend.model.generate = recorder
    out: dict[str, np.ndarray] = {}

    # One request: its inputs as the backend builds them (it would decode them with its own greedy loop, not
    # generate); the padded pair below goes through generate, whose inputs the recorder keeps.
    call = backend._batch([learner_request(question_a, list(frames["frames_a"]), "a", "released")]).inputs
    with torch.inference_mode():
        logits = backend.model(input_ids=call["input_ids"], attention_mask=call["attention_mask"],
                               pixel_values=call["pixel_values"]).logits
    out |= {"a_input_ids": call["input_ids"].numpy(), "a_attention_mask": call["attention_mask"].numpy(),
            "a_pixel_values": call["pixel_values"].numpy(), "a_logits": logits.float().numpy()}

    requests = [learner_request(question, list(frames[name]), name, "released")
                for question, name in zip(questions_b, ("frames_b0", "frames_b1"))]
    answers = backend.generate(requests, max_new_tokens=max_new_tokens)
    call = recorder.calls[-1]
    prompt_length = call["input_ids"].shape[1]
    out |= {"b_input_ids": call["input_ids"].numpy(), "b_attention_mask": call["attention_mask"].numpy(),
            "b_pixel_values": call["pixel_values"].numpy(),
            "b_tokens": call["output"][:, prompt_length:].cpu().numpy()}
    return out, {"answers": [answer.text for answer in answers], **backend.describe(),
                 "attn_implementation": backend.model.config.text_config._attn_implementation}


def compare(original: dict[str, np.ndarray], project: dict[str, np.ndarray]) -> dict:
    """Exact equality of ids, masks, pixels and tokens; the largest absolute logit difference."""
    result: dict = {}
    for name in ("a_input_ids", "a_attention_mask", "a_pixel_values", "b_input_ids", "b_attention_mask",
                 "b_pixel_values", "b_tokens"):
        a, b = original[name], project[name]
        result[name] = {"equal": bool(a.shape == b.shape and np.array_equal(a, b)),
                        "shape_original": list(a.shape), "shape_project": list(b.shape)}
    a, b = original["a_logits"], project["a_logits"]
    if a.shape == b.shape:
        difference = np.abs(a.astype(np.float64) - b.astype(np.float64))
        result["a_logits"] = {
            "shape": list(a.shape), "max_abs_difference": float(difference.max()),
            "max_abs_logit": float(np.abs(a).max()),
            "argmax_equal_at_every_position": bool(np.array_equal(a.argmax(-1), b.argmax(-1))),
        }
    else:
        result["a_logits"] = {"shape_original": list(a.shape), "shape_project": list(b.shape)}
    result["exact_checks_pass"] = all(entry["equal"] for entry in result.values() if "equal" in entry)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(allow_abbrev=False, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--original-code", type=Path, required=True, help="InternVL2's remote code, a flat package")
    parser.add_argument("--original-python", type=Path, required=True, help="python with transformers < 4.50")
    parser.add_argument("--max-new-tokens", type=int, default=20)
    parser.add_argument("--max-position-embeddings", type=int, default=32768)
    parser.add_argument("--work", type=Path, help="folder for the checkpoints and tensors (default: a temporary one)")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    for path in (args.original_code / "modeling_internvl_chat.py", args.original_python,
                 SHARED / "clips" / CLIP_A, SHARED / "prompts" / "VERA_learner_instruct.txt"):
        if not path.exists():
            parser.error(f"not found: {path}")
    with tempfile.TemporaryDirectory() as temporary:
        return run(args, args.work or Path(temporary))


def run(args: argparse.Namespace, work: Path) -> int:
    from vera.vlm.prompts import build_learner_prompt, load_template
    from vera.constants import PRESET_QUESTIONS

    work.mkdir(parents=True, exist_ok=True)
    src, dst = work / "original", work / "converted"
    started = time.perf_counter()
    write_checkpoint(src, args.max_position_embeddings)
    subprocess.run([sys.executable, "-m", "vera.vlm.convert_internvl2", str(src), str(dst), "--overwrite"],
                   check=True, stdout=subprocess.DEVNULL)

    template = load_template(SHARED / "prompts" / "VERA_learner_instruct.txt")
    question_a = build_learner_prompt(template, PRESET_QUESTIONS["ucf"])
    questions_b = [question_a, build_learner_prompt(template, PRESET_QUESTIONS["xd"][:2])]
    frames = {"frames_a": step1_frames(SHARED / "clips" / CLIP_A)}
    frames |= {"frames_b0": frames["frames_a"], "frames_b1": step1_frames(SHARED / "clips" / CLIP_B)}
    np.savez(work / "inputs.npz", **frames)
    (work / "questions.json").write_text(json.dumps({"question_a": question_a, "questions_b": questions_b},
                                                    ensure_ascii=False), encoding="utf-8")

    side = Path(__file__).with_name("internvl2_original_side.py")
    subprocess.run([str(args.original_python), str(side), "--original-code", str(args.original_code),
                    "--checkpoint", str(src), "--inputs", str(work / "inputs.npz"),
                    "--questions", str(work / "questions.json"), "--out", str(work / "original.npz"),
                    "--max-new-tokens", str(args.max_new_tokens)], check=True)
    original = dict(np.load(work / "original.npz"))
    original_info = json.loads((work / "original.json").read_text(encoding="utf-8"))

    project, project_info = project_side(dst, question_a, questions_b, frames, args.max_new_tokens)
    result = compare(original, project)
    result |= {
        "checkpoint": {**SIZES, "max_position_embeddings": args.max_position_embeddings,
                       "vocab_size": int(original["a_logits"].shape[-1])},
        "max_new_tokens": args.max_new_tokens,
        # For information: batch_chat's text is cut at the separator and stripped; where the tokens spell invalid
        # UTF-8 (random weights), sentencepiece replaces only the bad bytes, the fast tokenizer the whole byte run.
        "answers_original": original_info.pop("answers"), "answers_project": project_info.pop("answers"),
        "tokens_original": original["b_tokens"].tolist(), "tokens_project": project["b_tokens"].tolist(),
        "original_side": original_info,
        "project_side": {key: project_info[key] for key in ("transformers", "torch", "dtype", "device",
                                                                    "attn_implementation")},
        "seconds": round(time.perf_counter() - started, 1),
    }
    text = json.dumps(result, ensure_ascii=False, indent=1)
    print(text)
    if args.json:
        args.json.write_text(text + "\n", encoding="utf-8")
    return 0 if result["exact_checks_pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
