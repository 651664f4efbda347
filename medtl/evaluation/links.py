"""Addresses in the MLflow UI: where printed links and report run ids point."""

from urllib.parse import quote

DEFAULT_UI_URL = "http://127.0.0.1:5000"
"""The address `make ui` serves on."""

_RUNS_VIEW = "workflowType=machine_learning"
"""MLflow 3 opens an experiment on its GenAI overview unless told it is model training."""


def experiment_url(ui_url: str, experiment_id: str) -> str:
    """The runs table of one experiment (the model-training view, not the traces overview).

    Args:
        ui_url: the UI's base address, e.g. ``http://127.0.0.1:5000``.
        experiment_id: the MLflow experiment id.
    """
    return f"{ui_url.rstrip('/')}/#/experiments/{quote(str(experiment_id))}/runs?{_RUNS_VIEW}"


def run_url(ui_url: str, experiment_id: str, run_id: str) -> str:
    """One run's page in the UI.

    Args:
        ui_url: the UI's base address.
        experiment_id: the run's experiment id.
        run_id: the MLflow run id.
    """
    base = ui_url.rstrip("/")
    return f"{base}/#/experiments/{quote(str(experiment_id))}/runs/{quote(str(run_id))}?{_RUNS_VIEW}"
