"""Equality checks that only a GPU can run; the CPU test suite makes the same comparisons on the CPU.

    python benchmarks/gpu_checks.py [--device cuda] [--json OUT]

1. InternVL tiles: ``HFBackend._internvl_tiles`` normalises on the model's
   device; its tiles on the GPU must equal its tiles on the CPU bit for bit
   (the CPU ones equal torchvision's transform exactly: tests/test_convert_internvl2.py).
2. The greedy loop (``vera.vlm.greedy``) against ``generate`` on the tiny
   models, on the GPU, in float32 and bfloat16: new tokens and label logits.
   The loop reads the cache through a view where ``generate`` concatenates,
   so the attention kernel may differ; the counts of equal answers are
   reported, not asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from transformers import LogitsProcessorList

from vera.vlm import decoding, greedy
from vera.vlm.backends import load_backend
from vera.vlm.prompts import DEFAULT_LEARNER_TEMPLATE, build_learner_prompt, learner_request
from vera.constants import PRESET_QUESTIONS
from vera.vlm.tiny_model import write_tiny_model


def tiles_check(folder: Path, device: str) -> dict:
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (448, 448, 3), dtype=np.uint8) for _ in range(16)]
    frames += [rng.integers(0, 256, (240, 320, 3), dtype=np.uint8) for _ in range(4)]  # resized to the tile first
    on_cpu = load_backend("hf", str(folder), device="cpu", dtype="float32", local_files_only=True)
    on_gpu = load_backend("hf", str(folder), device=device, dtype="float32", local_files_only=True)
    cpu, gpu = on_cpu._internvl_tiles(frames), on_gpu._internvl_tiles(frames).cpu()
    return {"tiles": len(frames), "equal": bool(torch.equal(cpu, gpu)),
            "values_differing": int((cpu != gpu).sum()), "max_abs_difference": float((cpu - gpu).abs().max())}


def loop_check(folder: Path, device: str, dtype: str, tokens: int = 64) -> dict:
    backend = load_backend("hf", str(folder), device=device, dtype=dtype, local_files_only=True)
    prompt = build_learner_prompt(DEFAULT_LEARNER_TEMPLATE, PRESET_QUESTIONS["ucf"], 3, "per-frame")
    rng = np.random.default_rng(1)
    requests = [learner_request(prompt, list(rng.integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)), f"s{i}",
                                "per-frame") for i in range(8)]
    batch = backend._batch(requests)
    record = backend.label_token_ids["0"] + backend.label_token_ids["1"]
    recorder = decoding.LabelLogits(record)
    with torch.inference_mode():
        output = backend.model.generate(**batch.inputs, max_new_tokens=tokens, do_sample=False, num_beams=1,
                                        pad_token_id=backend.tokenizer.pad_token_id,
                                        logits_processor=LogitsProcessorList([recorder]))
    expected = output[:, batch.prompt_length:].cpu()
    ours, logits = greedy.greedy_decode(backend.model, batch.inputs, tokens, backend.eos_token_ids,
                                        backend.tokenizer.pad_token_id, record)
    reference_logits = recorder.collect()
    rows_equal = sum(torch.equal(a, b) for a, b in zip(expected, ours)) if expected.shape == ours.shape else 0
    return {"dtype": dtype, "rows": len(requests), "tokens": tokens, "rows_equal": rows_equal,
            "label_logits_equal": bool(expected.shape == ours.shape and torch.equal(reference_logits, logits)),
            "label_logits_max_abs_difference": (float((reference_logits - logits).abs().max())
                                                if expected.shape == ours.shape else None)}


def main() -> int:
    parser = argparse.ArgumentParser(allow_abbrev=False, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    results: dict = {"device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"}
    with tempfile.TemporaryDirectory() as temporary:
        folders = {arch: write_tiny_model(arch, Path(temporary) / arch) for arch in ("internvl", "qwen2_vl")}
        results["internvl_tiles"] = tiles_check(folders["internvl"], args.device)
        print(json.dumps(results["internvl_tiles"]), flush=True)
        for arch, folder in folders.items():
            for dtype in ("float32", "bfloat16"):
                row = {"arch": arch, **loop_check(folder, args.device, dtype)}
                results.setdefault("greedy_loop_against_generate", []).append(row)
                print(json.dumps(row), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
