"""Turning logits into answers: argmax, mapping back, contours, overlays (numpy/OpenCV only)."""
from __future__ import annotations
