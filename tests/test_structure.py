"""The package stays small and acyclic (static: ``ast`` only, no torch).

Imports are read the way Python runs them: module-level and function-local ``import`` /
``from ... import`` statements, and ``importlib.import_module`` / ``__import__`` calls with a
string literal, relative or absolute. ``from pkg import mod`` depends on ``pkg.mod`` (the
package itself is already importing, or imported); ``from pkg import name`` on ``pkg``.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "dit_deploy"
MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 80


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _absolute(current: str, is_package: bool, level: int, module: str | None) -> str:
    """The absolute name of ``from <level dots><module> import ...`` inside ``current``."""
    if not level:
        return module or ""
    base = current.split(".") if is_package else current.split(".")[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join([*base, *(module.split(".") if module else [])])


def _import_module_target(node: ast.Call) -> tuple[int, str] | None:
    """(level, name) of ``import_module("...")`` / ``__import__("...")`` with a literal."""
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
    if name not in ("import_module", "__import__") or not node.args:
        return None
    arg = node.args[0]
    if not (isinstance(arg, ast.Constant) and isinstance(arg.value, str)):
        return None
    text = arg.value
    level = len(text) - len(text.lstrip("."))
    return level, text[level:]


def _imports(source: str, current: str, is_package: bool, modules: set[str]) -> set[str]:
    """The ``modules`` that module ``current`` (its ``source``) imports, anywhere in it."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            target = _absolute(current, is_package, node.level, node.module)
            subs = {f"{target}.{alias.name}" for alias in node.names}
            found.update(subs & modules)
            if subs - modules:  # names defined by the module (or package) itself
                found.add(target)
        elif isinstance(node, ast.Call) and (call := _import_module_target(node)):
            found.add(_absolute(current, is_package, *call))
    return {m for m in found if m in modules and m != current}


def _graph() -> dict[str, set[str]]:
    paths = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {
        name: _imports(path.read_text(encoding="utf-8"), name, path.name == "__init__.py",
                       set(paths))
        for name, path in paths.items()
    }  # fmt: skip


def _reaches(graph: dict[str, set[str]], start: str, goal: str) -> list[str] | None:
    """An import chain from ``start`` to ``goal``, or None."""
    chains, seen = [[start]], {start}
    while chains:
        chain = chains.pop()
        for nxt in sorted(graph[chain[-1]]):
            if nxt == goal:
                return [*chain, nxt]
            if nxt not in seen:
                seen.add(nxt)
                chains.append([*chain, nxt])
    return None


def test_the_graph_sees_local_imports_and_import_module_strings() -> None:
    source = (
        "import importlib\n"
        "def f():\n"
        "    from .trainer import evaluate\n"
        "    from . import rng as r\n"
        "    importlib.import_module('.scoring', __package__)\n"
        "    __import__('dit_deploy.training.amp')\n"
    )
    names = ("trainer", "rng", "scoring", "amp", "evaluation", "cli")
    modules = {f"dit_deploy.training.{m}" for m in names}
    found = _imports(source, "dit_deploy.training.evaluation", False, modules)
    assert found == modules - {"dit_deploy.training.evaluation", "dit_deploy.training.cli"}


def test_no_import_cycle_between_trainer_and_evaluation() -> None:
    graph = _graph()
    trainer, evaluation = "dit_deploy.training.trainer", "dit_deploy.training.evaluation"
    there, back = _reaches(graph, trainer, evaluation), _reaches(graph, evaluation, trainer)
    assert there is None or back is None, f"{' -> '.join(there)}; {' -> '.join(back)}"


def test_no_import_cycle_in_the_package() -> None:
    graph = _graph()
    for start in sorted(graph):
        back = _reaches(graph, start, start)
        assert back is None, "import cycle: " + " -> ".join(back)


def test_a_planted_cycle_is_found() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _reaches(graph, "a", "a") == ["a", "b", "c", "a"]
    assert _reaches(graph, "d", "d") is None


def test_modules_and_functions_stay_small() -> None:
    too_big = []
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        name = path.relative_to(PACKAGE)
        if (n := len(text.splitlines())) > MAX_MODULE_LINES:
            too_big.append(f"{name}: {n} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    too_big.append(f"{name}: {node.name} {length} lines")
    assert not too_big, too_big


def test_every_console_script_names_a_callable() -> None:
    import importlib

    import tomllib

    scripts = tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())["project"]["scripts"]
    assert set(scripts) >= {"dit-deploy", "dit-bench"}
    for name, target in scripts.items():
        module, _, attr = target.partition(":")
        assert callable(getattr(importlib.import_module(module), attr, None)), (name, target)
