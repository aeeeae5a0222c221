"""Model loading: metadata, the translation cache, Vensim/XMILE parity, errors."""

from __future__ import annotations

import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from armsdyn import ModelError, TimeSettings, load_model
from armsdyn.ensemble import FallbackWarning
from tests.conftest import MODELS, call_cli


def test_metadata_lists_constants_stocks_and_flows_with_units_and_docs() -> None:
    model = load_model(MODELS / "richardson.mdl")
    stocks = {v.name for v in model.of_kind("stock")}
    flows = {v.name for v in model.of_kind("flow")}
    constants = {v.name: v for v in model.of_kind("constant")}
    assert stocks == {"arms X", "arms Y"}
    assert flows == {"arming rate X", "arming rate Y"}
    assert set(constants) >= {"defence coefficient k", "fatigue coefficient a", "grievance g", "initial arms X"}
    assert constants["defence coefficient k"].units == "1/Year"
    assert constants["initial arms X"].default is not None
    for var in model.variables.values():
        assert var.units, f"{var.name} has no units"
        assert var.doc, f"{var.name} has no documentation"
    assert model.time.units == "Year"
    assert model.time.step > 0


def test_lookup_accepts_python_names_and_suggests_close_matches() -> None:
    model = load_model(MODELS / "richardson.mdl")
    assert model.variable("arms_x").name == "arms X"
    assert model.variable("ARMS X").name == "arms X"
    with pytest.raises(KeyError, match="did you mean 'fatigue coefficient a'"):
        model.variable("fatige coefficient a")


def test_vensim_and_xmile_versions_give_equal_results() -> None:
    mdl = load_model(MODELS / "richardson.mdl")
    xmile = load_model(MODELS / "richardson.xmile")
    assert {v.name for v in mdl.variables.values()} == {v.name for v in xmile.variables.values()}
    time = TimeSettings(0.0, 20.0, 1 / 32, 0.25)
    names = ["arms X", "arms Y", "arming rate X", "arming rate Y"]
    rng = np.random.default_rng(7)
    for _ in range(3):
        params = {v.name: float(rng.uniform(0.1, 1.5)) for v in mdl.of_kind("constant")}
        a = mdl.simulate(params, time, names)
        b = xmile.simulate(params, time, names)
        for name in names:
            np.testing.assert_allclose(a[name], b[name], rtol=1e-12, err_msg=name)


def test_translation_happens_outside_the_model_folder_and_is_reused(richardson_mdl: Path) -> None:
    first = load_model(richardson_mdl)
    assert not list(richardson_mdl.parent.glob("*.py")), "PySD output leaked next to the model"
    assert first.translation.is_file()
    assert richardson_mdl.parent not in first.translation.parents
    stamp = first.translation.stat().st_mtime_ns
    # A fresh Model object for the same content reuses the cached translation.
    from armsdyn.model import _loaded

    _loaded.clear()
    second = load_model(richardson_mdl)
    assert second.translation == first.translation
    assert second.translation.stat().st_mtime_ns == stamp


def test_edited_model_is_translated_again(richardson_mdl: Path) -> None:
    time = TimeSettings(0.0, 5.0, 0.125, 1.0)
    before = load_model(richardson_mdl)
    old = before.simulate({}, time, ["arms X"])["arms X"]
    text = richardson_mdl.read_text()
    edited = re.sub(r"(initial arms X=\s*)1\b", r"\g<1>7", text)
    assert edited != text
    richardson_mdl.write_text(edited)
    after = load_model(richardson_mdl)
    assert after.translation != before.translation
    assert after.variable("initial arms X").default == 7.0
    new = after.simulate({}, time, ["arms X"])["arms X"]
    assert new[0] == 7.0 != old[0]


def test_missing_model_file() -> None:
    with pytest.raises(ModelError, match=r"nowhere\.mdl: model file not found"):
        load_model("nowhere.mdl")


def test_unsupported_suffix(tmp_path: Path) -> None:
    path = tmp_path / "model.txt"
    path.write_text("x = 1")
    with pytest.raises(ModelError, match=r"unsupported model file type '\.txt'.*\.mdl"):
        load_model(path)


def test_syntax_error_names_the_file_and_leaves_no_cache_entry(tmp_path: Path) -> None:
    path = tmp_path / "broken.mdl"
    shutil.copy(MODELS / "richardson.mdl", path)
    path.write_text(path.read_text().replace("reaction of X - fatigue of X + grievance g", "reaction of X - (("))
    with pytest.raises(ModelError, match=r"broken\.mdl:18: PySD could not parse"):
        load_model(path)
    from armsdyn.model import cache_dir

    assert not list(cache_dir().glob(".translating-*")), "a failed translation left a temporary folder"


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        (
            "reaction of X - fatigue of X + grievance g",
            "FROBNICATE(reaction of X) - fatigue of X + grievance g",
            r"uses functions PySD does not implement: FROBNICATE",
        ),
        ("reaction of Y=\n", "Reaction Of X=\n", r"variable 'reaction of X' is defined 2 times"),
        ("reaction of Y=\n", "reaction of Z=\n", r"uses a variable that it never defines: 'reaction_of_y'"),
    ],
    ids=["unsupported-function", "name-clash", "undefined-variable"],
)
def test_broken_models_give_clear_errors_and_leave_the_cache_clean(
    tmp_path: Path, old: str, new: str, message: str
) -> None:
    from armsdyn.model import cache_dir

    path = tmp_path / "broken.mdl"
    text = (MODELS / "richardson.mdl").read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))
    before = set(cache_dir().iterdir()) if cache_dir().exists() else set()
    with pytest.raises(ModelError, match=message):
        load_model(path)
    assert set(cache_dir().iterdir()) == before, "a failed translation changed the cache"


# --------------------------------------------------------------------------- models that read files

_DATA_MODEL = """{{UTF-8}}
{definitions}
stock = INTEG(demand * k + growth(Time), 0)
\t~\tunits
\t~\tfed by data, a constant and a lookup read from files
\t|
INITIAL TIME = 0 ~ Year ~ |
FINAL TIME = 10 ~ Year ~ |
TIME STEP = 1 ~ Year ~ |
SAVEPER = TIME STEP ~ Year ~ |
\\\\\\---/// Sketch information
"""

_DIRECT = """demand := GET DIRECT DATA('data/series.csv', ',', 'A', 'B2') ~ units ~ a series from a CSV file |
k = GET DIRECT CONSTANTS('data/constants.csv', ',', 'B2') ~ dmnl ~ a constant from a CSV file |
growth(GET DIRECT LOOKUPS('trend.tab', '\\t', '1', 'A2')) ~ units ~ a lookup from a tab-separated file |"""


def _data_folder(folder: Path, scale: float = 1.0) -> Path:
    """A model in `folder` reading a CSV series, a CSV constant and a tab-separated lookup beside it."""
    (folder / "data").mkdir(parents=True)
    (folder / "data" / "series.csv").write_text(f"time,demand\n0,{1 * scale}\n5,{2 * scale}\n10,{4 * scale}\n")
    (folder / "data" / "constants.csv").write_text("name,value\nk,3\n")
    (folder / "trend.tab").write_text("0\t10\n0\t1\n")  # x in row 1, y in row 2
    path = folder / "demand.mdl"
    path.write_text(_DATA_MODEL.format(definitions=_DIRECT), encoding="utf-8")
    return path


def _expected_stock(scale: float = 1.0) -> np.ndarray:
    t = np.arange(11.0)
    demand = np.interp(t, [0, 5, 10], [1 * scale, 2 * scale, 4 * scale])
    rate = demand * 3 + t / 10
    return np.concatenate([[0.0], np.cumsum(rate[:-1])])


def test_a_model_reads_files_beside_it_not_beside_its_translation(tmp_path: Path) -> None:
    path = _data_folder(tmp_path / "archive")
    model = load_model(path)
    assert path.parent not in model.translation.parents
    assert model.variable("demand").kind == "data"
    assert model.variable("k").default == 3.0
    out = model.simulate({}, model.time, ["stock", "demand"])
    np.testing.assert_allclose(out["stock"], _expected_stock())
    # An override of a constant read from a file, then the file's value again on the next run.
    doubled = model.simulate({"k": 6.0}, model.time, ["stock"])["stock"]
    assert doubled[-1] > out["stock"][-1]
    np.testing.assert_allclose(model.simulate({}, model.time, ["stock"])["stock"], _expected_stock())


def test_a_data_file_changed_after_loading_is_read_again_in_the_same_process(tmp_path: Path) -> None:
    """A long-lived process (the explorer, a notebook) kept the data it first loaded; it reloads changed data."""
    path = _data_folder(tmp_path / "archive")
    first = load_model(path)
    np.testing.assert_allclose(first.simulate({}, first.time, ["stock"])["stock"], _expected_stock())
    assert load_model(path) is first  # unchanged files: the loaded model is reused
    (path.parent / "data" / "series.csv").write_text("time,demand\n0,10\n5,20\n10,40\n")
    again = load_model(path)
    assert again is not first
    np.testing.assert_allclose(again.simulate({}, again.time, ["stock"])["stock"], _expected_stock(10.0))


def test_the_same_model_in_two_folders_reads_its_own_data(tmp_path: Path) -> None:
    first = _data_folder(tmp_path / "one")
    second = _data_folder(tmp_path / "two", scale=10.0)
    assert first.read_bytes() == second.read_bytes()
    a, b = load_model(first), load_model(second)
    assert a.translation != b.translation
    np.testing.assert_allclose(a.simulate({}, a.time, ["stock"])["stock"], _expected_stock())
    np.testing.assert_allclose(b.simulate({}, b.time, ["stock"])["stock"], _expected_stock(10.0))


def test_an_excel_workbook_beside_the_model_is_read(tmp_path: Path) -> None:
    openpyxl = pytest.importorskip("openpyxl")
    book = openpyxl.Workbook()
    sheet = book.active
    sheet.title = "inputs"
    for row in (["time", "demand", "k"], [0, 1, 3], [5, 2, None], [10, 4, None]):
        sheet.append(row)
    sheet["E1"], sheet["E2"], sheet["F1"], sheet["F2"] = 0, 10, 0, 1  # the trend lookup by row
    (tmp_path / "in").mkdir()
    book.save(tmp_path / "in" / "inputs.xlsx")
    definitions = """demand := GET XLS DATA('in/inputs.xlsx', 'inputs', 'A', 'B2') ~ units ~ from a workbook |
k = GET XLS CONSTANTS('in/inputs.xlsx', 'inputs', 'C2') ~ dmnl ~ from a workbook |
growth(GET XLS LOOKUPS('in/inputs.xlsx', 'inputs', 'E', 'F1')) ~ units ~ from a workbook |"""
    path = tmp_path / "workbook.mdl"
    path.write_text(_DATA_MODEL.format(definitions=definitions), encoding="utf-8")
    model = load_model(path)
    np.testing.assert_allclose(model.simulate({}, model.time, ["stock"])["stock"], _expected_stock())


def test_a_missing_data_file_is_named(tmp_path: Path) -> None:
    path = _data_folder(tmp_path / "archive")
    (tmp_path / "archive" / "data" / "series.csv").unlink()
    with pytest.raises(
        ModelError,
        match=r"demand\.mdl: a data file the model reads is missing: /.*/data/series\.csv \(read by _ext_\w+\)$",
    ):
        load_model(path)


def test_the_cli_runs_a_data_reading_model_from_any_folder(tmp_path: Path) -> None:
    path = _data_folder(tmp_path / "archive")
    config = tmp_path / "archive" / "exp.toml"
    config.write_text(
        '[experiment]\nname = "data"\nmodel = "demand.mdl"\n\n[[scenarios]]\nname = "base"\n\n'
        '[[scenarios]]\nname = "double"\nparameters = { k = 6 }\n',
        encoding="utf-8",
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for command in (["check", "../archive/exp.toml"], ["describe", str(path)]):
        done = call_cli(*command, cwd=elsewhere)
        assert done.returncode == 0, done.stderr
    with warnings.catch_warnings():  # the engine hands the model to PySD, and the CLI says so
        warnings.simplefilter("always", FallbackWarning)
        done = call_cli("run", "../archive/exp.toml", "--out", "out", cwd=elsewhere)
    assert done.returncode == 0, done.stderr
    assert "DATA variables" in done.stdout + done.stderr
    ds = xr.open_dataset(elsewhere / "out" / "results.nc")
    np.testing.assert_allclose(ds["stock"].sel(scenario="base").values, _expected_stock())
    assert float(ds["stock"].sel(scenario="double")[-1]) > float(ds["stock"].sel(scenario="base")[-1])
    assert not list((tmp_path / "archive").glob("*.py")), "PySD output leaked next to the model"


def test_time_controls_written_with_underscores_or_in_any_case_are_the_time_controls(tmp_path: Path) -> None:
    # Vensim reads FINAL_TIME as FINAL TIME (names ignore case, an underscore is a space); models
    # written so (two of the peer test models) ran on neither path before.
    from armsdyn.ensemble import compile_model
    from armsdyn.model import control_name

    assert control_name("FINAL_TIME") == control_name("final  time") == "FINAL TIME"
    assert control_name("TIME_STEP") == "TIME STEP"
    assert control_name("FINAL TIMES") is None
    text = (MODELS / "richardson.mdl").read_text(encoding="utf-8")
    path = tmp_path / "underscored.mdl"
    path.write_text(text.replace("FINAL TIME  =", "FINAL_TIME  =").replace("TIME STEP  =", "Time_Step  ="))
    original = load_model(MODELS / "richardson.mdl")
    model = load_model(path)
    assert model.time == original.time
    assert set(model.variables) == set(original.variables)  # the controls are no model variables
    ds = compile_model(path, backend="numpy").run({})
    want = original.simulate({}, original.time, ["arms X"])
    np.testing.assert_allclose(ds["arms_x"].values[0], want["arms X"], rtol=1e-9)
