"""edgeseg runtime: torch-free CPU inference for abdominal organ segmentation bundles."""

__version__ = "0.1.0"
