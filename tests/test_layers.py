"""The package's import structure: no import circle inside kd/, and the layers as the README draws them.

Every `import kd...` / `from kd... import` statement counts, at module level or inside a function, so a lazy
import cannot hide a circle or a layer breach.
"""
import ast
from pathlib import Path

from conftest import ROOT

# Layers, lowest first. A module may import its own layer or lower ones only.
LAYERS = [
    ("base", ["kd", "kd.errors", "kd.registry", "kd.yamlio", "kd.options", "kd.cam", "kd.home", "kd.fetch"]),
    ("components", ["kd.models", "kd.data", "kd.distillers"]),
    ("configuration", ["kd.recipe", "kd.pairs"]),
    ("engine and report", ["kd.engine", "kd.report"]),
    ("run", ["kd.run", "kd.teacher", "kd.throughput", "kd.evaluate", "kd.teacher_download"]),
    ("cli", ["kd.cli", "kd.__main__"]),
]
# Within the components: models know nothing of data or distillers, data nothing of models or distillers.
FORBIDDEN = {"kd.models": ("kd.data", "kd.distillers"), "kd.data": ("kd.models", "kd.distillers")}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def kd_modules() -> dict[str, Path]:
    return {module_name(p): p for p in (ROOT / "kd").rglob("*.py")}


def imports_of(path: Path, modules: dict[str, Path]) -> set[str]:
    """The kd modules a file imports (for `from kd.x import y`, kd.x.y when that is a module, else kd.x)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("kd")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and node.module.startswith("kd"):
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in modules else node.module)
    return {m for m in found if m in modules}


def layer_of(name: str) -> int:
    """The layer of a module: its own entry, or its package's ("kd" itself names only the package __init__)."""
    prefixes = {prefix: i for i, (_, members) in enumerate(LAYERS) for prefix in members}
    matches = [p for p in prefixes if name == p or (p != "kd" and name.startswith(p + "."))]
    assert matches, f"{name} is in no layer: add it to LAYERS in tests/test_layers.py and to the README's drawing"
    return prefixes[max(matches, key=len)]


def graph() -> dict[str, set[str]]:
    modules = kd_modules()
    edges = {name: imports_of(path, modules) - {name} for name, path in modules.items()}
    # a package's __init__ runs before any of its submodules: importing kd.x.y also imports kd.x
    for name in list(edges):
        edges[name] = {m for target in edges[name] for m in parents(target, modules)} - {name}
    return edges


def parents(name: str, modules) -> set[str]:
    parts = name.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts) + 1) if ".".join(parts[:i]) in modules}


def test_every_kd_module_has_a_layer():
    for name in kd_modules():
        layer_of(name)


def test_no_module_imports_a_higher_layer():
    breaches = []
    for name, targets in graph().items():
        for target in targets:
            if target == "kd" or name.startswith(target + "."):
                continue  # a package's own __init__ (kd, kd.data, ...) is not a dependency of its members
            if layer_of(target) > layer_of(name):
                breaches.append(f"{name} ({LAYERS[layer_of(name)][0]}) imports {target} ({LAYERS[layer_of(target)][0]})")
            for low, banned in FORBIDDEN.items():
                if (name == low or name.startswith(low + ".")) and any(
                        target == b or target.startswith(b + ".") for b in banned):
                    breaches.append(f"{name} imports {target}")
    assert not breaches, "\n".join(sorted(breaches))


def test_no_import_circle():
    edges = graph()
    for name in edges:  # a package imports its own submodules (registration); those edges are not circles
        edges[name] = {t for t in edges[name] if not name.startswith(t + ".")}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for target in sorted(edges[node]):
            if state.get(target) == 1:
                raise AssertionError("import circle: " + " -> ".join(stack[stack.index(target):] + [target]))
            if target not in state:
                visit(target)
        stack.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)


def test_the_layer_check_sees_lazy_imports(tmp_path):
    # the check must not be blind to imports inside functions, the usual way a circle hides
    source = tmp_path / "x.py"
    source.write_text("def f():\n    from kd.run import run_recipe\n")
    assert imports_of(source, kd_modules()) == {"kd.run"}
