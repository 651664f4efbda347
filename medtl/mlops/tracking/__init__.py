"""One tracked unit of work in MLflow: the client calls (client), a fine-tuning run (runner), a pretraining run
(pretraining), the model registry (registry), promotion (promote) and the logged evaluation (evaluation_run)."""
