"""The package's shape: no module of ``vera`` imports itself back through others."""

from __future__ import annotations

import ast
from pathlib import Path

from fixtures.scripts import ROOT


def _modules(package: Path) -> dict[str, Path]:
    """Dotted name → file for every module under ``package`` (``__init__.py`` stands for its package)."""
    modules = {}
    for path in package.rglob("*.py"):
        parts = path.relative_to(package.parent).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package modules ``name`` imports anywhere in its file (function-level imports included)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # ``from a import b`` imports a.b where that is a module, else a name of a.
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:  # a name inside a module: the module
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_cycles(package: Path) -> list[list[str]]:
    """Every cycle of the import graph, each as one loop of module names (depth-first search)."""
    modules = _modules(package)
    graph = {name: sorted(_imports(name, path, modules)) for name, path in modules.items()}
    cycles, state, stack = [], {}, []

    def visit(name: str) -> None:
        state[name] = "open"
        stack.append(name)
        for target in graph[name]:
            if state.get(target) == "open":
                cycles.append(stack[stack.index(target):] + [target])
            elif target not in state:
                visit(target)
        stack.pop()
        state[name] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name)
    return cycles


def test_no_import_cycle_in_the_package():
    assert import_cycles(ROOT / "vera") == []


def test_the_cycle_search_finds_a_cycle(tmp_path):
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("")
    (package / "a.py").write_text("from pkg.sub import b\n")
    (package / "sub" / "b.py").write_text("def f():\n    from ..a import g  # lazy, still a cycle\n")
    (package / "c.py").write_text("import pkg.a\n")
    assert import_cycles(package) == [["pkg.a", "pkg.sub.b", "pkg.a"]]


# Modules of the package that hold a command-line entry of their own (``python -m ...``): they may read
# the option registry inside their ``main``.
COMMAND_LINE_TOOLS = {"vera.options", "vera.vlm.convert_internvl2"}


def test_the_core_takes_its_constants_from_vera_constants_not_the_command_line():
    modules = _modules(ROOT / "vera")
    readers = sorted(name for name, path in modules.items()
                     if name not in COMMAND_LINE_TOOLS and "vera.options" in _imports(name, path, modules))
    assert readers == []
    assert _imports("vera.constants", modules["vera.constants"], modules) == set()


def test_no_library_function_takes_a_parsed_command_line():
    modules = _modules(ROOT / "vera")
    takers = []
    for name, path in modules.items():
        if name in COMMAND_LINE_TOOLS:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                arguments = node.args.posonlyargs + node.args.args + node.args.kwonlyargs
                if any(argument.arg == "args" or "Namespace" in ast.unparse(argument.annotation or ast.Constant(""))
                       for argument in arguments):
                    takers.append(f"{name}.{node.name}")
    assert takers == []


# Needed at run time without being imported by the package: qwen-vl-utils imports torchvision without declaring it.
UNDECLARED_BY_A_REQUIREMENT = {"torchvision"}


def test_requirements_list_exactly_what_the_package_imports():
    import importlib.metadata
    import re
    import sys

    imported = set()
    for path in (ROOT / "vera").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
    third_party = imported - set(sys.stdlib_module_names) - {"vera"}
    providers = importlib.metadata.packages_distributions()
    distributions = {name.lower().replace("_", "-") for module in third_party for name in providers[module]}
    lines = (ROOT / "requirements.txt").read_text(encoding="utf-8").splitlines()
    listed = [re.split(r"[<>=!~ \[;]", line.strip(), maxsplit=1)[0].lower().replace("_", "-")
              for line in lines if line.strip() and not line.startswith("#")]
    assert len(listed) == len(set(listed))
    assert set(listed) == distributions | UNDECLARED_BY_A_REQUIREMENT


def test_the_tests_readme_lists_every_test_file_once():
    import re

    listed = re.findall(r"`(test_\w+\.py)`", (ROOT / "tests" / "README.md").read_text(encoding="utf-8"))
    assert sorted(listed) == sorted(path.name for path in (ROOT / "tests").glob("test_*.py"))


SCRIPTS = ["Preprocessing/extract_frames.py", "Preprocessing/extract_features.py", "training.py",
           "Inference/generate_initial_score.py", "Inference/compute_auc.py", "Inference/reproduce_tables.py",
           "Inference/report.py", "Inference/plot.py", "detect.py", "Data/download.py", "Data/make_annotations.py"]


def test_each_script_holds_its_parser_and_main_and_no_forwarding_layer_is_left():
    for script in SCRIPTS:
        tree = ast.parse((ROOT / script).read_text(encoding="utf-8"))
        names = {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}
        assigned = {target.id for node in tree.body if isinstance(node, ast.Assign) for target in node.targets
                    if isinstance(target, ast.Name)}
        assert "main" in names and "COMMAND" in assigned, script
    assert not (ROOT / "vera" / "commands").exists()
    assert not (ROOT / "vera" / "data" / "readahead.py").exists()


def test_code_and_docs_speak_of_the_code_not_of_issues():
    import re

    places = [ROOT / "README.md", *(ROOT / "docs").glob("*.md")]
    for folder in ("vera", "tests", "benchmarks"):
        places += [path for path in (ROOT / folder).rglob("*") if path.suffix in (".py", ".md", ".sh")]
    pattern = re.compile("issue" + r" *#?[0-9]", re.IGNORECASE)  # split, so that this file does not match itself
    assert [str(path) for path in places if pattern.search(path.read_text(encoding="utf-8"))] == []
