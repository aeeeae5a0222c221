"""Both engines give the same results on every shipped experiment config.

PySD evaluates a subscripted equation through xarray, about a hundred times
slower than the same equation written per element; for the shipped models
written over a ``state`` range (the knowledge and security-dilemma models, and
the N-state Richardson model) the reference is therefore PySD on their twins
written per element (``tests/data/<model>_scalar.mdl``, identical results:
``tests/test_knowledge_states.py``, ``tests/test_security_states.py``;
``tests/data/richardson_n_per_element.mdl``, checked against PySD on the model
itself below), every scenario of the config.
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
from armsdyn.model import Variable, load_model
from tests.conftest import CONFIGS
from tests.helpers import element_twin, scalar_name, scalar_names

EXPERIMENTS = [p for p in sorted(CONFIGS.glob("*.toml")) if config_kind(p) == "experiment"]


@pytest.mark.slow
@pytest.mark.parametrize("config", EXPERIMENTS, ids=lambda p: p.stem)
def test_the_compiled_engine_gives_pysds_results(config: Path) -> None:
    experiment = armsdyn.load_config(config)
    twin = element_twin(experiment.model.path)
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


@pytest.mark.slow
def test_richardson_ns_per_element_twin_is_the_model() -> None:
    """PySD on the twin, put back together, is PySD on models/richardson_n.mdl: results and parameter coordinates.

    Over ten years of the triad's most varied scenario (whole, element, matrix and time-series
    overrides) and its baseline, as PySD on the subscripted model takes seconds a model year; at a
    step of 1/8 (the config's is 1/32): the two files are the same equations, which no step size
    enters (richardson_n.mdl reads no TIME STEP), so a quarter of the steps checks the same thing.
    """
    experiment = armsdyn.load_config(CONFIGS / "triad.toml")
    short = replace(
        experiment,
        time=replace(experiment.time, final=10.0, step=0.125),
        scenarios=tuple(s for s in experiment.scenarios if s.name in ("baseline", "cut_vs_buildup_focused")),
    )
    twin = element_twin(experiment.model.path)
    assert twin is not None
    expected = armsdyn.run(replace(short, engine="pysd"))
    got = _on_scalar_twin(short, twin)
    assert set(got.data_vars) == set(expected.data_vars)
    for key, da in expected.data_vars.items():
        assert got[key].dims == da.dims, key
        np.testing.assert_allclose(got[key].values, da.values, rtol=1e-12, atol=1e-12, err_msg=key)
    for key in ("defence_coefficient_k", "fatigue_coefficient_a", "grievance_g", "initial_arms"):
        assert got[key].dims == expected[key].dims, key
        np.testing.assert_array_equal(got[key].values, expected[key].values, err_msg=key)


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
    """Run an experiment with PySD on the model's twin `path` written per element; return it in the subscripted form.

    The per-element variables and parameter coordinates are put back together as the
    subscripted model's, with its dimensions, so the results and the metrics compare as they are.
    """
    twin, stem = load_model(path), experiment.model.path.stem
    subscripted = {v.name: v for v in experiment.model.variables.values() if v.dims}

    def per_element(name: str) -> list[str]:
        var = subscripted.get(name)
        return scalar_names(name, stem, var.elements()) if var is not None else [name]

    def scalar_parameters(parameters: dict) -> dict:  # "x[A]" -> "x A"; a whole "x" -> "x A" and "x B"
        return {n: value for k, value in parameters.items() for n in per_element(k) if k in subscripted} | {
            scalar_name(k): value for k, value in parameters.items() if k not in subscripted
        }

    variables = [n for v in experiment.variables for n in per_element(v)]
    scenarios = tuple(replace(s, parameters=scalar_parameters(s.parameters)) for s in experiment.scenarios)
    ds = armsdyn.run(
        replace(experiment, model=twin, scenarios=scenarios, variables=tuple(dict.fromkeys(variables)), engine="pysd")
    )
    keys = {da.attrs["long_name"]: key for key, da in ds.data_vars.items()}
    by_element = {n for v in subscripted for n in per_element(v)}
    out = ds.drop_vars([key for name, key in keys.items() if name in by_element])
    for name in sorted(subscripted.keys() & set(experiment.variables)):
        var = subscripted[name]
        out[var.py_name] = _stacked([ds[keys[n]] for n in per_element(name)], var).assign_attrs(long_name=name)
    for var in subscripted.values():  # parameter coordinates: one per element in the twin, one array here
        parts = [twin.variable(n).py_name for n in per_element(var.name) if n in twin.variables]
        if var.kind == "constant" and len(parts) == len(var.elements()) and all(p in ds.coords for p in parts):
            coord = _stacked([ds[p] for p in parts], var).assign_attrs(ds[parts[0]].attrs | {"long_name": var.name})
            out = out.drop_vars(parts).assign_coords({var.py_name: coord})
    return out


def _stacked(parts: list[xr.DataArray], var: Variable) -> xr.DataArray:
    """The per-element arrays `parts` (in ``var.elements()`` order) as one array with `var`'s dimensions last."""
    values = np.stack([p.values for p in parts], axis=-1).reshape(parts[0].shape + var.shape)
    coords = {d: parts[0][d].values for d in parts[0].dims} | {d: list(elements) for d, elements in var.dims}
    return xr.DataArray(values, dims=parts[0].dims + var.dim_names, coords=coords)
