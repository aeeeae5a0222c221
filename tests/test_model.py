"""Model loading: metadata, the translation cache, Vensim/XMILE parity, errors."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from armsdyn import ModelError, TimeSettings, load_model
from tests.conftest import MODELS


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
