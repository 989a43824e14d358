"""The converted InternVL2 against InternVL2's original modeling code (``benchmarks/compare_internvl2_original.py``).

The original code is not part of the project and does not run on current
transformers, so this runs only where ``VERA_INTERNVL2_ORIGINAL`` names the
folder of that code (a flat package) and a python with transformers < 4.50,
joined by ``os.pathsep``, e.g.
``VERA_INTERNVL2_ORIGINAL=/work/orig_internvl2:/work/venv-orig/bin/python``;
elsewhere it skips, saying so. About a minute on two CPU cores.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "compare_internvl2_original.py"


def _original_setting() -> tuple[str, str]:
    setting = os.environ.get("VERA_INTERNVL2_ORIGINAL", "")
    if not setting:
        pytest.skip("VERA_INTERNVL2_ORIGINAL is not set (the original InternVL2 code folder and a python with "
                    f"transformers < 4.50, joined by {os.pathsep!r})")
    parts = setting.split(os.pathsep)
    if len(parts) != 2:
        pytest.fail(f"VERA_INTERNVL2_ORIGINAL must be CODE_DIR{os.pathsep}PYTHON, got {setting!r}")
    return parts[0], parts[1]


def test_converted_model_matches_the_original_modeling_code(tmp_path, shared_data):
    code, python = _original_setting()
    spec = importlib.util.spec_from_file_location("compare_internvl2_original", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    report = tmp_path / "result.json"
    status = script.main(["--original-code", code, "--original-python", python, "--max-new-tokens", "8",
                          "--work", str(tmp_path / "work"), "--json", str(report)])
    result = json.loads(report.read_text(encoding="utf-8"))
    for name in ("a_input_ids", "a_attention_mask", "a_pixel_values", "b_input_ids", "b_attention_mask",
                 "b_pixel_values", "b_tokens"):
        assert result[name]["equal"], (name, result[name])
    assert result["b_input_ids"]["shape_original"][0] == 2 and len(result["tokens_original"][0]) == 8
    logits = result["a_logits"]
    assert logits["max_abs_difference"] < 1e-4 and logits["argmax_equal_at_every_position"], logits
    assert logits["max_abs_logit"] > 1  # the logits are not all near zero, so the difference means something
    assert status == 0
