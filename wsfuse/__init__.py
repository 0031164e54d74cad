"""wsfuse: an object-storage bucket as a fast local disk for ML training."""

__version__ = "0.1.0"
