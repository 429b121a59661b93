"""The lean runtime: ``Segmenter`` runs an exported model on images; torch only for torch backends."""
from __future__ import annotations
