"""Command line on top of every stage: ``fibrosis COMMAND --help``."""
from fibrosis.cli.main import main

__all__ = ["main"]
