"""What every (fold, arm) unit of one tune run shares, and the unit's record on disk."""
from __future__ import annotations

import dataclasses
import io
import json
import logging
import resource
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fibrosis.config import Config
from fibrosis.data.manifest import ManifestRow
from fibrosis.io import atomic_write_bytes
from fibrosis.io import write_json as write_json_file
from fibrosis.model.net import FibrosisNet
from fibrosis.train.probe import Probe

logger = logging.getLogger(__name__)

# The layout of OUT/cv/*: a run written with another schema is not resumed (its units were
# trained another way), and says so.
SCHEMA = 2


@dataclass
class UnitRecord:
    """One finished (fold, arm) unit: ``oof[e]`` are its held-out logits after ``e`` fine-tuning
    epochs (``e = 0``: the probe; one entry for recipes without epochs)."""

    arm: str
    fold: str
    heldout: list[int]
    oof: list[list[float]]
    train_loss: list[float]
    seconds: float  # wall clock
    cpu_seconds: float  # CPU of this process and its data-loading workers (others' load does not count)
    c: float | None = None
    inner_loss: dict[str, float] = field(default_factory=dict)
    aux_oof: list[Any] = field(default_factory=list)  # per epoch: (heldout, K) auxiliary logits

    def write(self, path: Path) -> None:
        write_json(path, {"schema": SCHEMA, **dataclasses.asdict(self)})

    @classmethod
    def read(cls, path: Path) -> "UnitRecord":
        d = json.loads(path.read_text())
        if d.pop("schema", None) != SCHEMA:
            raise ValueError(f"{path}: unit record of another tune version; expected schema {SCHEMA} (use a new --run folder)")
        return cls(**d)


@dataclass
class Context:
    """What every unit of one tune run shares (backbones, activations and probes are built once)."""

    cfg: Config
    cache_dir: Path
    rows: list[ManifestRow]
    dev: list[int]
    y: np.ndarray  # labels of the development rows, in ``dev`` order
    groups: list[str]  # patient / near-duplicate group per development row
    device: torch.device
    bases: dict[tuple[str, int, str], tuple[FibrosisNet, dict[str, torch.Tensor]]] = field(default_factory=dict)
    acts: dict[tuple[str, int, str], Any] = field(default_factory=dict)  # activations.Activations
    probes: dict[tuple[Any, ...], Any] = field(default_factory=dict)
    views: dict[Any, Any] = field(default_factory=dict)  # tune.tta: tune.tta.ViewActivations
    # Auxiliary findings with enough development labels: one name list for every fold, so the
    # fold models of an ensemble have the same heads. aux_y: (len(dev), K), NaN = missing.
    aux_names: tuple[str, ...] = ()
    aux_y: np.ndarray | None = None
    aux_dropped: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)  # arm -> why it could not run here

    def aux_labels(self) -> np.ndarray:
        """``aux_y``, for code that runs only with auxiliary findings (then it is set)."""
        if self.aux_y is None:
            raise RuntimeError("this tune run has no auxiliary findings")
        return self.aux_y

    def aux_summary(self) -> dict[str, Any]:
        """For tune.json and the report: which findings had heads, their label counts, which not."""
        if self.aux_y is None:
            return {}
        t = self.aux_y
        return {"names": list(self.aux_names), "dropped": self.aux_dropped,
                "counts": {n: [int(np.nansum(t[:, k] == 1)), int(np.nansum(t[:, k] == 0))]
                           for k, n in enumerate(self.aux_names)}}


class Clock:
    """Wall and CPU seconds since it started. CPU counts this process's threads and its reaped
    children (DataLoader workers), so a time per arm stays comparable on a machine shared with
    other jobs, where wall time is not."""

    def __init__(self) -> None:
        self.t0, self.c0 = time.perf_counter(), self.cpu()

    @staticmethod
    def cpu() -> float:
        own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime

    def wall_s(self) -> float:
        return time.perf_counter() - self.t0

    def cpu_s(self) -> float:
        return self.cpu() - self.c0


@dataclass(frozen=True)
class Cost:
    """Wall and CPU seconds spent (see :class:`Clock`)."""

    wall: float = 0.0
    cpu: float = 0.0

    def __add__(self, other: "Cost") -> "Cost":
        return Cost(self.wall + other.wall, self.cpu + other.cpu)

    @classmethod
    def of(cls, records: "Sequence[UnitRecord]") -> "Cost":
        return cls(sum(r.seconds for r in records), sum(r.cpu_seconds for r in records))

    def to_dict(self) -> dict[str, float]:
        return {"minutes": round(self.wall / 60, 2), "cpu_minutes": round(self.cpu / 60, 2)}


def write_json(path: Path, obj: dict[str, Any]) -> None:
    """A unit's or arm's resume state: a diverged fold model's logits may be NaN, and its record
    must still be written (and read back) so that the arm is judged as failed, not run again."""
    write_json_file(path, obj, allow_nan=True)


def save_tensors(path: Path, obj: Any) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_tensors(path: Path) -> Any:
    return torch.load(path, map_location="cpu", weights_only=True)


def probe_record(p: Probe) -> dict[str, Any]:
    return {"weight": torch.as_tensor(p.weight), "bias": p.bias, "c": p.c,
            "inner_loss": {str(k): v for k, v in p.inner_loss.items()}}


def probe_from(rec: dict[str, Any]) -> Probe:
    return Probe(rec["weight"].numpy().astype(np.float64), float(rec["bias"]), float(rec["c"]),
                 {float(k): float(v) for k, v in rec["inner_loss"].items()})


def unit_seed(cfg: Config, repeat: int, fold: int) -> int:
    """The inner-CV seed of a unit (the refit on all development data is fold -1)."""
    return cfg.tune.seed + 7919 * repeat + fold + 1
