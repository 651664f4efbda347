"""Evaluation: reads the tracking store, computes the study's statistics, renders reports."""
