"""Layout guard: no module over 400 lines, no function over 80, no import cycle, no arrow from a lower layer up.

The import graph is read with `ast` from every `import` in headprof/ (function-level ones included: a lazy
import is still a dependency), and a package `__init__` serving names lazily imports the modules it names.
`benchmarks/layout.py` prints the same measures.
"""

from __future__ import annotations

import ast
from pathlib import Path

MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 80

# Exceptions to the checks below, each with its reason (none today).
ALLOWED_LONG_MODULES: set[str] = set()
ALLOWED_LONG_FUNCTIONS: set[str] = set()  # "module:qualified.name"
ALLOWED_CYCLES: set[frozenset[str]] = set()
ALLOWED_UPWARD: set[tuple[str, str]] = set()

# Layers, lowest first: a module may import its own layer and those below. The first matching prefix wins
# (a prefix names a module or a package and everything in it).
LAYERS: list[list[str]] = [
    ["", "errors", "lazy", "intervals", "metrics", "fileio", "package_data"],  # nothing above errors
    ["validation", "heads", "attention"],  # checks of inputs, head-table math, attention math
    ["models.spec", "workspace"],  # model numbers, default paths
    [
        "models",
        "artifacts",
        "interop",
        "probes",
        "needlegen",
        "plots",
    ],  # loading, artifacts on disk, probe sets, figures
    # what a model or scores give
    ["capture", "probe_scores", "scoring", "score_job", "allocation", "reliability", "distributed", "tasks"],
    ["runtime"],  # generation with a compressed cache
    ["evaluation", "ablation", "check", "testing", "tune"],  # experiments over the runtime and the scores
    ["cli", "__main__"],  # the command line on top
]

PACKAGE = Path(__file__).resolve().parents[1] / "headprof"


def module_name(path: Path, package: Path) -> str:
    """`runtime.cache` for headprof/runtime/cache.py, `runtime` for its `__init__.py`, `` for the root."""
    parts = list(path.relative_to(package).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules(package: Path) -> dict[str, Path]:
    """Every module of the package by name."""
    return {module_name(p, package): p for p in sorted(package.rglob("*.py"))}


def module_sizes(package: Path) -> dict[str, int]:
    """Lines per module."""
    return {name: len(path.read_text().splitlines()) for name, path in modules(package).items()}


def functions(package: Path) -> list[tuple[str, str, int]]:
    """(module, qualified name, lines) of every function and method, nested ones included."""
    found = []
    for name, path in modules(package).items():

        def visit(node: ast.AST, prefix: str, name: str = name) -> None:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    qualified = f"{prefix}{child.name}"
                    if not isinstance(child, ast.ClassDef):
                        found.append((name, qualified, child.end_lineno - child.lineno + 1))
                    visit(child, qualified + ".")
                else:
                    visit(child, prefix)

        visit(ast.parse(path.read_text()), "")
    return found


def _resolve(target: str, known: dict[str, Path]) -> str | None:
    """The module `target` (dotted, relative to headprof) names, or the nearest package above it."""
    parts = target.split(".") if target else []
    while parts and ".".join(parts) not in known:
        parts.pop()
    name = ".".join(parts)
    return name if name in known else None


def import_graph(package: Path) -> dict[str, set[str]]:
    """Module -> the headprof modules it imports (`from pkg import mod` counts as importing `pkg.mod`)."""
    known = modules(package)
    graph: dict[str, set[str]] = {}
    for name, path in known.items():
        is_package = path.name == "__init__.py"
        here = name.split(".") if name else []
        base = here if is_package else here[:-1]
        edges: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name[len("headprof.") :] for a in node.names if a.name.startswith("headprof.")]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    up = base[: len(base) - (node.level - 1)]
                    source = ".".join([*up, *(node.module.split(".") if node.module else [])])
                elif node.module == "headprof" or (node.module or "").startswith("headprof."):
                    source = node.module[len("headprof.") :] if node.module != "headprof" else ""
                else:
                    continue
                for alias in node.names:
                    sub = f"{source}.{alias.name}" if source else alias.name
                    targets.append(sub if sub in known else source)
            for target in targets:
                resolved = _resolve(target, known)
                if resolved is not None and resolved != name:
                    edges.add(resolved)
        if is_package:  # a package serving names lazily (`lazy.lazy_exports`) imports the modules it names
            for node in ast.walk(ast.parse(path.read_text())):
                text = node.value if isinstance(node, ast.Constant) else None
                if isinstance(text, str) and text.startswith("headprof."):
                    resolved = _resolve(text[len("headprof.") :], known)
                    if resolved is not None and resolved != name:
                        edges.add(resolved)
        graph[name] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                connect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return sorted(found)


def layer_of(module: str) -> int:
    """The index in `LAYERS` of the first prefix naming `module` or a package above it."""
    for level, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if module == prefix or module.startswith(prefix + "."):
                return level
    raise KeyError(f"module {module!r} is in no layer: add it to LAYERS in tests/test_layout.py")


def layer_violations(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    """(importer, imported) where the imported module sits in a higher layer than its importer."""
    return sorted((a, b) for a, targets in graph.items() for b in targets if layer_of(b) > layer_of(a))


def test_no_module_too_long():
    long = {name: n for name, n in module_sizes(PACKAGE).items() if n > MAX_MODULE_LINES}
    assert set(long) <= ALLOWED_LONG_MODULES, f"modules over {MAX_MODULE_LINES} lines: {long}"


def test_no_function_too_long():
    long = {f"{m}:{f}": n for m, f, n in functions(PACKAGE) if n > MAX_FUNCTION_LINES}
    assert set(long) <= ALLOWED_LONG_FUNCTIONS, f"functions over {MAX_FUNCTION_LINES} lines: {long}"


def test_no_import_cycle():
    found = [c for c in cycles(import_graph(PACKAGE)) if frozenset(c) not in ALLOWED_CYCLES]
    assert not found, f"import cycles: {found}"


def test_imports_only_go_down_the_layers():
    graph = import_graph(PACKAGE)
    assert all(layer_of(m) >= 0 for m in graph)  # every module is in a layer (layer_of raises otherwise)
    upward = [arrow for arrow in layer_violations(graph) if arrow not in ALLOWED_UPWARD]
    assert not upward, f"imports from a lower layer to a higher one: {upward}"


def test_the_guard_sees_a_cycle_and_an_upward_arrow(tmp_path):
    """The measures on a made-up package: a cycle through a relative import and an arrow from errors up to cli."""
    package = tmp_path / "headprof"
    (package / "cli").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "cli" / "__init__.py").write_text("from . import run\n")
    (package / "cli" / "run.py").write_text("from headprof.cli import common\n")
    (package / "cli" / "common.py").write_text("def f():\n    from .run import x\n")
    (package / "errors.py").write_text("import headprof.cli.run\n" + "\n" * 500)
    (package / "lazy.py").write_text("")
    (package / "models").mkdir()
    (package / "models" / "__init__.py").write_text('_EXPORTS = {"load": "headprof.models.loading"}\n')
    (package / "models" / "loading.py").write_text("")
    graph = import_graph(package)
    assert graph["cli"] == {"cli.run"}
    assert graph["models"] == {"models.loading"}
    assert cycles(graph) == [["cli.common", "cli.run"]]
    assert layer_violations(graph) == [("errors", "cli.run")]
    assert module_sizes(package)["errors"] == 501
    assert functions(package) == [("cli.common", "f", 2)]


def test_lazy_packages_serve_every_name_they_list():
    """A split module's old names stay importable from its package (`headprof.probes`, `headprof.evaluation`)."""
    import importlib

    for name in ("probes", "evaluation", "runtime", "models"):
        package = importlib.import_module(f"headprof.{name}")
        missing = [n for n in package.__all__ if getattr(package, n, None) is None]
        assert not missing, f"headprof.{name} lists {missing} but does not serve them"
