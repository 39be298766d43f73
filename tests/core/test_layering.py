"""The library's layering: no orchestration imports, no import cycles (read from the source,
lazy imports inside functions included)."""

import ast
from pathlib import Path

LIBRARY = Path(__file__).resolve().parents[2] / "lolcats_core"


def module_imports(root: Path) -> dict[str, set[str]]:
    """{module: names it imports (`pkg.mod` and `pkg.mod.name` for `from pkg.mod import name`)}."""
    graph = {}
    for file in root.rglob("*.py"):
        parts = file.relative_to(root.parent).with_suffix("").parts
        is_package = file.name == "__init__.py"
        module = ".".join(parts[:-1] if is_package else parts)
        package = module if is_package else module.rsplit(".", 1)[0]
        names = set()
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
                source = ".".join(base + ([node.module] if node.module else []))
                names.add(source)
                names.update(f"{source}.{alias.name}" for alias in node.names)
        graph[module] = names
    return graph


def test_library_never_imports_prefect_or_mlflow():
    bad = {m: sorted(n for n in names if n.split(".")[0] in ("prefect", "mlflow", "tasks", "flows"))
           for m, names in module_imports(LIBRARY).items()}
    assert not {m: n for m, n in bad.items() if n}


def test_library_modules_import_no_cycle():
    graph = module_imports(LIBRARY)
    edges = {m: {n for n in names if n in graph and n != m and not m.startswith(n + ".")}
             for m, names in graph.items()}  # a submodule reaching its own package is no cycle
    state, cycles = {}, []

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for dep in sorted(edges[module]):
            if state.get(dep) == "open":
                cycles.append(path[path.index(dep):] + [module, dep])
            elif dep not in state:
                visit(dep, path + [module])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [])
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)
