"""asrkit: end-to-end speech recognition from corpus to transcript."""

__version__ = "0.1.0"
