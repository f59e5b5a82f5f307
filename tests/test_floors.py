"""The floors of the house: every import of raysplit/ and analysis/ (inside functions too) runs down a floor,
and no module imports itself back through others. docs/architecture.md draws the same map.

A module new to raysplit/ or analysis/ must be given a floor here (the test names it otherwise)."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# floor -> the modules on it, from the bottom up
FLOORS = {
    # what every part speaks: errors, names, the config, the graph, accounting, the plug-in base, averaging, ...
    "core": ["raysplit.errors", "raysplit.registry", "raysplit.config_schema", "raysplit.config", "raysplit.graph",
             "raysplit.accounting", "raysplit.plugins", "raysplit.averaging", "raysplit.schedule",
             "raysplit.checkpoint", "raysplit.console", "raysplit.network", "raysplit.population",
             "raysplit.config_reference"],
    # what ships inside: models, data sets and partitions, topology builders, codecs, defences, attacks
    "built-ins": ["raysplit.models", "raysplit.partition", "raysplit.data", "raysplit.topology",
                  "raysplit.compression", "raysplit.privacy", "raysplit.attacks"],
    # where it runs: the actor host, the split engine, direct links, Ray and the placement of hosts
    "parties": ["raysplit.link", "raysplit.host", "raysplit.engine", "raysplit.runtime", "raysplit.hosts",
                "raysplit.timeline", "raysplit.async_timeline"],
    # what a round does: the Algorithm contract and the drivers with their programs
    "algorithms": ["raysplit.algorithms.base", "raysplit.algorithms.splitnn", "raysplit.algorithms.splitfed",
                   "raysplit.algorithms.async_split",
                   "raysplit.algorithms.whole_model", "raysplit.algorithms.fedavg",
                   "raysplit.algorithms.large_batch_sgd", "raysplit.algorithms.centralized", "raysplit.algorithms"],
    # the composition root: knows every registry, checks a config's names, builds its plug-ins
    "catalog": ["raysplit.catalog"],
    # what users run: an experiment and its results, simulated time, inference, compare, sweep, the Python API
    "application": ["raysplit.results", "raysplit.experiment",
                    "raysplit.inference", "raysplit.compare", "raysplit.sweep", "raysplit"],
    # figures, tables and the analytic cost model, over raysplit's results
    "analysis": ["analysis", "analysis.paper", "analysis.cost_model", "analysis.crossover", "analysis.time_model",
                 "analysis.paper_tables", "analysis.plots", "analysis.privacy_utility", "analysis.codecs",
                 "analysis.costs"],
    # the terminal: the one module above analysis (raysplit plot | costs | codecs are analysis's commands)
    "command line": ["raysplit.cli"],
}
# floor -> the floors its modules may import (its own included); built-ins and parties stand side by side on core
MAY_IMPORT = {
    "core": {"core"},
    "built-ins": {"core", "built-ins"},
    "parties": {"core", "parties"},
    "algorithms": {"core", "built-ins", "parties", "algorithms"},
    "catalog": {"core", "built-ins", "parties", "algorithms", "catalog"},
    "application": {"core", "built-ins", "parties", "algorithms", "catalog", "application"},
    "analysis": {"core", "built-ins", "parties", "algorithms", "catalog", "application", "analysis"},
    "command line": set(FLOORS),
}
FLOOR_OF = {m: floor for floor, modules in FLOORS.items() for m in modules}
OUTSIDE = ("benchmarks", "tests", "conftest")      # they may import raysplit and analysis, never the reverse


def module_files() -> dict[str, Path]:
    files = {}
    for path in sorted([*ROOT.glob("raysplit/**/*.py"), *ROOT.glob("analysis/**/*.py")]):
        parts = path.relative_to(ROOT).with_suffix("").parts
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return files


def imports_of(name: str, path: Path, known: set[str]) -> dict[str, int]:
    """{module of ours it imports: line}, from every import statement at any depth (``if TYPE_CHECKING``
    blocks are left out: they never run). Benchmarks and tests are modules of ours too: nothing here may
    import them."""
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    skipped = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
               for n in ast.walk(node)}
    found: dict[str, int] = {}
    for node in ast.walk(tree):
        if id(node) in skipped or not isinstance(node, (ast.Import, ast.ImportFrom)):
            continue
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*up, base] if base else up)
            targets = [f"{base}.{a.name}" for a in node.names]
        for target in targets:
            if target.split(".")[0] in OUTSIDE:
                found.setdefault(target.split(".")[0], node.lineno)
                continue
            while target and target not in known:      # ``from pkg import module`` or ``from module import name``
                target = target.rpartition(".")[0]
            if target and target != name:
                found.setdefault(target, node.lineno)
    return found


def graph() -> tuple[dict[str, Path], dict[str, dict[str, int]]]:
    files = module_files()
    return files, {m: imports_of(m, p, set(files)) for m, p in files.items()}


def test_every_module_has_a_floor():
    files, _ = graph()
    assert sorted(set(files) - set(FLOOR_OF)) == [], "give these modules a floor in tests/test_floors.py"
    assert sorted(set(FLOOR_OF) - set(files)) == [], "these modules are gone: take them off the floors"


def test_imports_run_down_the_floors():
    files, edges = graph()
    wrong = [f"{files[a].relative_to(ROOT)}:{line} ({FLOOR_OF[a]}) imports {files[b].relative_to(ROOT)} ({FLOOR_OF[b]})"
             for a, targets in edges.items() for b, line in targets.items()
             if a in FLOOR_OF and b in FLOOR_OF and FLOOR_OF[b] not in MAY_IMPORT[FLOOR_OF[a]]]
    wrong += [f"{files[a].relative_to(ROOT)}:{line} imports {b}" for a, targets in edges.items()
              for b, line in targets.items() if b in OUTSIDE]
    assert wrong == []


def test_no_import_cycles():
    files, edges = graph()
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(v: str) -> None:                 # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(component)

    edges = {v: {w: line for w, line in ws.items() if w in edges} for v, ws in edges.items()}
    for v in edges:
        if v not in index:
            visit(v)
    named = [" <-> ".join(f"{files[m].relative_to(ROOT)}" for m in sorted(c)) for c in cycles]
    assert named == [], "import cycles"


def test_the_check_sees_imports_inside_functions(tmp_path):
    """The parser finds a function-level import and a relative one: the check cannot be dodged by hiding one."""
    code = "def f():\n    from raysplit.catalog import check\n    from . import host\n    import benchmarks.bench_job\n"
    path = tmp_path / "x.py"
    path.write_text(code)
    assert imports_of("raysplit.x", path, {"raysplit.catalog", "raysplit.host"}) == {
        "raysplit.catalog": 2, "raysplit.host": 3, "benchmarks": 4}
