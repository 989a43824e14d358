"""The option registry: each name defined once, choices shared with the modules that own them."""

from __future__ import annotations

import ast
import time
from pathlib import Path

import pytest

import vera.options as options
from fixtures.scripts import ROOT, load_script


def test_every_option_name_is_defined_once():
    # A dict literal silently keeps the last of two equal keys: read the source to catch it.
    tree = ast.parse(Path(options.__file__).read_text())
    literal = next(node.value for node in ast.walk(tree)
                   if isinstance(node, ast.AnnAssign) and getattr(node.target, "id", "") == "OPTIONS")
    names = [key.value for key in literal.keys]
    assert len(names) == len(set(names)), sorted({name for name in names if names.count(name) > 1})


def test_shared_choices_agree_with_their_owners():
    from vera.devices import DTYPES

    assert options.PRESETS == ("ucf", "xd", "ucf-qwen", "initial")  # the README's --preset values
    assert options.DTYPE_CHOICES == ("auto", *DTYPES)


def test_help_answers_without_importing_the_heavy_libraries():
    import subprocess
    import sys

    probe = (f"import sys, contextlib, io\nsys.path.insert(0, {str(ROOT / 'tests')!r})\nfrom fixtures.scripts import run\n"
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
    for path, extra in (("training.py", ["--train", str(tmp_path / "list.json"), "--val",
                                           str(tmp_path / "list.json")]),
                          ("Inference/generate_initial_score.py", ["--annotations", str(tmp_path / "list.json"),
                                                                   "--preset", "ucf"])):
        result = subprocess.run([sys.executable, str(root / path), *common, *extra], capture_output=True,
                                text=True, timeout=60)
        assert (result.returncode, result.stdout, result.stderr) == (
            2, "", "error: argument --served-model: only with --backend openai\n"), path


def test_no_progress_turns_off_the_bars_of_the_hugging_face_libraries():
    import subprocess
    import sys

    probe = ("from vera.progress import quiet_library_bars\nquiet_library_bars()\n"
             "import huggingface_hub.utils as hub\nfrom transformers.utils import logging\n"
             "print(logging.is_progress_bar_enabled(), hub.are_progress_bars_disabled())")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert result.stdout.split() == ["False", "True"], result.stderr


def _refused_as_unknown(parser, token: str) -> bool:
    """Whether ``parser`` takes ``token`` for an unknown option rather than for a flag it abbreviates."""
    from vera.errors import VeraError

    try:
        _, extras = parser.parse_known_args([token])
    except VeraError as error:
        return str(error).startswith(f"unrecognized arguments: {token}")
    return extras == [token]


def test_no_command_takes_an_abbreviated_flag():
    from fixtures.scripts import SCRIPTS

    checked = 0
    for name in SCRIPTS:
        module = load_script(name)
        if not hasattr(module, "COMMAND"):
            continue
        parser = module.COMMAND.parser()
        # Nothing required, so that only the abbreviation decides the outcome.
        for action in parser._actions:
            action.required = False
        for group in parser._mutually_exclusive_groups:
            group.required = False
        flags = {flag for flag in parser._option_string_actions if flag.startswith("--")}
        for flag in sorted(flags - {"--help"}):
            for cut in range(3, len(flag)):
                prefix = flag[:cut]
                if prefix not in flags:
                    assert _refused_as_unknown(parser, prefix), (name, flag, prefix)
                    checked += 1
    assert checked > 1000


def test_every_argument_parser_in_the_project_refuses_abbreviations():
    # The commands above, the tiny-model command's own parser, the benchmarks' and the tests' stand-ins.
    import re

    root = Path(options.__file__).resolve().parents[1]
    files = [*root.glob("*.py"), *(path for folder in ("vera", "benchmarks", "tests", "Data", "Inference",
                                                     "Preprocessing") for path in (root / folder).rglob("*.py"))]
    calls = [(path.relative_to(root), line) for path in files
             for line in path.read_text(encoding="utf-8").splitlines() if re.search(r"ArgumentParser\(", line)]
    assert len(calls) >= 10
    assert [call for call in calls if "allow_abbrev=False" not in call[1]] == []


@pytest.mark.parametrize("command, argv, message", [
    ("training", ["--device", "cpu"], "unrecognized arguments: --device (this command has no --device; it takes "
                                      "--accelerator {auto,cuda,cpu} and --devices N)"),
    ("training", ["--dataset", "ucf", "--device=cuda:0"], "unrecognized arguments: --device (this command has no "
                                                          "--device; it takes --accelerator {auto,cuda,cpu} and "
                                                          "--devices N)"),
    ("detect", ["clip.mp4", "--accelerator", "cpu"], "unrecognized arguments: --accelerator (this command has no "
                                                     "--accelerator; it takes --device DEVICE)"),
    ("generate_initial_score", ["--dataset", "ucf", "--output", ".", "--frames", ".", "--model", ".", "--preset",
                                "ucf", "--devic", "cpu"], "unrecognized arguments: --devic cpu"),
    ("compute_auc", ["--dataset", "ucf", "--devices", "2"], "unrecognized arguments: --devices"),
])
def test_a_flag_of_another_command_names_what_this_one_takes(command, argv, message, capsys):
    from fixtures.scripts import run

    assert run(command, argv) == 2
    error = capsys.readouterr().err
    assert error == f"error: {message}\n"


def test_training_script_answers_device_with_one_line_naming_accelerator():
    import subprocess
    import sys

    root = Path(options.__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, str(root / "training.py"), "--device", "cpu", "--dataset", "ucf"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.splitlines() == ["error: unrecognized arguments: --device (this command has no --device; "
                                          "it takes --accelerator {auto,cuda,cpu} and --devices N)"]
