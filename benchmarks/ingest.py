"""Benchmark `fibrosis ingest` against a naive loop, on generated realistic radiographs.

    .venv/bin/python benchmarks/ingest.py            # 24 images per format, all cores
    .venv/bin/python benchmarks/ingest.py --n 8 --workers 1

Both run in this process on the same files (page-cache warm for both):
- naive: one file at a time: pydicom dcmread -> pixel_array -> apply_voi_lut ->
  (invert MONOCHROME1) -> min-max to [0, 1] -> PIL resize of the long side to 512;
- ingest: ``fibrosis.data.ingest.ingest`` exactly as the CLI runs it (worker processes,
  hashing, checks, shard commits, manifest), timed including pool start-up, and
  once more with one worker to separate per-core gain from parallelism.
Files: 2500 x 2048, 12 bits in 16, anatomy-like structure plus detector noise;
uncompressed (DX MONOCHROME2, window) and JPEG 2000 lossless (DX MONOCHROME1 +
PresentationLUTShape INVERSE, window), the two shapes of a real DX export.
Last, the cache read rate at 224 px with the training augmentation
(fibrosis.data.dataset.CacheDataset + build_augment(AugmentConfig())), one thread.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ROWS, COLS = 2500, 2048


def radiograph(seed: int, rows: int = ROWS, cols: int = COLS) -> np.ndarray:
    """12-bit MONOCHROME2 stored values: a patient of random size and pose (body, lungs, heart,
    diaphragm, ribs, texture), random exposure and collimation, devices, a side marker and
    detector noise.

    Why so much variation: split's near-duplicate search (16x16 dHash within 4 bits) is only as
    busy as images are alike. Real radiographs differ a lot at 16x16: over the 88,410 pairs of
    the 421 NIH sample images the dHash distance is >= 23 bits, 1st percentile 40, median 74.
    This generator gives >= 15, 1st percentile 43, median 82 over 1,500 images (a fixed pose
    gave a median of 42 and ~96k chance pairs within 4 bits at 100k, growing as N^2: a
    benchmark of a archive no hospital has)."""
    rng = np.random.default_rng(seed)
    h, w = rows // 4, cols // 4
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    yn, xn = y / h, x / w
    img = np.full((h, w), rng.uniform(0.02, 0.15), np.float32)
    cx, cy = 0.5 + rng.uniform(-0.05, 0.05), 0.55 + rng.uniform(-0.04, 0.04)
    bw, bh = rng.uniform(0.36, 0.52), rng.uniform(0.45, 0.6)
    img[((xn - cx) / bw) ** 2 + ((yn - cy) / bh) ** 2 < 1] = rng.uniform(0.5, 0.7)
    top = cy - rng.uniform(0.18, 0.26)
    for side in (-1, 1):
        lx = cx + side * bw * rng.uniform(0.4, 0.55)
        ly = top + rng.uniform(0.12, 0.2)
        lung = ((xn - lx) / (bw * rng.uniform(0.28, 0.42))) ** 2 + ((yn - ly) / rng.uniform(0.18, 0.32)) ** 2 < 1
        lung &= yn < cy + rng.uniform(0.05, 0.2)  # diaphragm
        img[lung] = rng.uniform(0.15, 0.35)
        ribs = np.sin(2 * np.pi * (yn + rng.uniform(0.5, 1.1) * (xn - lx) ** 2) / rng.uniform(0.055, 0.085)
                      + rng.uniform(0, 6)) > 0.75
        img[lung & ribs] += rng.uniform(0.06, 0.16)
    hx, hy = cx + rng.uniform(0.0, 0.08), cy + rng.uniform(0.0, 0.1)
    img[((xn - hx) / rng.uniform(0.1, 0.18)) ** 2 + ((yn - hy) / rng.uniform(0.1, 0.16)) ** 2 < 1] = rng.uniform(0.55, 0.75)
    img[(np.abs(xn - cx) < rng.uniform(0.04, 0.07)) & (yn > top - 0.1)] = rng.uniform(0.75, 0.9)
    for _ in range(int(rng.integers(0, 4))):  # devices, lines, buttons
        px, py = rng.uniform(0.15, 0.85, 2)
        img[(np.abs(xn - px) < rng.uniform(0.005, 0.03)) & (np.abs(yn - py) < rng.uniform(0.01, 0.2))] = 0.95
    texture = cv2.GaussianBlur(rng.normal(size=(h, w)).astype(np.float32), (0, 0), rng.uniform(2, 6))
    img = cv2.GaussianBlur(img, (0, 0), 1.5) + rng.uniform(0.03, 0.08) * texture / texture.std()
    angle, scale = rng.uniform(-4, 4), rng.uniform(0.92, 1.08)
    m = cv2.getRotationMatrix2D((w / 2, h / 2), angle, scale)
    img = cv2.warpAffine(img, m, (w, h), borderMode=cv2.BORDER_REFLECT)
    img = np.clip(img, 0, 1) ** rng.uniform(0.7, 1.4)  # exposure
    for edge in range(4):  # collimation: some edges shuttered
        if rng.random() < 0.35:
            k = int(rng.uniform(0.03, 0.12) * (h if edge < 2 else w))
            sl = [np.s_[:k, :], np.s_[-k:, :], np.s_[:, :k], np.s_[:, -k:]][edge]
            img[sl] = rng.uniform(0.85, 1.0)
    mx, my = int(rng.uniform(0.05, 0.9) * w), int(rng.uniform(0.03, 0.2) * h)  # side marker
    img[my:my + max(2, h // 30), mx:mx + max(2, w // 40)] = 1.0
    full = cv2.resize(img, (cols, rows), interpolation=cv2.INTER_CUBIC)
    stored = full * 3200 + 300 + rng.normal(0, 12, (rows, cols)).astype(np.float32)
    return np.clip(np.rint(stored), 0, 4095).astype(np.uint16)


def write_dicom(args: tuple[int, str, str]) -> str:
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, generate_uid

    seed, fmt, path = args
    stored = radiograph(seed)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientID, ds.Modality, ds.BodyPartExamined, ds.ViewPosition = f"BENCH{seed:04d}", "DX", "CHEST", "PA"
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel, ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 1, 16, 12, 11, 0
    ds.RescaleSlope, ds.RescaleIntercept, ds.WindowCenter, ds.WindowWidth = 1, 0, 2048, 4096
    if fmt == "j2k":
        ds.PhotometricInterpretation, ds.PresentationLUTShape = "MONOCHROME1", "INVERSE"
        ds.PixelData = (4095 - stored).astype(np.uint16).tobytes()
        ds.compress(JPEG2000Lossless, generate_instance_uid=False)
    else:
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.PixelData = stored.tobytes()
    pydicom.dcmwrite(path, ds, enforce_file_format=True)
    return path


def naive(path: Path, size: int) -> np.ndarray:
    import pydicom
    from PIL import Image
    from pydicom.pixels import apply_voi_lut

    ds = pydicom.dcmread(path)
    top = float(2 ** ds.BitsStored - 1)  # apply_windowing's output range for unsigned data
    arr = apply_voi_lut(ds.pixel_array, ds).astype(np.float32) / top
    if ds.PhotometricInterpretation == "MONOCHROME1":
        arr = 1.0 - arr
    scale = size / max(arr.shape)
    return np.asarray(Image.fromarray(arr, "F").resize((round(arr.shape[1] * scale), round(arr.shape[0] * scale))))


def read_rates(cache: Path, seconds: float = 5.0) -> tuple[float, float]:
    """Augmented 224 px samples per second from the cache, one process, one thread:
    (fibrosis.data.dataset.CacheDataset as the trainer uses it, the same with the 512 ->
    224 area resize done on the stored uint8 before the float conversion)."""
    import torch

    from fibrosis.data.cache import CacheReader
    from fibrosis.config import AugmentConfig
    from fibrosis.data.dataset import CacheDataset, build_augment, normalise

    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    reader = CacheReader(cache)
    prep = {"input_size": 224, "mean": 0.5, "std": 0.25}
    aug = build_augment(AugmentConfig())
    ds = CacheDataset(reader, range(len(reader)), prep, augment=aug, labels=False)

    def uint8_first(i: int) -> torch.Tensor:
        img = cv2.resize(np.asarray(reader.raw(i)), (224, 224), interpolation=cv2.INTER_AREA)
        img = np.clip(aug(image=img.astype(np.float32) / reader.scale)["image"], 0.0, 1.0)
        return torch.from_numpy(np.ascontiguousarray(normalise(img, prep)))[None]

    rates = []
    for get in (lambda k: ds[k], uint8_first):
        order = np.random.default_rng(0).permutation(np.resize(np.arange(len(ds)), 100_000))
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            for k in order[n:n + 64]:
                get(int(k))
            n += 64
        rates.append(n / (time.perf_counter() - start))
    return rates[0], rates[1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=24, help="images per format (default 24)")
    ap.add_argument("--workers", type=int, default=0, help="ingest workers (0 = all cores)")
    ap.add_argument("--size", type=int, default=512, help="cache image size (default 512)")
    ap.add_argument("--formats", default="uncompressed,j2k")
    ap.add_argument("--keep", type=Path, default=None, help="write files here and keep them")
    args = ap.parse_args(argv)

    from fibrosis.config import IngestConfig
    from fibrosis.data.ingest import ingest

    workers = args.workers or len(os.sched_getaffinity(0))
    root = args.keep or Path(tempfile.mkdtemp(prefix="fibrosis-bench-"))
    cfg = IngestConfig(image_size=args.size)
    print(f"{args.n} images per format, {ROWS}x{COLS} 12-bit, cache {args.size} px, "
          f"{workers} worker(s) on {os.cpu_count()} CPU(s); files in {root}")
    last_cache = None
    try:
        for fmt in args.formats.split(","):
            src = root / fmt
            src.mkdir(parents=True, exist_ok=True)
            t = time.perf_counter()
            jobs = [(1000 * (fmt == "j2k") + i, fmt, str(src / f"{i:04d}.dcm")) for i in range(args.n)]
            with ProcessPoolExecutor(workers) as ex:
                files = [Path(p) for p in ex.map(write_dicom, jobs)]
            mb = sum(f.stat().st_size for f in files) / 1e6
            print(f"\n[{fmt}] generated {len(files)} files, {mb / len(files):.1f} MB each, "
                  f"in {time.perf_counter() - t:.1f} s")
            for f in files:  # same page-cache state for both contenders
                f.read_bytes()
            t = time.perf_counter()
            ref = [naive(f, args.size) for f in files]
            t_naive = time.perf_counter() - t
            if workers > 1 and last_cache is None:
                # One-time cost per process (the fork server imports the pixel stack), like
                # the naive loop's imports: measured and printed, kept out of the rates.
                from fibrosis.data.workers import ordered_map, process_file

                t = time.perf_counter()
                list(ordered_map(process_file, [(str(files[0]), "skip", {})], cfg, workers))
                print(f"  (worker pool first start: {time.perf_counter() - t:.1f} s, once per process)")
            rates = {}
            for w in sorted({1, workers}):
                cache = root / f"cache-{fmt}-{w}"
                shutil.rmtree(cache, ignore_errors=True)
                t = time.perf_counter()
                summary = ingest([src], cache, cfg, workers=w, progress=False)
                rates[w] = summary.ingested / (time.perf_counter() - t)
                assert summary.ingested == len(files), summary
                last_cache = cache
            from fibrosis.data.cache import CacheReader

            reader = CacheReader(last_cache)
            by_name = {Path(r.path).name: i for i, r in enumerate(reader.rows)}
            diffs = []
            for f, img in zip(files, ref):
                ours = reader.image(by_name[f.name])
                top = (args.size - img.shape[0]) // 2
                left = (args.size - img.shape[1]) // 2
                diffs.append(np.abs(ours[top:top + img.shape[0], left:left + img.shape[1]] - img).mean())
            naive_rate = len(files) / t_naive
            print(f"  naive loop            {naive_rate:7.2f} images/s")
            for w, r in rates.items():
                print(f"  fibrosis ingest x{w:<3d}  {r:7.2f} images/s   ratio {r / naive_rate:5.2f}x")
            print(f"  agreement with naive output: mean |diff| {np.mean(diffs):.4f} (different resampler)")
        if last_cache is not None:
            rate, rate_u8 = read_rates(last_cache)
            print(f"\ncache read + augment at 224 px (fibrosis.data.dataset.CacheDataset): {rate:.0f} images/s "
                  f"per core -> {5000 / rate:.1f} cores for 5,000 images/s; 16 cores give {16 * rate:.0f}/s")
            print(f"  same with the resize on uint8 before float: {rate_u8:.0f} images/s per core "
                  f"-> 16 cores give {16 * rate_u8:.0f}/s")
            print(f"  (load average now {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)")
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
