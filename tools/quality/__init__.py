"""Scoring generated images without a downloaded network: the data is procedural, so it can be inverted."""

from .shapes import Analysis, adherence, analyse, analyse_batch, label_accuracy, saturation_stats

__all__ = ["Analysis", "adherence", "analyse", "analyse_batch", "label_accuracy", "saturation_stats"]
