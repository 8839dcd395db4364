"""The shape of the code: no import cycle among lorascope's modules, and start-up stays light."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "lorascope"


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Module -> the lorascope modules it imports anywhere in its body (function-level imports too).

    `from lorascope.x import y` is an edge to lorascope.x.y when that is a module, else to lorascope.x."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        edges = set()
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                edges |= {a.name for a in node.names if a.name in modules}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative import
                    anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                    base = f"{anchor}.{base}" if base else anchor
                for alias in node.names:
                    target = f"{base}.{alias.name}"
                    if target in modules:
                        edges.add(target)
                    elif base in modules:
                        edges.add(base)
        graph[name] = edges - {name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_cycle_finder_finds_a_planted_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_among_lorascope_modules():
    graph = import_graph()
    assert "lorascope.runs" in graph and "lorascope.peft_format" in graph["lorascope.runs"]
    cycle = find_cycle(graph)
    assert cycle is None, " -> ".join(cycle)


def test_the_run_format_is_a_leaf():
    graph = import_graph()
    # format_checks, the checks of headers against tensors, is a leaf below it
    # (and krylov, below delta, for its one_thread while a file's factors are checked)
    assert graph["lorascope.run_format"] <= {
        "lorascope.errors", "lorascope.format_checks", "lorascope.delta", "lorascope.krylov"
    }  # fmt: skip
    assert graph["lorascope.format_checks"] <= {"lorascope.errors"}
    # the ΔW protocol and its kinds, and the block Krylov method below it, are leaves too
    assert graph["lorascope.delta"] <= {"lorascope.errors", "lorascope.krylov"}
    assert graph["lorascope.krylov"] <= {"lorascope.errors"}
    assert "lorascope.runs" not in graph["lorascope.peft_format"]


def _imported_modules(*argv: str) -> set[str]:
    """Top-level packages a Python command imports (from -X importtime's report)."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", *argv], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    names = set()
    for line in proc.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            names.add(line.rsplit("|", 1)[1].strip().split(".")[0])
    return names


def test_sweep_help_starts_without_torch():
    assert "torch" not in _imported_modules("sweep.py", "--help")


def test_importing_plots_leaves_the_matplotlib_backend_alone():
    code = (
        "import matplotlib; matplotlib.use('svg'); import lorascope.analysis.plots; "
        "assert matplotlib.get_backend() == 'svg', matplotlib.get_backend()"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_runs_loads_and_lists_and_leaves_the_format_to_run_format():
    """`lorascope.runs` is load_run / list_runs; the run format's names are imported from run_format."""
    from lorascope import runs

    format_names = ("save_adapter", "save_tensors", "read_tensors", "write_summary", "adapter_metadata")
    assert [n for n in format_names if hasattr(runs, n)] == []
    assert callable(runs.load_run) and callable(runs.list_runs)
