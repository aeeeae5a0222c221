"""Both engines give the same results on every shipped experiment config.

PySD evaluates a subscripted equation through xarray, about a hundred times
slower than the same equation written per element; for the subscripted
knowledge model the reference is therefore PySD on its scalar twin
(``tests/data/knowledge_engine_scalar.mdl``, identical results:
``tests/test_knowledge_states.py``), every scenario of the config.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr

import armsdyn
from armsdyn.config import config_kind
from armsdyn.model import load_model
from tests.conftest import CONFIGS
from tests.helpers import SCALAR_TWIN, STATES, scalar_name, scalar_names

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


def _on_scalar_twin(experiment: armsdyn.Experiment) -> xr.Dataset:
    """Run a knowledge-model experiment with PySD on the scalar twin; return it in the subscripted form."""
    twin = load_model(SCALAR_TWIN)
    subscripted = {v.name for v in experiment.model.variables.values() if v.dims}
    variables = [n for v in experiment.variables for n in (scalar_names(v) if v in subscripted else [v])]
    scenarios = tuple(
        replace(s, parameters={scalar_name(k): v for k, v in s.parameters.items()}) for s in experiment.scenarios
    )
    ds = armsdyn.run(
        replace(experiment, model=twin, scenarios=scenarios, variables=tuple(dict.fromkeys(variables)), engine="pysd")
    )
    keys = {da.attrs["long_name"]: key for key, da in ds.data_vars.items()}
    per_state = {n for v in subscripted for n in scalar_names(v)}
    out = ds[[key for name, key in keys.items() if name not in per_state]]
    for name in sorted(subscripted & set(experiment.variables)):
        parts = [ds[keys[n]] for n in scalar_names(name)]
        out[name.replace(" ", "_")] = (
            xr.concat(parts, dim=xr.DataArray(list(STATES), dims="state", name="state"))
            .transpose(..., "state")
            .assign_attrs(long_name=name)
        )
    return out
