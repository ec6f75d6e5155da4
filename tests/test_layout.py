"""The apps depend one way: backtest on trading, devtools on both, and the product (trading and
backtest) never on devtools. Read from the source with `ast`, so an import inside a function or
under `TYPE_CHECKING` counts as much as one at the top of a module."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import ROOT

# Which of the other apps each app may import. The project package (arbsite) is not an app here.
MAY_IMPORT = {
    "trading": frozenset[str](),
    "backtest": frozenset({"trading"}),
    "devtools": frozenset({"trading", "backtest"}),
}


def module_name(root: Path, path: Path) -> tuple[str, ...]:
    """The dotted name of the module at `path` under `root`, as parts (a package is its folder)."""
    parts = path.relative_to(root).with_suffix("").parts
    return parts[:-1] if parts[-1] == "__init__" else parts


def imported_modules(root: Path, path: Path) -> Iterator[str]:
    """Every module `path` imports, relative imports resolved against its package, and the literal
    names it passes to `importlib.import_module` (an f-string counts by its leading literal)."""
    module = module_name(root, path)
    package = module if path.name == "__init__.py" else module[:-1]
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: max(0, len(package) - node.level + 1)] if node.level else ()
            named = tuple(node.module.split(".")) if node.module else ()
            if base or named:
                yield ".".join(base + named)
            else:  # `from .. import x` above the top-level package: each name is a module
                yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.Call) and _is_import_module(node.func) and node.args:
            yield from _literal_prefix(node.args[0])


def _is_import_module(func: ast.expr) -> bool:
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
    return name in {"import_module", "__import__"}


def _literal_prefix(arg: ast.expr) -> Iterator[str]:
    if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
        yield arg.value
    elif isinstance(arg, ast.JoinedStr) and arg.values and isinstance(arg.values[0], ast.Constant):
        yield str(arg.values[0].value)


def forbidden_imports(root: Path) -> list[str]:
    """`path: module` for each import of one app by another that MAY_IMPORT does not allow."""
    found = []
    for app, allowed in MAY_IMPORT.items():
        for path in sorted((root / app).rglob("*.py")):
            for imported in imported_modules(root, path):
                target = imported.split(".")[0]
                if target in MAY_IMPORT and target != app and target not in allowed:
                    found.append(f"{path.relative_to(root)}: {imported}")
    return found


def test_no_app_imports_one_it_may_not() -> None:
    assert forbidden_imports(ROOT) == []


def test_no_two_apps_import_each_other() -> None:
    for app, allowed in MAY_IMPORT.items():
        for other in allowed:
            assert app not in MAY_IMPORT[other], f"{app} and {other} import each other"


@pytest.mark.parametrize(
    ("where", "source"),
    [
        ("trading/listener.py", "from devtools.emulator import Emulator\n"),
        ("trading/venues/registry.py", "import devtools.demo.setup\n"),
        ("trading/venues/registry.py", "from ...devtools import emulator\n"),
        ("trading/venues/__init__.py", "from ... import backtest\n"),
        ("trading/listener.py", "def later():\n    from backtest.engine import Replay\n"),
        ("backtest/runs.py", "import importlib\nimportlib.import_module(f'devtools.bench.{which}')\n"),
    ],
)
def test_a_forbidden_import_is_found(tmp_path: Path, where: str, source: str) -> None:
    # Given a tree whose only forbidden import is `source`, in `where`
    tree_with(tmp_path, where, source)

    # Then that import, and only that one, is reported
    [found] = forbidden_imports(tmp_path)
    assert found.startswith(f"{where}: ")


def test_a_relative_import_of_a_module_named_like_an_app_is_its_own_app(tmp_path: Path) -> None:
    # Given trading.venues importing trading's own (imagined) module `backtest`
    tree_with(tmp_path, "trading/venues/registry.py", "from .. import backtest\nfrom .base import Gateway\n")

    # Then nothing is reported
    assert forbidden_imports(tmp_path) == []


def tree_with(root: Path, where: str, source: str) -> None:
    """The three apps under `root`, each importing only what it may, and `source` in `where`."""
    for app in MAY_IMPORT:
        (root / app).mkdir()
        (root / app / "__init__.py").write_text("from . import models\nfrom trading import core\n")
    (root / where).parent.mkdir(parents=True, exist_ok=True)
    (root / where).write_text(source)
