"""The layout docs/architecture.md describes holds: layers point one way, no circles, small modules."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).parents[1]
PACKAGE = ROOT / "helpers"
MODULES = {".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): p
           for p in sorted(PACKAGE.rglob("*.py"))}


def _layers() -> list[set[str]]:
    """The layers table's rows in docs/architecture.md (between its marker comments), top to bottom: the names
    of the packages (and modules) in each."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    table = text.split("<!-- layers-table -->")[1].split("<!-- /layers-table -->")[0]
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    return [{name.strip("/") for name in re.findall(r"`([a-z_]+/?)`", row.split("|")[1])} for row in rows]


def _imports(module: str) -> list[tuple[str, list[str], bool]]:
    """(the helpers module imported, the names taken, whether only for type checking) of each import."""
    tree = ast.parse(MODULES[module].read_text())
    typing_only = {id(node) for block in ast.walk(tree) if isinstance(block, ast.If)
                   and getattr(block.test, "id", "") == "TYPE_CHECKING" for node in ast.walk(block)}
    package = module.split(".") if MODULES[module].name == "__init__.py" else module.split(".")[:-1]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else []))
            names = [a.name for a in node.names]
            submodules = [f"{base}.{n}" for n in names if f"{base}.{n}" in MODULES]
            for target in submodules or [base]:
                found.append((target, names, id(node) in typing_only))
    return found


def _top(module: str) -> str:
    return module.split(".")[1] if "." in module else module


def test_every_import_points_down_the_architecture_table():
    layers = _layers()
    assert {"cli", "playground", "generation", "memory", "opt", "environment"} <= set().union(*layers)
    rank = {name: i for i, layer in enumerate(layers) for name in layer}
    upward = []
    for module in MODULES:
        if _top(module) in ("helpers", "__main__"):
            continue
        for target, _, typing_only in _imports(module):
            if not typing_only and _top(target) != _top(module) and rank[_top(target)] < rank[_top(module)]:
                upward.append(f"{module} -> {target}")
    assert not upward, upward


def test_no_import_circles_between_modules():
    graph = {m: {t for t, _, typing_only in _imports(m) if not typing_only and t in MODULES and t != m}
             for m in MODULES}
    circles, done = [], set()

    def visit(module: str, path: list[str]) -> None:
        if module in path:
            circles.append(path[path.index(module):] + [module])
            return
        if module in done:
            return
        for target in graph[module]:
            visit(target, path + [module])
        done.add(module)

    for module in graph:
        visit(module, [])
    assert not circles, circles


def test_no_module_takes_another_module_s_private_names():
    private = [f"{module}: {target}.{name}" for module in MODULES for target, names, _ in _imports(module)
               for name in names if name.startswith("_") and not name.startswith("__")]
    assert not private, private


# Libraries' internals used on purpose, each where no public way exists: argparse's subparsers type (for type
# hints), numpy's moved module path in old pickles, torch's parameter and buffer slots (swapping an unloaded
# model's tensors), ipykernel's shell context, status messages and shell stream (Colab's kernel rule).
LIBRARY_INTERNALS = {"_SubParsersAction", "_core", "_parameters", "_buffers", "_get_shell_context_var",
                     "_publish_status", "_recv_callback"}


def test_no_module_reaches_into_another_object_s_private_attributes():
    """Outside `self`, no `x._name`: what one part of the package needs from another is public."""
    reached = []
    for module, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
                    and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))
                    and node.attr not in LIBRARY_INTERNALS):
                reached.append(f"{module}:{node.lineno} .{node.attr}")
    assert not reached, reached


def test_modules_are_small_and_say_what_they_are_in_one_line():
    for module, path in MODULES.items():
        source = path.read_text()
        doc = ast.get_docstring(ast.parse(source), clean=False)
        assert doc and "\n" not in doc.strip() and len(doc) + 6 <= 120, module
        assert len(source.splitlines()) <= 400, module


def test_the_package_never_imports_the_project_s_tools():
    """tools/ (the GPU check, plan checks, leak cycles) is not in the wheel: helpers reaches it only through
    cli/project_tools, on first use, which says where to get it when it is missing."""
    reached = []
    for module, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            reached += [f"{module}: {name}" for name in names if name.split(".")[0] == "tools"]
    assert not reached, reached


def test_the_tools_modules_are_small_and_say_what_they_are_in_one_line():
    for path in sorted((ROOT / "tools").rglob("*.py")):
        source = path.read_text()
        doc = ast.get_docstring(ast.parse(source), clean=False)
        assert doc and "\n" not in doc.strip() and len(doc) + 6 <= 120, path
        assert len(source.splitlines()) <= 400, path
