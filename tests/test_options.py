"""The option registry: each name defined once, choices shared with the modules that own them."""

from __future__ import annotations

import ast
import time
from pathlib import Path

import vera.options as options


def test_every_option_name_is_defined_once():
    # A dict literal silently keeps the last of two equal keys: read the source to catch it.
    tree = ast.parse(Path(options.__file__).read_text())
    literal = next(node.value for node in ast.walk(tree)
                   if isinstance(node, ast.AnnAssign) and getattr(node.target, "id", "") == "OPTIONS")
    names = [key.value for key in literal.keys]
    assert len(names) == len(set(names)), sorted({name for name in names if names.count(name) > 1})


def test_shared_choices_agree_with_their_owners():
    from vera.devices import DTYPES
    from vera.vlm.prompts import QUESTION_SETS

    assert options.PRESETS == tuple(QUESTION_SETS)
    assert options.DTYPE_CHOICES == ("auto", *DTYPES)


def test_help_answers_without_importing_the_heavy_libraries():
    import subprocess
    import sys

    probe = ("import sys, contextlib, io\nfrom vera.commands import run\n"
             "with contextlib.redirect_stdout(io.StringIO()):\n"
             "    try:\n        run('generate_initial_score', ['--help'])\n    except SystemExit:\n        pass\n"
             "print(sorted(m for m in ('torch', 'transformers', 'numpy', 'lightning') if m in sys.modules))")
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "[]", result.stderr
    assert time.monotonic() - started < 10


def test_no_module_level_name_is_defined_twice():
    # Two helpers of one name (merged from two branches) silently shadow each other.
    tree = ast.parse(Path(options.__file__).read_text())
    names = [node.name for node in tree.body if isinstance(node, (ast.FunctionDef, ast.ClassDef))]
    assert len(names) == len(set(names)), sorted({name for name in names if names.count(name) > 1})


def test_an_argument_error_is_the_only_line_printed(tmp_path):
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    (tmp_path / "list.json").write_text("[]")
    (tmp_path / "frames").mkdir()
    # No Data/ prompts (conftest's VERA_DATA is empty): a run would say it uses the project's own templates.
    common = ["--dataset", "ucf", "--frames", str(tmp_path / "frames"), "--served-model", "m", "--output",
              str(tmp_path / "out")]
    for script, extra in (("training.py", ["--train", str(tmp_path / "list.json"), "--val",
                                           str(tmp_path / "list.json")]),
                          ("Inference/generate_initial_score.py", ["--annotations", str(tmp_path / "list.json"),
                                                                   "--preset", "ucf"])):
        result = subprocess.run([sys.executable, str(root / script), *common, *extra], capture_output=True,
                                text=True, timeout=60)
        assert (result.returncode, result.stdout, result.stderr) == (
            2, "", "error: argument --served-model: only with --backend openai\n"), script


def test_no_progress_turns_off_the_bars_of_the_hugging_face_libraries():
    import subprocess
    import sys

    probe = ("from vera.progress import quiet_library_bars\nquiet_library_bars()\n"
             "import huggingface_hub.utils as hub\nfrom transformers.utils import logging\n"
             "print(logging.is_progress_bar_enabled(), hub.are_progress_bars_disabled())")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert result.stdout.split() == ["False", "True"], result.stderr
