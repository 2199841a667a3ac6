"""The package's shape: every import runs down the layer table, no import cycles, one meaning per class
name, and no constructor of ours called with a long row of positional arguments."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "pacos"

# The one layer table (README "Architecture" explains it). A module may import modules of its own layer
# or of layers before it; stages never import each other (each is a package of its own). `pacos` is the
# root package (its __version__).
LAYERS: list[tuple[str, list[str]]] = [
    (
        "foundation",
        ["pacos", "pacos.errors", "pacos.fileio", "pacos.config", "pacos.plotting", "pacos.device"],
    ),
    ("text", ["pacos.text"]),
    ("models", ["pacos.models"]),
    ("data", ["pacos.data"]),
    ("infer", ["pacos.infer"]),
    ("llm", ["pacos.llm"]),
    ("train", ["pacos.train"]),
    (
        "stages",
        ["pacos.generate", "pacos.score", "pacos.evaluate", "pacos.compress", "pacos.export", "pacos.serve"],
    ),
    ("pipeline", ["pacos.pipeline"]),
    ("cli", ["pacos.cli", "pacos.__main__"]),
]
SEPARATE = {"stages"}  # layers whose packages must not import each other


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, ast.Module]:
    return {module_name(p): ast.parse(p.read_text(encoding="utf-8")) for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(name: str, tree: ast.Module, is_package: bool) -> set[str]:
    """Every pacos module this one imports, at the top or inside functions (lazy imports count too)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "pacos")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] == "pacos":
                found.add(target)
    return found


def layer_of(module: str) -> tuple[int, str]:
    """(layer index, the layer's package that holds the module)."""
    best: tuple[int, str] | None = None
    for index, (_, packages) in enumerate(LAYERS):
        for package in packages:
            inside = module == package or module.startswith(package + ".")
            if inside and package != "pacos" and (best is None or len(package) > len(best[1])):
                best = (index, package)
    if best is None and module == "pacos":
        return 0, "pacos"
    assert best is not None, f"{module} is in no layer of the table: add its package to LAYERS"
    return best


def graph() -> dict[str, set[str]]:
    trees = modules()
    paths = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: imports_of(name, tree, paths[name].name == "__init__.py") for name, tree in trees.items()}


def test_every_import_runs_down_the_layers():
    wrong = []
    for module, targets in graph().items():
        layer, package = layer_of(module)
        for target in sorted(targets):
            t_layer, t_package = layer_of(target)
            if t_layer > layer:
                wrong.append(f"{module} ({LAYERS[layer][0]}) imports {target} ({LAYERS[t_layer][0]})")
            elif t_layer == layer and LAYERS[layer][0] in SEPARATE and t_package != package:
                wrong.append(f"{module} imports {target}: stages never import each other")
    assert not wrong, "\n".join(wrong)


def test_no_import_cycles():
    edges = graph()
    known = set(edges)

    def resolve(target: str) -> str | None:
        # `from pacos.x import name` may name a module or a package; a missing one is the attribute's.
        while target and target not in known:
            target = target.rpartition(".")[0]
        return target or None

    adjacency = {m: {r for t in ts if (r := resolve(t)) and r != m} for m, ts in edges.items()}
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(adjacency[node]):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join([*stack[stack.index(nxt) :], nxt]))
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(adjacency):
        if node not in state:
            visit(node)
    assert not cycles, "\n".join(cycles)


def test_the_checks_see_a_violation():
    # The tools above on a made-up module: an upward import and a stage importing another stage.
    tree = ast.parse("from pacos.cli.app import main\nfrom ..evaluate import run\n")
    found = imports_of("pacos.generate.run", tree, is_package=False)
    assert found == {"pacos.cli.app", "pacos.evaluate"}
    assert layer_of("pacos.cli.app")[0] > layer_of("pacos.generate.run")[0]
    assert layer_of("pacos.evaluate")[1] != layer_of("pacos.generate.run")[1]


def test_one_meaning_per_class_name():
    defined = defaultdict(list)
    for module, tree in modules().items():
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                defined[node.name].append(module)
    twice = {name: places for name, places in defined.items() if len(places) > 1}
    assert not twice, twice


def test_constructors_take_at_most_four_positional_arguments():
    trees = modules()
    ours = {n.name for tree in trees.values() for n in ast.walk(tree) if isinstance(n, ast.ClassDef)}
    files = {m: t for m, t in trees.items()}
    for path in sorted((PACKAGE.parent / "tests").glob("*.py")) + sorted(
        (PACKAGE.parent / "benchmarks").glob("*.py")
    ):
        files[str(path.name)] = ast.parse(path.read_text(encoding="utf-8"))
    long_calls = []
    for where, tree in files.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                func = node.func
                name = (
                    func.id
                    if isinstance(func, ast.Name)
                    else func.attr
                    if isinstance(func, ast.Attribute)
                    else None
                )
                if name in ours and len(node.args) > 4:
                    long_calls.append(
                        f"{where}:{node.lineno}: {name}(...) with {len(node.args)} positional arguments"
                    )
    assert not long_calls, "\n".join(long_calls)
