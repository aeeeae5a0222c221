"""The package's data flows one way: its import graph has no cycle and no import hides inside a function."""

from __future__ import annotations

import ast
import functools
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

# One worker runs this module: the `fresh` interpreter below is a module fixture, which
# pytest-xdist would otherwise start again on each worker given some of its tests.
pytestmark = pytest.mark.xdist_group("architecture")

PACKAGE = ROOT / "armsdyn"


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> tuple[set[str], list[tuple[int, str]]]:
    """Package modules `path` imports at run time, and those imported inside functions (line, name)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    here = _module_name(path)
    top: set[str] = set()
    nested: list[tuple[int, str]] = []
    type_checking = {
        id(n)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for n in ast.walk(node)
    }
    functions = {
        id(n) for f in ast.walk(tree) if isinstance(f, ast.FunctionDef | ast.AsyncFunctionDef) for n in ast.walk(f)
    }
    for node in ast.walk(tree):
        if id(node) in type_checking:
            continue
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = here.rsplit(".", node.level - (1 if path.name == "__init__.py" else 0))[0]
                base = f"{package}.{base}" if base else package
            # "from pkg import mod" depends on pkg.mod; "from mod import name" on mod.
            names = [
                f"{base}.{a.name}" if _resolve(f"{base}.{a.name}") == f"{base}.{a.name}" else base for a in node.names
            ]
        for name in names:
            if not name.startswith("armsdyn"):
                continue
            module = _resolve(name)
            if module is None or module == here:
                continue
            (nested.append((node.lineno, module)) if id(node) in functions else top.add(module))
    return top, nested


def _resolve(name: str) -> str | None:
    """The package module an imported name lives in (a submodule, or the module defining the name)."""
    parts = name.split(".")
    for n in range(len(parts), 0, -1):
        candidate = ".".join(parts[:n])
        path = ROOT.joinpath(*candidate.split("."))
        if path.with_suffix(".py").is_file() or (path / "__init__.py").is_file():
            return candidate
    return None


@functools.cache
def _graph() -> tuple[dict[str, set[str]], dict[str, list[tuple[int, str]]]]:
    """The package's import graph (module -> modules it imports at run time) and its function-level imports.

    Parsed once per test process (the sources do not change while the tests run); read-only.
    """
    graph, nested = {}, {}
    for path in sorted(PACKAGE.rglob("*.py")):
        top, inner = _imports(path)
        graph[_module_name(path)] = top
        nested[_module_name(path)] = inner
    return graph, nested


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            # A package's __init__ re-exports its children; importing a child runs the
            # package first, which is not a dependency of the child on its siblings.
            if nxt == "armsdyn" or (node.startswith(nxt + ".") and nxt in graph):
                continue
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_import_graph_has_no_cycle() -> None:
    graph, _ = _graph()
    assert "armsdyn.config" in graph
    cycle = _cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_cycle_check_finds_a_cycle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


#: Third-party packages armsdyn runs without (extras): a module that needs one may be imported lazily.
OPTIONAL_DEPENDENCIES = ("numba", "llvmlite", "distributed", "ema_workbench", "sklearn", "bokeh")


@functools.cache
def _needs_optional(module: str) -> bool:
    path = ROOT.joinpath(*module.split("."))
    path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in tree.body:
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
        names += [node.module or ""] if isinstance(node, ast.ImportFrom) else []
        if any(n.split(".")[0] in OPTIONAL_DEPENDENCIES for n in names):
            return True
    return False


def test_no_package_import_hides_inside_a_function() -> None:
    _, nested = _graph()
    hidden = sorted(
        {
            f"{module}:{line} imports {name}"
            for module, items in nested.items()
            for line, name in items
            if not _needs_optional(name)
        }
    )
    assert not hidden, "function-level imports of the package:\n" + "\n".join(hidden)


#: The only functions that import by name at run time: the command line's registry of
#: subcommands (COMMANDS) and the package's lazy public names (PEP 562).
DYNAMIC_IMPORTERS = {
    ("armsdyn.cli", "command"),
    ("armsdyn._lazy", "__getattr__"),  # the public names of armsdyn and armsdyn.audit
    ("armsdyn.figures", "figure_drawer"),
}


def _dynamic_imports(path: Path) -> list[tuple[str, int]]:
    """Calls of importlib.import_module or __import__ in `path`: (innermost enclosing function, line)."""
    found: list[tuple[str, int]] = []

    def visit(node: ast.AST, function: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Call) and ast.unparse(child.func).split(".")[-1] in (
                "import_module",
                "__import__",
            ):
                found.append((function, child.lineno))
            visit(child, child.name if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef) else function)

    visit(ast.parse(path.read_text(encoding="utf-8")), "<module>")
    return found


def test_only_the_registries_import_by_name(tmp_path: Path) -> None:
    seen = {(_module_name(p), function, line) for p in PACKAGE.rglob("*.py") for function, line in _dynamic_imports(p)}
    assert {(m, f) for m, f, _ in seen} >= DYNAMIC_IMPORTERS, "the test no longer sees the registries' imports"
    hidden = sorted(f"{m}:{line} in {f}" for m, f, line in seen if (m, f) not in DYNAMIC_IMPORTERS)
    assert not hidden, "imports by name outside the registries:\n" + "\n".join(hidden)
    # The check sees one hidden in a function, and names that function.
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    import importlib\n    return importlib.import_module('armsdyn.x')\n")
    assert _dynamic_imports(probe) == [("f", 3)]


def test_every_subcommand_has_a_registered_function_and_nothing_else_is_registered() -> None:
    import argparse

    from armsdyn.cli import COMMANDS, _parser, command

    subparsers = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert set(subparsers.choices) == set(COMMANDS)
    for name in COMMANDS:
        assert callable(command(name)), name


#: Modules the command line and ``import armsdyn`` must not load before a subcommand needs them (seconds each).
HEAVY = ("matplotlib", "scipy.stats", "statsmodels")

#: What a new interpreter loads, step by step, in one process (the ``fresh`` fixture). sys.modules
#: only grows, so each step's check sees every module its own work loads (loaded then or by an
#: earlier step): a step that would fail alone fails here too. The steps run from the strictest
#: check to the most permissive, so none is blamed for a module an earlier step may load; the
#: backend step imports armsdyn.figures for the first time (every step before it refuses
#: matplotlib), and the steps that load every public name come last.
FRESH_STEPS = f"""
import contextlib, importlib, io, json, sys
results = {{}}

@contextlib.contextmanager
def step(name):
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    except BaseException as exc:  # an assertion, or SystemExit from the command line
        results[name] = f"{{type(exc).__name__}}: {{exc}}"
    else:
        results[name] = "ok"

def loaded(*names):
    return [m for m in names if m in sys.modules]

with step("import armsdyn"):
    import armsdyn
    assert not loaded(*{HEAVY!r}), f"import armsdyn loaded {{loaded(*{HEAVY!r})}}"
    assert set(armsdyn.__all__) <= set(dir(armsdyn))
with step("import armsdyn.cli"):
    import armsdyn.cli
    assert not loaded(*{HEAVY!r}), f"import armsdyn.cli loaded {{loaded(*{HEAVY!r})}}"
with step("armsdyn --help"):
    with contextlib.suppress(SystemExit):
        armsdyn.cli.main(["--help"])
    assert not loaded(*{HEAVY!r}), f"armsdyn --help loaded {{loaded(*{HEAVY!r})}}"
with step("load_config"):
    from armsdyn.config import load_config
    exp = load_config({str(ROOT / "configs" / "knowledge_loops.toml")!r})
    assert {{f.kind for f in exp.figures}} >= {{"loop_dominance", "model_diagram"}}, exp.figures
    heavy = loaded("matplotlib", "networkx", "scipy.stats", "statsmodels")
    assert not heavy, f"load_config loaded {{heavy}}"
with step("armsdyn check experiment"):
    assert armsdyn.cli.main(["check", {str(ROOT / "configs" / "richardson.toml")!r}]) == 0
    assert not loaded("scipy.stats", "statsmodels"), f"armsdyn check loaded {{loaded('scipy.stats', 'statsmodels')}}"
    assert not loaded("armsdyn.calibration", "armsdyn.compare"), "armsdyn check"
with step("armsdyn check audit"):
    assert armsdyn.cli.main(["check", {str(ROOT / "configs" / "audit_knowledge_argument.toml")!r}]) in (0, None)
    heavy = loaded("matplotlib", "networkx", "statsmodels")
    assert not heavy, f"armsdyn check loaded {{heavy}}"
with step("matplotlib backend"):
    assert "armsdyn.figures" not in sys.modules
    import matplotlib
    matplotlib.use("svg")
    import armsdyn.figures
    assert matplotlib.get_backend() == "svg", matplotlib.get_backend()
with step("audit names"):
    package = importlib.import_module("armsdyn.audit")
    assert set(package.__all__) == set(package._MODULES) and all(getattr(package, n) for n in package.__all__)
with step("public names"):
    for name in armsdyn.__all__:
        if name != "__version__":
            module = importlib.import_module("armsdyn." + armsdyn._MODULES[name])
            assert getattr(armsdyn, name) is getattr(module, name), name
    import armsdyn.audit  # the submodule of the same name does not replace the function
    assert callable(armsdyn.audit) and armsdyn.audit.__module__ == "armsdyn.audit.pipeline"
    from armsdyn import figures  # a submodule that is no public name is still importable this way
    assert figures.__name__ == "armsdyn.figures"
    try:
        armsdyn.no_such_name
    except AttributeError as exc:
        assert "no_such_name" in str(exc)
    else:
        raise AssertionError("an unknown name was found")
print("RESULTS", json.dumps(results))
"""


@pytest.fixture(scope="module")
def fresh() -> dict[str, str]:
    """Each step of FRESH_STEPS, run in one new interpreter: "ok" or what failed.

    One interpreter for the checks that need a clean sys.modules, instead of one each (about
    two seconds of imports apiece).
    """
    proc = subprocess.run([sys.executable, "-c", FRESH_STEPS], capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULTS ")), None)
    assert line is not None, proc.stdout + proc.stderr
    results: dict[str, str] = json.loads(line.removeprefix("RESULTS "))
    return results


def test_the_fresh_interpreter_steps_fail_on_a_heavy_import() -> None:
    # The step runner records a failing check and goes on to the next step.
    code = FRESH_STEPS.split("with step(")[0] + (
        'with step("a"):\n    import json\n    assert not loaded("json"), "loaded json"\n'
        'with step("b"):\n    pass\nprint("RESULTS", json.dumps(results))\n'
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert json.loads(proc.stdout.split("RESULTS ", 1)[1]) == {"a": "AssertionError: loaded json", "b": "ok"}


def test_the_command_line_loads_heavy_modules_only_for_the_subcommand_that_needs_them(fresh: dict[str, str]) -> None:
    for name in ("import armsdyn.cli", "armsdyn --help", "armsdyn check experiment"):
        assert fresh[name] == "ok", f"{name}: {fresh[name]}"


def test_the_package_imports_and_locks_without_posix_flock(tmp_path: Path) -> None:
    """Windows has no fcntl: import armsdyn and take a results lock as it would there."""
    code = f"""
import sys
sys.modules["fcntl"] = None  # as on Windows: importing it fails
import armsdyn
from armsdyn.errors import ResultsError
from armsdyn.output import locked
target = {str(tmp_path / "out")!r}
with locked(target):
    import os
    assert os.path.exists({str(tmp_path / ".out.lock")!r})
    try:
        with locked(target + "2"), locked(target):
            pass
    except ResultsError:
        raise SystemExit("re-entrant lock refused")
assert not os.path.exists({str(tmp_path / ".out.lock")!r})
open({str(tmp_path / ".out.lock")!r}, "w").close()  # left by a killed run
try:
    with locked(target):
        raise SystemExit("a second holder was let in")
except ResultsError as exc:
    assert "remove" in str(exc)
print("ok")
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


def test_importing_the_package_leaves_matplotlibs_backend_alone(fresh: dict[str, str]) -> None:
    assert fresh["matplotlib backend"] == "ok", fresh["matplotlib backend"]


def test_every_registry_entry_is_documented_in_the_readme() -> None:
    from armsdyn.metrics import METRIC_FAMILIES
    from armsdyn.sensitivity_methods import METHODS
    from armsdyn.specs import FIGURE_KINDS

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for registry in (FIGURE_KINDS, METRIC_FAMILIES):
        for name in registry:
            assert f"`{name}`" in readme, f"{name!r} is registered but not documented in README.md"
    for name in METHODS:
        assert name in readme.split("## Sensitivity studies")[1].split("\n## ")[0], name


def _reach(graph: dict[str, set[str]], module: str) -> set[str]:
    """The package modules importing `module` runs (its imports, theirs, ...)."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        for nxt in graph.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_reading_a_config_or_the_loop_table_reaches_no_figure_code() -> None:
    # Data flows config -> ... -> figures: the config validator reads the figure kinds from specs
    # (it once imported them from figures, and so matplotlib), and what reads loops.nc names the
    # file from results (loop_table and export once imported it from figures).
    graph, _ = _graph()
    for module in ("armsdyn.config", "armsdyn.loop_table"):
        assert not {"armsdyn.figures", "armsdyn.diagram"} & _reach(graph, module), module
    assert "armsdyn.figures" not in graph["armsdyn.export"]
    assert _reach({"a": {"b"}, "b": {"c"}, "c": set()}, "a") == {"b", "c"}


def test_every_figure_kind_names_a_drawing_function() -> None:
    from armsdyn.figures import figure_drawer
    from armsdyn.specs import FIGURE_KINDS

    for kind, entry in FIGURE_KINDS.items():
        assert entry.draw.startswith("armsdyn."), kind
        assert callable(figure_drawer(kind)), kind
        assert entry.layouts, kind
        assert bool(entry.needs) == entry.reads_loops, kind


def test_validating_an_experiment_config_loads_no_matplotlib(fresh: dict[str, str]) -> None:
    assert fresh["load_config"] == "ok", fresh["load_config"]


def test_checking_an_audit_config_loads_no_matplotlib(fresh: dict[str, str]) -> None:
    # `armsdyn check` validates; the audit's figures (and so matplotlib) are for `armsdyn audit`.
    for name in ("armsdyn check audit", "audit names"):
        assert fresh[name] == "ok", f"{name}: {fresh[name]}"


def test_the_public_names_are_their_modules_objects_loaded_on_first_use(fresh: dict[str, str]) -> None:
    for name in ("import armsdyn", "public names"):
        assert fresh[name] == "ok", f"{name}: {fresh[name]}"
