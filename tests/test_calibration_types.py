"""Calibration bugs that the type checker found (issue 18): values mypy saw could be None where they were used."""

from __future__ import annotations

from pathlib import Path

import pytest

from armsdyn.calibration import calibrate, load_calibration

MODELS = Path(__file__).resolve().parents[1] / "models"

CONFIG = """
[experiment]
name = "cal"
model = "MODEL"

[data]
file = "d.csv"
columns = { x = "arms X" }
units = "u"

[calibration]
parameters = { "grievance g" = { initial = 1, bounds = [0, 5] } }
bootstrap = BOOTSTRAP
"""


def _richardson_with(tmp_path: Path, constant: str, equation: str, bootstrap: int = 0) -> Path:
    """A config fitting ``grievance g`` of Richardson's model with one constant's number replaced by an equation."""
    text = (MODELS / "richardson.mdl").read_text(encoding="utf-8")
    start = text.index(f"{constant}=\n")
    end = text.index("\n", start + len(constant) + 2)
    model = tmp_path / "richardson_equation.mdl"
    model.write_text(f"{text[:start]}{constant}=\n\t{equation}{text[end:]}", encoding="utf-8")
    (tmp_path / "d.csv").write_text("year,x\n0,1\n1,2\n2,3\n3,3.5\n", encoding="utf-8")
    config = tmp_path / "cal.toml"
    body = CONFIG.replace("MODEL", model.as_posix()).replace("BOOTSTRAP", str(bootstrap))
    config.write_text(body, encoding="utf-8")
    return config


@pytest.mark.parametrize("bootstrap", [0, 4])
def test_stability_is_reported_when_an_initial_arms_is_an_equation(tmp_path: Path, bootstrap: int) -> None:
    # The initial arms do not enter ab - kl; they used to be read as numbers (float(None): a TypeError).
    spec = load_calibration(_richardson_with(tmp_path, "initial arms X", "2 * grievance h", bootstrap))
    assert spec.model.variable("initial arms X").default is None
    result = calibrate(spec)
    # Only g is fitted: ab - kl is the model file's 1 * 1 - 0.9 * 0.9, in every bootstrap refit too.
    assert result.derived.loc["determinant ab-kl", "estimate"] == pytest.approx(0.19)
    assert result.summary["stability"] in ("stable", "unstable", "indeterminate")
    if bootstrap:
        assert result.bootstrap is not None
        assert result.bootstrap["determinant ab-kl"].dropna().to_numpy() == pytest.approx(0.19)


def test_no_stability_when_a_coefficient_is_an_equation(tmp_path: Path) -> None:
    # b is no constant of Richardson's model, so ab - kl has no number to hold it at: the fit is
    # reported without a stability verdict instead of failing with float(None).
    spec = load_calibration(_richardson_with(tmp_path, "fatigue coefficient b", "fatigue coefficient a"))
    assert spec.model.variable("fatigue coefficient b").default is None
    result = calibrate(spec)
    assert result.derived.empty
    assert "stability" not in result.summary
    assert result.estimates.loc["grievance g", "estimate"] == pytest.approx(1.28, abs=0.2)
