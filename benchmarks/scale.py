"""Benchmark a whole archive: time and memory of ingest, re-ingest, split, re-split and
score at N = 1k, 10k, 100k generated radiographs, and the exponent of time in N.

    nice .venv/bin/python benchmarks/scale.py --n 1000,10000,100000 --root /tmp/scale

Files: small (160 x 128, 12-bit, uncompressed DX) anatomy-like radiographs from
benchmarks/ingest.py, two per patient; 1 in 100 is a noisy copy of another file under another
PatientID (a near-duplicate across patients), and one image is exported under 30 PatientIDs (a
group that split must name). Each stage runs in a fresh process; the RSS of that process (main)
and of it plus all its descendants (tree: decode workers, fork server) is sampled every 0.1 s.
Re-ingest and re-split run on unchanged data (the no-op cost). Wall and CPU time exclude the
interpreter's start and exit (a fixed ~0.1-0.5 s per command whatever N; a no-op re-split's own
work is a few hundredths of a second). Each stage's CPU time (user + sys)
of its whole process tree is recorded too: unlike wall time it does not grow when other processes
share the cores, so its exponent in N is the one to trust on a busy machine. It is exact: this
process makes itself the child subreaper, so every descendant (decode workers, the fork server
that outlives the stage) is reaped here with os.wait4 and its rusage, which includes the
descendants it reaped, is summed; the stage's own start-up before its timer is subtracted. Score uses a random-init resnet18
at 32 px (the speed of a network does not depend on its weights). After each N the correctness
invariants are checked: every input once in manifest or rejects, one score row per input, no
patient in two splits. The generated data is deleted after each N.
"""
from __future__ import annotations

import argparse
import ctypes
import csv
import importlib.util
import json
import logging
import os
import resource
import shutil
import subprocess
import sys
import time
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

STAGES = ("ingest", "re-ingest", "split", "re-split", "score")
SIDE = (160, 128)
CLUSTER = 30  # one image under this many PatientIDs


def _bench(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _write_chunk(job: tuple[str, int, int, int]) -> int:
    """Files [start, stop) of an archive of n: pixels from radiograph(), written with pydicom."""
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    out, start, stop, n = job
    radiograph = _bench("ingest").radiograph
    old = time.time() - 3600  # not "racily clean": ingest trusts the stamps of hour-old files
    for i in range(start, stop):
        seed, pid = i, f"P{i // 2:07d}"
        if i % 100 == 99:  # a near-duplicate of an earlier file under another patient
            seed, pid = i - 37, f"D{i:07d}"
        if n // 2 <= i < n // 2 + CLUSTER:
            seed = n // 2
        stored = radiograph(seed, *SIDE)
        if seed != i:
            rng = np.random.default_rng(i)
            stored = np.clip(stored.astype(np.int32) + rng.integers(-4, 5, stored.shape), 0, 4095).astype(np.uint16)
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = f"1.2.826.0.1.3680043.9.7.{i + 1}"
        ds.StudyInstanceUID = f"1.2.826.0.1.3680043.9.8.{i + 1}"
        ds.SeriesInstanceUID = f"1.2.826.0.1.3680043.9.9.{i + 1}"
        ds.PatientID, ds.Modality, ds.BodyPartExamined, ds.ViewPosition = pid, "DX", "CHEST", "PA"
        ds.Rows, ds.Columns = stored.shape
        ds.SamplesPerPixel, ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 1, 16, 12, 11, 0
        ds.PhotometricInterpretation, ds.PixelData = "MONOCHROME2", stored.tobytes()
        ds.WindowCenter, ds.WindowWidth = 2048, 4096
        path = Path(out) / f"{i // 1000:04d}" / f"{i:07d}.dcm"
        path.parent.mkdir(parents=True, exist_ok=True)
        pydicom.dcmwrite(path, ds, enforce_file_format=True)
        os.utime(path, (old, old))
    return stop - start


def generate(src: Path, n: int, workers: int) -> float:
    t = time.perf_counter()
    step = 500
    with ProcessPoolExecutor(workers) as ex:
        list(ex.map(_write_chunk, [(str(src), s, min(n, s + step), n) for s in range(0, n, step)]))
    return time.perf_counter() - t


# ------------------------------------------------------------------ one stage in a fresh process


def _config():
    from fibrosis.config import Config, IngestConfig, ModelConfig, SplitConfig

    return Config(ingest=IngestConfig(image_size=64, min_side=64, shard_size=256),
                  split=SplitConfig(max_group_patients=10),
                  model=ModelConfig(arch="resnet18", weights="none", input_size=32))


def run_stage(stage: str, root: Path, workers: int) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    cfg = _config()
    t, cpu0 = time.perf_counter(), _own_cpu()
    if stage in ("ingest", "re-ingest"):
        from fibrosis.data.ingest import ingest

        s = ingest([root / "src"], root / "cache", cfg.ingest, workers=workers, progress=False)
        info = {"ingested": s.ingested, "skipped": s.skipped, "rejected": sum(s.rejected.values())}
    elif stage in ("split", "re-split"):
        from fibrosis.data.split import split_cache

        s = split_cache(root / "cache", cfg.split)
        info = {"pairs": s.near_duplicates, "warnings": len(s.warnings)}
    else:
        from fibrosis.score.run import score

        s = score(root / "ckpt" / "best.pt", root / "src", root / "scores.csv", workers=workers,
                  progress=False, device="cpu", salt_dir=root / "cache")
        info = {"counts": dict(s.counts)}
    info["seconds"] = time.perf_counter() - t
    info["startup_cpu"] = cpu0  # interpreter start and imports before the timer: not the stage's work
    print("RESULT " + json.dumps(info), flush=True)
    sys.stderr.flush()
    # Nor is the interpreter's exit: tearing down numpy alone takes ~0.08 s of CPU (torch ~0.4 s),
    # as much as a whole no-op re-split. Descendants still running become the benchmark's
    # orphans and are reaped, with their CPU time, by _reap_orphans.
    os._exit(0)


def _own_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def become_subreaper() -> bool:
    """Orphaned descendants of a stage (the fork server outlives it) are re-parented to this
    process instead of init, so their CPU time can be collected with wait4 (Linux only)."""
    try:
        return ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0) == 0  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        return False


def _children() -> set[int]:
    """Pids whose parent is this process, from /proc."""
    me, found = os.getpid(), set()
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if int((d / "stat").read_text().rsplit(")", 1)[1].split()[1]) == me:
                    found.add(int(d.name))
            except (OSError, IndexError, ValueError):
                continue
    return found


def _reap_orphans(before: set[int], timeout: float = 60.0) -> float:
    """Wait for this process's children that were not its children before the stage (the
    stage's re-parented descendants); returns their CPU seconds, their own reaped descendants
    included. Older children (e.g. a resource tracker) are left alone."""
    cpu, deadline = 0.0, time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = _children() - before
        if not left:
            return cpu
        for pid in left:
            try:
                done, _, ru = os.wait4(pid, os.WNOHANG)
            except ChildProcessError:
                continue
            if done:
                cpu += ru.ru_utime + ru.ru_stime
        time.sleep(0.02)
    logging.warning("descendants of a stage still running after %.0f s: their CPU time is not counted", timeout)
    return cpu


def make_checkpoint(root: Path) -> None:
    import torch

    from fibrosis.config import config_to_dict
    from fibrosis.model.calibration import TemperatureScaling
    from fibrosis.model.threshold import SCALE, ThresholdRecord
    from fibrosis.model.checkpoint import Checkpoint, save_checkpoint
    from fibrosis.model.net import build_model

    cfg = _config()
    torch.manual_seed(0)
    net = build_model(cfg.model.arch, "none", input_size=cfg.model.input_size)
    (root / "ckpt").mkdir(parents=True, exist_ok=True)
    save_checkpoint(root / "ckpt" / "best.pt", Checkpoint(
        weights=net.state_dict(), config=config_to_dict(cfg), arch=cfg.model.arch, preprocessing=net.preprocessing,
        weights_info=net.weights_info, calibration=TemperatureScaling(1.5).record(),
        threshold=ThresholdRecord(SCALE, "youden", 0.5, points={"youden": 0.5})))


def _tree_rss_mb(root_pid: int) -> tuple[float, float]:
    """(RSS of root_pid, RSS of root_pid and all its descendants) in MB, from /proc."""
    parent, rss = {}, {}
    page = os.sysconf("SC_PAGE_SIZE")
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            parent[int(d.name)], rss[int(d.name)] = int(fields[1]), int(fields[21]) * page
        except (OSError, IndexError, ValueError):
            continue
    total = 0
    for pid in rss:
        p = pid
        while p and p != root_pid:
            p = parent.get(p)
        if p == root_pid:
            total += rss[pid]
    return rss.get(root_pid, 0) / 2**20, total / 2**20


def measure(stage: str, root: Path, workers: int) -> dict:
    env = dict(os.environ)
    if stage == "score":
        # One intra-op thread: next to the decode workers, torch's OpenMP threads on two shared
        # cores spin against them (resnet18 batch: 1.0 s with 2 threads, 0.04 s with 1 here).
        env["OMP_NUM_THREADS"] = "1"
    before = _children()
    proc = subprocess.Popen([sys.executable, __file__, "--stage", stage, "--root", str(root),
                             "--workers", str(workers)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    peak_main = peak_tree = 0.0
    while True:
        pid, status, ru = os.wait4(proc.pid, os.WNOHANG)  # wait4, not poll(): its rusage is the CPU time
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            cpu = ru.ru_utime + ru.ru_stime  # the stage and every descendant it reaped
            break
        m, t = _tree_rss_mb(proc.pid)
        peak_main, peak_tree = max(peak_main, m), max(peak_tree, t)
        time.sleep(0.1)
    cpu += _reap_orphans(before)
    out, err = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"stage {stage} failed ({proc.returncode}):\n{err[-3000:]}")
    info = json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[7:])
    info.update(main_mb=peak_main, tree_mb=peak_tree, cpu_s=cpu - info.pop("startup_cpu"))
    warnings = [line for line in err.splitlines() if "WARNING" in line]
    if warnings:
        info["warning"] = warnings[0].split(": ", 1)[-1][:90] + "..."
    return info


def check_invariants(root: Path, n: int) -> list[str]:
    def rows(p: Path) -> list[dict[str, str]]:
        with open(p, newline="") as fh:
            return list(csv.DictReader(fh))

    manifest, rejects = rows(root / "cache" / "manifest.csv"), rows(root / "cache" / "rejects.csv")
    paths = [r["path"] for r in manifest] + [r["path"] for r in rejects]
    problems = []
    if len(paths) != n or len(set(paths)) != n:
        problems.append(f"manifest+rejects hold {len(paths)} rows ({len(set(paths))} paths) for {n} inputs")
    splits = defaultdict(set)
    for r in manifest:
        splits[r["patient_key"]].add(r["split"])
    if any(len(s) != 1 or "" in s for s in splits.values()):
        problems.append("a patient in two splits, or unsplit")
    scored = [r["path"] for r in rows(root / "scores.csv")]
    if len(scored) != n or len(set(scored)) != n:
        problems.append(f"scores.csv holds {len(scored)} rows ({len(set(scored))} paths) for {n} inputs")
    return problems


def _exponent(ns: list[int], values: list[float]) -> str:
    """Fitted slope of log(value) on log(N) over all N, and "; a->b" the slope between the last
    two N (the one a target of "<= 1.1 from 10k to 100k" is read on)."""
    if len(ns) < 2 or min(values) <= 0:
        return "n/a"
    fit = float(np.polyfit(np.log(ns), np.log(values), 1)[0])
    last = float(np.log(values[-1] / values[-2]) / np.log(ns[-1] / ns[-2]))
    return f"{fit:.2f}" if len(ns) == 2 else f"{fit:.2f}; {last:.2f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", default="1000,10000,100000", help="comma-separated archive sizes")
    ap.add_argument("--root", type=Path, default=Path("/tmp/fibrosis-scale"))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--stage", choices=STAGES, help=argparse.SUPPRESS)
    ap.add_argument("--keep", action="store_true", help="keep the generated data")
    args = ap.parse_args(argv)
    if args.stage:
        run_stage(args.stage, args.root, args.workers)
        return 0
    if not become_subreaper():
        logging.warning("not a child subreaper (not Linux?): CPU time misses descendants that outlive a stage")
    results: dict[int, dict[str, dict]] = {}
    failed = False
    for n in [int(x) for x in args.n.split(",")]:
        root = args.root / f"n{n}"
        shutil.rmtree(root, ignore_errors=True)
        (root / "src").mkdir(parents=True)
        gen = generate(root / "src", n, args.workers)
        make_checkpoint(root)
        print(f"N={n}: generated in {gen:.0f} s", flush=True)
        results[n] = {}
        for stage in STAGES:
            results[n][stage] = r = measure(stage, root, args.workers)
            print(f"  {stage:9s} {r['seconds']:8.2f} s {n / r['seconds']:9.0f} files/s  cpu {r['cpu_s']:8.2f} s   peak RSS main "
                  f"{r['main_mb']:6.0f} MB, tree {r['tree_mb']:6.0f} MB   "
                  f"{ {k: v for k, v in r.items() if k not in ('seconds', 'main_mb', 'tree_mb', 'cpu_s')} }", flush=True)
        problems = check_invariants(root, n)
        print(f"  invariants: {'all hold' if not problems else '; '.join(problems)}", flush=True)
        failed |= bool(problems)
        if not args.keep:
            shutil.rmtree(root)
    ns = sorted(results)
    print("\n| stage | " + " | ".join(f"N={n}: wall s (files/s) | cpu s | RSS main/tree MB" for n in ns)
          + " | exponent wall | exponent cpu |")
    print("|---|" + "---|---|---|" * len(ns) + "---|---|")
    for stage in STAGES:
        secs = [results[n][stage]["seconds"] for n in ns]
        cpus = [results[n][stage]["cpu_s"] for n in ns]
        cells = " | ".join(f"{s:.2f} ({n / s:.0f}) | {c:.2f} | "
                           f"{results[n][stage]['main_mb']:.0f}/{results[n][stage]['tree_mb']:.0f}"
                           for n, s, c in zip(ns, secs, cpus))
        print(f"| {stage} | {cells} | {_exponent(ns, secs)} | {_exponent(ns, cpus)} |")
    for n in ns:
        r = results[n]
        print(f"N={n}: re-ingest / ingest = {r['re-ingest']['seconds'] / r['ingest']['seconds']:.3f} wall, "
              f"{r['re-ingest']['cpu_s'] / r['ingest']['cpu_s']:.3f} cpu; re-split / split = "
              f"{r['re-split']['seconds'] / r['split']['seconds']:.3f} wall, "
              f"{r['re-split']['cpu_s'] / r['split']['cpu_s']:.3f} cpu")
    if len(ns) > 1:
        for stage in ("ingest", "split", "score"):
            a, b = results[ns[-2]][stage], results[ns[-1]][stage]
            print(f"{stage}: RSS growth N={ns[-2]} -> {ns[-1]}: main {b['main_mb'] / a['main_mb'] - 1:+.0%}, "
                  f"tree {b['tree_mb'] / a['tree_mb'] - 1:+.0%}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
