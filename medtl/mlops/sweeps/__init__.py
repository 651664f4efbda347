"""Grids over the Optuna queue: the study file (study), what must exist first (prerequisites), the queue and its
workers (sweep), and the cost estimate (plan)."""
