"""The package layering the README's Layout table describes: no import runs uphill, no circle.

Reads every module's imports (top-level and inside functions) with ``ast``; nothing is executed.
"""

from __future__ import annotations

import ast
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
#: lower layers first; a module may import its own layer's package and anything below.
LAYERS = [("domain",), ("generator",), ("rewards",), ("judge",), ("embedded", "infinity_backend"), ("envs",),
          ("agents",), ("evaluation",), ("explorer",)]
LAYER_OF = {pkg: i for i, pkgs in enumerate(LAYERS) for pkg in pkgs}


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def _project_modules() -> dict[str, Path]:
    mods = {}
    for pkg in LAYER_OF:
        for p in sorted((ROOT / pkg).glob("*.py")):
            rel = p.relative_to(ROOT).as_posix()
            name = rel[:-3].replace("/", ".").removesuffix(".__init__")
            mods[name] = p
    return mods


def test_no_import_runs_uphill():
    bad = []
    for name, path in _project_modules().items():
        own = LAYER_OF[name.split(".")[0]]
        for imp in _imports(path):
            top = imp.split(".")[0]
            if top in LAYER_OF and top != name.split(".")[0]:
                if LAYER_OF[top] >= own:
                    bad.append(f"{name} imports {imp} (layer {LAYER_OF[top]} >= {own})")
    assert not bad, "\n".join(bad)


def test_no_import_circle_between_modules():
    mods = _project_modules()
    graph = {n: {m for m in mods if m != n and any(i == m or i.startswith(m + ".") for i in _imports(p))}
             for n, p in mods.items()}
    # a package's __init__ re-exports its modules; only module -> module edges can form a real circle
    graph = {n: {m for m in e if not (n.startswith(m + ".") and m in LAYER_OF)} for n, e in graph.items()}
    state: dict[str, int] = {}

    def visit(n: str, path: list[str]) -> None:
        state[n] = 1
        for m in graph[n]:
            if state.get(m) == 1:
                raise AssertionError("import circle: " + " -> ".join(path[path.index(m):] + [m]) if m in path
                                     else f"import circle through {n} -> {m}")
            if m not in state:
                visit(m, path + [m])
        state[n] = 2

    for n in graph:
        if n not in state:
            visit(n, [n])


def test_drivers_import_only_the_protocol_layer_never_a_backend_internal():
    """Env, agents, evaluation and generate.py build generators by name (generator.backends)."""
    drivers = [p for pkg in ("envs", "agents", "evaluation", "explorer") for p in (ROOT / pkg).glob("*.py")] + [ROOT / "generate.py"]
    bad = [f"{p.relative_to(ROOT)} imports {i}" for p in drivers for i in _imports(p)
           if i.split(".")[0] in ("embedded", "infinity_backend")]
    assert not bad, "\n".join(bad)


#: everything that chooses a schedule or shapes what an agent learns: the judge must stay outside of it
CHOOSERS = ("generator", "rewards", "embedded", "infinity_backend", "envs", "agents", "evaluation/static_search")
MAX_FILE_LINES = 500
MAX_FUNCTION_LINES = 120


def _tracked_python_files() -> list[Path]:
    out = subprocess.run(["git", "ls-files", "*.py"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return [ROOT / f for f in out.split()]


def _files_under(prefix: str) -> list[Path]:
    here = ROOT / prefix
    return [here.with_suffix(".py")] if here.with_suffix(".py").exists() else sorted(here.rglob("*.py"))


def test_nothing_that_chooses_imports_the_judge():
    """The judge's independence from the reward, the observation, the static search and the agents, as a
    check that can fail: none of their modules imports ``judge`` (top level or inside a function)."""
    bad = [f"{p.relative_to(ROOT)} imports {i}" for prefix in CHOOSERS for p in _files_under(prefix)
           for i in _imports(p) if i == "judge" or i.startswith("judge.")]
    assert not bad, "\n".join(bad)
    assert _files_under("evaluation/static_search"), "the static search moved: update CHOOSERS"


def test_no_python_file_outside_tests_is_over_500_lines():
    files = [p for p in _tracked_python_files() if not p.relative_to(ROOT).as_posix().startswith("tests/")]
    assert len(files) > 50, "git ls-files found too few files: is this a checkout?"
    long = [f"{p.relative_to(ROOT)}: {n} lines" for p in files
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_FILE_LINES]
    assert not long, "\n".join(long)


def _long_functions(path: Path, limit: int, root: Path = ROOT) -> list[str]:
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            n = node.end_lineno - node.lineno + 1
            if n > limit:
                out.append(f"{path.relative_to(root)}:{node.lineno} {node.name}: {n} lines")
    return out


def test_no_function_is_over_120_lines():
    long = [line for p in _tracked_python_files() for line in _long_functions(p, MAX_FUNCTION_LINES)]
    assert not long, "\n".join(long)


def test_the_size_checks_can_fail(tmp_path):
    """The checker above finds a long function (it would pass vacuously if ast.walk found nothing)."""
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    f = tmp_path / "long.py"
    f.write_text(f"def short():\n    return 1\n\n\ndef too_long():\n{body}\n", encoding="utf-8")
    assert _long_functions(f, MAX_FUNCTION_LINES, tmp_path) == [f"long.py:5 too_long: {MAX_FUNCTION_LINES + 1} lines"]
