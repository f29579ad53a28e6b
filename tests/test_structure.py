"""The package's layering, read from its source: commands on top (mnv3kit/cli), nothing below imports them, and the
import graph has no cycle."""

import ast
from pathlib import Path

from conftest import ROOT

PACKAGE = ROOT / "mnv3kit"
# copied into model repositories and run by Triton's python backend, not imported as part of the kit
BACKEND_FILES = {"mnv3kit.backend.classifier_model", "mnv3kit.backend.preprocess_model", "mnv3kit.backend.serving"}


def is_cli(module: str) -> bool:
    return module == "mnv3kit.cli" or module.startswith("mnv3kit.cli.")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path):
    """(imported module, at module level?) for every import of the kit's own modules in ``path``."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text())
    top = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            continue
        for target in targets:
            if target.split(".")[0] == "mnv3kit":
                found.append((target, id(node) in top))
    return found


def graph():
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    edges = {}
    for name, path in modules.items():
        edges[name] = {(t, top) for t, top in imports(path) if t in modules and t != name}
    return modules, edges


def test_no_library_module_imports_the_command_layer():
    modules, edges = graph()
    upward = [(m, t) for m, out in edges.items() for t, _ in out
              if not is_cli(m) and is_cli(t)]
    assert not upward, upward


def test_commands_live_in_cli_only():
    mains = [m for m, p in graph()[0].items() if not is_cli(m) and m not in BACKEND_FILES
             and "__main__" in p.read_text()]
    assert not mains, f"entry points outside mnv3kit/cli: {mains}"


def test_the_import_graph_has_no_cycle():
    _, edges = graph()
    order, state = [], {}

    def visit(node, path):
        state[node] = "open"
        for target, _ in sorted(edges.get(node, ())):
            if target.startswith(node + "."):  # a package's __init__ importing its own submodule
                continue
            if state.get(target) == "open":
                cycle = path[path.index(target):] + [target] if target in path else [node, target]
                raise AssertionError(" -> ".join(cycle))
            if target not in state:
                visit(target, path + [target])
        state[node] = "done"
        order.append(node)

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
