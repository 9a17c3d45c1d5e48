"""The package's shape: a public API that loads torch only when used, no import cycle (function-level imports
included), every module importable on its own in any order, and one definition of what both halves share."""

from __future__ import annotations

import ast
import json
import random
import subprocess
import sys
import tomllib

import pytest
from fixtures.common import REPO

PKG_ROOT = REPO / "inference"
PKG = PKG_ROOT / "flametalk"
CONTRACT_NAMES = {"SAMPLE_RATE", "MOTION_FPS", "FPS", "WINDOW_FRAMES", "WINDOW_SAMPLES", "STYLE_FRAMES", "MOTION_DIM",
                  "EXPR", "HEAD_ROT", "JAW_ROT", "PROTOCOL_VERSION", "CACHE_ENV", "CHECKPOINT_SUBDIR"}


def _module_name(path) -> str:
    parts = list(path.relative_to(PKG_ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(p): p for p in sorted(PKG.rglob("*.py"))}
PACKAGES = {name for name, p in MODULES.items() if p.name == "__init__.py"}


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)


def _edges(name: str) -> set[str]:
    """flametalk modules `name` imports anywhere in its body (module level, functions, TYPE_CHECKING blocks).
    `from pkg import sub` counts as importing pkg.sub when sub is a module, else as importing pkg (its __init__)."""
    path = MODULES[name]
    package = name if name in PACKAGES else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.split(".")[0] == "flametalk")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "flametalk":
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                out.add(sub if sub in MODULES else target)
    out.discard(name)
    return {m for m in out if m in MODULES}


def test_public_api_imports_without_torch_and_every_name_resolves():
    proc = _run("import sys, flametalk\n"
                "flametalk.__all__\n"
                "assert 'torch' not in sys.modules, 'importing flametalk loaded torch'\n"
                "print(sorted(flametalk.__all__))\n")
    assert proc.returncode == 0, proc.stderr
    names = json.loads(proc.stdout.replace("'", '"'))
    assert {"load_model", "generate", "load_audio", "read_motion", "write_motion", "__version__"} <= set(names)
    proc = _run("import flametalk\n"
                "for name in flametalk.__all__:\n"
                "    value = getattr(flametalk, name)\n"
                "    assert value is not None, name\n"
                "    assert name in dir(flametalk), name\n")
    assert proc.returncode == 0, proc.stderr


def test_the_import_graph_has_no_cycle():
    graph = {name: _edges(name) for name in MODULES}
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = [*stack[stack.index(nxt):], nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name)


@pytest.mark.parametrize("seed", [0, 1])
def test_every_module_imports_in_a_fresh_process_in_a_random_order(seed):
    names = sorted(n for n in MODULES if not n.endswith("__main__"))
    random.Random(seed).shuffle(names)
    proc = _run(f"import importlib\nfor name in {names!r}:\n    importlib.import_module(name)\n")
    assert proc.returncode == 0, f"order {names}:\n{proc.stderr[-3000:]}"


def test_the_version_is_the_one_in_pyproject():
    from flametalk import __version__

    project = tomllib.loads((PKG_ROOT / "pyproject.toml").read_text())["project"]
    assert project["version"] == __version__
    assert project["scripts"]["flametalk"] == "flametalk.commands.main:main"


def test_contract_numbers_are_defined_only_in_flame_contract():
    twice = []
    for name, path in MODULES.items():
        if name == "flametalk.flame.contract":
            continue
        for node in ast.parse(path.read_text()).body:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(
                node, ast.AnnAssign) else []
            names = [n for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)]  # a, (b, c) = ...
            twice += [f"{name}.{n.id}" for n in names if n.id in CONTRACT_NAMES]
    assert not twice, f"defined outside flame/contract.py: {twice}"


def test_the_shared_flame_package_imports_only_itself_numpy_and_the_standard_library():
    allowed = {"numpy", "torch"} | set(sys.stdlib_module_names)  # torch: optional and lazy (torchzip, reader)
    for path in sorted((PKG / "flame").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0:
                assert node.module.split(".")[0] in allowed, f"{path.name}: from {node.module} import ..."
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    assert alias.name.split(".")[0] in allowed, f"{path.name}: import {alias.name}"
    assert not (PKG / "flame" / "synthetic.py").exists()  # test-file generators do not ship with the add-on


def test_the_contract_and_the_worker_module_load_without_numpy_or_torch():
    """A bare Python (the add-on's check of a runtime) must reach the worker's own 'torch is not installed'."""
    proc = _run("import sys\n"
                "sys.modules['numpy'] = sys.modules['torch'] = None\n"
                "import flametalk, flametalk.flame.contract, flametalk.commands.worker, flametalk.commands.main\n")
    assert proc.returncode == 0, proc.stderr
