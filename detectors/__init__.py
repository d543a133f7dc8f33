"""Anomaly detectors: one module each, all following :mod:`detectors.base`."""

from .base import BaseDetector, available_detectors, load_detector_class, make_detector

__all__ = ["BaseDetector", "available_detectors", "load_detector_class", "make_detector"]
