"""The house rules, read from the source (ast only, nothing imported): no import cycle, each layer imports only what
it may, no constant defined twice, no symlink in the tree.

Layers of the add-on (data flows audio -> worker -> motion file -> scene keys -> export):
  flame (the shared FLAME/contract package)  <-  core (no bpy)  <-  worker  <-  scene  <-  ui, cli
"""

from __future__ import annotations

import ast
import subprocess
from pathlib import Path

import pytest
from fixtures.common import REPO

PACKAGES = {"flametalk": REPO / "inference" / "flametalk", "blender_addon": REPO / "blender_addon"}
SHARED_CONSTANTS = ("SAMPLE_RATE", "MOTION_FPS", "FPS", "WINDOW_FRAMES", "WINDOW_SAMPLES", "STYLE_FRAMES", "MOTION_DIM",
                    "PROTOCOL_VERSION", "CACHE_ENV", "CHECKPOINT_SUBDIR", "STYLE_SUBDIR")
CONTRACT = REPO / "inference" / "flametalk" / "flame" / "contract.py"
# what each add-on folder may import from the add-on (besides itself); None = anything
ADDON_LAYERS: dict[str, set[str] | None] = {
    "flame": set(),
    "core": {"flame"},
    "worker": {"flame", "core"},
    "scene": {"flame", "core", "worker"},
    "ui": {"flame", "core", "worker", "scene"},
    "cli": {"flame", "core", "worker", "scene"},
}


def _modules(package: str) -> dict[str, Path]:
    root = PACKAGES[package]
    out: dict[str, Path] = {}
    for path in sorted(root.rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        rel = path.relative_to(root).with_suffix("")
        parts = [package, *rel.parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(module: str, path: Path, known: set[str]) -> set[str]:
    """Every module this one imports at run time (module level or inside functions; not under TYPE_CHECKING)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    is_pkg = path.name == "__init__.py"
    base = module.split(".") if is_pkg else module.split(".")[:-1]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                stem = base[: len(base) - node.level + 1]
                target = ".".join(stem + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            for alias in node.names:  # `from pkg import submodule`
                if f"{target}.{alias.name}" in known:
                    found.add(f"{target}.{alias.name}")
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def _graph(package: str) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(edges inside the package, every imported name) per module."""
    mods = _modules(package)
    known = set(mods)
    internal: dict[str, set[str]] = {}
    everything: dict[str, set[str]] = {}
    for name, path in mods.items():
        imported = _imports(name, path, known)
        everything[name] = imported
        internal[name] = {m for m in imported if m in known and m != name}
    return internal, everything


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def strong(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            strong(v)
    return out


@pytest.mark.parametrize("package", sorted(PACKAGES))
def test_no_import_cycle(package: str) -> None:
    edges, _ = _graph(package)
    # a package's __init__ importing its own submodules is how packages work, not a cycle
    edges = {m: {t for t in ts if not m.startswith(t + ".")} for m, ts in edges.items()}
    assert _cycles(edges) == []


def test_the_cycle_finder_finds_cycles() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def _top(name: str) -> str:
    return name.split(".")[0]


def test_flametalk_never_imports_bpy() -> None:
    _, everything = _graph("flametalk")
    offenders = {m: sorted(i for i in imps if _top(i) == "bpy") for m, imps in everything.items()}
    assert {m: v for m, v in offenders.items() if v} == {}


def test_the_addon_never_imports_torch_or_flametalk() -> None:
    _, everything = _graph("blender_addon")
    banned = {"torch", "transformers", "flametalk", "scipy", "soundfile", "soxr"}
    offenders = {m: sorted(i for i in imps if _top(i) in banned) for m, imps in everything.items()}
    assert {m: v for m, v in offenders.items() if v} == {}


def test_addon_layers_import_only_downwards() -> None:
    internal, everything = _graph("blender_addon")
    bad: dict[str, list[str]] = {}
    for module, targets in internal.items():
        parts = module.split(".")
        if len(parts) < 3 or parts[1] not in ADDON_LAYERS:
            continue  # the package root, registration.py
        allowed = ADDON_LAYERS[parts[1]]
        wrong = [t for t in targets if len(t.split(".")) > 1 and t.split(".")[1] != parts[1]
                 and (allowed is None or t.split(".")[1] not in allowed)]
        if parts[1] in ("core", "flame") and any(_top(i) == "bpy" for i in everything[module]):
            wrong.append("bpy")
        if wrong:
            bad[module] = sorted(wrong)
    assert bad == {}
    assert set(ADDON_LAYERS) <= {p.name for p in PACKAGES["blender_addon"].iterdir() if p.is_dir()} | {"flame"}


def test_shared_constants_are_defined_once() -> None:
    places: dict[str, list[str]] = {}
    files = [p for pkg in PACKAGES.values() for p in pkg.rglob("*.py") if "__pycache__" not in p.parts]
    files += sorted((REPO / "scripts").glob("*.py")) + [REPO / "build.py"]
    for path in files:
        if path.resolve() == CONTRACT.resolve():
            continue
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target] \
                if isinstance(node, ast.AnnAssign) else []
            for t in targets:
                if isinstance(t, ast.Name) and t.id in SHARED_CONSTANTS and isinstance(node.value, ast.Constant):
                    places.setdefault(t.id, []).append(str(path.relative_to(REPO)))
    assert places == {}, "defined outside flame/contract.py"


def test_no_symlink_is_tracked() -> None:
    if not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    listing = subprocess.run(["git", "ls-files", "-s"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    links = [line.split("\t", 1)[1] for line in listing.splitlines() if line.startswith("120000")]
    assert links == []
