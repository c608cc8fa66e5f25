"""Lazy re-exports for the stage packages (``fibrosis.model.build_model`` and the like).

Lazy because importing ``fibrosis.data`` must not import torch: the decode workers
import the pixel path alone, and each worker's memory is what bounds a scoring run.
"""
from __future__ import annotations

import importlib
from typing import Any, Callable


def lazy(package: str, exports: dict[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` that imports ``exports[name]`` (a module) on first use."""
    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(exports[name]), name)
    return __getattr__
