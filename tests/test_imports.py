"""The layering of docs/ARCHITECTURE.md: no import cycles, module-level imports up the stage table.

The graph has an edge ``a -> b`` for every import of crack_tf module ``b`` written in module ``a``:
at module level and inside functions alike (a lazy import is still a dependency of the design:
the two circles of issue 24, ``serving.grpc_client <-> serving.predictions`` and
``training.config <-> training.flags``, were each one module-level import and one lazy one). A
package's ``__init__`` counts as its own module; ``from pkg import name`` points at the submodule
``pkg.name`` when there is one, else at ``pkg``. The implicit import of a module's parent packages
is not an edge (every submodule has it).

The stages are the rows of the table in docs/ARCHITECTURE.md, in order, with the paths of its
"where" column (``crack_tf/x/`` a package, ``crack_tf/x.py`` a module): the page is the source of
truth and this test keeps it true. Only module-level imports are held to the order (a lazy import
may reach further, e.g. a command loading an optional stage); every import is held to "no cycle".
"""

from __future__ import annotations

import ast
import pathlib
import re

from tests.test_packaging import module_level_import_nodes

REPO = pathlib.Path(__file__).resolve().parents[1]


def package_modules(package_dir: pathlib.Path) -> dict[str, pathlib.Path]:
    """Dotted module name -> file, for every ``.py`` file below ``package_dir`` (itself included)."""
    modules = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = path.relative_to(package_dir.parent).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def _targets(node: ast.Import | ast.ImportFrom, module: str, is_package: bool, modules: dict) -> list[str]:
    """The modules of ``modules`` that one import statement of ``module`` imports."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:
            package = module.split(".") if is_package else module.split(".")[:-1]
            package = package[: len(package) - node.level + 1]
            base = ".".join(package + ([base] if base else []))
        names = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
    found = []
    for name in names:
        while name not in modules and "." in name:  # ``import pkg.mod.attr`` style: the module part
            name = name.rsplit(".", 1)[0]
        if name in modules and name != module:
            found.append(name)
    return found


def import_graph(package_dir: pathlib.Path, lazy: bool = True) -> dict[str, dict[str, int]]:
    """module -> {imported module of the same package: line of the first such import}; ``lazy``:
    the imports inside functions too, else only those run when the module is imported."""
    modules = package_modules(package_dir)
    graph: dict[str, dict[str, int]] = {}
    for module, path in modules.items():
        edges = graph.setdefault(module, {})
        source = path.read_text(encoding="utf-8")
        nodes = (n for n in ast.walk(ast.parse(source)) if isinstance(n, (ast.Import, ast.ImportFrom))) if lazy \
            else module_level_import_nodes(source)
        for node in nodes:
            for target in _targets(node, module, path.name == "__init__.py", modules):
                edges.setdefault(target, node.lineno)
    return graph


def stage_table(markdown: str) -> list[tuple[str, list[str]]]:
    """(stage, [crack_tf paths of its "where" cell]) for each row of the page's stage table, in order."""
    table = markdown.split("| stage | where |", 1)[1].split("\n\n", 1)[0]  # up to the blank line after it
    rows = re.findall(r"^\| ([^|]+?) \| ([^|]+?) \|", table, re.M)
    return [(name, re.findall(r"`(crack_tf/[^`]*)`", where)) for name, where in rows if not name.startswith("-")]


def stage_of(module: str, table: list[tuple[str, list[str]]]) -> int | None:
    """The index of the row whose path holds ``module`` (the longest matching path wins), or None."""
    best, best_len = None, -1
    for index, (_, paths) in enumerate(table):
        for path in paths:
            name = path.removesuffix("/").removesuffix(".py").removesuffix("/__init__").replace("/", ".")
            inside = module == name or (path.endswith("/") and module.startswith(name + "."))
            if inside and len(name) > best_len:
                best, best_len = index, len(name)
    return best


def find_cycle(graph: dict[str, dict[str, int]]) -> list[str] | None:
    """One cycle ``[a, b, ..., a]`` of ``graph``, or None (depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, {})):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = 2
        path.pop()
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def describe(cycle: list[str], graph: dict[str, dict[str, int]]) -> str:
    """``a (line 3) -> b (line 9) -> a``: each module with the line of its import of the next."""
    return " -> ".join(f"{a} (line {graph[a][b]})" for a, b in zip(cycle, cycle[1:])) + f" -> {cycle[-1]}"


def test_crack_tf_has_no_import_cycle():
    graph = import_graph(REPO / "crack_tf")
    assert len(graph) > 50 and "crack_tf.inspection.heatmap" in graph  # the walk saw the package
    cycle = find_cycle(graph)
    assert cycle is None, f"import cycle among crack_tf modules: {describe(cycle, graph)}"


def test_every_module_has_a_stage_and_imports_only_up_the_table():
    table = stage_table((REPO / "docs" / "ARCHITECTURE.md").read_text(encoding="utf-8"))
    assert [name for name, _ in table][:2] == ["choices", "command lines"] and len(table) >= 10, table
    graph = import_graph(REPO / "crack_tf", lazy=False)
    homeless = sorted(m for m in graph if stage_of(m, table) is None)
    assert not homeless, f"modules with no row in the docs/ARCHITECTURE.md table: {homeless}"
    wrong = [f"{a} ({table[stage_of(a, table)][0]}, line {line}) -> {b} ({table[stage_of(b, table)][0]})"
             for a, edges in graph.items() for b, line in edges.items() if stage_of(b, table) > stage_of(a, table)]
    assert not wrong, "module-level imports down the docs/ARCHITECTURE.md table:\n  " + "\n  ".join(wrong)


def test_serving_imports_nothing_of_export():
    graph = import_graph(REPO / "crack_tf")
    wrong = [f"{a} -> {b} (line {line})" for a, edges in graph.items() if a.startswith("crack_tf.serving")
             for b, line in edges.items() if b.startswith("crack_tf.export")]
    assert not wrong, f"the serving client must work without the exporter: {wrong}"


def test_the_inspection_library_imports_no_command():
    """The library modules of crack_tf.inspection never import a command (the commands import them)."""
    graph = import_graph(REPO / "crack_tf")
    commands = {"crack_tf.inspection.heatmap_cli", "crack_tf.inspection.predict", "crack_tf.inspection.report",
                "crack_tf.heatmap", "crack_tf.predict", "crack_tf.report"}
    wrong = [f"{a} -> {b}" for a, edges in graph.items() if a.startswith("crack_tf.inspection.") and a not in commands
             for b in edges if b in commands]
    assert not wrong, wrong


# The checkers themselves, on a tiny package and a tiny table.

def _tiny(tmp_path: pathlib.Path, files: dict[str, str]) -> pathlib.Path:
    for name, text in files.items():
        path = tmp_path / "pkg" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path / "pkg"


def test_a_cycle_through_a_lazy_import_is_found_and_named(tmp_path):
    pkg = _tiny(tmp_path, {
        "__init__.py": "",
        "a.py": "import os\nfrom pkg.b import thing\n",
        "sub/__init__.py": "",
        "sub/c.py": "from .. import a\n",
        "b.py": "thing = 1\ndef later():\n    from pkg.sub import c\n",
    })
    graph = import_graph(pkg)
    assert graph["pkg.a"] == {"pkg.b": 2} and graph["pkg.b"] == {"pkg.sub.c": 3} and graph["pkg.sub.c"] == {"pkg.a": 1}
    cycle = find_cycle(graph)
    assert cycle == ["pkg.a", "pkg.b", "pkg.sub.c", "pkg.a"]
    assert describe(cycle, graph) == "pkg.a (line 2) -> pkg.b (line 3) -> pkg.sub.c (line 1) -> pkg.a"


def test_a_package_init_and_names_that_are_not_modules_resolve_to_the_package(tmp_path):
    pkg = _tiny(tmp_path, {
        "__init__.py": "from pkg.core import VALUE\n",
        "core.py": "VALUE = 1\n",
        "user.py": "import pkg.core\nfrom pkg import VALUE\nfrom . import core\n",
    })
    graph = import_graph(pkg)
    assert graph["pkg.user"] == {"pkg.core": 1, "pkg": 2}
    assert find_cycle(graph) is None  # pkg -> pkg.core, pkg.user -> both: no way back
    graph["pkg.core"]["pkg.user"] = 1  # now core -> user -> pkg -> core
    assert find_cycle(graph) == ["pkg", "pkg.core", "pkg.user", "pkg"]


def test_the_stage_table_is_read_in_order_and_the_longest_path_wins():
    page = ("intro\n\n| stage | where | what |\n|---|---|---|\n| base | `crack_tf/a.py`, `crack_tf/__init__.py` | x |\n"
            "| pkg | `crack_tf/p/` + `crack_tf/p_cmd.py` | y |\n| cmds | `crack_tf/p/cli.py` | z |\n\n## Next\n| a | b |\n")
    table = stage_table(page)
    assert table == [("base", ["crack_tf/a.py", "crack_tf/__init__.py"]), ("pkg", ["crack_tf/p/", "crack_tf/p_cmd.py"]),
                     ("cmds", ["crack_tf/p/cli.py"])]
    assert [stage_of(m, table) for m in ("crack_tf", "crack_tf.a", "crack_tf.p", "crack_tf.p.x", "crack_tf.p.cli",
                                         "crack_tf.p_cmd", "crack_tf.ab", "crack_tf.pq.x")] == [0, 0, 1, 1, 2, 1, None, None]
