"""The package layering the README's Layout table describes: no import runs uphill, no circle.

Reads every module's imports (top-level and inside functions) with ``ast``; nothing is executed.
"""

from __future__ import annotations

import ast
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
#: lower layers first; a module may import its own layer's package and anything below.
LAYERS = [("domain",), ("generator",), ("rewards",), ("embedded", "infinity_backend"), ("envs",), ("agents",),
          ("evaluation",)]
LAYER_OF = {pkg: i for i, pkgs in enumerate(LAYERS) for pkg in pkgs}


def _stand_ins() -> set[str]:
    from generator._moved import MOVED

    return {m.replace(".", "/") + ".py" for m in MOVED} | {"generator/_moved.py"}


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
            if rel in _stand_ins():
                continue
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
    drivers = [p for pkg in ("envs", "agents", "evaluation") for p in (ROOT / pkg).glob("*.py")] + [ROOT / "generate.py"]
    bad = [f"{p.relative_to(ROOT)} imports {i}" for p in drivers for i in _imports(p)
           if i.split(".")[0] in ("embedded", "infinity_backend")]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("old,name", [("generator.domain", "render_prompt"), ("generator.embedded", "load_embedded_generator"),
                                      ("generator.sampler", "NextScaleGenerator"), ("generator.infinity_backend", "flops_table"),
                                      ("generator.cli", "add_model_shape_args"), ("generator.clip_model", "create_embedded_clip")])
def test_old_import_paths_still_work_and_name_the_new_one(old, name):
    import importlib
    import sys

    sys.modules.pop(old, None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mod = importlib.import_module(old)
    assert hasattr(mod, name)
    from generator._moved import MOVED

    assert any(issubclass(w.category, DeprecationWarning) and MOVED[old][0] in str(w.message) for w in caught)
