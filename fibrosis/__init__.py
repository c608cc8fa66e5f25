"""fibrosis: train, validate and batch-score a pulmonary-fibrosis classifier on chest X-rays."""
__version__ = "0.1.0"
