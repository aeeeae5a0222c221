"""Faults never lose results: kills, full disks, numerical blow-ups, hostile names."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import multiprocessing
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import matplotlib.figure
import numpy as np
import pytest
import xarray as xr

import armsdyn
import armsdyn.output
import armsdyn.pipeline
import armsdyn.runner
from armsdyn import NumericalError
from armsdyn.cli import main
from armsdyn.sensitivity import run_study
from tests.conftest import CONFIGS, ROOT, call_cli, write_config

# One worker runs this module and tests/test_runner.py: their children fork from one fork
# server (Child below), whose preload of PRELOAD costs about 3.5 s of CPU each time it starts.
pytestmark = pytest.mark.xdist_group("forkserver")


def complete(folder: Path) -> dict[str, object]:
    """Assert `folder` is a complete results folder; return its manifest."""
    manifest = json.loads((folder / "manifest.json").read_text())
    listed = set(manifest["files"])
    present = {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()} - {"manifest.json"}
    assert present == listed, f"files differ from the manifest: {present ^ listed}"
    for name, digest in manifest["files"].items():
        assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == digest, name
    return manifest


#: What the children below import, once, in the process they are forked from (multiprocessing's
#: fork server): each child is a process of its own that a test can SIGKILL or limit, without a new
#: interpreter's seconds of imports. Beside the CLI, what a run imports lazily (the PySD translator,
#: units, netCDF, Dask, the figure backends): about as much again.
PRELOAD = [
    "armsdyn.cli",
    "armsdyn.commands.run",
    "armsdyn.figures",
    "armsdyn.sensitivity",
    "pysd.translators",
    "pysd.builders",
    "pint",
    "netCDF4",
    "dask.array",
    "distributed",
    "scipy.stats",
    "fontTools.subset",
    "matplotlib.backends.backend_pdf",
    "matplotlib.backends.backend_svg",
    "tests.test_reliability",
]


def _install_kill_point(point: str, reached: Callable[[], None]) -> None:
    """Make the run call `reached` at the kill point `point`.

    The wrappers pass every call through; only "between the two renames" also makes the atomic
    exchange unavailable, as on a system without renameat2 (macOS, Windows, older Linux), so the
    folder is swapped by two renames.
    """

    def before(owner: object, name: str) -> None:
        original = getattr(owner, name)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            reached()
            return original(*args, **kwargs)

        setattr(owner, name, wrapper)

    def after(owner: object, name: str, when: Callable[..., bool] = lambda *args: True) -> None:
        original = getattr(owner, name)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            result = original(*args, **kwargs)
            if when(*args):
                reached()
            return result

        setattr(owner, name, wrapper)

    def chunks_written(count: int) -> Callable[..., bool]:
        return lambda folder, *_: len(list(folder.glob("chunk-*.nc"))) == count

    if point == "while the scenarios run":
        before(armsdyn.pipeline, "run")
    elif point == "after results.nc is written":
        before(armsdyn.output, "compute_metrics")
    elif point == "while a figure is saved":
        before(matplotlib.figure.Figure, "savefig")
    elif point == "before the manifest is written":
        before(armsdyn.output, "build_manifest")
    elif point == "before the swap":
        before(armsdyn.output, "_replace")
    elif point == "after the swap, before the earlier results are removed":
        after(armsdyn.output, "_exchange")
    elif point == "between the two renames":
        armsdyn.output._exchange = lambda a, b: False
        after(Path, "rename", lambda src, dst: ".old-" in Path(dst).name)
    elif point == "after a study's first chunk is written":
        after(armsdyn.runner, "_write_chunk", chunks_written(1))
    elif point == "after a study's second chunk is written":
        after(armsdyn.runner, "_write_chunk", chunks_written(2))
    else:
        raise ValueError(f"unknown kill point {point!r}")


def _armsdyn_child(conn: Connection, args: list[str], point: str | None, file_size: int | None) -> None:
    """Run ``armsdyn ARGS`` in this (forked) child and send ``("exit", status, stdout, stderr)`` on `conn`.

    At the kill point `point` it sends "reached" and waits there: for its SIGKILL, or for a message
    to go on (the pipe's end, its test gone, ends it). With `file_size`, a file-size limit makes
    writes fail as on a full disk (SIGXFSZ ignored so the write returns an error instead of killing
    the process).
    """
    os.setsid()  # a process group of its own, as a command started from a shell
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):  # not the test's captured output, which a file-size limit would cut
        os.dup2(null, fd)

    def reached() -> None:
        conn.send("reached")
        try:
            conn.recv()
        except EOFError:
            os._exit(1)

    out, err = io.StringIO(), io.StringIO()
    status: int | str | None = 1
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            if point is not None:
                _install_kill_point(point, reached)
            if file_size is not None:
                signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
                resource.setrlimit(resource.RLIMIT_FSIZE, (file_size, file_size))
            status = main(args)
        except SystemExit as exc:  # argparse's usage errors, as the command exits with them
            status = exc.code
        except BaseException:
            traceback.print_exc()
    conn.send(("exit", status, out.getvalue(), err.getvalue()))


@dataclass
class Child:
    """An ``armsdyn`` command running in a child process of its own (see :func:`_armsdyn_child`)."""

    process: BaseProcess
    conn: Connection

    @classmethod
    def start(cls, *args: str | os.PathLike[str], point: str | None = None, file_size: int | None = None) -> Child:
        """Start ``armsdyn ARGS`` in a child forked from a process that has imported armsdyn."""
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(PRELOAD)  # read when the fork server starts, the first time
        ours, theirs = context.Pipe()
        process = context.Process(target=_armsdyn_child, args=(theirs, [str(a) for a in args], point, file_size))
        process.start()
        theirs.close()
        return cls(process, ours)

    def _message(self, timeout: float) -> Any:
        try:
            return self.conn.recv() if self.conn.poll(timeout) else None
        except EOFError:  # it died
            return None

    def kill(self) -> None:
        """SIGKILL the child (its whole process group) and reap it."""
        assert self.process.pid is not None
        with contextlib.suppress(ProcessLookupError):  # gone already, or not yet in a group of its own
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.kill()
        self.process.join()
        self.conn.close()

    def result(self, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """Let the child go on, if it waits at a kill point, and wait for its command's exit status and output."""
        with contextlib.suppress(OSError):
            self.conn.send("go on")
        message = self._message(timeout)
        self.kill()  # nothing is left of it, whatever happened
        assert isinstance(message, tuple), f"the child ended without a result: {message!r}"
        _, status, out, err = message
        return subprocess.CompletedProcess(["armsdyn"], status, out, err)


def reach(point: str, *args: str | os.PathLike[str]) -> Child:
    """Start ``armsdyn ARGS`` in a child process; return it waiting at the kill point `point`.

    The caller then SIGKILLs it (:meth:`Child.kill`) or lets it go on (:meth:`Child.result`).
    """
    child = Child.start(*args, point=point)
    message = child._message(300)
    if message != "reached":
        child.kill()
        err = message[3][-2000:] if isinstance(message, tuple) else message
        pytest.fail(f"the run did not reach the kill point {point!r}:\n{err}")
    return child


def kill_at(point: str, *args: str | os.PathLike[str]) -> None:
    """Run ``armsdyn ARGS`` in a child process to the kill point `point` and SIGKILL it (its process group) there."""
    reach(point, *args).kill()


def run_limited(file_size: int, *args: str | os.PathLike[str]) -> subprocess.CompletedProcess[str]:
    """Run ``armsdyn ARGS`` in a child process that may write no file larger than `file_size` bytes."""
    return Child.start(*args, file_size=file_size).result()


#: Where a run is killed, and whether the folder then holds the new results (else the earlier ones).
KILL_POINTS = {
    "while the scenarios run": False,
    "after results.nc is written": False,
    "while a figure is saved": False,
    "before the manifest is written": False,
    "before the swap": False,
    "after the swap, before the earlier results are removed": True,
}


KILLED_RUN = """
[[scenarios]]
name = "stable"
[[scenarios]]
name = "runaway"
parameters = { "defence coefficient k" = 1.2, "defence coefficient l" = 1.2 }
[[figures]]
kind = "time_series"
variables = ["arms X", "arms Y"]
"""


@pytest.mark.slow
def test_a_kill_at_any_point_never_leaves_a_half_written_folder(tmp_path: Path) -> None:
    # Richardson's model with two scenarios and one figure: every kind of file a results folder
    # holds, written in seconds, since each kill point costs a run up to it.
    config = write_config(tmp_path, KILLED_RUN, name="killed")
    out = tmp_path / "richardson"
    first = call_cli("run", config, "--out", out)
    assert first.returncode == 0, first.stderr
    earlier = complete(out)["started"]
    for point, replaced in KILL_POINTS.items():
        kill_at(point, "run", config, "--out", out, "--force")
        # Whatever the moment, the folder is a complete run: the earlier one, or the new one once swapped in.
        started = complete(out)["started"]
        assert (started != earlier) == replaced, point
        earlier = started
    # Without an atomic exchange a kill between the two renames leaves no folder, the earlier results
    # hidden beside it; the next run puts them back (here one without --force, which then refuses).
    kill_at("between the two renames", "run", config, "--out", out, "--force")
    assert not out.exists()
    (hidden,) = tmp_path.glob(".richardson.old-*")
    assert complete(hidden)["started"] == earlier
    again = call_cli("run", config, "--out", out)
    assert again.returncode == 2
    assert "already exists; pass --force" in again.stderr
    assert complete(out)["started"] == earlier
    # The next run cleans up whatever the killed ones left beside the folder.
    last = call_cli("run", config, "--out", out, "--force")
    assert last.returncode == 0, last.stderr
    complete(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == [config.name, "richardson"]


def test_full_disk_gives_a_clear_error_and_no_folder(tmp_path: Path) -> None:
    out = tmp_path / "results" / "richardson"
    proc = run_limited(20000, "run", CONFIGS / "richardson.toml", "--out", out)
    assert proc.returncode == 2, proc.stderr
    assert "could not write" in proc.stderr
    assert "nothing was written" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not out.exists()
    assert list(out.parent.iterdir()) == []


EXPLODING = """
[time]
final = 100
step = 0.125
saveper = 0.5
[[scenarios]]
name = "calm"
[[scenarios]]
name = "explodes"
parameters = { "defence coefficient k" = 2000, "defence coefficient l" = 2000 }
"""


def test_stop_on_fault_stops_with_the_scenario_variable_and_time(tmp_path: Path) -> None:
    config = write_config(tmp_path, EXPLODING)
    with pytest.raises(
        NumericalError, match=r"scenario 'explodes': 'arm.*' became (inf|-inf|nan) at time [0-9.]+ Year"
    ):
        armsdyn.run(config, stop_on_fault=True)
    proc = call_cli("run", config, "--out", tmp_path / "out", "--stop-on-fault")
    assert proc.returncode == 2
    assert "scenario 'explodes'" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_fault_without_stop_is_a_warning_and_the_run_completes(tmp_path: Path) -> None:
    proc = call_cli("run", write_config(tmp_path, EXPLODING), "--out", tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    assert "armsdyn: warning: scenario 'explodes'" in proc.stderr
    complete(tmp_path / "out")


@pytest.mark.parametrize("name", ["../escape", "/abs", "a/b", ".hidden", "con:", "x" * 101, "ünï"])
def test_names_that_would_escape_the_results_folder_are_rejected(tmp_path: Path, name: str) -> None:
    config = write_config(
        tmp_path,
        f'[[scenarios]]\nname = "{name}"\n[[figures]]\nkind = "time_series"\nname = "{name}"\nvariables = ["arms X"]\n',
    )
    proc = call_cli("run", config, "--out", tmp_path / "out")
    assert proc.returncode == 2
    assert "is not a safe" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_a_stock_leaving_its_declared_range_is_a_fault(tmp_path: Path) -> None:
    model = tmp_path / "bounded.mdl"
    text = (ROOT / "models" / "richardson.mdl").read_text()
    model.write_text(
        text.replace(
            "arming rate X,\n\t\tinitial arms X)\n\t~\tarms\n",
            "arming rate X,\n\t\tinitial arms X)\n\t~\tarms [0,?]\n",
            1,
        )
    )
    assert model.read_text() != text
    config = write_config(
        tmp_path,
        '[[scenarios]]\nname = "spiral"\nparameters = { "defence coefficient k" = 1.2, "defence coefficient l" = 1.2, '
        '"grievance g" = -1, "grievance h" = -1, "initial arms X" = 2, "initial arms Y" = 2 }\n'
        '[[scenarios]]\nname = "calm"\n',
        model=model,
    )
    with pytest.warns(armsdyn.NumericalWarning, match=r"scenario 'spiral': 'arms X' = -[0-9.e+-]+, below minimum"):
        ds = armsdyn.run(config)
    assert ds["arms_x"].attrs["valid_min"] == 0.0
    table = armsdyn.compute_metrics(ds)
    assert table.loc["spiral", "fault"] == "below minimum"
    first_negative = float(ds["time"].values[np.flatnonzero(ds["arms_x"].sel(scenario="spiral").values < 0)[0]])
    assert table.loc["spiral", "fault time"] == first_negative
    assert table.loc["calm", "fault"] == "none"
    with pytest.raises(NumericalError, match="below minimum of its declared range"):
        armsdyn.run(config, stop_on_fault=True)


# Inputs that once gave a traceback: each is now one line, exit status 2.


def _one_line_error(err: str) -> str:
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("armsdyn: error: ")]
    assert len(lines) == 1, err
    return lines[0]


def test_deeply_nested_toml_is_a_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path, "a = " + "[" * 500 + "]" * 500 + "\n")
    assert main(["check", str(config)]) == 2
    line = _one_line_error(capsys.readouterr().err)
    assert str(config) in line
    assert "nested too deeply" in line


def test_a_step_too_small_to_count_is_a_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path, "[time]\nstep = 5e-324\n")
    assert main(["run", str(config), "--out", str(tmp_path / "out")]) == 2
    line = _one_line_error(capsys.readouterr().err)
    assert "time.step: gives inf steps" in line
    assert "at most 10,000,000" in line
    assert not (tmp_path / "out").exists()


def _loop_model(tmp_path: Path) -> Path:
    # Each reaction now depends on the other's arming rate, not on its arms: an algebraic loop.
    text = (ROOT / "models" / "richardson.mdl").read_text()
    looped = text.replace("\tdefence coefficient k * arms Y\n", "\tdefence coefficient k * arming rate Y\n").replace(
        "\tdefence coefficient l * arms X\n", "\tdefence coefficient l * arming rate X\n"
    )
    assert looped.count("arming rate Y\n") > text.count("arming rate Y\n")
    path = tmp_path / "loop.mdl"
    path.write_text(looped)
    return path


def test_check_refuses_an_algebraic_loop_naming_its_variables(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, "", model=_loop_model(tmp_path))
    assert main(["check", str(config)]) == 2
    line = _one_line_error(capsys.readouterr().err)
    assert "algebraic loop" in line
    for name in ("arming rate X", "reaction of Y", "arming rate Y", "reaction of X"):
        assert repr(name) in line, name
    assert main(["run", str(config), "--out", str(tmp_path / "out")]) == 2
    assert "algebraic loop" in _one_line_error(capsys.readouterr().err)
    assert not (tmp_path / "out").exists()
    # The loop-free model passes the same check.
    assert main(["check", str(write_config(tmp_path, "", name="fine"))]) == 0


#: Runs `armsdyn ARGS` for each name of the JSON object in argv[1], in this one process (main(), as
#: the command does), and prints {name: [exit status, stderr]} as JSON.
_COMMANDS = """
import contextlib, io, json, sys
from armsdyn.cli import main
results = {}
for name, argv in json.loads(sys.argv[1]).items():
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        try:
            status = main(argv)
        except SystemExit as exc:
            status = exc.code
    results[name] = [status, err.getvalue()]
print(json.dumps(results))
"""


def _run_read_only(folder: Path, commands: dict[str, list[str]]) -> dict[str, tuple[int, str]]:
    """Run each ``armsdyn`` command with `folder` read-only (a read-only bind mount as root, else
    permissions on its subfolders), all in one new process; each one's exit status and stderr."""
    command = [sys.executable, "-c", _COMMANDS, json.dumps(commands)]
    if os.geteuid() != 0:
        subfolders = [p for p in folder.iterdir() if p.is_dir()]
        for path in (folder, *subfolders):
            path.chmod(0o555)
        try:
            proc = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
        finally:
            for path in (folder, *subfolders):
                path.chmod(0o755)
    else:
        # Root ignores permissions: mount the folder read-only in a private mount namespace.
        if shutil.which("unshare") is None:
            pytest.skip("needs unshare(1) to make a read-only folder as root")
        script = 'mount --bind -o ro "$0" "$0" && exec "$@"'
        wrapped = ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script, str(folder), *command]
        probe = subprocess.run([*wrapped[:7], str(folder), "true"], capture_output=True, check=False)
        if probe.returncode != 0:
            pytest.skip(f"cannot mount a read-only folder here: {probe.stderr.decode()[:200]}")
        proc = subprocess.run(wrapped, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    return {name: (status, err) for name, (status, err) in json.loads(proc.stdout).items()}


@pytest.fixture(scope="module")
def read_only_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, tuple[int, str]]]:
    """``armsdyn run`` of richardson.toml and of the STUDY into a read-only folder (one subfolder each).

    One new process for both: the folder must be read-only for it alone (a mount namespace as
    root), and a second process would only add its imports.
    """
    base = tmp_path_factory.mktemp("read_only")
    ro = base / "ro"
    configs = {"richardson": CONFIGS / "richardson.toml", "study": write_config(base, STUDY)}
    for name in configs:
        (ro / name).mkdir(parents=True)
    commands = {name: ["run", str(path), "--out", str(ro / name / "r")] for name, path in configs.items()}
    return ro, _run_read_only(ro, commands)


@pytest.mark.parametrize("config", ["richardson", "study"])
def test_out_on_a_read_only_folder_is_a_message_before_any_run(
    read_only_runs: tuple[Path, dict[str, tuple[int, str]]], config: str
) -> None:
    ro, runs = read_only_runs
    status, err = runs[config]
    assert status == 2, err
    line = _one_line_error(err)
    assert "is the folder writable?" in line
    assert "scenarios of" not in err, "must fail before running anything"
    assert list((ro / config).iterdir()) == []


STUDY = """
[time]
final = 20
step = 0.0625
saveper = 1
[sensitivity]
method = "latin"
samples = 64
seed = 7
[[sensitivity.parameters]]
name = "grievance g"
bounds = [0.5, 2.0]
[[sensitivity.parameters]]
name = "fatigue coefficient a"
bounds = [0.8, 1.6]
[[sensitivity.outputs]]
variable = "arms X"
aggregate = "final"
"""


@pytest.fixture(scope="module")
def study_sizes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, int]:
    """Sizes of the files of the STUDY's results folder, by path in the folder."""
    folder = tmp_path_factory.mktemp("sizes")
    out = folder / "out"
    assert main(["run", str(write_config(folder, STUDY)), "--out", str(out), "--chunk-size", "16"]) == 0
    return {str(p.relative_to(out)): p.stat().st_size for p in out.rglob("*") if p.is_file()}


@pytest.mark.parametrize(
    "fails_at", ["a chunk", "results.nc", "sensitivity/ensemble.nc", "sensitivity/indices.nc", "the largest figure"]
)
def test_a_nearly_full_disk_at_any_file_is_a_message(
    tmp_path: Path, study_sizes: dict[str, int], fails_at: str
) -> None:
    # A file-size limit just below a file's size fails the write of that file (or
    # an earlier, larger one): a study chunk, results.nc, the ensemble, a figure.
    # Every one is a message, never a traceback, and leaves no results folder.
    figures = {k: v for k, v in study_sizes.items() if k.startswith("figures/")}
    limit = {"a chunk": 2_000, "the largest figure": max(figures.values(), default=0)}.get(fails_at)
    limit = (limit or study_sizes[fails_at]) - 1
    config = write_config(tmp_path, STUDY)
    out = tmp_path / "results" / "study"
    proc = run_limited(limit, "run", config, "--out", out, "--chunk-size", "16", "--workers", "1")
    assert proc.returncode == 2, proc.stderr
    line = _one_line_error(proc.stderr)
    assert "could not write" in line
    assert not out.exists()
    # The message names the file that did not fit: the first one written that is larger than the limit.
    if fails_at == "a chunk":
        assert re.search(r"\.study/chunk-\d{6}\.nc: could not write this chunk \(", line), line
        assert "--resume" in line
    else:
        named = re.search(rf"{re.escape(str(out))}: could not write (\S+) \(", line)
        assert named, line
        assert study_sizes[named.group(1)] > limit, line
    # Nothing half-written is left anywhere: no partial chunk, no partial results folder.
    assert not [p for p in tmp_path.rglob("*") if ".partial" in p.name], sorted(tmp_path.rglob("*"))


@pytest.fixture(scope="module")
def phase_portrait_only(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, int]]:
    """Richardson's experiment drawing only its phase portrait, whose PDF is written after results.nc
    and is larger than it; with the sizes of its results folder's files."""
    folder = tmp_path_factory.mktemp("portrait")
    text = (CONFIGS / "richardson.toml").read_text(encoding="utf-8")
    text = re.sub(r'\[\[figures\]\]\nkind = "time_series".*?(?=\[\[figures\]\])', "", text, flags=re.S)
    text = text.replace('model = "../models/', f'model = "{(ROOT / "models").as_posix()}/')
    assert text.count("[[figures]]") == 1
    config = folder / "portrait.toml"
    config.write_text(text, encoding="utf-8")
    assert main(["run", str(config), "--out", str(folder / "out")]) == 0
    sizes = {str(p.relative_to(folder / "out")): p.stat().st_size for p in (folder / "out").rglob("*") if p.is_file()}
    return config, sizes


@pytest.mark.slow
def test_a_disk_filling_inside_a_compressed_pdf_stream_is_a_message(
    tmp_path: Path, phase_portrait_only: tuple[Path, dict[str, int]]
) -> None:
    # matplotlib writes a PDF's content as zlib streams; when the disk fills inside one, closing
    # the file flushes the broken stream again and raises zlib.error ("inconsistent stream state")
    # instead of the OSError. Limits across the PDF find that point; every one is a message.
    config, sizes = phase_portrait_only
    pdf = sizes["figures/phase_portrait.pdf"]
    before = max(v for k, v in sizes.items() if not k.startswith("figures/"))
    assert pdf > before, sizes  # the PDF is the first file a limit between the two stops
    seen = []
    for fraction in (0.8, 0.7, 0.9, 0.6, 0.5, 0.95):
        limit = int(before + fraction * (pdf - before))
        out = tmp_path / f"out-{limit}"
        proc = run_limited(limit, "run", config, "--out", out)
        assert proc.returncode == 2, proc.stderr
        line = _one_line_error(proc.stderr)
        assert f"{out}: could not write figures/phase_portrait.pdf (" in line, line
        assert line.endswith("nothing was written"), line
        assert not out.exists()
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(f".{out.name}")], sorted(tmp_path.iterdir())
        seen.append(line)
        if "while flushing" in line:  # zlib's own message: the error really came from the compressor
            break
    else:
        pytest.fail("no limit made matplotlib's compressor fail (zlib.error):\n" + "\n".join(seen))


def test_an_unreachable_scheduler_fails_fast_with_a_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("distributed", reason="Dask distributed is not installed")
    # A quarter of a second instead of the 5 the runner gives a real scheduler: the test then waits
    # less (nobody listens, so no timeout is too short), and a timeout not passed on to Dask (its
    # own is 30 s) fails it all the same.
    monkeypatch.setattr(armsdyn.runner, "CONNECT_TIMEOUT", 0.25)
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = write_config(tmp_path, STUDY)
    start = time.monotonic()
    code = main(["run", str(config), "--out", str(tmp_path / "out"), "--scheduler", f"tcp://127.0.0.1:{port}"])
    elapsed = time.monotonic() - start
    assert code == 2
    line = _one_line_error(capsys.readouterr().err)
    assert f"tcp://127.0.0.1:{port}: cannot reach the Dask scheduler within 0.25 s" in line
    assert elapsed < 15, f"took {elapsed:.0f} s"
    assert not (tmp_path / "out").exists()


def test_a_truncated_chunk_is_run_again_on_resume(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path, STUDY)
    whole = tmp_path / "whole"
    assert main(["run", str(config), "--out", str(whole), "--chunk-size", "16", "--workers", "1"]) == 0
    # An interrupted study: its chunk store, with one chunk cut short (as a crash without fsync can leave it).
    out = tmp_path / "resumed"
    store = tmp_path / ".resumed.study"
    run_study(armsdyn.load_config(config), store=store, chunk_size=16, workers=1)
    chunk = store / "chunk-000001.nc"
    chunk.write_bytes(chunk.read_bytes()[:300])
    capsys.readouterr()
    assert main(["run", str(config), "--out", str(out), "--chunk-size", "16", "--workers", "1", "--resume"]) == 0
    err = capsys.readouterr().err
    assert "chunk-000001.nc: damaged chunk" in err
    assert "Traceback" not in err
    assert not store.exists()
    with (
        xr.open_dataset(whole / "sensitivity" / "ensemble.nc") as a,
        xr.open_dataset(out / "sensitivity" / "ensemble.nc") as b,
    ):
        xr.testing.assert_identical(a.load(), b.load())


def test_two_forced_studies_at_once_the_second_is_refused(tmp_path: Path) -> None:
    # Deterministic: this process holds the lock as a running study does (its chunk store half
    # written), so the second run meets it however fast the first would have been.
    from armsdyn.output import locked

    config = write_config(tmp_path, STUDY)
    out = tmp_path / "out"
    store = tmp_path / ".out.study"
    store.mkdir()
    (store / "plan.json").write_text("{}")
    (store / "chunk-000000.nc").write_bytes(b"a running study's chunk")
    args = ["run", str(config), "--out", str(out), "--force", "--workers", "1"]
    with locked(out):
        second = Child.start(*args).result()  # another process, as a second armsdyn run is
    assert second.returncode == 2
    line = _one_line_error(second.stderr)
    assert "another armsdyn run is writing this results folder" in line
    assert "scenarios of" not in second.stderr, "must be refused before running anything"
    assert (store / "chunk-000000.nc").read_bytes() == b"a running study's chunk", "--force touched the store"
    assert not out.exists()
    # Once the lock is free, the same command runs and clears the store it replaces.
    (store / "plan.json").unlink()
    (store / "chunk-000000.nc").unlink()
    done = call_cli(*args)
    assert done.returncode == 0, done.stderr
    complete(out)
    assert not store.exists()


def test_figure_names_with_dots_get_their_own_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    figures = "".join(
        f'[[figures]]\nkind = "time_series"\nname = "{name}"\nvariables = ["{var}"]\n'
        for name, var in (("arms.x", "arms X"), ("arms.y", "arms Y"))
    )
    out = tmp_path / "out"
    assert main(["run", str(write_config(tmp_path, figures)), "--out", str(out)]) == 0
    names = sorted(p.name for p in (out / "figures").iterdir())
    assert names == sorted(f"arms.{v}.{ext}" for v in "xy" for ext in ("md", "pdf", "png", "svg"))
    assert (out / "figures" / "arms.x.pdf").read_bytes() != (out / "figures" / "arms.y.pdf").read_bytes()
    # Names that differ only in case would share files on macOS or Windows: refused.
    clash = figures.replace('name = "arms.y"', 'name = "ARMS.x"')
    assert main(["check", str(write_config(tmp_path, clash, name="clash"))]) == 2
    line = _one_line_error(capsys.readouterr().err)
    assert "figures[1].name: figure name 'ARMS.x' gives the same files as figures[0]" in line


def _calibration_with(tmp_path: Path, rows: dict[int, str], method: str) -> Path:
    lines = (ROOT / "models" / "data" / "richardson_1909_1913.csv").read_text().splitlines()
    edited = [rows.get(int(line.split(",")[0]), line) if line[:1].isdigit() else line for line in lines]
    data = tmp_path / "data.csv"
    data.write_text("\n".join(line for line in edited if line) + "\n")
    text = (
        (CONFIGS / "calibrate_richardson_1909.toml")
        .read_text()
        .replace('"../models/data/richardson_1909_1913.csv"', f'"{data.as_posix()}"')
        .replace('"../models/richardson.mdl"', f'"{(ROOT / "models" / "richardson.mdl").as_posix()}"')
        .replace('method = "richardson_combined"', f'method = "{method}"')
    )
    if method == "trajectory":
        text += '[calibration.parameters]\n"defence coefficient k" = { initial = 0.1, bounds = [0, 3] }\n'
    config = tmp_path / "cal.toml"
    config.write_text(text)
    return config


def test_calibration_data_with_gaps_or_negative_values(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Richardson's estimator works on consecutive years: a missing year is an error naming it.
    gap = _calibration_with(tmp_path, {1911: ""}, "richardson_combined")
    assert main(["calibrate", str(gap), "--out", str(tmp_path / "a")]) == 2
    line = _one_line_error(capsys.readouterr().err)
    assert "gaps in the years used: no rows for 1911" in line
    assert 'method = "trajectory"' in line
    # So is a year where one series is empty.
    empty = _calibration_with(tmp_path, {1910: "1910,50.9,,62.0,23.4"}, "richardson_combined")
    assert main(["calibrate", str(empty), "--out", str(tmp_path / "b")]) == 2
    assert "'russia' missing in 1910" in _one_line_error(capsys.readouterr().err)
    # Trajectory matching fits the observed years: gaps and negative values are warnings naming the years.
    odd = _calibration_with(tmp_path, {1911: "", 1912: "1912,-63.2,81.8,68.2,25.5"}, "trajectory")
    assert main(["calibrate", str(odd), "--out", str(tmp_path / "c")]) == 0
    err = capsys.readouterr().err
    assert "armsdyn: warning: " in err
    assert "no rows for 1911" in err
    assert "negative values: 'france' in 1912" in err
    # The unedited data give neither.
    clean = _calibration_with(tmp_path, {}, "richardson_combined")
    assert main(["calibrate", str(clean), "--out", str(tmp_path / "d")]) == 0
    assert "warning" not in capsys.readouterr().err


@pytest.mark.slow
def test_a_killed_scheduler_is_a_message_and_the_study_resumes(tmp_path: Path) -> None:
    pytest.importorskip("distributed", reason="Dask distributed is not installed")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    address = f"tcp://127.0.0.1:{port}"
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "start_new_session": True}
    scheduler = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "distributed.cli.dask_scheduler",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--no-dashboard",
        ],
        **quiet,
    )
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "distributed.cli.dask_worker",
            address,
            "--nworkers",
            "1",
            "--nthreads",
            "1",
            "--no-dashboard",
        ],
        **quiet,
    )
    config = write_config(tmp_path, STUDY)  # four chunks of 16 runs
    out = tmp_path / "out"
    store = tmp_path / ".out.study"
    args = ["run", str(config), "--out", str(out), "--chunk-size", "16"]
    study = None
    try:
        # The scheduler answers before the study asks for it (the study gives it CONNECT_TIMEOUT).
        deadline = time.monotonic() + 120
        while scheduler.poll() is None and time.monotonic() < deadline:
            with socket.socket() as s, contextlib.suppress(OSError):
                s.connect(("127.0.0.1", port))
                break
            time.sleep(0.1)
        # The study waits after writing its first chunk, with the next ones on the cluster; the
        # scheduler dies there, and then the study goes on.
        study = reach("after a study's first chunk is written", *args, "--scheduler", address)
        os.killpg(scheduler.pid, signal.SIGKILL)
        scheduler.wait()
        lost = study.result(timeout=120)
    finally:
        if study is not None:
            study.kill()
        for proc in (scheduler, worker):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert lost.returncode == 2, lost.stderr
    line = _one_line_error(lost.stderr)
    assert f"{address}: lost the Dask scheduler while the study ran" in line
    assert "--resume" in line
    assert not out.exists()
    # The one chunk finished before the loss is kept: whichever the cluster finished first (its
    # worker may take the second chunk in flight before the first: seen on a loaded machine).
    assert len(list(store.glob("chunk-*.nc"))) == 1, sorted(store.iterdir())
    resumed = call_cli(*args, "--resume", "--workers", "1")
    assert resumed.returncode == 0, resumed.stderr
    complete(out)
