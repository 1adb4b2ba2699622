"""The package's import structure: no import circles (counting imports inside functions too), no
private name imported from another module, and the layers import one way:
cli -> harness -> nodes -> hosts -> runtime -> cores; training -> runtime -> cores; only the
command line (cli, the demo) imports the harness.

The graph is read from the source (ast), so it sees every import, including the lazy ones inside
functions that a runtime import check would miss."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = "lcm_accel"
ROOT = Path(__file__).resolve().parent.parent
SKIPPED = {"tests", "benchmarks", "tools", "build", ".git", ".ci"}

# Each layer may import itself and the layers listed; the cores import only cores.
CORES = ("lcm_scheduler", "lora_merge", "feature_cache", "quantize", "k_sampling", "processes")
LAYERS = {
    "runtime": CORES,
    "hosts": ("runtime",) + CORES,
    "nodes": ("hosts", "runtime") + CORES,
    "training": ("runtime",) + CORES,
    **{core: CORES for core in CORES},
}
COMMAND_LINE = ("cli", "__main__", "demo", "embedded", "harness")  # may import the harness


def module_files() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package (tests, benchmarks, tools left out)."""
    modules = {}
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT)
        if rel.parts[0] in SKIPPED or any(part.startswith(".") for part in rel.parts):
            continue
        parts = list(rel.with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join([PACKAGE, *parts])] = path
    return modules


def _resolve(module: str, is_package: bool, level: int, name: str | None) -> str:
    base = module.split(".") if is_package else module.split(".")[:-1]
    if level > 1:
        base = base[: len(base) - (level - 1)]
    return ".".join(base + ([name] if name else []))


def imports_of(module: str, path: Path, modules: dict[str, Path]) -> list[tuple[str, list[str], int]]:
    """(imported module, names taken from it, line) for each import statement of the file, resolved to
    the package's own modules: `from .a import b` counts as importing module `a.b` when b is one."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    is_package = path.name == "__init__.py"
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            target = _resolve(module, is_package, node.level, node.module) if node.level else (node.module or "")
            if not target.startswith(PACKAGE):
                continue
            plain = []
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                if sub in modules:
                    found.append((sub, [], node.lineno))
                else:
                    plain.append(alias.name)
            if plain:
                found.append((target, plain, node.lineno))
        elif isinstance(node, ast.Import):
            found += [(alias.name, [], node.lineno) for alias in node.names if alias.name.startswith(PACKAGE)]
    return [(target, names, line) for target, names, line in found if target in modules]


def import_graph() -> dict[str, set[str]]:
    modules = module_files()
    return {m: {t for t, _, _ in imports_of(m, p, modules) if t != m} for m, p in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle of the graph, as a list of modules, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def _top(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_the_checker_sees_a_circle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_package_has_no_import_circle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_no_private_name_is_imported_from_another_module():
    modules = module_files()
    offences = [
        f"{path.relative_to(ROOT)}:{line} takes {name} from {target}"
        for module, path in modules.items()
        for target, names, line in imports_of(module, path, modules)
        for name in names
        if name.startswith("_") and not name.startswith("__")
    ]
    assert not offences, "\n".join(offences)


def test_layers_import_one_way():
    modules = module_files()
    offences = []
    for module, path in modules.items():
        allowed = LAYERS.get(_top(module))
        if allowed is None:
            continue
        for target, _, line in imports_of(module, path, modules):
            layer = _top(target)
            if layer != _top(module) and layer not in allowed:
                offences.append(f"{path.relative_to(ROOT)}:{line} ({_top(module)}) imports {target}")
    assert not offences, "\n".join(offences)


def test_only_the_command_line_imports_the_harness():
    modules = module_files()
    offences = [
        f"{path.relative_to(ROOT)}:{line} imports {target}"
        for module, path in modules.items()
        if _top(module) not in COMMAND_LINE
        for target, _, line in imports_of(module, path, modules)
        if _top(target) == "harness"
    ]
    assert not offences, "\n".join(offences)
