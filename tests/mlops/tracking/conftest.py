"""Fixtures of the tracking tests: a fresh run in the test's own SQLite store."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from medtl.mlops.tracking.client import get_or_create_experiment


@pytest.fixture
def new_run(tracking_uri) -> tuple[MlflowClient, str]:
    """A client on the test's store and the id of a new, empty run in experiment `medtl/tracking`."""
    client = MlflowClient(tracking_uri)
    experiment_id = get_or_create_experiment(client, "medtl/tracking", tracking_uri)
    return client, client.create_run(experiment_id).info.run_id
