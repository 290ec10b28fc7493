"""The package's layering, read from the source (ast; nothing is imported): no import cycle between asl_ray's
subpackages and top-level modules, and Ray only in the Ray wiring. Imports inside functions count: a lazy
import is still a dependency, it only moves the failure to the first call."""
from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path
from typing import NamedTuple

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "asl_ray"

RAY_WIRING = {
    "asl_ray.search.experiment", "asl_ray.search.searcher", "asl_ray.search.driver", "asl_ray.search.trial_worker",
    "asl_ray.search.confirm", "asl_ray.search.ray_cluster", "asl_ray.search.progress", "asl_ray.search.tuners",
    "asl_ray.train.worker", "asl_ray.train.ray_run", "asl_ray.train.local_ray",
}
"""The modules that may import Ray (some are still being written): Tune/Train wiring and the local cluster."""

RAY_FREE = ("asl_ray.data", "asl_ray.model", "asl_ray.config", "asl_ray.vram", "asl_ray.plan", "asl_ray.search.space",
            "asl_ray.search.select", "asl_ray.search.report", "asl_ray.search.results", "asl_ray.search.plots",
            "asl_ray.search.config", "asl_ray.search.fit_table", "asl_ray.search.decide", "asl_ray.search.decision_sim",
            "asl_ray.search.decision_report", "asl_ray.stats", "asl_ray.outcome", "asl_ray.search.time_budget",
            "asl_ray.search.trial_spec", "asl_ray.search.forecast", "asl_ray.search.forecast_actual",
            "asl_ray.search.eta")
"""Modules (and packages, every module under them) that must import without Ray, through asl_ray imports too:
the unit tests and the tools that need no cluster import them. A prefix also matches its siblings by name
(asl_ray.search.space matches space_yaml)."""


class Import(NamedTuple):
    source: str
    target: str
    where: str
    lazy: bool = False
    """Inside a function: runs at the first call, not when `source` is imported."""

    def __str__(self) -> str:
        return f"{self.source} -> {self.target} ({self.where}{', in a function' if self.lazy else ''})"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(name: str, path: Path, known: set[str]) -> list[Import]:
    """Every import statement anywhere in the file (module level, functions, TYPE_CHECKING blocks), in order."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: list[Import] = []

    def visit(node: ast.AST, lazy: bool) -> None:
        where = f"{_shown(path)}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Import):
            out.extend(Import(name, a.name, where, lazy) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module
            # `from pkg import mod` depends on pkg.mod when that is a module of ours, else on pkg itself.
            targets = [f"{module}.{a.name}" if f"{module}.{a.name}" in known else module for a in node.names]
            out.extend(Import(name, t, where, lazy) for t in dict.fromkeys(targets))
        inside = lazy or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        for child in ast.iter_child_nodes(node):
            visit(child, inside)

    visit(tree, False)
    return out


def _shown(path: Path) -> str:
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def every_import() -> list[Import]:
    modules = all_modules()
    return [imp for name, path in modules.items() for imp in imports_of(name, path, set(modules))]


def unit(module: str) -> str:
    """The layering unit of one of our modules: its subpackage (asl_ray.search), or the top-level module
    itself (asl_ray.config, asl_ray.model, asl_ray.cli)."""
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 else module


def unit_graph(imports: list[Import]) -> dict[str, dict[str, list[Import]]]:
    graph: dict[str, dict[str, list[Import]]] = defaultdict(lambda: defaultdict(list))
    for imp in imports:
        if imp.target.split(".")[0] != "asl_ray" or imp.target == "asl_ray":
            continue
        a, b = unit(imp.source), unit(imp.target)
        if a != b:
            graph[a][b].append(imp)
    return graph


def cycles(graph: dict[str, dict[str, list[Import]]]) -> list[list[str]]:
    """One shortest cycle through each strongly connected group of units (Tarjan, then a BFS back to the start)."""
    index, low, stack, on_stack, groups = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in sorted(set(graph) | {w for ws in graph.values() for w in ws}):
        if v not in index:
            visit(v)
    return [_shortest_cycle(graph, group) for group in groups]


def _shortest_cycle(graph, group: list[str]) -> list[str]:
    start, members = group[0], set(group)
    paths, seen = [[start]], {start}
    while paths:
        path = paths.pop(0)
        for w in sorted(graph.get(path[-1], {})):
            if w == start:
                return path + [start]
            if w in members and w not in seen:
                seen.add(w)
                paths.append(path + [w])
    raise AssertionError(f"no cycle through {group}")


def describe_cycle(graph, cycle: list[str]) -> str:
    edges = [f"  {a} -> {b}: " + "; ".join(str(i) for i in graph[a][b]) for a, b in zip(cycle, cycle[1:])]
    return " -> ".join(cycle) + "\n" + "\n".join(edges)


def is_ray(target: str) -> bool:
    return target == "ray" or target.startswith("ray.")


def ray_free(module: str) -> bool:
    return any(module == p or module.startswith(p + ".") or module.startswith(p + "_") for p in RAY_FREE)


def test_no_import_cycle_between_subpackages():
    graph = unit_graph(every_import())
    found = cycles(graph)
    assert not found, "import cycles between asl_ray's units (subpackages / top-level modules):\n" + "\n".join(
        describe_cycle(graph, c) for c in found)


def test_no_import_cycle_between_modules():
    """At every level: no module reaches itself through our imports, lazy ones included."""
    modules = set(all_modules())
    graph: dict[str, dict[str, list[Import]]] = defaultdict(lambda: defaultdict(list))
    for imp in every_import():
        if imp.target in modules and imp.target != imp.source and not imp.target.endswith("__init__"):
            if (PACKAGE / Path(*imp.target.split(".")[1:]) / "__init__.py").exists():
                continue  # a package's __init__ (empty here): importing a module through it is no edge back
            graph[imp.source][imp.target].append(imp)
    found = cycles(graph)
    assert not found, "import cycles between asl_ray's modules:\n" + "\n".join(describe_cycle(graph, c) for c in found)


def test_only_the_ray_wiring_imports_ray():
    offending = [str(i) for i in every_import() if is_ray(i.target) and i.source not in RAY_WIRING]
    assert not offending, "Ray imported outside the Ray wiring:\n  " + "\n  ".join(offending)


def test_model_data_vram_plan_and_the_search_core_import_no_ray_even_through_our_modules():
    """None of them imports Ray itself (lazily or not), and nothing they import (lazily or not) imports Ray
    when it is imported (its module-level imports, followed through our modules)."""
    modules = all_modules()
    edges: dict[str, list[Import]] = defaultdict(list)
    for imp in every_import():
        edges[imp.source].append(imp)
    problems = []
    for start in sorted(m for m in modules if ray_free(m)):
        chain = path_to_ray(start, edges, set(modules))
        if chain:
            problems.append(f"{start} reaches Ray: " + " => ".join(str(i) for i in chain))
    assert not problems, "\n".join(problems)


def path_to_ray(start: str, edges: dict[str, list[Import]], known: set[str]) -> list[Import]:
    """The shortest import chain from `start` to a Ray import, [] if none: `start`'s own imports all count,
    beyond it only imports that run when a module is imported."""
    queue, seen = [(start, [])], {start}
    while queue:
        module, chain = queue.pop(0)
        for imp in edges.get(module, []):
            if imp.lazy and module != start:
                continue
            if is_ray(imp.target):
                return chain + [imp]
            target = _our_module(imp.target, known)
            if target and target not in seen:
                seen.add(target)
                queue.append((target, chain + [imp]))
    return []


def _our_module(target: str, known: set[str]) -> str | None:
    """`asl_ray.x.y` itself, or the nearest enclosing module of ours (an imported name inside it)."""
    while target:
        if target in known:
            return target
        target = target.rpartition(".")[0]
    return None


# ---- the checks themselves, on made-up graphs: they must find what they are for ------------------

def _graph(*edges: tuple[str, str]):
    graph: dict[str, dict[str, list[Import]]] = defaultdict(lambda: defaultdict(list))
    for a, b in edges:
        graph[a][b].append(Import(f"{a}.m", f"{b}.m", "x.py:1"))
    return graph


def test_a_cycle_through_three_units_is_found_and_a_layered_graph_passes():
    assert cycles(_graph(("vram", "config"), ("search", "vram"), ("search", "config"))) == []
    found = cycles(_graph(("vram", "search"), ("search", "vram"), ("search", "config"), ("train", "vram")))
    assert found == [["search", "vram", "search"]]
    assert cycles(_graph(("a", "b"), ("b", "c"), ("c", "a"))) == [["a", "b", "c", "a"]]
    text = describe_cycle(_graph(("a", "b"), ("b", "a")), ["a", "b", "a"])
    assert "a -> b: a.m -> b.m (x.py:1)" in text


def test_lazy_and_relative_imports_are_read(tmp_path):
    path = tmp_path / "mod.py"
    path.write_text("from . import sibling\nfrom ..vram import cards\n\ndef f():\n    import ray.train\n"
                    "    from asl_ray.search.space import load_space\n")
    known = {"asl_ray.plan.sibling", "asl_ray.vram.cards", "asl_ray.search.space"}
    imports = imports_of("asl_ray.plan.mod", path, known)
    assert [(i.target, i.lazy) for i in imports] == [
        ("asl_ray.plan.sibling", False), ("asl_ray.vram.cards", False), ("ray.train", True),
        ("asl_ray.search.space", True)]
    assert unit("asl_ray.search.space") == "asl_ray.search" and unit("asl_ray.config") == "asl_ray.config"
    assert ray_free("asl_ray.search.space_yaml") and ray_free("asl_ray.vram.fit")
    assert not ray_free("asl_ray.search.session") and not ray_free("asl_ray.search.searcher")


def test_ray_is_reached_through_module_level_imports_only_beyond_the_first_module():
    known = {"asl_ray.a", "asl_ray.b", "asl_ray.c"}
    edges = {"asl_ray.a": [Import("asl_ray.a", "asl_ray.b", "a.py:1")],
             "asl_ray.b": [Import("asl_ray.b", "ray", "b.py:9", lazy=True),
                           Import("asl_ray.b", "asl_ray.c.thing", "b.py:2")],
             "asl_ray.c": [Import("asl_ray.c", "ray.tune", "c.py:3")]}
    chain = path_to_ray("asl_ray.a", edges, known)
    assert [i.where for i in chain] == ["a.py:1", "b.py:2", "c.py:3"]  # b's lazy Ray is not run by importing b
    assert [i.where for i in path_to_ray("asl_ray.b", edges, known)] == ["b.py:9"]  # its own lazy import counts
    assert path_to_ray("asl_ray.a", {"asl_ray.a": edges["asl_ray.a"], "asl_ray.b": edges["asl_ray.b"][:1]},
                       known) == []
