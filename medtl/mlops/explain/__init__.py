"""Looking inside the models: Grad-CAM heatmaps of registered models (gradcam) and the blinded reader study
built on them (reader_study)."""
