"""Loaders of historical data: tidy tables with units, and clear errors naming file, column and line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from armsdyn.data import DataError, load_csv, load_nmc, load_sipri
from tests.conftest import ROOT, SHARED

DATA = SHARED / "data"
NMC = DATA / "cow_nmc_v6_abridged.csv"
SIPRI = DATA / "sipri_milex_constant2021usd_long.csv"
SIPRI_GDP = DATA / "sipri_milex_share_gdp_long.csv"
RICHARDSON = DATA / "richardson_1909_1913.csv"


def _need(path: Path) -> Path:
    if not path.is_file():
        pytest.skip(f"shared reference data {path} is not on this machine")
    return path


def _write(tmp_path: Path, text: str, name: str = "d.csv") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_wide_csv_with_units() -> None:
    frame = load_csv(_need(RICHARDSON), time="year", units="million pounds sterling")
    assert list(frame.columns) == ["france", "russia", "germany", "austria_hungary"]
    assert frame.index.tolist() == [1909, 1910, 1911, 1912, 1913]
    assert frame.loc[1913, "germany"] == pytest.approx(95.4)
    assert frame.attrs["units"]["france"] == "million pounds sterling"
    assert frame.attrs["time_units"] == "year"


def test_shipped_copy_matches_the_shared_table() -> None:
    shared = load_csv(_need(RICHARDSON))
    shipped = load_csv(ROOT / "models" / "data" / "richardson_1909_1913.csv")
    assert shipped.equals(shared)
    assert shipped.attrs["units"]["france"] == "unknown"  # a CSV does not say; the loader says so


def test_tidy_csv_is_pivoted_and_renamed(tmp_path: Path) -> None:
    path = _write(tmp_path, "country,year,value\nB,2000,3\nA,2000,1\nA,2001,2\n")
    frame = load_csv(path, columns={"A": "alpha", "B": "beta"}, series="country", units="USD")
    assert frame.loc[2001, "alpha"] == 2
    assert np.isnan(frame.loc[2001, "beta"])
    assert frame.attrs["units"] == {"alpha": "USD", "beta": "USD"}


@pytest.mark.parametrize(
    ("text", "kwargs", "expected"),
    [
        ("year,x\n2000,1\n", {"columns": ["y"]}, "no column 'y'"),
        ("yr,x\n2000,1\n", {}, "no column 'year'; did you mean 'yr'?"),
        ("year,x\n2000,1\n2001,lots\n", {}, "column 'x', line 3: 'lots', which is not a number"),
        ("year,x\n2000,1\n2001,2\n2001,3\n", {}, "duplicate time 2001 on lines 3 and 4"),
        ("year,x\n2001,1\n2000,2\n", {}, "times must increase; 2000 on line 3 follows 2001 on line 2"),
        ("year,x\n2000,1\n,2\n", {}, "column 'year', line 3: an empty cell"),
        ("country,year,value\nA,2000,1\n", {"series": "country", "columns": ["a "]}, "no series 'a '"),
        ("country,year,value\nA,2000,1\nA,2000,2\n", {"series": "country"}, "duplicate time 2000"),
    ],
)
def test_csv_errors_name_file_column_and_line(tmp_path: Path, text: str, kwargs: dict, expected: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(DataError, match=r"d\.csv") as info:
        load_csv(path, **kwargs)
    assert expected in str(info.value)


def test_missing_file_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="file not found"):
        load_csv(tmp_path / "absent.csv")


def test_empty_cells_are_missing_values(tmp_path: Path) -> None:
    frame = load_csv(_write(tmp_path, "year,x\n2000,\n2001,2\n"), units="u")
    assert np.isnan(frame.loc[2000, "x"])


def test_nmc_dyad_by_abbreviation_and_code() -> None:
    frame = load_nmc(_need(NMC), ["usa", 365], years=(1950, 1988))
    assert list(frame.columns) == ["USA", "RUS"]
    assert frame.index[0] == 1950
    assert frame.index[-1] == 1988
    assert frame.loc[1988, "USA"] == 281935000
    assert frame.attrs["units"]["USA"] == "thousands of current US dollars"


def test_nmc_coalitions_are_summed_in_pounds_before_1914() -> None:
    frame = load_nmc(_need(NMC), {"Entente": ["FRN", "RUS"], "Central": ["GMY", "AUH"]}, years=(1909, 1913))
    single = load_nmc(NMC, ["FRN", "RUS"], years=(1909, 1913))
    np.testing.assert_allclose(frame["Entente"], single["FRN"] + single["RUS"])
    assert frame.attrs["units"]["Central"] == "thousands of current pounds sterling"


def test_nmc_refuses_to_mix_the_pound_and_dollar_eras() -> None:
    with pytest.raises(DataError) as info:
        load_nmc(_need(NMC), ["GMY"], years=(1913, 1914))
    message = str(info.value)
    assert "1913-1914 span both" in message
    assert "pounds sterling up to 1913" in message
    assert "era_conversion" in message
    # A whole-file default span crosses the break too.
    with pytest.raises(DataError, match="span both"):
        load_nmc(NMC, ["USA"])


def test_nmc_era_conversion_is_applied_and_stated() -> None:
    pounds = load_nmc(_need(NMC), ["UKG"], years=(1912, 1913))
    mixed = load_nmc(NMC, ["UKG"], years=(1912, 1915), era_conversion=4.8665)
    np.testing.assert_allclose(mixed.loc[[1912, 1913], "UKG"], 4.8665 * pounds["UKG"])
    dollars = load_nmc(NMC, ["UKG"], years=(1914, 1915))
    np.testing.assert_allclose(mixed.loc[[1914, 1915], "UKG"], dollars["UKG"])
    assert "converted from pounds at 4.8665 US dollars per pound" in mixed.attrs["units"]["UKG"]


def test_nmc_other_variables_need_no_conversion() -> None:
    frame = load_nmc(_need(NMC), ["USA"], variable="milper", years=(1900, 1920))
    assert frame.attrs["units"]["USA"] == "thousands of military personnel"


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"states": ["USAA"], "years": (1950, 1951)}, "no state 'USAA'; did you mean 'USA'?"),
        ({"states": [99999], "years": (1950, 1951)}, "no state with COW code 99999"),
        ({"states": ["USA"], "variable": "milx", "years": (1950, 1951)}, "unknown NMC variable 'milx'; did you mean"),
        ({"states": ["USA"], "years": (1951, 1950)}, "first year must not be after the last"),
    ],
)
def test_nmc_errors(kwargs: dict, expected: str) -> None:
    with pytest.raises(DataError, match="cow_nmc") as info:
        load_nmc(_need(NMC), **kwargs)
    assert expected in str(info.value)


def test_nmc_missing_code_and_partial_coalitions_are_nan(tmp_path: Path) -> None:
    text = "stateabb,ccode,year,milex\nAAA,1,1950,-9\nAAA,1,1951,5\nBBB,2,1951,7\n"
    frame = load_nmc(_write(tmp_path, text), {"both": ["AAA", "BBB"]}, years=(1950, 1951))
    assert np.isnan(frame.loc[1950, "both"])  # a missing member makes the total missing, not smaller
    assert frame.loc[1951, "both"] == 12


def test_sipri_by_country_name_with_units_from_the_file_kind() -> None:
    frame = load_sipri(_need(SIPRI), ["united states of america", "Russia"], years=(1990, 1995))
    assert list(frame.columns) == ["United States of America", "Russia"]
    assert frame.index.tolist() == list(range(1990, 1996))
    assert np.isnan(frame.loc[1990, "Russia"])
    assert frame.loc[1995, "Russia"] > 0
    assert frame.attrs["units"]["Russia"] == "million US dollars at constant 2021 prices"
    share = load_sipri(_need(SIPRI_GDP), ["Russia"], years=(1995, 1996))
    assert share.attrs["units"]["Russia"] == "fraction of GDP"
    assert (share["Russia"] < 1).all()


def test_sipri_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no country 'Rusia'; did you mean 'Russia'"):
        load_sipri(_need(SIPRI), ["Rusia"])
    with pytest.raises(DataError, match="shares of GDP cannot be summed"):
        load_sipri(_need(SIPRI_GDP), {"pair": ["Russia", "China"]})
    odd = _write(tmp_path, "country,year,value\nA,2000,1\n", name="milex.csv")
    with pytest.raises(DataError, match="cannot tell the units"):
        load_sipri(odd, ["A"])
    assert load_sipri(odd, ["A"], units="widgets").attrs["units"]["A"] == "widgets"
