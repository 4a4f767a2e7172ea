"""The module graph of runner/ has no circles: every import of a runner module, at the top of a
file or inside a function, is an arrow; a circle fails the test and is named."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "runner"


def module_of(f: Path) -> str:
    parts = list(f.relative_to(PKG.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def graph() -> dict[str, set[str]]:
    mods = {module_of(f): f for f in PKG.rglob("*.py")}
    g: dict[str, set[str]] = {m: set() for m in mods}
    for m, f in mods.items():
        pkg = m if f.name == "__init__.py" else m.rpartition(".")[0]
        for node in ast.walk(ast.parse(f.read_text())):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = pkg.split(".")[:len(pkg.split(".")) - node.level + 1]
                    base = ".".join([*up, base] if base else up)
                names = [f"{base}.{a.name}" for a in node.names] + [base]
            for n in names:
                while n and n not in mods:  # `from runner.x import name`: the module runner.x
                    n = n.rpartition(".")[0]
                if n and n != m and not m.startswith(n + "."):  # a package's own __init__
                    g[m].add(n)
    return g


def circles(g: dict[str, set[str]]) -> list[list[str]]:
    found, state = [], dict.fromkeys(g, 0)

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for n in sorted(g[m]):
            if state[n] == 1:
                found.append(path[path.index(n):] + [n])
            elif state[n] == 0:
                visit(n, [*path, n])
        state[m] = 2

    for m in sorted(g):
        if state[m] == 0:
            visit(m, [m])
    return found


def test_the_graph_is_read():
    g = graph()
    assert "runner.engine" in g["runner.job.feed"] and "runner.job.feed" in g["runner.job.recipe"]
    assert circles({"a": {"b"}, "b": {"a"}}) == [["a", "b", "a"]]


def test_runner_has_no_import_circles():
    assert circles(graph()) == []


# The stages, lowest first (docs/development.md, "Code map"). A module may import its own
# layer or one below, never one above: data flows config -> plan -> engine -> store -> report.
LAYERS = [
    {"runner.errors", "runner.kinds", "runner.files", "runner.config", "runner.console"},
    {"runner.bundled"},
    {"runner.plan"},
    {"runner.engine"},
    {"runner.store"},
    {"runner.results"},
    {"runner.benchmarks"},
    {"runner.job"},
    {"runner.launch"},
    {"runner", "runner.__main__", "runner.serve"},
]


def layer_of(m: str) -> int:
    for n in (m, ".".join(m.split(".")[:2])):
        for i, layer in enumerate(LAYERS):
            if n in layer:
                return i
    raise AssertionError(f"{m} is in no layer of LAYERS: add its package there")


def upward(g: dict[str, set[str]]) -> list[str]:
    return sorted(f"{m} -> {n}" for m, ns in g.items() for n in ns if layer_of(n) > layer_of(m))


def test_the_layer_rule_is_read():
    assert layer_of("runner.plan.load") == 2 and layer_of("runner.job.recipe") == 7
    assert upward({"runner.plan.load": {"runner.store.record"}}) == [
        "runner.plan.load -> runner.store.record"]


def test_no_import_runs_back_up_the_stages():
    assert upward(graph()) == []


def test_the_top_level_holds_entry_points_and_shared_basics_only():
    top = sorted(f.name for f in PKG.glob("*.py"))
    assert top == ["__init__.py", "__main__.py", "config.py", "errors.py", "files.py", "kinds.py",
                   "serve.py"]
