"""ldl: uncertainty-aware label-distribution learning for facial expression recognition."""

__version__ = "0.1.0"
