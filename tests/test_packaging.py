"""Every third-party package that ``crack_tf`` imports at module level is declared in setup.py.

The README's first command installs only ``.[cpu]`` (``install_requires`` + the ``cpu`` extra), while
the test command adds the ``test`` / ``parity`` / ``serving`` extras, which pull in more (``jax[cpu]``
brings scipy): a package missing from the declaration passes the tests and breaks the first command.
This walks the sources, maps each imported top-level module to the distribution that installed it
(``importlib.metadata.packages_distributions``) and fails naming the module and the file.

Imports inside functions (optional dependencies such as torch, jax, grpc, tensorboard), under
``if TYPE_CHECKING:`` or in a ``try:`` that catches ``ImportError`` are not module-level
requirements: they are skipped here and keep their own clear error when missing.
"""

from __future__ import annotations

import ast
import importlib.metadata
import pathlib
import re
import sys

import pytest
from packaging.requirements import Requirement

REPO = pathlib.Path(__file__).resolve().parents[1]


def normalise(name: str) -> str:
    """PEP 503 name: ``Tensorflow_CPU`` -> ``tensorflow-cpu``."""
    return re.sub(r"[-_.]+", "-", name).lower()


def setup_keywords(setup_py: pathlib.Path) -> dict[str, ast.expr]:
    """The keyword arguments of the ``setup(...)`` call in setup.py, as syntax trees."""
    tree = ast.parse(setup_py.read_text(encoding="utf-8"))
    call = next(n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "setup")
    return {k.arg: k.value for k in call.keywords}


def declared_distributions(setup_py: pathlib.Path, extras: tuple[str, ...] = ("cpu",)) -> set[str]:
    """Normalised names of ``install_requires`` plus the given extras of ``setup(...)`` in setup.py."""
    kwargs = setup_keywords(setup_py)
    requirements = list(ast.literal_eval(kwargs["install_requires"]))
    extras_require = ast.literal_eval(kwargs["extras_require"]) if "extras_require" in kwargs else {}
    for extra in extras:
        requirements += extras_require.get(extra, [])
    return {normalise(Requirement(r).name) for r in requirements}


def _catches_import_error(node: ast.Try) -> bool:
    names = {"ImportError", "ModuleNotFoundError", "Exception", "BaseException"}
    for handler in node.handlers:
        types = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
        if handler.type is None or any(getattr(t, "id", None) in names for t in types):
            return True
    return False


def module_level_import_nodes(source: str) -> list[ast.Import | ast.ImportFrom]:
    """The import statements run when the module is imported: the module body, class bodies,
    ``if`` / ``with`` / ``try`` blocks; not function bodies, ``if TYPE_CHECKING:`` or a ``try:``
    that catches ImportError."""
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(statements: list[ast.stmt]) -> None:
        for node in statements:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                found.append(node)
            elif isinstance(node, ast.If):
                if "TYPE_CHECKING" not in ast.unparse(node.test):
                    visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                if not _catches_import_error(node):
                    visit(node.body)
                visit(node.orelse)
                visit(node.finalbody)
            elif isinstance(node, (ast.With, ast.ClassDef)):
                visit(node.body)

    visit(ast.parse(source).body)
    return found


def module_level_imports(source: str) -> list[tuple[str, int]]:
    """(top-level module, line) of :func:`module_level_import_nodes`. Relative imports are the
    package's own."""
    found: list[tuple[str, int]] = []
    for node in module_level_import_nodes(source):
        if isinstance(node, ast.Import):
            found.extend((alias.name.split(".")[0], node.lineno) for alias in node.names)
        elif node.level == 0 and node.module:
            found.append((node.module.split(".")[0], node.lineno))
    return found


def undeclared_imports(package_dir: pathlib.Path, declared: set[str], own: str,
                       distributions: dict[str, list[str]]) -> list[str]:
    """One line per module-level import of a third-party module whose distribution is not declared."""
    problems = []
    for path in sorted(package_dir.rglob("*.py")):
        for module, line in module_level_imports(path.read_text(encoding="utf-8")):
            if module == own or module in sys.stdlib_module_names or module == "__future__":
                continue
            dists = {normalise(d) for d in distributions.get(module, [])}
            where = f"{path.relative_to(package_dir.parent)}:{line}"
            if not dists:
                problems.append(f"{module} ({where}): not installed here, so its distribution cannot be told; "
                                "install the test environment or declare it")
            elif not dists & declared:
                problems.append(f"{module} ({where}): installed by {', '.join(sorted(dists))}, which is not in "
                                "setup.py install_requires or the `cpu` extra")
    return problems


def test_every_module_level_import_of_crack_tf_is_declared_for_the_first_command():
    declared = declared_distributions(REPO / "setup.py")
    problems = undeclared_imports(REPO / "crack_tf", declared, "crack_tf", importlib.metadata.packages_distributions())
    assert not problems, ("`pip install -e .[cpu]` would not install what crack_tf imports at module level:\n  "
                          + "\n  ".join(problems))


# The checker itself, on a tiny package: it must see what the real test relies on it to see.

@pytest.fixture
def tiny_package(tmp_path: pathlib.Path) -> pathlib.Path:
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("import os\nimport numpy as np\nfrom . import sub\nfrom pkg import sub\n")
    (pkg / "sub" / "__init__.py").write_text(
        "from __future__ import annotations\n"
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    import torch\n"
        "try:\n    import grpc\nexcept ImportError:\n    grpc = None\n"
        "def lazy():\n    import jax\n"
        "class Holder:\n    from scipy import special\n")
    return pkg


def test_checker_names_the_module_and_file_of_an_undeclared_import(tiny_package):
    distributions = {"numpy": ["numpy"], "scipy": ["scipy"], "torch": ["torch"], "grpc": ["grpcio"], "jax": ["jax"]}
    problems = undeclared_imports(tiny_package, {"numpy"}, "pkg", distributions)
    assert len(problems) == 1, problems
    assert problems[0].startswith("scipy (pkg/sub/__init__.py:12): installed by scipy, which is not in")
    assert undeclared_imports(tiny_package, {"numpy", "scipy"}, "pkg", distributions) == []


def test_checker_flags_an_import_it_cannot_map_to_a_distribution(tiny_package):
    problems = undeclared_imports(tiny_package, {"numpy", "scipy"}, "pkg", {"scipy": ["scipy"]})
    assert problems and problems[0].startswith("numpy (pkg/__init__.py:2): not installed here")


def test_declared_distributions_reads_install_requires_and_only_the_named_extras(tmp_path):
    setup_py = tmp_path / "setup.py"
    setup_py.write_text('from setuptools import setup\nsetup(name="x", install_requires=["Pillow>=9", "absl_py"],\n'
                        '      extras_require={"cpu": ["tensorflow-cpu>=2.16"], "test": ["jax[cpu]"]})\n')
    assert declared_distributions(setup_py) == {"pillow", "absl-py", "tensorflow-cpu"}
    assert "jax" in declared_distributions(setup_py, extras=("cpu", "test"))


def readme_setup_commands(readme: str) -> list[str]:
    """The commands of the ```bash blocks in the README's "## Set-up" section."""
    section = readme.split("## Set-up", 1)[1].split("\n## ", 1)[0]
    return [line.strip() for block in re.findall(r"```bash\n(.*?)```", section, re.S)
            for line in block.splitlines() if line.strip()]


def test_ci_runs_the_readme_set_up_commands_verbatim():
    commands = readme_setup_commands((REPO / "README.md").read_text(encoding="utf-8"))
    assert len(commands) == 2, f"the README's Set-up section should hold exactly two commands, found {commands}"
    ci_lines = {line.strip() for line in (REPO / ".ci" / "run").read_text(encoding="utf-8").splitlines()}
    for command in commands:
        assert command in ci_lines, f".ci/run does not run the README command {command!r} verbatim"
    assert "configs/quickstart.cfg" in commands[0] and '".[cpu]"' in commands[0]


def test_every_folder_of_modules_is_a_package_that_setup_py_ships():
    """``find_packages`` skips a folder without ``__init__.py``: a plain ``pip install .`` would lack it
    (crack_tf/training was such a folder); the package data files named in setup.py exist."""
    from setuptools import find_packages

    shipped = set(find_packages(str(REPO), include=["crack_tf", "crack_tf.*"]))
    folders = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "crack_tf").rglob("*.py")}
    assert folders - shipped == set(), f"folders of crack_tf modules that setup.py would not install: {folders - shipped}"
    patterns = ast.literal_eval(setup_keywords(REPO / "setup.py")["package_data"])["crack_tf"]
    assert "inspection/report_assets/*" in patterns
    empty = [p for p in patterns if not list((REPO / "crack_tf").glob(p))]
    assert not empty, f"package_data patterns in setup.py that match no file: {empty}"
