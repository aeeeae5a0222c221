"""Both engines give the same results on every shipped experiment config."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import armsdyn
from armsdyn.config import config_kind
from tests.conftest import CONFIGS

EXPERIMENTS = [p for p in sorted(CONFIGS.glob("*.toml")) if config_kind(p) == "experiment"]


@pytest.mark.slow
@pytest.mark.parametrize("config", EXPERIMENTS, ids=lambda p: p.stem)
def test_the_compiled_engine_gives_pysds_results(config: Path) -> None:
    experiment = armsdyn.load_config(config)
    reference = armsdyn.run(replace(experiment, engine="pysd"))
    compiled = armsdyn.run(replace(experiment, engine="compiled"))
    for key, da in reference.data_vars.items():
        np.testing.assert_allclose(compiled[key].values, da.values, rtol=1e-9, atol=1e-9, err_msg=key)
    expected, got = armsdyn.compute_metrics(reference), armsdyn.compute_metrics(compiled)
    pd.testing.assert_frame_equal(got, expected, rtol=1e-8, atol=1e-9)


def test_an_unknown_engine_is_a_config_error(tmp_path: Path) -> None:
    from tests.conftest import write_config

    config = write_config(tmp_path, "")
    text = config.read_text().replace("[experiment]\n", '[experiment]\nengine = "fast"\n')
    config.write_text(text)
    with pytest.raises(
        armsdyn.ConfigError, match=r"experiment\.engine: unknown engine 'fast'.*allowed: pysd, compiled"
    ):
        armsdyn.load_config(config)
