"""Shared fixtures: real model files, real configs, a private translation cache."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from armsdyn.cli import main

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "models"
CONFIGS = ROOT / "configs"
SHARED = ROOT.parent / "shared"


#: Richardson's race from zero arms and the same race without reaction, with the growth of arms X
#: over the first five years attributed to the action-reaction loop: the config body the loop tests
#: share (append [loop_dominance] or [[figures]] tables to it).
RACE_ATTRIBUTION = """
[[scenarios]]
name = "race"
parameters = { "initial arms X" = 0, "initial arms Y" = 0 }

[[scenarios]]
name = "no_reaction"
parameters = { "initial arms X" = 0, "initial arms Y" = 0, "defence coefficient k" = 0, "defence coefficient l" = 0 }

[attribution]
stocks = ["arms X"]
window = [0, 5]

[[attribution.groups]]
name = "action-reaction"
variables = ["reaction of X", "reaction of Y"]
"""


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Give ``--dist loadgroup`` its groups under pytest 9, where pytest-xdist 3.8 cannot.

    pytest-xdist marks a test of an ``xdist_group`` by appending ``@group`` to its node id
    (``item._nodeid``), the scope its scheduler sends to one worker; pytest 9 builds the node id
    from ``item._id`` instead, so the suffix never showed and every group's tests were spread
    over the workers (each paying again for the PySD reference runs, module fixtures and numba
    kernels the group shares). Here a worker's items of a group get the suffix the scheduler
    reads; where pytest-xdist already gave it (pytest 8), nothing changes.
    """
    if not getattr(config.option, "loadgroup", False):
        return
    for item in items:
        groups = sorted(
            {str(m.args[0] if m.args else m.kwargs.get("name", "default")) for m in item.iter_markers("xdist_group")}
        )
        if groups and item.nodeid.rfind("@") <= item.nodeid.rfind("]") and hasattr(item, "_id"):
            try:
                from _pytest.nodeid import NodeId  # pytest 9's structured node id (private: guarded)

                item._id = NodeId.parse(f"{item.nodeid}@{'_'.join(groups)}")
            except (ImportError, AttributeError):  # a pytest that moved it: slower, still correct
                return  # (tests/test_suite_setup.py then fails, naming the groups that no longer hold)


def _kept_kernels() -> Path | None:
    """Where numba kernels compiled by earlier test sessions on this machine are kept (None: nowhere).

    ``ARMSDYN_TEST_KERNELS`` names the folder, or is ``off`` for a session that compiles every
    kernel itself (to time the suite cold); by default ``armsdyn-tests/ensemble-numba`` in the
    user's cache folder.
    """
    where = os.environ.get("ARMSDYN_TEST_KERNELS", "")
    if where == "off":
        return None
    if where:
        return Path(where)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "armsdyn-tests" / "ensemble-numba"


def _copy_kernels(source: Path, target: Path) -> None:
    """Copy the compiled kernels of `source` that `target` lacks: generated modules and numba's files.

    Measured backend speeds (``*.timings.json``) stay behind, so the automatic choices a session
    makes do not depend on what ran before it. Each file lands whole (``os.replace``), with its
    time stamp, which numba checks its index against; a file another process copied first is kept.
    """
    if not source.is_dir():
        return
    for folder in (Path(), Path("__pycache__")):
        if not (source / folder).is_dir():
            continue
        (target / folder).mkdir(mode=0o700, parents=True, exist_ok=True)
        for path in (source / folder).iterdir():
            if path.suffix not in {".py", ".nbi", ".nbc"} or (target / folder / path.name).exists():
                continue
            tmp = target / folder / f".{path.name}.{os.getpid()}.tmp"
            try:
                shutil.copy2(path, tmp)
                os.replace(tmp, target / folder / path.name)
            except OSError:  # a cache that cannot be read or written only costs compile time
                tmp.unlink(missing_ok=True)


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    # Tests must not depend on (or pollute) the user's translation cache; the
    # variable is inherited by CLI subprocesses too. Each pytest-xdist worker has
    # its own (tests check what a translation leaves in the cache), but the
    # workers of one run share the numba kernels compiled into it: a kernel one
    # worker compiled, another loads from disk instead of compiling it again
    # (numba and armsdyn write those files atomically). Kernels are also kept
    # between sessions (see _kept_kernels): a kernel's file name is its source's
    # hash, so a kept one is the kernel a session would compile, and numba
    # recompiles one whose index no longer matches (another numba, another CPU).
    cache = tmp_path_factory.mktemp("cache")
    os.environ["ARMSDYN_CACHE_DIR"] = str(cache)
    base = tmp_path_factory.getbasetemp()
    kernels = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "ensemble-numba"
    kernels.mkdir(mode=0o700, exist_ok=True)
    (cache / "ensemble-numba").symlink_to(kernels, target_is_directory=True)
    kept = _kept_kernels()
    if kept is not None:
        _copy_kernels(kept, kernels)
    yield
    if kept is not None:
        _copy_kernels(kernels, kept)


@pytest.fixture(scope="session")
def richardson_results(tmp_path_factory: pytest.TempPathFactory) -> subprocess.CompletedProcess[str]:
    """``armsdyn run configs/richardson.toml --out FOLDER``, run once per test process (in-process).

    Its output, with the results folder as ``.args[-1]``. Many tests read this folder; one that
    changes it works on a copy (``shutil.copytree``).
    """
    out = tmp_path_factory.mktemp("richardson") / "richardson"
    proc = call_cli("run", CONFIGS / "richardson.toml", "--out", out, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    return proc


@pytest.fixture
def richardson_mdl(tmp_path: Path) -> Path:
    """A private copy of models/richardson.mdl that a test may edit."""
    return Path(shutil.copy(MODELS / "richardson.mdl", tmp_path / "richardson.mdl"))


def call_cli(*args: str | os.PathLike[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``armsdyn ARGS`` in this process (:func:`armsdyn.cli.main`) and capture its output.

    The same result as :func:`run_cli` without a new interpreter's seconds of imports; use
    :func:`run_cli` where the process is the point (the entry point, exit codes, signals).
    """
    out, err = io.StringIO(), io.StringIO()
    backend = os.environ.get("MPLBACKEND")  # main() sets it for its process: not for the tests after this one
    with contextlib.chdir(cwd or Path.cwd()), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in args])
        except SystemExit as exc:  # argparse's --help, --version and usage errors
            code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
        finally:
            if backend is None:
                os.environ.pop("MPLBACKEND", None)
            else:
                os.environ["MPLBACKEND"] = backend
    return subprocess.CompletedProcess(["armsdyn", *map(str, args)], code, out.getvalue(), err.getvalue())


def run_cli(*args: str | os.PathLike[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``python -m armsdyn ARGS`` in a subprocess and capture its output."""
    return subprocess.run(
        [sys.executable, "-m", "armsdyn", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
        check=False,
    )


def write_config(folder: Path, body: str, *, model: Path = MODELS / "richardson.mdl", name: str = "exp") -> Path:
    """Write a config file whose [experiment] table points at `model`."""
    path = folder / f"{name}.toml"
    head = f'[experiment]\nname = "{name}"\nmodel = "{model.as_posix()}"\n'
    path.write_text(head + body, encoding="utf-8")
    return path
