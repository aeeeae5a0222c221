"""Write a results folder atomically, with a manifest of its provenance.

The folder is built in a hidden temporary sibling and renamed into place only
when every file is complete, so a crash, a full disk or a kill leaves either
the earlier complete folder or none, never a half-written one. A lock file
beside the folder keeps two runs from writing the same folder at once.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime as dt
import errno
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
import zlib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import xarray as xr

from armsdyn.config import Experiment, load_config, parse_config
from armsdyn.errors import ResultsError
from armsdyn.figures import draw_figures, draw_study_figures
from armsdyn.metrics import compute_metrics
from armsdyn.model import Model, file_sha256, parse_model
from armsdyn.results import RESULTS_FILE
from armsdyn.sensitivity import reanalyse

try:
    import fcntl
except ImportError:  # Windows: no flock; the lock is then an exclusively created file
    fcntl = None  # type: ignore[assignment]

METRICS_FILE = "metrics.csv"
MANIFEST_FILE = "manifest.json"
FIGURES_DIR = "figures"
STUDY_DIR = "sensitivity"
ENSEMBLE_FILE = "ensemble.nc"
INDICES_FILE = "indices.nc"


def now() -> str:
    """The current UTC time, ISO 8601."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


#: Locks this process holds (absolute target path -> depth), so that nested uses do not deadlock.
_held: dict[Path, int] = {}


@contextlib.contextmanager
def locked(target: str | os.PathLike[str]) -> Iterator[None]:
    """Hold an exclusive lock on ``.NAME.lock`` beside `target`.

    The lock covers the results folder `target` and everything armsdyn keeps
    beside it (the ``.NAME.study`` chunk store of a sensitivity study). The
    folder's parent is created if missing. A process may take the same lock
    again while it holds it (e.g. the CLI for a whole run, then the writer).

    The lock file is opened without following symbolic links (a planted link
    must not let armsdyn write through it) and without truncating it. It is
    removed on release; a run that opened the file just before that removal
    notices that its lock is on a deleted file and retries, so two runs can
    never both believe they hold the lock.

    Raises
    ------
    ResultsError
        If another run holds the lock, or the folder is not writable.
    """
    target = Path(os.path.abspath(target))
    if target in _held:
        _held[target] += 1
        try:
            yield
        finally:
            _held[target] -= 1
        return
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        msg = f"{target.parent}: cannot create the results parent folder ({exc.strerror}); is it writable?"
        raise ResultsError(msg) from exc
    lock_path = target.parent / f".{target.name}.lock"
    flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    if fcntl is None:
        # Without flock a lock is a file that only one run can create; a run killed
        # while holding it leaves it behind, and the message says what to remove.
        flags |= os.O_EXCL
    while True:
        try:
            fd = os.open(lock_path, flags, 0o644)
        except FileExistsError:
            msg = (
                f"{target}: another armsdyn run is writing this results folder (or one was killed: "
                f"remove {lock_path} if none is running)"
            )
            raise ResultsError(msg) from None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                msg = f"{lock_path}: is a symbolic link; armsdyn's lock must be a plain file (remove the link)"
            else:
                msg = (
                    f"{target}: cannot create the lock file {lock_path.name} ({exc.strerror}); is the folder writable?"
                )
            raise ResultsError(msg) from exc
        try:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            msg = f"{target}: another armsdyn run is writing this results folder; wait for it to finish"
            raise ResultsError(msg) from None
        try:
            same = os.stat(lock_path, follow_symlinks=False).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # locked a file another run has just removed: try again
    _held[target] = 1
    try:
        yield
    finally:
        del _held[target]
        with contextlib.suppress(OSError):
            lock_path.unlink()
        os.close(fd)


_locked = locked


def is_results_folder(path: Path) -> bool:
    """True for an empty folder or one holding a manifest that armsdyn wrote.

    Only such folders may be replaced by ``--force``: anything else may hold a
    user's own files.
    """
    if path.is_symlink() or not path.is_dir():
        return False
    if not any(path.iterdir()):
        return True
    try:
        manifest = json.loads((path / MANIFEST_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(manifest, dict) and "armsdyn" in (manifest.get("versions") or {})


def refuse_existing(target: Path, *, force: bool) -> None:
    """Raise :class:`ResultsError` unless `target` is absent or may be replaced.

    With `force` an existing `target` is replaced only if armsdyn wrote it (see
    :func:`is_results_folder`); a file, a link or a folder of other files is
    refused even then.
    """
    target = Path(target)
    if not (target.exists() or target.is_symlink()):
        return
    if not force:
        msg = f"{target}: results folder already exists; pass --force to replace it, or --out to write elsewhere"
        raise ResultsError(msg)
    if not is_results_folder(target):
        what = "a symbolic link" if target.is_symlink() else "not a folder" if not target.is_dir() else None
        what = what or f"a folder without armsdyn's {MANIFEST_FILE} (it may hold your own files)"
        msg = (
            f"{target}: is {what}; --force replaces only results folders armsdyn wrote. "
            "Choose another --out, or remove it yourself"
        )
        raise ResultsError(msg)


@contextlib.contextmanager
def atomic_folder(target: str | os.PathLike[str], *, force: bool = False) -> Iterator[Path]:
    """Build a results folder in a hidden temporary sibling; swap it into place on success.

    Yields the temporary folder to fill. Under a lock beside `target`: leftovers
    of killed runs are cleaned up first, an existing `target` is refused unless
    `force`, and on any failure the temporary folder is removed and `target`
    keeps its earlier content (or stays absent).

    Raises
    ------
    ResultsError
        If the folder exists (without `force`), is locked by another run, or
        cannot be written (a full disk included).
    """
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        msg = f"{target.parent}: cannot create the results parent folder: {exc}"
        raise ResultsError(msg) from exc
    with _locked(target):
        _recover(target)
        refuse_existing(target, force=force)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
        try:
            yield tmp
            _replace(tmp, target)
        except (OSError, RuntimeError, zlib.error) as exc:
            # The netCDF library reports a full disk or a write error as a bare RuntimeError,
            # and a compressor that cannot write its output as zlib.error; neither names the file.
            failed = exc if isinstance(exc, WriteFailed) else None
            cause = failed.__cause__ if failed is not None else exc
            path = failed.path if failed is not None else getattr(exc, "filename", None)
            what = _shown(Path(path), tmp) if path else "results"
            reason = failed.reason if failed is not None else _one_line(exc)
            disk = not isinstance(cause, OSError) or cause.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)
            hint = "; is the disk full?" if disk else ""
            msg = f"{target}: could not write {what} ({reason}{hint}); nothing was written"
            raise ResultsError(msg) from exc
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


class WriteFailed(OSError):
    """Writing one file of a results folder failed (see :func:`writing`).

    Attributes
    ----------
    path : pathlib.Path
        The file that could not be written.
    reason : str
        What the writer reported, as one line.
    """

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"could not write {path} ({reason})")
        self.path = path
        self.reason = reason


_WRITE_ERRORS = (OSError, RuntimeError, zlib.error)


def _chain(exc: BaseException | None) -> list[BaseException]:
    """`exc` and the exceptions it was raised from or while handling, outermost first."""
    found: list[BaseException] = []
    while exc is not None and exc not in found:
        found.append(exc)
        exc = exc.__cause__ or exc.__context__
    return found


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


@contextlib.contextmanager
def writing(path: str | os.PathLike[str]) -> Iterator[None]:
    """Name `path` in the error if writing it fails (inside :func:`atomic_folder`).

    The netCDF library and compressors report a full disk without saying which
    file they were writing, and a writer cleaning up after a failed write may
    raise something else entirely (matplotlib's PDF writer: ``zlib.error`` or
    an ``AttributeError``). Within this block, a failure that is or follows an
    OS, netCDF or zlib error becomes a :class:`WriteFailed` naming `path` (for a
    folder, the file last written in it) and what went wrong.
    """
    try:
        yield
    except WriteFailed:
        raise
    except Exception as exc:
        failures = [e for e in _chain(exc) if isinstance(e, _WRITE_ERRORS)]
        if not failures:
            raise
        named = next((name for e in failures if (name := getattr(e, "filename", None))), None)
        reason = _one_line(failures[0])
        first = failures[-1]  # the error that started it: the full disk itself
        if first is not failures[0] and _one_line(first) != reason:
            reason = f"{reason}, after {_one_line(first)}"
        raise WriteFailed(Path(named) if named else _newest(Path(path)), reason) from first


def _newest(path: Path) -> Path:
    """The file last written in folder `path` (the one a failed writer was writing), else `path`."""
    with contextlib.suppress(OSError, ValueError):
        if path.is_dir():
            return max((p for p in path.rglob("*") if p.is_file()), key=lambda p: p.stat().st_mtime_ns)
    return path


def _shown(path: Path, tmp: Path) -> str:
    """A file as the user will know it: relative to the results folder if it is in it."""
    try:
        return str(Path(os.path.abspath(path)).relative_to(os.path.abspath(tmp)))
    except ValueError:
        return str(path)


def write_results(
    ds: xr.Dataset,
    experiment: Experiment,
    target: str | os.PathLike[str],
    *,
    force: bool = False,
    started: str | None = None,
    command: Sequence[str] | None = None,
    study: tuple[xr.Dataset, xr.Dataset] | None = None,
    provenance: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``results.nc``, ``metrics.csv``, ``figures/`` and ``manifest.json``.

    Parameters
    ----------
    ds : xarray.Dataset
        Results from :func:`armsdyn.run`.
    experiment : Experiment
        The experiment that produced them.
    target : path-like
        The results folder to create.
    force : bool
        Replace an existing folder; without it an existing folder is an error.
    started : str, optional
        ISO time the run started, for the manifest (default: now).
    command : sequence of str, optional
        The command line, for the manifest (default: ``sys.argv``).
    study : (xarray.Dataset, xarray.Dataset), optional
        A sensitivity study's ensemble and indices (see
        :func:`armsdyn.sensitivity.run_study`), written to ``sensitivity/`` with
        their figures in ``figures/``.
    provenance : mapping, optional
        How the study ran (e.g. its worker processes), recorded in the manifest.

    Returns
    -------
    pathlib.Path
        The results folder.

    Raises
    ------
    ResultsError
        If the folder exists (without `force`), is being written by another
        run, or cannot be written; nothing is left half-written.
    """
    started = started or now()
    with atomic_folder(target, force=force) as tmp:
        _fill(tmp, ds, experiment, started, command, study, provenance)
    return Path(target)


def _fill(
    folder: Path,
    ds: xr.Dataset,
    experiment: Experiment,
    started: str,
    command: Sequence[str] | None,
    study: tuple[xr.Dataset, xr.Dataset] | None,
    provenance: Mapping[str, Any] | None = None,
) -> None:
    with writing(folder / RESULTS_FILE):
        ds.to_netcdf(folder / RESULTS_FILE, engine="netcdf4")
    with writing(folder / METRICS_FILE):
        compute_metrics(ds).to_csv(folder / METRICS_FILE)
    with writing(folder / FIGURES_DIR):
        draw_figures(ds, experiment.figures, folder / FIGURES_DIR)
    if study is not None:
        ensemble, indices = study
        (folder / STUDY_DIR).mkdir()
        with writing(folder / STUDY_DIR / ENSEMBLE_FILE):
            ensemble.to_netcdf(folder / STUDY_DIR / ENSEMBLE_FILE, engine="netcdf4")
        with writing(folder / STUDY_DIR / INDICES_FILE):
            indices.to_netcdf(folder / STUDY_DIR / INDICES_FILE, engine="netcdf4")
        with writing(folder / FIGURES_DIR):
            draw_study_figures(ensemble, indices, experiment.sensitivity, folder / FIGURES_DIR)
    manifest = build_manifest(experiment, started=started, command=command)
    manifest["engine"] = {"scenarios": str(ds.attrs.get("engine", ""))}
    if study is not None:
        manifest["engine"]["study"] = {
            "engine": str(study[0].attrs.get("engine", "")),
            "runs": int(study[0].sizes["run"]),
            **{k: str(v) for k, v in (provenance or {}).items()},
        }
    manifest["files"] = {str(p.relative_to(folder)): file_sha256(p) for p in sorted(folder.rglob("*")) if p.is_file()}
    with writing(folder / MANIFEST_FILE), open(folder / MANIFEST_FILE, "w", encoding="utf-8") as fh:
        json.dump(manifest, fh, indent=2, sort_keys=False)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())


def _recover(target: Path) -> None:
    """Undo what a run killed mid-write left beside `target` (called under the lock).

    A killed run can leave a hidden ``.NAME.partial-*`` folder (never complete:
    delete it) and, on systems without an atomic exchange, a ``.NAME.old-*``
    folder holding the earlier complete results while `target` is missing
    (put it back).
    """
    for partial in target.parent.glob(f".{target.name}.partial-*"):
        shutil.rmtree(partial, ignore_errors=True)
    for old in sorted(target.parent.glob(f".{target.name}.old-*")):
        if not target.exists():
            old.rename(target)
        else:
            shutil.rmtree(old, ignore_errors=True)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths with Linux's renameat2(RENAME_EXCHANGE); False if unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError, TypeError):  # not Linux (Windows cannot load the C library this way)
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(a))


def _replace(tmp: Path, target: Path) -> None:
    if not target.exists():
        tmp.rename(target)
        return
    if _exchange(tmp, target):
        shutil.rmtree(tmp, ignore_errors=True)  # tmp now holds the earlier results
        return
    # No atomic exchange: two renames. A kill between them leaves the earlier
    # results in .NAME.old-*, which _recover puts back on the next run.
    old = target.parent / f".{target.name}.old-{os.getpid()}"
    target.rename(old)
    try:
        tmp.rename(target)
    except OSError:
        old.rename(target)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def git_commit(folder: Path) -> str | None:
    """The git commit checked out in `folder`, with ``-dirty`` if changed; None outside git."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain"], cwd=folder, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{head}-dirty" if dirty else head


#: A subscript range read from a file (GET DIRECT/XLS SUBSCRIPT) is read only when the model is
#: translated, so it is not among the loaded model's external data; the model text shows whether to look.
_FILE_SUBSCRIPT = re.compile(r"GET[\s_]+(?:DIRECT|XLS|123)[\s_]+SUBSCRIPT", re.IGNORECASE)


def model_data_files(model: Model) -> list[dict[str, str]]:
    """Every data file a model reads, with its SHA-256, for a manifest.

    The files are those PySD reads when it loads the model (GET DIRECT and GET
    XLS data, constants and lookups, resolved against the model's own folder)
    plus the files subscript ranges are read from when it is translated. A
    replication archive's manifest pins them: the same config and model with
    other data gives other results.

    Parameters
    ----------
    model : Model
        A loaded model.

    Returns
    -------
    list of dict
        One ``{"name", "path", "sha256"}`` per file, sorted by name: ``name`` is
        the path relative to the model's folder (as the model names it, with
        ``/``), ``path`` the absolute path read. A file that cannot be read has
        ``sha256`` ``"unreadable: <reason>"`` rather than failing a run that
        already read it.
    """
    home = model.path.resolve().parent
    paths: set[Path] = {Path(p) for p in model.data_hashes}  # what PySD read at load
    text = model.path.read_text(encoding="utf-8", errors="replace")
    if _FILE_SUBSCRIPT.search(text):
        for section in parse_model(model.path).sections:
            for subscript in section.subscripts:
                spec = subscript.subscripts
                if isinstance(spec, dict) and isinstance(spec.get("file"), str):
                    paths.add(home / spec["file"].replace("\\", "/"))
    files = []
    for path in {Path(os.path.abspath(home / p)) for p in paths}:
        try:
            name = path.relative_to(home).as_posix()
        except ValueError:  # outside the model's folder: only the full path names it
            name = path.as_posix()
        try:
            digest = file_sha256(path)
        except OSError as exc:
            digest = f"unreadable: {exc.strerror or exc}"
        files.append({"name": name, "path": str(path), "sha256": digest})
    return sorted(files, key=lambda f: f["name"])


def build_manifest(experiment: Experiment, *, started: str, command: Sequence[str] | None = None) -> dict[str, Any]:
    """Provenance of a run: config, model and the data files it reads, versions, commit, command and times."""
    folder = experiment.config_path.parent if experiment.config_path else Path.cwd()
    return {
        "experiment": experiment.name,
        "description": experiment.description,
        "config": {
            "path": str(experiment.config_path) if experiment.config_path else None,
            "sha256": experiment.config_sha256,
            "text": experiment.config_text,
        },
        "model": {
            "path": str(experiment.model.path),
            "sha256": experiment.model.sha256,
            "data_files": model_data_files(experiment.model),
        },
        "time": {
            "initial": experiment.time.initial,
            "final": experiment.time.final,
            "step": experiment.time.step,
            "saveper": experiment.time.saveper,
            "units": experiment.time.units,
        },
        "scenarios": [s.name for s in experiment.scenarios],
        "versions": {
            "python": sys.version.split()[0],
            **{
                dist: _version(dist)
                for dist in (
                    "armsdyn",
                    "pysd",
                    "numpy",
                    "xarray",
                    "scipy",
                    "matplotlib",
                    "networkx",  # lays out the model_diagram figure
                    "netCDF4",
                    "SALib",
                    "numba",
                    "llvmlite",
                    "distributed",
                )
            },
        },
        "git_commit": git_commit(folder),
        "command": list(command if command is not None else sys.argv),
        "started": started,
        "finished": now(),
    }


def redraw_figures(folder: str | os.PathLike[str], config: str | os.PathLike[str] | None = None) -> list[Path]:
    """Redraw a results folder's figures from its saved results, without running any model.

    A sensitivity study is re-analysed too: its indices are recomputed from the
    saved runs with the config's settings (e.g. another confidence level of the
    same design) and ``sensitivity/indices.nc`` is replaced.

    Parameters
    ----------
    folder : path-like
        A results folder written by :func:`write_results`.
    config : path-like, optional
        The config whose ``[[figures]]`` to draw; by default the config text
        recorded in the folder's manifest.

    Returns
    -------
    list of pathlib.Path
        The figure files now in ``figures/``.

    Raises
    ------
    ResultsError
        If the folder is not a complete results folder or cannot be updated.
    ConfigError
        If the config is invalid.
    """

    folder = Path(folder)
    manifest_path = folder / MANIFEST_FILE
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        msg = f"{folder}: not a complete results folder (cannot read {MANIFEST_FILE}: {exc})"
        raise ResultsError(msg) from exc
    if config is not None:
        experiment = load_config(config)
    else:
        recorded = manifest["config"]
        source = Path(recorded["path"]) if recorded.get("path") else manifest_path
        experiment = parse_config(tomllib.loads(recorded["text"]), text=recorded["text"], source=source)
    with _locked(folder), xr.open_dataset(folder / RESULTS_FILE) as ds:
        ds = ds.load()
        study = None
        if experiment.sensitivity is not None and (folder / STUDY_DIR / INDICES_FILE).is_file():
            with (
                xr.open_dataset(folder / STUDY_DIR / ENSEMBLE_FILE) as ensemble,
                xr.open_dataset(folder / STUDY_DIR / INDICES_FILE) as indices,
            ):
                study = (ensemble.load(), indices.load())

            try:
                study = (study[0], reanalyse(study[0], experiment.sensitivity))
            except KeyError as exc:
                msg = f"{folder}: cannot re-analyse the study: {exc.args[0]}"
                raise ResultsError(msg) from exc
        tmp = Path(tempfile.mkdtemp(prefix=".figures.partial-", dir=folder))
        try:
            draw_figures(ds, experiment.figures, tmp)
            if study is not None:
                draw_study_figures(*study, experiment.sensitivity, tmp)
            _replace(tmp, folder / FIGURES_DIR)
            if study is not None:
                staged_indices = folder / STUDY_DIR / f".{INDICES_FILE}.partial"
                study[1].to_netcdf(staged_indices, engine="netcdf4")
                os.replace(staged_indices, folder / STUDY_DIR / INDICES_FILE)
            manifest["files"] = {
                str(p.relative_to(folder)): file_sha256(p)
                for p in sorted(folder.rglob("*"))
                if p.is_file() and p.name != MANIFEST_FILE and not p.name.startswith(".")
            }
            manifest["figures_redrawn"] = now()
            staged = folder / f".{MANIFEST_FILE}.partial"
            staged.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
            os.replace(staged, manifest_path)
        except OSError as exc:
            msg = f"{folder}: could not redraw figures ({exc}); the earlier figures are kept"
            raise ResultsError(msg) from exc
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return sorted((folder / FIGURES_DIR).iterdir())
