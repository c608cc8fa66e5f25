"""Peak RSS and wall time of `fibrosis split` alone, at archive scale, in seconds not hours.

`split` reads only ``manifest.csv`` (its ``dhash`` column, recorded at ingest) and never a
pixel when every row has a hash, so a manifest alone is a complete cache for it: this writes
one per N (2 images per patient, random 256-bit dHashes, about 1% near-duplicate copies
under other patients with <= 3 bits flipped, one image under 30 patient keys, ~5% positive
labels), runs split in a fresh child process and reports the child's peak RSS (``VmHWM`` of
its own address space). Not ``getrusage(RUSAGE_CHILDREN).ru_maxrss``: Linux carries the
peak of the address space a process replaces at exec into its ru_maxrss, and subprocess
forks (vfork) from this process, which has just held the generated hashes -- at 100k that
parent peak, not split's, is what ru_maxrss reports. The target: RSS grows <= 20%
from 10k to 100k images.

``--pairs quadratic`` makes near copies of ~0.96 N/100k of the rows instead of 1%, so the pairs
grow ~N^2 as benchmarks/scale.py's generated radiographs give them (about 96k pairs at 100k):
the worst case for the pairs split must hold until it has assigned every group.

    nice python benchmarks/split_memory.py --n 10000,100000 [--pairs quadratic]
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import fibrosis
from fibrosis.data.cache import MANIFEST_COLUMNS
from fibrosis.io import write_csv

CHILD = ("import sys, logging; logging.basicConfig(level=logging.WARNING); "
         "from fibrosis.config import SplitConfig; from fibrosis.data.split import split_cache; "
         "s = split_cache(sys.argv[1], SplitConfig()); "
         "hwm = next(l for l in open('/proc/self/status') if l.startswith('VmHWM')).split()[1]; "
         "print('RESULT', s.near_duplicates, len(s.warnings), hwm)")


def synthetic_hashes(n: int, rng: np.random.Generator, dup_frac: float = 0.01,
                     cluster: int = 30) -> np.ndarray:
    """(n, 32) uint8: random dHashes, ~dup_frac of rows a near copy (<= 3 bits flipped) of
    another row (which is under another patient: rows 2p and 2p+1 are patient p), and the
    first ``cluster`` odd rows one identical image under as many patient keys."""
    bits = rng.integers(0, 2, (n, 256), dtype=np.uint8)
    dst = rng.choice(n, int(dup_frac * n), replace=False)
    src = (dst + 2 * rng.integers(1, n // 2, dst.size)) % n  # another patient: an even offset
    for s, d in zip(src.tolist(), dst.tolist()):
        bits[d] = bits[s]
        bits[d, rng.choice(256, int(rng.integers(0, 4)), replace=False)] ^= 1
    bits[1:2 * cluster:2] = bits[1]
    return np.packbits(bits, axis=1)


def write_manifest(root: Path, n: int, pairs: str = "linear", seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    hashes = synthetic_hashes(n, rng, 0.01 if pairs == "linear" else min(0.96 * n / 100_000, 1.0))
    labels = (rng.random(n) < 0.05).astype(int)
    shard_size = 256

    def rows():
        for i in range(n):
            yield {"path": f"/archive/site-a/2026/{i // 1000:04d}/study-{i // 2:07d}/image-{i:07d}.dcm",
                   "content_hash": f"{i:064x}", "shard": i // shard_size, "index": i % shard_size,
                   "source_format": "dicom", "patient_key": f"{(i // 2) * 7919 % 10**9:016x}",
                   "study_uid": f"1.2.826.0.1.{i // 2}", "series_uid": f"1.2.826.0.2.{i}",
                   "sop_uid": f"1.2.826.0.3.{i}", "view_position": "PA", "modality": "CR",
                   "label": int(labels[i]), "dhash": hashes[i].tobytes().hex(),
                   "rows": 256, "cols": 256}

    root.mkdir(parents=True, exist_ok=True)
    write_csv(root / "manifest.csv", rows(), MANIFEST_COLUMNS)


def run_split(root: Path) -> tuple[float, float, str]:
    """(peak RSS MB, wall s, result line) of split in a fresh child process."""
    t0 = time.perf_counter()
    # from the checkout this process imported fibrosis from: ``-c`` puts the working directory first
    out = subprocess.run([sys.executable, "-c", CHILD, str(root)], capture_output=True, text=True, check=True,
                         cwd=Path(fibrosis.__file__).resolve().parents[1])
    wall = time.perf_counter() - t0
    line = next(x for x in out.stdout.splitlines() if x.startswith("RESULT"))
    return int(line.split()[3]) / 1024, wall, line  # VmHWM is in KiB


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", default="10000,100000", help="comma-separated image counts")
    ap.add_argument("--pairs", choices=("linear", "quadratic"), default="linear",
                    help="near copies: 1%% of rows, or a share growing with N (pairs ~N^2)")
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)  # internal: measure one N
    args = ap.parse_args()
    if args.one:
        with tempfile.TemporaryDirectory() as tmp:
            write_manifest(Path(tmp), args.one, args.pairs)
            rss, wall, line = run_split(Path(tmp))
        print(f"{args.one} {rss:.1f} {wall:.2f} {line}")
        return
    results = {}
    for n in [int(x) for x in args.n.split(",")]:
        # one process per N: each generates its manifest and measures split on it
        out = subprocess.run([sys.executable, __file__, "--one", str(n), "--pairs", args.pairs], capture_output=True,
                             text=True, check=True).stdout.split()
        results[n] = (float(out[1]), float(out[2]))
        print(f"N={n:>8d}  split peak RSS {results[n][0]:7.1f} MB  wall {results[n][1]:6.2f} s  "
              f"pairs {out[4]}  warnings {out[5]}", flush=True)
    ns = sorted(results)
    for a, b in zip(ns, ns[1:]):
        print(f"RSS growth {a} -> {b}: {results[b][0] / results[a][0] - 1:+.1%}; "
              f"time ratio {results[b][1] / results[a][1]:.2f}")


if __name__ == "__main__":
    main()
