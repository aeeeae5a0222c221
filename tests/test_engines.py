"""Both engines give the same results on every shipped experiment config.

PySD evaluates a subscripted equation through xarray, about a hundred times
slower than the same equation written per element; for the subscripted
knowledge model the reference is therefore PySD on its scalar twin
(``tests/data/knowledge_engine_scalar.mdl``, identical results:
``tests/test_knowledge_states.py``), every scenario of the config.
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr

import armsdyn
from armsdyn.config import config_kind
from armsdyn.model import load_model
from tests.conftest import CONFIGS, ROOT

EXPERIMENTS = [p for p in sorted(CONFIGS.glob("*.toml")) if config_kind(p) == "experiment"]


@pytest.mark.slow
@pytest.mark.parametrize("config", EXPERIMENTS, ids=lambda p: p.stem)
def test_the_compiled_engine_gives_pysds_results(config: Path) -> None:
    experiment = armsdyn.load_config(config)
    if experiment.model.path.name == "knowledge_engine.mdl":
        reference = _on_scalar_twin(experiment)
    else:
        reference = armsdyn.run(replace(experiment, engine="pysd"))
    compiled = armsdyn.run(replace(experiment, engine="compiled"))
    for key, da in reference.data_vars.items():
        np.testing.assert_allclose(compiled[key].values, da.values, rtol=1e-9, atol=1e-9, err_msg=key)
    expected, got = armsdyn.compute_metrics(reference), armsdyn.compute_metrics(compiled)
    assert set(got.columns) == set(expected.columns)
    pd.testing.assert_frame_equal(got[expected.columns], expected, rtol=1e-8, atol=1e-9)


def test_an_unknown_engine_is_a_config_error(tmp_path: Path) -> None:
    from tests.conftest import write_config

    config = write_config(tmp_path, "")
    text = config.read_text().replace("[experiment]\n", '[experiment]\nengine = "fast"\n')
    config.write_text(text)
    with pytest.raises(
        armsdyn.ConfigError, match=r"experiment\.engine: unknown engine 'fast'.*allowed: pysd, compiled"
    ):
        armsdyn.load_config(config)


SCALAR_TWIN = ROOT / "tests" / "data" / "knowledge_engine_scalar.mdl"


def _on_scalar_twin(experiment: armsdyn.Experiment) -> xr.Dataset:
    """Run a knowledge-model experiment with PySD on the scalar twin; return it in the subscripted form."""
    twin = load_model(SCALAR_TWIN)
    states = ("A", "B")

    def scalar_name(name: str) -> str:  # "adoption time[A]" -> "adoption time A"
        return re.sub(r"\[(\w+)\]$", r" \1", name)

    subscripted = {v.name for v in experiment.model.variables.values() if v.dims}
    variables = [f"{v} {s}" if v in subscripted else v for v in experiment.variables for s in states]
    variables = list(
        dict.fromkeys(
            v.replace("peak power ratio after breakdown A", "peak power ratio A over B after breakdown").replace(
                "peak power ratio after breakdown B", "peak power ratio B over A after breakdown"
            )
            for v in variables
        )
    )
    scenarios = tuple(
        replace(s, parameters={scalar_name(k): v for k, v in s.parameters.items()}) for s in experiment.scenarios
    )
    ds = armsdyn.run(replace(experiment, model=twin, scenarios=scenarios, variables=tuple(variables), engine="pysd"))
    out = ds[
        [
            k
            for k, da in ds.data_vars.items()
            if not re.search(r" [AB]$", da.attrs["long_name"]) and "peak power ratio" not in da.attrs["long_name"]
        ]
    ]
    for name in sorted(subscripted & set(experiment.variables)):
        key = {"peak power ratio after breakdown": "peak_power_ratio_{0}_over_{1}_after_breakdown"}.get(name)
        parts = []
        for i, s in enumerate(states):
            scalar_key = (
                key.format(s.lower(), states[1 - i].lower()) if key else f"{name} {s}".replace(" ", "_").lower()
            )
            parts.append(ds[scalar_key])
        out[name.replace(" ", "_")] = (
            xr.concat(parts, dim=xr.DataArray(list(states), dims="state", name="state"))
            .transpose(..., "state")
            .assign_attrs(long_name=name)
        )
    return out
