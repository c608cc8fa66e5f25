"""Benchmark `fibrosis score` end to end against its two ceilings, in one run.

    .venv/bin/python benchmarks/score.py                      # resnet18 @ 224, 24 files per format
    .venv/bin/python benchmarks/score.py --arch resnet50 --n 12

1. model alone: every engine (fibrosis.model.engine) on synthetic (B, 1, 224, 224) batches,
   images/s and speed-up over plain PyTorch fp32 eager, and its agreement with eager;
2. decode alone: the scoring decode path (fibrosis.score.run.results: worker processes,
   ingestion's load + checks, the training transform) over the same files, no model;
3. end to end: fibrosis.score.run.score with engine=auto on those files;
   ratios against min(decode, model) and against the shared-core bound
   1 / (1/decode + 1/model): on a CPU-only machine decode and inference compete for
   the same cores, so the sum of their times, not the larger one, is the floor;
4. peak RSS of a scoring run over 1,000 and 5,000 small DICOMs (hard links of one
   256 px file, model input 64 px so that the run is quick): it must not grow with N.

Files: realistic 2500 x 2048 12-bit DX radiographs from benchmarks/ingest.py
(uncompressed MONOCHROME2 and JPEG 2000 lossless MONOCHROME1). Rates of engines are
the best of ``--rounds`` interleaved rounds: other jobs on a shared machine only ever
slow a round down. Weights: random init (the speed of a network does not depend on its
weights); calibration T=1.5 and threshold 0.5 stand in for an evaluated run.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path


REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


_BENCH_INGEST = None


def _ingest_bench():
    """benchmarks/ingest.py (its radiograph generator and DICOM writer), loaded once."""
    global _BENCH_INGEST
    if _BENCH_INGEST is None:
        spec = importlib.util.spec_from_file_location("bench_ingest", REPO / "benchmarks" / "ingest.py")
        _BENCH_INGEST = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(_BENCH_INGEST)
    return _BENCH_INGEST


def _write_dicom(job: tuple[int, str, str]) -> str:
    return _ingest_bench().write_dicom(job)


def make_checkpoint(path: Path, arch: str, input_size: int) -> Path:
    import torch

    from fibrosis.model.calibration import TemperatureScaling
    from fibrosis.model.threshold import SCALE, ThresholdRecord
    from fibrosis.model.checkpoint import Checkpoint, save_checkpoint
    from fibrosis.config import Config, ModelConfig, config_to_dict
    from fibrosis.model.net import build_model

    torch.manual_seed(0)
    net = build_model(arch, "none", input_size=input_size)
    cfg = Config(model=ModelConfig(arch=arch, weights="none", input_size=input_size))
    return save_checkpoint(path, Checkpoint(
        weights=net.state_dict(), config=config_to_dict(cfg), arch=cfg.model.arch, preprocessing=net.preprocessing,
        weights_info=net.weights_info, calibration=TemperatureScaling(1.5).record(),
        threshold=ThresholdRecord(SCALE, "youden", 0.5, points={"youden": 0.5})))


def model_rates(ckpt: Path, engines: list[str], batch: int, rounds: int, seconds: float) -> dict[str, float]:
    import torch

    from fibrosis.io import file_sha256
    from fibrosis.model.checkpoint import load_model
    from fibrosis.model.engine import TorchEngine, agreement, make_engine, onnx_cache_path, verification_batch

    net, _ = load_model(ckpt)
    size = net.preprocessing.input_size
    x = verification_batch(size, net.preprocessing, n=batch)
    ref = TorchEngine(net, "eager", torch.device("cpu"))(x)
    built = {}
    for name in engines:
        try:
            eng = make_engine(net, name, onnx_path=onnx_cache_path(ckpt, file_sha256(ckpt)))
        except Exception as exc:  # e.g. onnxruntime not installed
            print(f"  {name:14s} unavailable: {type(exc).__name__}: {exc}")
            continue
        built[name] = eng
        print(f"  {name:14s} {agreement(name, ref, eng(x), threshold=0.5)}")
    best = {n: 0.0 for n in built}
    for _ in range(rounds):
        for name, eng in built.items():
            eng(x)  # warm-up (allocations, oneDNN primitive cache)
            n, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < seconds or n == 0:
                eng(x)
                n += batch
            best[name] = max(best[name], n / (time.perf_counter() - t0))
    return best


def decode_rate(ckpt: Path, src: Path, workers: int) -> float:
    from fibrosis.model.checkpoint import load_checkpoint
    from fibrosis.config import config_from_dict
    from fibrosis.data.ingest import discover
    from fibrosis.data.records import Decoded, Preprocessing
    from fibrosis.score.run import results

    ck = load_checkpoint(ckpt)
    cfg = config_from_dict(ck.config).ingest
    entries = sorted((str(p), "") for p in discover([src]))
    t0 = time.perf_counter()
    n = sum(1 for r in results(entries, cfg, Preprocessing.from_dict(ck.preprocessing), workers) if isinstance(r[0], Decoded))
    assert n == len(entries), f"{len(entries) - n} file(s) failed to decode"
    return n / (time.perf_counter() - t0)


def _descendants_rss_mb(root: int) -> float:
    """Current RSS of all descendants of ``root`` (decode workers are grandchildren,
    under the fork server, so RUSAGE_CHILDREN does not see them)."""
    parent: dict[int, int] = {}
    rss: dict[int, int] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            parent[int(d.name)] = int(fields[1])
            rss[int(d.name)] = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, IndexError, ValueError):
            continue
    total = 0
    for pid in parent:
        p = parent.get(pid)
        while p and p != root:
            p = parent.get(p)
        if p == root:
            total += rss.get(pid, 0)
    return total / 2**20


def rss_child(ckpt: str, src: str, out: str, workers: int) -> None:
    import threading

    from fibrosis.score.run import score

    peak, done = [0.0], threading.Event()

    def sample() -> None:
        while not done.wait(0.25):
            peak[0] = max(peak[0], _descendants_rss_mb(os.getpid()))

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    s = score(ckpt, src, out, progress=False, workers=workers, device="cpu")
    done.set()
    t.join()
    self_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{sum(s.counts.values())} {self_mb:.0f} {peak[0]:.0f} {s.seconds:.1f}")


def rss_runs(root: Path, arch: str, counts: list[int], workers: int) -> None:
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    stored = _ingest_bench().radiograph(7, 320, 256)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3.4.5"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = "1.2.3.4", "1.2.3.4.1"
    ds.PatientID, ds.Modality, ds.BodyPartExamined, ds.ViewPosition = "RSS", "DX", "CHEST", "PA"
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel, ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 1, 16, 12, 11, 0
    ds.PhotometricInterpretation, ds.PixelData = "MONOCHROME2", stored.tobytes()
    one = root / "rss-one.dcm"
    pydicom.dcmwrite(one, ds, enforce_file_format=True)
    ckpt = make_checkpoint(root / "rss-run" / "best.pt", arch, 64)
    for n in counts:
        src = root / f"rss-{n}"
        src.mkdir()
        for i in range(n):
            os.link(one, src / f"{i:06d}.dcm")
        out = root / f"rss-{n}.csv"
        res = subprocess.run([sys.executable, __file__, "--rss-child", str(ckpt), str(src), str(out),
                              str(workers)], capture_output=True, text=True, check=True)
        scored, self_mb, kids_mb, secs = res.stdout.split()[-4:]
        print(f"  {n:6d} files: scored {scored}, peak RSS main process {self_mb} MB, peak RSS of its "
              f"worker processes together {kids_mb} MB ({float(secs):.0f} s)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arch", default="resnet18", help="resnet18 (default) | resnet50 | ...")
    ap.add_argument("--input-size", type=int, default=224)
    ap.add_argument("--n", type=int, default=24, help="files per format (default 24)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=0, help="decode workers (0 = all cores)")
    ap.add_argument("--engines", default="eager,channels_last,bf16,onnx")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=4.0, help="per engine per round")
    ap.add_argument("--rss", default="1000,5000", help="file counts for the RSS runs ('' = skip)")
    ap.add_argument("--rss-only", action="store_true", help="only the RSS runs")
    ap.add_argument("--rss-child", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.rss_child:
        rss_child(*args.rss_child[:3], int(args.rss_child[3]))
        return 0

    import logging

    logging.basicConfig(level=logging.WARNING)
    from fibrosis.score.run import score

    workers = args.workers or len(os.sched_getaffinity(0))
    root = Path(tempfile.mkdtemp(prefix="fibrosis-score-bench-"))
    print(f"{args.arch} @ {args.input_size} px, batch {args.batch_size}, {workers} decode worker(s), "
          f"{os.cpu_count()} CPU(s), load average {os.getloadavg()[0]:.1f}; files in {root}")
    try:
        if args.rss_only:
            rss_runs(root, args.arch, [int(c) for c in args.rss.split(",")], workers)
            return 0
        src = root / "dicom"
        src.mkdir()
        t = time.perf_counter()
        jobs = [(2000 + i, fmt, str(src / f"{fmt}-{i:04d}.dcm")) for fmt in ("uncompressed", "j2k")
                for i in range(args.n)]
        with ProcessPoolExecutor(workers) as ex:
            files = list(ex.map(_write_dicom, jobs))
        mb = sum(Path(f).stat().st_size for f in files) / 1e6 / len(files)
        print(f"generated {len(files)} DICOMs (2500x2048 12-bit; half uncompressed, half J2K), "
              f"{mb:.1f} MB average, in {time.perf_counter() - t:.0f} s")
        ckpt = make_checkpoint(root / "run" / "best.pt", args.arch, args.input_size)

        print("\n(b) model alone on synthetic tensors; agreement with eager fp32:")
        rates = model_rates(ckpt, args.engines.split(","), args.batch_size, args.rounds, args.seconds)
        for name, r in rates.items():
            print(f"  {name:14s} {r:8.1f} images/s   {r / rates['eager']:5.2f}x eager fp32")

        print("\n(a) decode alone (workers + checks + training transform, no model):")
        dec = decode_rate(ckpt, src, workers)
        print(f"  {dec:8.1f} images/s")

        print("\nend to end (fibrosis.score.run.score, engine auto):")
        s = score(ckpt, src, root / "scores.csv", progress=False, workers=workers, device="cpu",
                  batch_size=args.batch_size)
        assert s.ok() and s.counts["ok"] == len(files), s
        e2e = len(files) / s.seconds
        chosen = s.engine.split()[0]
        mod = rates.get(chosen, rates["eager"])
        shared = 1 / (1 / dec + 1 / mod)
        steady = len(files) / (s.seconds - s.setup_seconds)
        print(f"  {e2e:8.1f} images/s with {s.engine} ({s.seconds:.1f} s, of which {s.setup_seconds:.1f} s "
              f"one-time set-up: checkpoint hash + load, engine build + verification)")
        print(f"  {steady:8.1f} images/s after set-up (comparable to decode alone, which has no model to load)")
        for what, rate in (("end to end", e2e), ("after set-up", steady)):
            print(f"  {what:12s}: ratio to min(decode {dec:.1f}, model {mod:.1f}) = {rate / min(dec, mod):.2f}; "
                  f"to the shared-core bound 1/(1/decode + 1/model) = {shared:.1f}: {rate / shared:.2f}")

        if args.rss:
            print("\npeak RSS (resnet input 64 px, 256 px DICOMs, engine auto):")
            rss_runs(root, args.arch, [int(c) for c in args.rss.split(",")], workers)
        print(f"\nload average at the end {os.getloadavg()[0]:.1f}")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
