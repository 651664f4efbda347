"""Training: specs, data, models and the one loop. Imports neither mlflow nor optuna."""
