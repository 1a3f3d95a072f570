"""Everything needed to produce a video encoder: data path, masking, models, runtime, loop."""

__version__ = "0.1.0"
