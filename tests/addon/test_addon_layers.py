"""The add-on's layers hold: what each folder may import (read from the source, no Blender needed), no import cycle,
no torch or flametalk, core/ and worker/ importable without bpy, the `flame` package found in a checkout and in a
built extension, and registration covering every ui module's CLASSES."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from fixtures.common import REPO

ADDON = REPO / "blender_addon"
LAYERS = ("core", "worker", "scene", "ui", "cli")
MAY_IMPORT = {  # the add-on's own layers each may import (`flame` is open to all)
    "core": {"core"},
    "worker": {"worker", "core"},
    "scene": {"scene", "worker", "core"},
    "ui": {"ui", "scene", "worker", "core"},
    "cli": {"cli", "scene", "worker", "core"},
}
BLENDER_MODULES = {"bpy", "bpy_extras", "mathutils", "aud", "addon_utils"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(ADDON.rglob("*.py")) if "__pycache__" not in p.parts}


def _imports(name: str, path: Path, modules: dict[str, Path]) -> list[tuple[str, bool]]:
    """(imported module, at module level) for every import in the file; relative imports resolved to the add-on's
    module names (a `from PKG import NAME` counts as NAME when that is a module of its own)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    top_level = {id(node) for node in tree.body}
    found: list[tuple[str, bool]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, id(node) in top_level) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                base_name = ".".join(base + ([node.module] if node.module else []))
            else:
                base_name = node.module or ""
            for alias in node.names:
                child = f"{base_name}.{alias.name}"
                found.append((child if child in modules else base_name, id(node) in top_level))
    return found


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "blender_addon" and parts[1] in LAYERS else None


def test_every_layer_imports_only_what_it_may() -> None:
    modules = _modules()
    problems = []
    for name, path in modules.items():
        layer = _layer(name)
        for imported, module_level in _imports(name, path, modules):
            root = imported.split(".")[0]
            if root in ("torch", "flametalk"):
                problems.append(f"{name} imports {imported} (Blender's Python has no torch; the add-on is standalone)")
            if layer in ("core", "worker") and module_level and root in BLENDER_MODULES:
                problems.append(f"{name} imports {imported} at import time ({layer}/ must load without Blender)")
            if layer == "core" and root in BLENDER_MODULES:
                problems.append(f"{name} imports {imported} (core/ never uses Blender)")
            target = _layer(imported)
            if layer and target and target not in MAY_IMPORT[layer]:
                problems.append(f"{name} imports {imported} ({layer}/ may not import {target}/)")
    assert not problems, "\n".join(problems)


def test_no_import_cycle() -> None:
    modules = _modules()
    graph = {name: {m for m, top in _imports(name, path, modules) if top and m in modules and m != name}
             for name, path in modules.items()}
    for name in graph:  # a module imports its packages first; those edges are not cycles of the code
        graph[name] = {m for m in graph[name] if not name.startswith(m + ".")}
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append([*stack[stack.index(nxt):], nxt])
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)


def test_core_worker_and_cli_import_without_blender_or_torch() -> None:
    names = [n for n in _modules() if _layer(n) in ("core", "worker") or n == "blender_addon.cli.main"]
    code = textwrap.dedent(f"""
        import importlib, sys
        for blocked in ("bpy", "bpy_extras", "mathutils", "aud", "torch"):
            sys.modules[blocked] = None
        for name in {names!r}:
            importlib.import_module(name)
        loaded = sorted(m for m in sys.modules if m.split(".")[0] == "flametalk")
        assert not loaded, loaded
        print("ok")
    """)
    run = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr[-2000:]


def _fresh_import(package_dir: Path) -> subprocess.CompletedProcess[str]:
    name = package_dir.name
    code = (f"import sys; sys.path.insert(0, {str(package_dir.parent)!r}); import {name}.flame.contract as c; "
            f"import {name}.core.timing as t; assert t.MOTION_FPS == c.MOTION_FPS; print(c.__file__)")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin", "PYTHONNOUSERSITE": "1"})


def test_flame_package_in_a_checkout_and_in_a_built_extension(tmp_path: Path) -> None:
    import blender_addon.flame
    from blender_addon.flame import contract

    source = REPO / "inference" / "flametalk" / "flame"
    assert Path(blender_addon.flame.__file__).resolve() == (source / "__init__.py").resolve()
    assert Path(contract.__file__).resolve().parent == source.resolve()
    assert not (ADDON / "flame").exists(), "blender_addon/flame is made by build.py in its stage only (git-ignored)"

    import build

    built = tmp_path / "ext" / "flametalk"  # the add-on as build.py stages it: its own flame/ copy
    shutil.copytree(ADDON, built, ignore=build._stage_ignore)
    build.copy_flame(built / "flame")
    assert sorted(p.name for p in (built / "flame").iterdir()) == sorted(p.name for p in source.glob("*.py"))
    run = _fresh_import(built)
    assert run.returncode == 0, run.stderr[-2000:]
    assert Path(run.stdout.strip()) == built / "flame" / "contract.py"

    bare = tmp_path / "bare" / "flametalk"  # neither a copy nor a checkout beside it: one clear error
    shutil.copytree(ADDON, bare, ignore=build._stage_ignore)
    run = _fresh_import(bare)
    assert run.returncode != 0
    assert "FlameTalk: the add-on's flame package is missing" in run.stderr.strip().splitlines()[-1]


def test_registration_covers_every_ui_module() -> None:
    pytest.importorskip("bpy")
    import importlib

    from blender_addon import registration

    ui = sorted(n for n in _modules() if _layer(n) == "ui" and n.count(".") == 2)
    with_classes = [importlib.import_module(n) for n in ui if hasattr(importlib.import_module(n), "CLASSES")]
    assert {m.__name__ for m in registration.UI_MODULES} == {m.__name__ for m in with_classes}
    assert all(isinstance(m.CLASSES, tuple) for m in with_classes)
    assert tuple(c for m in registration.UI_MODULES for c in m.CLASSES) == registration.CLASSES
    assert len(set(registration.CLASSES)) == len(registration.CLASSES)


def _contract_names() -> set[str]:
    tree = ast.parse((REPO / "inference" / "flametalk" / "flame" / "contract.py").read_text())
    return {t.id for node in tree.body if isinstance(node, ast.Assign) for t in node.targets if isinstance(t, ast.Name)}


def test_no_contract_number_is_defined_again_in_the_addon() -> None:
    names = _contract_names()
    assert {"MOTION_FPS", "MOTION_DIM", "PROTOCOL_VERSION", "STYLE_FRAMES"} <= names
    twice = []
    for module, path in _modules().items():
        for node in ast.parse(path.read_text()).body:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target] \
                if isinstance(node, ast.AnnAssign) else []
            twice += [f"{module}.{n.id}" for t in targets for n in ast.walk(t)
                      if isinstance(n, ast.Name) and n.id in names]
    assert twice == [], "defined outside flame/contract.py"


def test_no_symlink_is_tracked() -> None:
    """A symlink breaks checkouts on Windows without symlink rights (the add-on's `flame` once was one)."""
    if not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    listing = subprocess.run(["git", "ls-files", "-s"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert [line.split("\t", 1)[1] for line in listing.splitlines() if line.startswith("120000")] == []
