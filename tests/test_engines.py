"""Both engines give the same results on every shipped experiment config.

PySD evaluates a subscripted equation through xarray, about a hundred times
slower than the same equation written per element; for the shipped models
written over a ``state`` range (the knowledge and security-dilemma models) the
reference is therefore PySD on their scalar twins
(``tests/data/<model>_scalar.mdl``, identical results:
``tests/test_knowledge_states.py``, ``tests/test_security_states.py``), every
scenario of the config.
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
from tests.helpers import STATES, scalar_name, scalar_names, scalar_twin

EXPERIMENTS = [p for p in sorted(CONFIGS.glob("*.toml")) if config_kind(p) == "experiment"]


@pytest.mark.slow
@pytest.mark.parametrize("config", EXPERIMENTS, ids=lambda p: p.stem)
def test_the_compiled_engine_gives_pysds_results(config: Path) -> None:
    experiment = armsdyn.load_config(config)
    twin = scalar_twin(experiment.model.path)
    if twin is not None:
        reference = _on_scalar_twin(experiment, twin)
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


def _on_scalar_twin(experiment: armsdyn.Experiment, path: Path) -> xr.Dataset:
    """Run an experiment with PySD on the model's scalar twin `path`; return it in the subscripted form."""
    twin, stem = load_model(path), experiment.model.path.stem
    subscripted = {v.name for v in experiment.model.variables.values() if v.dims}

    def per_state(name: str) -> list[str]:
        return scalar_names(name, stem) if name in subscripted else [name]

    def scalar_parameters(parameters: dict) -> dict:  # "x[A]" -> "x A"; a whole "x" -> "x A" and "x B"
        return {n: value for k, value in parameters.items() for n in per_state(k) if k in subscripted} | {
            scalar_name(k): value for k, value in parameters.items() if k not in subscripted
        }

    variables = [n for v in experiment.variables for n in per_state(v)]
    scenarios = tuple(replace(s, parameters=scalar_parameters(s.parameters)) for s in experiment.scenarios)
    ds = armsdyn.run(
        replace(experiment, model=twin, scenarios=scenarios, variables=tuple(dict.fromkeys(variables)), engine="pysd")
    )
    keys = {da.attrs["long_name"]: key for key, da in ds.data_vars.items()}
    by_state = {n for v in subscripted for n in scalar_names(v, stem)}
    out = ds[[key for name, key in keys.items() if name not in by_state]]
    for name in sorted(subscripted & set(experiment.variables)):
        parts = [ds[keys[n]] for n in scalar_names(name, stem)]
        out[name.replace(" ", "_")] = (
            xr.concat(parts, dim=xr.DataArray(list(STATES), dims="state", name="state"))
            .transpose(..., "state")
            .assign_attrs(long_name=name)
        )
    return out
