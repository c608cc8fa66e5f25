"""Lazy imports: the stage packages' re-exports (``fibrosis.model.build_model`` and the like) and
the one rule for imports inside functions.

Lazy because importing ``fibrosis.data`` must not import torch: the decode workers
import the pixel path alone, and each worker's memory is what bounds a scoring run; and
``fibrosis --help``, ``split`` or a config error should answer before torch has loaded.

The rule (checked by tests/test_architecture.py): an import inside a function is allowed only
for a library in :data:`HEAVY` or a fibrosis module that imports one at its top. Anything else
is imported at the top of the module, where a reader sees every dependency at once.
"""
from __future__ import annotations

import importlib
from typing import Any, Callable

# Libraries that cost a noticeable share of a command's start (tens of ms to seconds) or memory
# in every decode worker, and that some commands never need.
HEAVY = frozenset({
    "torch", "torchvision", "monai", "sklearn", "scipy", "cv2", "PIL", "matplotlib", "weasyprint",
    "pydicom", "highdicom", "pynetdicom", "dicomweb_client", "requests", "onnx", "onnxscript",
    "onnxruntime", "albumentations", "mlflow", "tqdm", "uvicorn", "starlette", "shtab",
    # standard-library modules with a real import cost: metadata scans site-packages, the rest
    # start machinery (process pools, SQLite) only the commands that use them need
    "importlib.metadata", "multiprocessing", "concurrent.futures", "sqlite3",
})


def lazy(package: str, exports: dict[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` that imports ``exports[name]`` (a module) on first use."""
    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(exports[name]), name)
    return __getattr__
