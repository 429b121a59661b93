"""Data preparation: labelme conversion, the ROI crop, the training Dataset and synthetic demo data."""
