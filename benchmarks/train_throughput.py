"""Training throughput: fed from the cache vs. the compute ceiling, in one process.

    python benchmarks/train_throughput.py                       # CPU defaults (resnet18, 128 px)
    python benchmarks/train_throughput.py --arch resnet50 --size 224 --batch-size 128 \\
        --steps 60 --workers 14 --cache-size 512               # GPU (bf16 + channels_last default)

Measures, with the very functions `fibrosis train` runs (train.make_loader, train.train_epoch,
CacheDataset with augmentation, finetune.make_optimizer):

1. *fed*: images/s of training steps whose batches come from a cache through the
   DataLoader (read, resize, augment, normalise, host->device copy);
2. *ceiling*: the same model, optimizer and step on synthetic tensors already on the
   device (no input pipeline at all);
3. their ratio (target on a GPU: >= 0.9 for resnet50 at 224 px, bf16, channels_last);
4. the head-stage speedup from cached features: E head epochs through the frozen
   backbone vs. extracting features once + E epochs on the features.

Without --cache it writes a synthetic cache (fibrosis.data.synthetic) so it needs no ../shared.
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fibrosis.model import distributed  # noqa: E402
from fibrosis.data.cache import CacheReader  # noqa: E402
from fibrosis.config import Config, ModelConfig, StageConfig, TrainConfig  # noqa: E402
from fibrosis.data.dataset import CacheDataset, build_augment, row_label  # noqa: E402
from fibrosis.train.schedule import freeze, make_optimizer  # noqa: E402
from fibrosis.model.net import build_model  # noqa: E402
from fibrosis.model.inference import extract_features  # noqa: E402
from fibrosis.data.synthetic import make_synthetic_cache  # noqa: E402
from fibrosis.train.loop import make_loader, train_epoch  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed_epoch(step_model, batches, opt, sched, loss_fn, device, args) -> float:
    _sync(device)
    t0 = time.perf_counter()
    _, n = train_epoch(step_model, batches, opt, sched, loss_fn, device, amp=args.amp,
                       channels_last=args.channels_last)
    _sync(device)
    return n / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="resnet18")
    ap.add_argument("--size", type=int, default=128, help="model input size")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--steps", type=int, default=12, help="timed steps per measurement")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first (cuDNN autotune, compile)")
    ap.add_argument("--workers", type=int, default=2, help="DataLoader workers for the fed run")
    ap.add_argument("--unfreeze", default="all", help="blocks trained in the measured stage")
    ap.add_argument("--cache", type=Path, help="an existing cache (default: synthetic)")
    ap.add_argument("--cache-size", type=int, default=256, help="synthetic cache image side")
    ap.add_argument("--no-amp", dest="amp", action="store_false", help="no bf16 autocast (CUDA)")
    ap.add_argument("--no-channels-last", dest="channels_last", action="store_false")
    ap.add_argument("--compile", action="store_true", help="torch.compile the model")
    ap.add_argument("--head-epochs", type=int, default=5, help="epochs for the head-stage comparison")
    ap.add_argument("--head-images", type=int, default=256)
    ap.add_argument("--device", default=None, help="cpu | cuda (default: cuda when available)")
    ap.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    d = distributed.Dist(0, 1, 0, device, False)
    b, total = args.batch_size, args.warmup + args.steps
    tmp = tempfile.TemporaryDirectory(prefix="fibrosis-throughput-")
    cache = args.cache
    if cache is None:
        n = max(total * b, args.head_images)
        t0 = time.perf_counter()
        cache = make_synthetic_cache(Path(tmp.name) / "cache", n, args.cache_size, splits={"train": 1.0},
                                     shard_size=256)
        print(f"synthetic cache: {n} images of {args.cache_size} px in {time.perf_counter() - t0:.1f} s")
    reader = CacheReader(cache)
    idx = [i for i, r in enumerate(reader.rows) if r.get("split", "train") in ("train", "")] or list(range(len(reader)))
    labels = [row_label(reader.rows[i]) for i in idx]
    cfg = Config(model=ModelConfig(arch=args.arch, weights="none", input_size=args.size),
                 train=TrainConfig(batch_size=b, num_workers=args.workers, amp=args.amp,
                                   channels_last=args.channels_last))
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    model = build_model(args.arch, "none", input_size=args.size).to(device, memory_format=fmt)
    stage = StageConfig(name="measure", epochs=1, lr=1e-4,
                        unfreeze=tuple(args.unfreeze.split("+")) if args.unfreeze else ())
    freeze(model, stage.unfreeze)
    model.train()
    step_model = torch.compile(model) if args.compile else model
    loss_fn = nn.BCEWithLogitsLoss().to(device)
    opt, sched = make_optimizer(model, stage, 10 ** 6)

    # 2. ceiling: device-resident synthetic batches (measured first, then fed, then again).
    x = torch.randn(b, 1, args.size, args.size, device=device).contiguous(memory_format=fmt)
    y = (torch.arange(b, device=device) % 2).float()
    _timed_epoch(step_model, [(x, y)] * args.warmup, opt, sched, loss_fn, device, args)
    ceiling_a = _timed_epoch(step_model, [(x, y)] * args.steps, opt, sched, loss_fn, device, args)

    # 1. fed from the cache, through the training loader and augmentation.
    ds = CacheDataset(reader, idx, model.preprocessing, build_augment(cfg.train.augment))
    loader = make_loader(ds, labels, cfg, d, epoch=0)
    it = iter(loader)
    warm = [next(it) for _ in range(args.warmup)]  # also starts the workers
    _timed_epoch(step_model, warm, opt, sched, loss_fn, device, args)

    # The timed batches come from the same running loader (its workers already started).
    fed = _timed_epoch(step_model, itertools.islice(it, args.steps), opt, sched, loss_fn, device, args)
    ceiling_b = _timed_epoch(step_model, [(x, y)] * args.steps, opt, sched, loss_fn, device, args)
    ceiling = max(ceiling_a, ceiling_b)
    del it, loader

    # Data pipeline alone (no model): can the loader outrun the model at all?
    t0 = time.perf_counter()
    n_seen = 0
    for i, (xb, _) in enumerate(make_loader(ds, labels, cfg, d, epoch=1)):
        n_seen += len(xb)
        if i + 1 >= args.steps:
            break
    pipeline = n_seen / (time.perf_counter() - t0)

    # 4. head stage: frozen backbone every epoch vs. features once.
    head_idx = idx[: args.head_images]
    head_y = labels[: args.head_images]
    freeze(model, ())
    head_stage = StageConfig(name="head", epochs=args.head_epochs, lr=1e-3)
    plain = CacheDataset(reader, head_idx, model.preprocessing, None)
    opt_h, sched_h = make_optimizer(model, head_stage, math.ceil(len(head_idx) / b))
    _sync(device)
    t0 = time.perf_counter()
    for e in range(args.head_epochs):
        train_epoch(model, make_loader(plain, head_y, cfg, d, e), opt_h, sched_h, loss_fn, device,
                    amp=args.amp, channels_last=args.channels_last)
    _sync(device)
    uncached_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    feats = extract_features(model, reader, head_idx, 2 * b, device, num_workers=args.workers,
                             amp=args.amp, channels_last=args.channels_last)
    extract_s = time.perf_counter() - t0
    fds = TensorDataset(feats, torch.tensor(head_y))
    opt_h, sched_h = make_optimizer(model, head_stage, math.ceil(len(head_idx) / b))
    t0 = time.perf_counter()
    for e in range(args.head_epochs):
        train_epoch(model.head, make_loader(fds, head_y, cfg, d, e, num_workers=0),
                    opt_h, sched_h, loss_fn, device, amp=args.amp, channels_last=False)
    _sync(device)
    cached_epochs_s = time.perf_counter() - t0

    res = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
        "arch": args.arch, "size": args.size, "batch_size": b, "steps": args.steps,
        "amp_bf16": args.amp and device.type == "cuda", "channels_last": args.channels_last,
        "compile": args.compile, "workers": args.workers, "unfreeze": args.unfreeze,
        "cache_image_size": reader.image_size,
        "fed_images_per_s": round(fed, 1), "ceiling_images_per_s": round(ceiling, 1),
        "ceiling_runs_images_per_s": [round(ceiling_a, 1), round(ceiling_b, 1)],
        "ratio_fed_to_ceiling": round(fed / ceiling, 3),
        "loader_only_images_per_s": round(pipeline, 1),
        "head_epochs": args.head_epochs, "head_images": len(head_idx),
        "head_uncached_s": round(uncached_s, 2), "head_feature_extract_s": round(extract_s, 2),
        "head_cached_epochs_s": round(cached_epochs_s, 3),
        "head_speedup_per_epoch": round((uncached_s / args.head_epochs) /
                                        max(cached_epochs_s / args.head_epochs, 1e-9), 1),
        "head_speedup_total": round(uncached_s / (extract_s + cached_epochs_s), 2),
    }
    print(f"device {res['device']}: {args.arch} @ {args.size}px, batch {b}, bf16={res['amp_bf16']}, "
          f"channels_last={args.channels_last}, compile={args.compile}, unfreeze={args.unfreeze}")
    print(f"  fed from cache   : {fed:8.1f} img/s  ({args.workers} workers; loader alone {pipeline:.1f} img/s)")
    print(f"  ceiling (device) : {ceiling:8.1f} img/s  (runs before/after: {ceiling_a:.1f}, {ceiling_b:.1f})")
    print(f"  ratio            : {fed / ceiling:8.3f}")
    print(f"  head stage, {args.head_epochs} epochs x {len(head_idx)} images: frozen backbone every epoch "
          f"{uncached_s:.2f} s; features once {extract_s:.2f} s + epochs {cached_epochs_s:.3f} s -> "
          f"{res['head_speedup_per_epoch']}x per epoch, {res['head_speedup_total']}x overall")
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))
    tmp.cleanup()
    return res


if __name__ == "__main__":
    main()
