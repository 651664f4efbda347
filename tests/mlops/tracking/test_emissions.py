"""codecarbon around a fit: energy and emissions measured offline; a tracker that cannot start costs nothing."""

from __future__ import annotations

import math
import sys

import pytest

from medtl.mlops.tracking.emissions import EmissionsCallback


def test_measures_energy_and_emissions_of_a_fit(monkeypatch):
    monkeypatch.delenv("MEDTL_COUNTRY_ISO_CODE", raising=False)
    emissions = EmissionsCallback()
    assert emissions.country == "HRV"  # the study's grid, so demo figures compare with the paper's
    emissions.on_fit_start(None)  # type: ignore[arg-type]
    assert emissions.tracker is not None
    assert emissions.energy_so_far() >= 0 and emissions.emissions_so_far() >= 0
    emissions.on_fit_end(None)  # type: ignore[arg-type]
    assert emissions.tracker is None
    assert emissions.emissions_kg >= 0 and emissions.energy_kwh >= 0


def test_a_tracker_that_cannot_start_leaves_nan_and_never_fails(monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "codecarbon", None)  # `from codecarbon import ...` raises ImportError
    emissions = EmissionsCallback(country_iso_code="DEU")
    emissions.on_fit_start(None)  # type: ignore[arg-type]
    assert emissions.tracker is None and "emissions not measured" in caplog.text
    assert math.isnan(emissions.energy_so_far()) and math.isnan(emissions.emissions_so_far())
    emissions.on_fit_abort(None, RuntimeError("stopped"))  # type: ignore[arg-type]
    assert math.isnan(emissions.emissions_kg) and math.isnan(emissions.energy_kwh)


@pytest.mark.parametrize("code", ["CAN", "FRA"])
def test_the_country_comes_from_the_environment(monkeypatch, code):
    monkeypatch.setenv("MEDTL_COUNTRY_ISO_CODE", code)
    assert EmissionsCallback().country == code
