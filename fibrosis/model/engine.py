"""Inference engines for batch scoring, each checked against plain PyTorch before use.

An engine maps a float32 batch (B, 1, S, S), already resized and normalised, to
float32 logits (B,). Candidates:

* ``eager``: plain PyTorch fp32, NCHW, ``no_grad`` -- the reference every other
  engine is compared with.
* ``channels_last``: fp32, NHWC memory format + ``inference_mode`` (oneDNN/cuDNN
  pick NHWC kernels; same arithmetic, different summation order).
* ``bf16``: ``channels_last`` + bf16 autocast. Fast on CUDA and on CPUs with native
  bf16 (AVX512-BF16/AMX); on AVX2-only CPUs it is emulated and slower than fp32.
* ``onnx``: the model exported once per checkpoint to ONNX and run by ONNX Runtime
  (CPU): BatchNorm folded into the convolutions, fused activations, MLAS kernels.

``auto`` takes the first candidate, in a fixed order per device, that builds and
agrees with ``eager`` on a verification batch (``TOLERANCES``). The order is fixed,
not timed at start-up, so that two runs on the same machine pick the same engine
and write identical numbers; the order comes from ``benchmarks/score.py``.
Scoring verifies the chosen engine again on its first real batch.
"""
from __future__ import annotations

import contextlib
import copy
import io
import logging
import os
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

import numpy as np
import torch
from torch import nn

from fibrosis.config import EngineName
from fibrosis.data.records import Preprocessing
from fibrosis.io import atomic_target
from fibrosis.words import plural

if TYPE_CHECKING:
    from fibrosis.model.ensemble import EnsembleNet
    from fibrosis.model.net import FibrosisNet

logger = logging.getLogger(__name__)

ENGINES = tuple(e for e in typing.get_args(EngineName) if e != "auto")  # concrete engines


class EngineError(RuntimeError):
    """An engine cannot be built here, or its outputs disagree with the fp32 reference."""


@dataclass(frozen=True)
class Tolerance:
    """Largest allowed difference from ``eager`` on the verification batch:
    |dlogit| <= logit + rtol * |eager logit| and |dprob| <= prob.

    Decisions must agree for every case whose reference probability is further
    than ``prob`` from the threshold (closer cases may legitimately flip).
    """

    logit: float
    prob: float
    rtol: float = 0.0


# fp32 engines differ from eager only in summation order: ~1e-5 on a logit is
# typical, 1e-3 leaves headroom and still catches a wrong export (missing
# normalisation, train-mode BatchNorm) by orders of magnitude. bf16 keeps 8 bits
# of mantissa: ~0.01-0.03 on a logit through a ResNet, so it gets a wider band
# that is still far below any clinically meaningful change of probability; its
# error grows with the logit (relative rounding), hence rtol: on a ResNet50 with
# large logits benchmarks/score.py measured |dlogit| 0.09 while |dprob| was 6e-5.
TOLERANCES = {
    "eager": Tolerance(0.0, 0.0),
    "channels_last": Tolerance(1e-3, 1e-3),
    "onnx": Tolerance(1e-3, 1e-3),
    "bf16": Tolerance(0.05, 0.01, rtol=0.02),
}


@dataclass(frozen=True)
class Agreement:
    engine: str
    n: int
    max_abs_logit: float
    max_abs_prob: float
    decisions_differ: int  # outside the tolerance band around the threshold
    tolerance: Tolerance
    max_excess: float = 0.0  # max of |dlogit| - rtol * |eager logit|, held to tolerance.logit

    @property
    def ok(self) -> bool:
        t = self.tolerance
        return (self.max_excess <= t.logit and self.max_abs_prob <= t.prob
                and self.decisions_differ == 0)

    def __str__(self) -> str:
        t = self.tolerance
        rel = f" + {t.rtol:g} |logit|" if t.rtol else ""
        return (f"{self.engine} vs eager on {self.n} images: max |dlogit| {self.max_abs_logit:.2e} "
                f"(tol {t.logit:g}{rel}), max |dprob| {self.max_abs_prob:.2e} (tol {t.prob:g}), "
                f"{plural(self.decisions_differ, 'decision')} differ")


def agreement(name: str, ref: np.ndarray, got: np.ndarray,
              calibrate: Callable[[np.ndarray], np.ndarray] | None = None,
              threshold: float | None = None) -> Agreement:
    """Compare an engine's logits with the eager reference (and, if given, its
    calibrated probabilities and decisions at ``threshold``)."""
    ref, got = np.asarray(ref, np.float64), np.asarray(got, np.float64)
    if ref.shape != got.shape:
        raise EngineError(f"engine {name!r}: output shape {got.shape}; expected {ref.shape}")
    tol = TOLERANCES[name]
    if not np.isfinite(got).all():
        return Agreement(name, len(ref), float("inf"), float("inf"), len(ref), tol)
    calibrate = calibrate or (lambda z: 1.0 / (1.0 + np.exp(-z)))
    p_ref, p_got = calibrate(ref), calibrate(got)
    differ = 0
    if threshold is not None:
        clear = np.abs(p_ref - threshold) > tol.prob
        differ = int(((p_ref >= threshold) != (p_got >= threshold))[clear].sum())
    err = np.abs(ref - got)
    return Agreement(name, len(ref), float(err.max(initial=0.0)),
                     float(np.abs(p_ref - p_got).max(initial=0.0)), differ, tol,
                     float((err - tol.rtol * np.abs(ref)).max(initial=0.0)))


# ------------------------------------------------------------------ engines


class Engine:
    """Callable: float32 (B, 1, S, S) array -> float32 logits (B,)."""

    name = "?"

    def __call__(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def describe(self) -> str:
        return self.name


class TorchEngine(Engine):
    def __init__(self, model: nn.Module, name: str, device: torch.device):
        if name not in ("eager", "channels_last", "bf16"):
            raise ValueError(f"torch engine {name!r}; allowed: eager, channels_last, bf16")
        self.name, self.device = name, device
        self.model = copy.deepcopy(model).to(device).eval()
        self.fmt = torch.contiguous_format if name == "eager" else torch.channels_last
        if name != "eager":
            self.model = self.model.to(memory_format=torch.channels_last)

    def _autocast(self) -> contextlib.AbstractContextManager[None]:
        if self.name == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def __call__(self, x: np.ndarray) -> np.ndarray:
        t = torch.from_numpy(np.ascontiguousarray(x, np.float32))
        if self.device.type == "cuda":
            t = t.pin_memory().to(self.device, non_blocking=True)
        t = t.contiguous(memory_format=self.fmt)
        # eager is the plain baseline (no_grad); the others also drop autograd's
        # version counters (inference_mode).
        grad_ctx = torch.no_grad() if self.name == "eager" else torch.inference_mode()
        with grad_ctx, self._autocast():
            return self.model(t).float().cpu().numpy().reshape(len(x))

    def describe(self) -> str:
        return f"{self.name} ({self.device})"


class OnnxEngine(Engine):
    name = "onnx"

    def __init__(self, onnx_path: Path, threads: int | None = None):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.intra_op_num_threads = threads or torch.get_num_threads()
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        self.path = Path(onnx_path)
        self.session = ort.InferenceSession(str(self.path), opts, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.version = ort.__version__

    def __call__(self, x: np.ndarray) -> np.ndarray:
        out = self.session.run(None, {self.input_name: np.ascontiguousarray(x, np.float32)})[0]
        return np.asarray(out, np.float32).reshape(len(x))

    def describe(self) -> str:
        return f"onnx (onnxruntime {self.version}, CPU, {self.path.name})"


# ------------------------------------------------------------------ export


def onnx_cache_path(checkpoint: str | Path, checkpoint_sha256: str) -> Path:
    """Where the export of ``checkpoint`` lives: next to it, keyed by its hash.

    Falls back to ``$XDG_CACHE_HOME/fibrosis/onnx`` when the checkpoint's folder
    is read-only (a shared model store).
    """
    checkpoint = Path(checkpoint)
    name = f"{checkpoint.stem}.{checkpoint_sha256[:16]}.onnx"
    if os.access(checkpoint.parent, os.W_OK):
        return checkpoint.parent / name
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "fibrosis" / "onnx"
    base.mkdir(parents=True, exist_ok=True)
    return base / name


@contextlib.contextmanager
def _quiet_loggers(*names: str) -> Iterator[None]:
    saved = {n: logging.getLogger(n).level for n in names}
    for n in names:
        logging.getLogger(n).setLevel(logging.WARNING)
    try:
        yield
    finally:
        for n, level in saved.items():
            logging.getLogger(n).setLevel(level)


def export_onnx(model: nn.Module, path: str | Path, input_size: int) -> Path:
    """Export ``model`` (fp32, eval, CPU, dynamic batch) to ``path`` unless it is there.

    Written to a temporary name and renamed, so a killed export never leaves a
    half-written graph under the final name; concurrent ranks write identical files.
    """
    path = Path(path)
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    cpu = copy.deepcopy(model).float().cpu().eval()
    x = torch.zeros(2, 1, input_size, input_size)
    log = io.StringIO()
    try:
        # The exporter prints progress and its passes log at INFO: keep that out of
        # the scoring log unless debugging.
        with atomic_target(path) as tmp, contextlib.redirect_stdout(log), _quiet_loggers("onnxscript", "onnx_ir"), \
                torch.no_grad():
            try:
                import onnxscript  # noqa: F401  (the dynamo exporter needs it)

                torch.onnx.export(cpu, (x,), str(tmp), dynamo=True, external_data=False,
                                  input_names=["x"], output_names=["logit"],
                                  dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1)}})
            except ImportError:
                torch.onnx.export(cpu, (x,), str(tmp), dynamo=False, input_names=["x"],
                                  output_names=["logit"], dynamic_axes={"x": {0: "batch"}, "logit": {0: "batch"}})
    finally:
        logger.debug("onnx export log:\n%s", log.getvalue())
    logger.info("exported %s (%.1f MB)", path, path.stat().st_size / 1e6)
    return path


# ------------------------------------------------------------------ selection


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX-BF16 in /proc/cpuinfo (Linux); False when unknown."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def onnxruntime_available() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def auto_order(device: torch.device) -> list[str]:
    """Candidates for ``auto``, best first (order measured in benchmarks/score.py)."""
    if device.type == "cuda":
        return ["bf16", "channels_last", "eager"]
    order = ["bf16"] if cpu_has_native_bf16() else []
    if onnxruntime_available():
        order.append("onnx")
    return order + ["channels_last", "eager"]


def verification_batch(input_size: int, preprocessing: Preprocessing, n: int = 8,
                       seed: int = 0) -> np.ndarray:
    """Deterministic smooth images in [0, 1], normalised like real inputs.

    Smoothed noise at several scales exercises the whole network with image-like
    statistics (flat regions, edges, texture) rather than white noise.
    """
    import cv2

    rng = np.random.default_rng(seed)
    out = np.empty((n, 1, input_size, input_size), np.float32)
    for i in range(n):
        img = np.zeros((input_size, input_size), np.float32)
        for sigma, weight in ((input_size / 8, 0.6), (input_size / 40, 0.3), (1.0, 0.1)):
            noise = rng.standard_normal((input_size, input_size)).astype(np.float32)
            layer = cv2.GaussianBlur(noise, (0, 0), sigma)
            img += weight * (layer - layer.min()) / (np.ptp(layer) + 1e-6)
        out[i, 0] = (np.clip(img, 0, 1) - preprocessing.mean) / preprocessing.std
    return out


def make_engine(model: FibrosisNet | EnsembleNet, name: str, *, device: torch.device | str = "cpu",
                onnx_path: str | Path | None = None, threads: int | None = None) -> Engine:
    """Build one named engine (no verification; see :func:`select_engine`)."""
    device = torch.device(device)
    if name not in ENGINES:
        raise ValueError(f"engine {name!r}; allowed: {['auto', *ENGINES]}")
    if name == "onnx":
        if device.type != "cpu":
            raise EngineError(f"engine 'onnx' runs on the CPU; on {device} use bf16 or eager")
        if not onnxruntime_available():
            raise EngineError("engine 'onnx' needs the onnxruntime package (pip install onnxruntime)")
        if onnx_path is None:
            raise EngineError("engine 'onnx' needs onnx_path (where the export is cached)")
        export_onnx(model, onnx_path, model.preprocessing.input_size)
        return OnnxEngine(Path(onnx_path), threads)
    return TorchEngine(model, name, device)


def select_engine(model: FibrosisNet | EnsembleNet, name: str = "auto", *, device: torch.device | str = "cpu",
                  onnx_path: str | Path | None = None, threads: int | None = None,
                  calibrate: Callable[[np.ndarray], np.ndarray] | None = None,
                  threshold: float | None = None, sample: np.ndarray | None = None,
                  ) -> tuple[Engine, Agreement]:
    """The requested engine (or, for ``auto``, the first that works and agrees), verified.

    An explicitly named engine that fails to build or to agree raises
    :class:`EngineError`; ``auto`` logs why and moves to the next candidate.
    """
    device = torch.device(device)
    if name != "auto" and name not in ENGINES:
        raise ValueError(f"engine {name!r}; allowed: {['auto', *ENGINES]}")
    if sample is None:
        sample = verification_batch(model.preprocessing.input_size, model.preprocessing)
    eager = TorchEngine(model, "eager", device)
    ref = eager(sample)
    candidates = auto_order(device) if name == "auto" else [name]
    for cand in candidates:
        try:
            engine = eager if cand == "eager" else make_engine(
                model, cand, device=device, onnx_path=onnx_path, threads=threads)
            agree = agreement(cand, ref, engine(sample), calibrate, threshold)
        except Exception as exc:  # export/runtime failures: next candidate (auto) or raise
            if name != "auto":
                raise EngineError(f"engine {cand!r} unavailable: {type(exc).__name__}: {exc}") from exc
            # auto tries the fastest engines first; one missing here is expected, not a fault
            logger.info("engine %s is not available here (%s: %s); trying the next", cand, type(exc).__name__, exc)
            continue
        if agree.ok:
            logger.info("engine %s: %s", engine.describe(), agree)
            return engine, agree
        if name != "auto":
            raise EngineError(f"engine {cand!r} disagrees with eager fp32 beyond tolerance: {agree}")
        # A reduced-precision engine that moves outputs beyond tolerance is the check doing its
        # job: the next (more exact) engine is used, and the scores are those of eager fp32.
        logger.info("engine %s not used: its outputs differ from eager fp32 beyond tolerance (%s); trying the next",
                    cand, agree)
    logger.warning("no engine among %s agrees with eager fp32", candidates)
    raise EngineError(f"no engine among {candidates} agrees with eager")  # eager always agrees
