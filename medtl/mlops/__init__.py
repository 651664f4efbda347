"""MLOps: tracking (MLflow), registry, sweeps (Optuna), the runner and the CLI."""
