"""codecarbon's offline tracker as a fit callback: energy and CO2-equivalent, measured without network."""

from __future__ import annotations

import logging
import math
import os
from typing import Any

from medtl.training.loop import Callback, FitState

log = logging.getLogger(__name__)

COUNTRY_ENV = "MEDTL_COUNTRY_ISO_CODE"


class EmissionsCallback(Callback):
    """codecarbon's offline tracker around the fit: energy and CO2-equivalent, no network.

    The country (ISO 3166 alpha-3) sets the grid's carbon intensity: `$MEDTL_COUNTRY_ISO_CODE`,
    default `HRV` (Croatia, where the study ran) so demo figures compare with the paper's.
    """

    def __init__(self, country_iso_code: str | None = None) -> None:
        self.country = country_iso_code or os.environ.get(COUNTRY_ENV, "HRV")
        self.tracker: Any = None
        self.emissions_kg = math.nan
        self.energy_kwh = math.nan

    def on_fit_start(self, state: FitState) -> None:
        try:
            from codecarbon import OfflineEmissionsTracker

            logging.getLogger("codecarbon").setLevel(logging.ERROR)
            self.tracker = OfflineEmissionsTracker(
                country_iso_code=self.country,
                save_to_file=False,
                log_level="error",
                tracking_mode="process",
                measure_power_secs=15,
            )
            self.tracker.start()
        except Exception as exc:  # emissions are a measurement, never a reason to lose a run
            log.warning("codecarbon could not start (%s); emissions not measured", exc)
            self.tracker = None

    def energy_so_far(self) -> float:
        """kWh measured so far in this fit (codecarbon measures every 15 s); NaN if not measuring."""
        try:
            return float(self.tracker._total_energy.kWh) if self.tracker is not None else math.nan
        except Exception:  # codecarbon internals; a measurement, never a failure
            return math.nan

    def emissions_so_far(self) -> float:
        """kg CO2-eq of the energy measured so far in this fit; NaN if not measuring."""
        try:
            if self.tracker is None:
                return math.nan
            self.tracker._update_emissions()
            return float(self.tracker._total_emissions)
        except Exception:
            return math.nan

    def on_fit_abort(self, state: FitState, error: BaseException) -> None:
        self.on_fit_end(state)

    def on_fit_end(self, state: FitState) -> None:
        if self.tracker is None:
            return
        try:
            emissions = self.tracker.stop()
            self.emissions_kg = float(emissions or 0.0)
            data = getattr(self.tracker, "final_emissions_data", None)
            self.energy_kwh = float(getattr(data, "energy_consumed", math.nan))
        except Exception as exc:
            log.warning("codecarbon could not stop cleanly (%s)", exc)
        self.tracker = None
