"""Model files, caches and output folders are untrusted: nothing in them runs, nothing of the user's is deleted.

Every hostile model below tries to create a marker file through a different
way into PySD's generated code. Each one goes through every command that reads
a model; none may create the marker, and each must end in a one-line error.
"""

from __future__ import annotations

import os
import stat
from dataclasses import replace
from pathlib import Path

import pytest

import armsdyn
from armsdyn import ModelError, ResultsError
from armsdyn.cli import main
from armsdyn.ensemble import compile_model
from armsdyn.model import load_model
from armsdyn.safety import check_translation
from tests.conftest import MODELS, call_cli, write_config

PAYLOAD = "__import__('pathlib').Path({marker!r}).touch()"

_MDL_TAIL = """
y = INTEG(x, 0)
\t~\tunits
\t~\ta stock
\t|

INITIAL TIME = 0 ~ Year ~ |
FINAL TIME = 1 ~ Year ~ |
TIME STEP = 0.5 ~ Year ~ |
SAVEPER = TIME STEP ~ Year ~ |
"""

HOSTILE_MDL = {
    "documentation": 'x = 1 ~ units ~ innocent """; {payload}; """ |',
    "units": 'x = 1 ~ u"""; {payload}; """ ~ doc |',
    "lookup range": "tbl([({payload} or 0,0)-(10,10)],(0,0),(10,10)) ~ ~ |\nx = tbl(Time) ~ units ~ |",
    "WITH LOOKUP range": "x = WITH LOOKUP(Time, ([({payload} or 0,0)-(10,10)],(0,0),(10,10))) ~ units ~ |",
    "subscript element": "s: A, B'] ; {payload} ; ['C ~ ~ |\nx = 1 ~ units ~ |",
    "subscript range name": "s'] ; {payload} ; [': A, B ~ ~ |\nx = 1 ~ units ~ |",
    "macro documentation": (
        ':MACRO: EVIL(a)\nEVIL = a ~ u ~ d"""; {payload}; """ |\n:END OF MACRO:\nx = EVIL(1) ~ units ~ |'
    ),
    "variable name": '"x""""; {payload}; """" = 1 ~ units ~ |\nx = 1 ~ units ~ |',
}

_XMILE = """<?xml version="1.0" encoding="utf-8"?>
<xmile xmlns="http://docs.oasis-open.org/xmile/ns/XMILE/v1.0" version="1.0">
  <header><vendor>test</vendor><product version="1">test</product></header>
  <sim_specs method="Euler" time_units="Year"><start>0</start><stop>1</stop><dt>0.5</dt></sim_specs>
  {dims}
  <model><variables>
    <stock name="y"><eqn>0</eqn><inflow>x</inflow></stock>
    {variable}
  </variables></model>
</xmile>
"""

HOSTILE_XMILE = {
    "xmile doc": (
        "",
        '<flow name="x"><doc>a&quot;&quot;&quot;; {payload}; &quot;&quot;&quot;</doc><eqn>1</eqn></flow>',
    ),
    "xmile units": ("", '<flow name="x"><eqn>1</eqn><units>u&quot;&quot;&quot;; {payload}; """</units></flow>'),
    "xmile gf scale": (
        "",
        '<flow name="x"><eqn>TIME</eqn><gf><xscale min="{payload}" max="1"/><yscale min="0" max="1"/>'
        "<ypts>0,1</ypts></gf></flow>",
    ),
    "xmile element name": (
        '<dimensions><dim name="s"><elem name="A\'] ; {payload} ; [\'"/></dim></dimensions>',
        '<flow name="x"><eqn>1</eqn></flow>',
    ),
    "xmile attribute": ("", '<flow name="x&quot;&quot;&quot;; {payload}; &quot;&quot;&quot;"><eqn>1</eqn></flow>'),
}


def _hostile(folder: Path, case: str, marker: Path) -> Path:
    payload = PAYLOAD.format(marker=str(marker))
    if case in HOSTILE_MDL:
        text = "{UTF-8}\n" + HOSTILE_MDL[case].replace("{payload}", payload) + "\n" + _MDL_TAIL
        path = folder / "hostile.mdl"
    else:
        dims, variable = HOSTILE_XMILE[case]
        quoted = payload.replace("'", "&apos;")
        text = _XMILE.format(dims=dims.replace("{payload}", quoted), variable=variable.replace("{payload}", quoted))
        path = folder / "hostile.xmile"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("case", [*HOSTILE_MDL, *HOSTILE_XMILE])
def test_a_hostile_model_runs_no_code_through_any_command(
    tmp_path: Path, case: str, capsys: pytest.CaptureFixture[str]
) -> None:
    marker = tmp_path / "MARKER"
    folder = tmp_path / "models"
    folder.mkdir()
    model = _hostile(folder, case, marker)
    config = write_config(tmp_path, "[time]\nfinal = 1\nstep = 0.5\nsaveper = 0.5\n", model=model)
    commands = [
        ["describe", str(model)],
        ["models", str(folder)],
        ["check", str(config)],
        ["run", str(config), "--out", str(tmp_path / "out")],
        ["analyse", str(config)],
    ]
    for argv in commands:
        status = main(argv)
        err = capsys.readouterr().err
        assert not marker.exists(), f"{case}: 'armsdyn {argv[0]}' ran the model's code"
        assert status == 2, f"{case}: 'armsdyn {argv[0]}' exited {status}: {err}"
        assert str(model) in err
        assert err.count("\n") == 1, err
    with pytest.raises(ModelError):
        compile_model(model)
    assert not marker.exists()
    assert not (tmp_path / "out").exists()


def test_the_error_names_the_line_and_the_variable(tmp_path: Path) -> None:
    model = _hostile(tmp_path, "documentation", tmp_path / "MARKER")
    with pytest.raises(ModelError, match=r"hostile\.mdl:2: variable 'x': its documentation contains \"\"\""):
        load_model(model)
    model = _hostile(tmp_path, "lookup range", tmp_path / "MARKER")
    with pytest.raises(ModelError, match=r"hostile\.mdl:2: variable 'tbl': lookup range .* is not of the form"):
        load_model(model)


def test_pysd_parser_reads_model_literals_without_evaluating_them() -> None:
    # Even text that slips past the checks reaches PySD's parser only as literals.
    from pysd.translators.vensim import vensim_element

    load_model(MODELS / "richardson.mdl")  # installs the literal reader
    assert vensim_element.eval("(0,0),(10,1e3)") == ((0, 0), (10, 1000.0))
    with pytest.raises(ModelError, match="not a number, string or tuple"):
        vensim_element.eval("__import__('os').getcwd()")


def _cached(model: Path) -> Path:
    return load_model(model).translation


@pytest.fixture
def fresh_copy(tmp_path: Path) -> Path:
    """A copy of the Richardson model with a unique comment, so its cache entry is its own."""
    text = (MODELS / "richardson.mdl").read_text(encoding="utf-8")
    path = tmp_path / "richardson.mdl"
    path.write_text(text + f"\n{{ {tmp_path.name} }}\n", encoding="utf-8")
    return path


def _reload(model: Path) -> armsdyn.Model:
    armsdyn.model._loaded.clear()  # a new process would not have it in memory
    return load_model(model)


def test_a_tampered_cache_entry_is_translated_afresh_not_imported(tmp_path: Path, fresh_copy: Path) -> None:
    marker = tmp_path / "MARKER"
    translated = _cached(fresh_copy)
    with open(translated, "a", encoding="utf-8") as fh:
        fh.write(f"\n{PAYLOAD.format(marker=str(marker))}\n")
    model = _reload(fresh_copy)
    assert not marker.exists()
    assert "MARKER" not in model.translation.read_text()
    assert model.simulate({}, model.time, ["arms X"])["arms X"].size


def test_a_cache_entry_others_can_write_is_not_trusted(tmp_path: Path, fresh_copy: Path) -> None:
    marker = tmp_path / "MARKER"
    translated = _cached(fresh_copy)
    translated.parent.chmod(0o777)
    code = translated.read_text() + f"\n{PAYLOAD.format(marker=str(marker))}\n"
    translated.write_text(code)
    # Even with the recorded hash updated to match, others could have written it.
    import hashlib

    (translated.parent / "translation.sha256").write_text(hashlib.sha256(code.encode()).hexdigest() + "\n")
    _reload(fresh_copy)
    assert not marker.exists()
    assert not translated.parent.stat().st_mode & stat.S_IWOTH


@pytest.mark.skipif(not hasattr(os, "getuid") or os.getuid() != 0, reason="needs root to plant another user's entry")
def test_a_cache_entry_planted_by_another_user_is_refused(tmp_path: Path, fresh_copy: Path) -> None:
    translated = _cached(fresh_copy)
    armsdyn.model._loaded.clear()
    for path in (translated.parent, *translated.parent.iterdir()):
        os.chown(path, 65534, 65534)
    with pytest.raises(ModelError, match=r"owned by another user.*not yours to replace"):
        load_model(fresh_copy)


def test_generated_code_that_reaches_for_the_interpreter_is_refused(tmp_path: Path) -> None:
    for code in (
        "import os\n",
        "x = (lambda: 0).__globals__\n",
        "open('f')\n",
        "import numpy as np\nnp.load('x')\n",
        # Writing or removing files through the objects a translation may hold (pathlib, pandas, numpy).
        "from pathlib import Path\nPath('x').write_text('y')\n",
        "from pathlib import Path\nPath('x').unlink()\n",
        "import pandas as pd\npd.DataFrame().to_csv('x')\n",
        "import numpy as np\nnp.zeros(1).tofile('x')\n",
    ):
        module = tmp_path / "m.py"
        module.write_text(code)
        with pytest.raises(ModelError, match="was not run"):
            check_translation(module, tmp_path / "m.mdl")


# --------------------------------------------------------------------------- --force


@pytest.fixture(scope="module")
def richardson_results() -> tuple[armsdyn.Experiment, object]:
    """configs/richardson.toml and its results, without its figures.

    What these tests check is which folder --force may replace, not the drawing: each figure
    would cost every write about a second of matplotlib (the replacing write of
    test_force_replaces_armsdyns_own_results_and_an_empty_folder, two of them, took 7 s of CPU).
    """
    experiment = armsdyn.load_config(Path(__file__).parents[1] / "configs" / "richardson.toml")
    experiment = replace(experiment, figures=())
    return experiment, armsdyn.run(experiment)


def test_force_refuses_a_folder_of_someone_elses_files(tmp_path: Path, richardson_results: tuple) -> None:
    experiment, ds = richardson_results
    target = tmp_path / "thesis"
    target.mkdir()
    (target / "chapter1.tex").write_text("years of work")
    with pytest.raises(ResultsError, match=r"without armsdyn's manifest\.json.*--force replaces only"):
        armsdyn.write_results(ds, experiment, target, force=True)
    assert (target / "chapter1.tex").read_text() == "years of work"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["thesis"]


def test_force_replaces_armsdyns_own_results_and_an_empty_folder(tmp_path: Path, richardson_results: tuple) -> None:
    experiment, ds = richardson_results
    (tmp_path / "empty").mkdir()
    armsdyn.write_results(ds, experiment, tmp_path / "empty", force=True)
    (tmp_path / "empty" / "stale.txt").write_text("not in the new results")
    (tmp_path / "empty" / "manifest.json").write_text('{"versions": {"armsdyn": "0"}}')
    armsdyn.write_results(ds, experiment, tmp_path / "empty", force=True)
    assert not (tmp_path / "empty" / "stale.txt").exists()
    assert (tmp_path / "empty" / "results.nc").is_file()


def test_force_on_the_cli_leaves_unrelated_files_intact(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "somewhere"
    target.mkdir()
    (target / "notes.txt").write_text("keep me")
    config = write_config(tmp_path, "[time]\nfinal = 1\n")
    assert main(["run", str(config), "--out", str(target), "--force"]) == 2
    assert "--force replaces only results folders armsdyn wrote" in capsys.readouterr().err
    assert (target / "notes.txt").read_text() == "keep me"


def test_a_symlinked_lock_is_not_followed(tmp_path: Path, richardson_results: tuple) -> None:
    experiment, ds = richardson_results
    precious = tmp_path / "precious.txt"
    precious.write_text("do not truncate")
    (tmp_path / ".out.lock").symlink_to(precious)
    with pytest.raises(ResultsError, match="symbolic link"):
        armsdyn.write_results(ds, experiment, tmp_path / "out")
    assert precious.read_text() == "do not truncate"
    assert not (tmp_path / "out").exists()


def test_a_study_store_with_other_files_is_not_deleted(tmp_path: Path) -> None:
    from armsdyn.runner import StoreError, remove_store

    store = tmp_path / ".out.study"
    store.mkdir()
    (store / "plan.json").write_text("{}")
    (store / "mine.txt").write_text("keep")
    with pytest.raises(StoreError, match="not a chunk store armsdyn wrote"):
        remove_store(store)
    assert (store / "mine.txt").exists()
    (store / "mine.txt").unlink()
    (store / "chunk-000000.nc").write_bytes(b"")
    remove_store(store)
    assert not store.exists()


# --------------------------------------------------------------------------- data files

# PySD writes the arguments of GET DIRECT/GET XLS into its generated code between quotes. In
# plain PySD, a file name ending in a backslash swallows the closing quote and the next argument
# becomes code: this model creates the marker when PySD translates and imports it.
_ESCAPING_ARGUMENTS = (
    "lk := GET DIRECT LOOKUPS('x\\\\', ' + str(Path(\"{marker}\").write_text(\"1\")) + ', ' + ', '+ \"\") #')"
)
_DATA_TAIL = """
\t~\tunits
\t~\tread from a file
\t|
y = INTEG({rate}, 0)
\t~\tunits
\t~\ta stock
\t|
INITIAL TIME = 0 ~ Year ~ |
FINAL TIME = 1 ~ Year ~ |
TIME STEP = 0.5 ~ Year ~ |
SAVEPER = TIME STEP ~ Year ~ |
"""


def _data_model(folder: Path, definition: str, rate: str) -> Path:
    path = folder / "reads_data.mdl"
    path.write_text("{UTF-8}\n" + definition + _DATA_TAIL.format(rate=rate), encoding="utf-8")
    return path


def _commands(model: Path, config: Path, out: Path) -> list[list[str]]:
    return [
        ["describe", str(model)],
        ["models", str(model.parent)],
        ["check", str(config)],
        ["run", str(config), "--out", str(out)],
        ["analyse", str(config)],
    ]


def test_data_file_arguments_that_would_escape_into_code_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    marker = tmp_path / "MARKER"
    folder = tmp_path / "models"
    folder.mkdir()
    model = _data_model(folder, _ESCAPING_ARGUMENTS.format(marker=marker), "lk(Time)")
    config = write_config(tmp_path, "", model=model)
    for argv in _commands(model, config, tmp_path / "out"):
        status = main(argv)
        err = capsys.readouterr().err
        assert not marker.exists(), f"'armsdyn {argv[0]}' ran the model's code"
        assert status == 2, f"'armsdyn {argv[0]}' exited {status}: {err}"
        assert "variable 'lk': GET DIRECT/XLS LOOKUPS argument" in err
        assert err.count("\n") == 1, err
    with pytest.raises(ModelError):
        compile_model(model)
    assert not marker.exists()
    assert not list(folder.glob("*.py"))


def test_backslashes_in_a_data_file_name_are_separators_never_code(tmp_path: Path) -> None:
    # Vensim's 'x\\' is the name x\, which would end PySD's raw string literal early; armsdyn reads
    # a backslash as Windows' folder separator, so the name is data/x.csv or a missing file x/.
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "k.csv").write_text("name,value\nk,3\n")
    model = _data_model(tmp_path, "k = GET DIRECT CONSTANTS('data\\\\k.csv', ',', 'B2')", "k")
    assert load_model(model).variable("k").default == 3.0
    model = _data_model(tmp_path, "k = GET DIRECT CONSTANTS('x\\\\', ',', 'B2')", "k")
    with pytest.raises(ModelError, match=r"a data file the model reads is missing: .*/x \(read by _ext_constant_k\)$"):
        load_model(model)


def test_a_model_folder_whose_name_would_escape_into_code_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The translation records data files by absolute path, so the folder's name is written into code.
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "MARKER"
    folder = tmp_path / 'x\' + str(Path("MARKER").write_text("1")) + r\''
    folder.mkdir()
    (folder / "k.csv").write_text("name,value\nk,3\n")
    model = _data_model(folder, "k = GET DIRECT CONSTANTS('k.csv', ',', 'B2')", "k")
    with pytest.raises(ModelError, match=r"the model's folder .* contains a quote"):
        load_model(model)
    assert not marker.exists()


def test_data_file_contents_are_read_as_data_never_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    marker = tmp_path / "MARKER"
    payload = PAYLOAD.format(marker=str(marker))
    folder = tmp_path / "models"
    folder.mkdir()
    # Text where numbers belong, formulas and Python in every cell: none of it may run.
    (folder / "series.csv").write_text(f'time,value\n0,1\n0.5,"{payload}"\n1,=1+1\n"{payload}",2\n')
    model = _data_model(folder, "series := GET DIRECT DATA('series.csv', ',', 'A', 'B2')", "series")
    config = write_config(tmp_path, 'engine = "pysd"\n', model=model)
    for argv in _commands(model, config, tmp_path / "out"):
        status = main(argv)
        err = capsys.readouterr().err
        assert not marker.exists(), f"'armsdyn {argv[0]}' ran the data file's code"
        assert status in (0, 2), err
    assert not marker.exists()


_FILE_RANGE_MODEL = """{UTF-8}
state:
\tGET DIRECT SUBSCRIPT('states.csv', ',', 'A2', 'A4', '')
\t~\t
\t~\tThe states, read from a file beside the model.
\t|
arms[state] = INTEG(growth[state], 1) ~ arms ~ Arms. |
growth[state] = 0.1 * arms[state] ~ arms/Year ~ Growth. |
INITIAL TIME = 0 ~ Year ~ |
FINAL TIME = 5 ~ Year ~ |
TIME STEP = 0.25 ~ Year ~ |
SAVEPER = 1 ~ Year ~ |
"""


@pytest.mark.parametrize(
    ("names", "refused"), [("USA\nRussia\nChina", False), ('USA\nRu"ssia\nChina', True)], ids=["plain", "quote"]
)
def test_a_subscript_range_read_from_a_file_is_data(tmp_path: Path, names: str, refused: bool) -> None:
    """GET DIRECT SUBSCRIPT is allowed; the element names it reads are checked like the model's own."""
    (tmp_path / "states.csv").write_text(f"state\n{names}\n")
    model = tmp_path / "m.mdl"
    model.write_text(_FILE_RANGE_MODEL)
    proc = call_cli("describe", model)
    if refused:
        assert proc.returncode == 2
        assert "read from a data file has element 'Ru\"ssia'" in proc.stderr
        assert "Traceback" not in proc.stderr
    else:
        assert proc.returncode == 0, proc.stderr
        assert "arms [state: USA, Russia, China]" in proc.stdout


def test_a_changed_range_file_is_read_again_not_served_from_the_cache(tmp_path: Path) -> None:
    """Subscript elements read from a file are written into the translation: a changed file is a new model.

    Checked with the loaded-model cache and with the translation cache on disk alone (the
    loaded models forgotten, as in a new process), and a cache entry whose record of range
    files is malformed is translated afresh rather than trusted.
    """
    states = tmp_path / "states.csv"
    states.write_text("state\nUSA\nRussia\nChina\n")
    model = tmp_path / "m.mdl"
    model.write_text(_FILE_RANGE_MODEL)
    assert load_model(model).variable("arms").dims == (("state", ("USA", "Russia", "China")),)
    states.write_text("state\nFrance\nGermany\nItaly\n")
    assert load_model(model).variable("arms").dims == (("state", ("France", "Germany", "Italy")),)
    armsdyn.model._loaded.clear()  # what a new process finds: the cache entry on disk only
    proc = call_cli("describe", model)
    assert proc.returncode == 0, proc.stderr
    assert "arms [state: France, Germany, Italy]" in proc.stdout
    entry = load_model(model).translation.parent
    (entry / "range_files.json").write_text('["not", "a", "record"]')
    states.write_text("state\nIndia\nPakistan\nChina\n")
    armsdyn.model._loaded.clear()
    proc = call_cli("describe", model)
    assert proc.returncode == 0, proc.stderr
    assert "arms [state: India, Pakistan, China]" in proc.stdout
