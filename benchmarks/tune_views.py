"""What the fine-tuning arms of `fibrosis tune` pay for augmentation: cached views or per batch.

    nice python benchmarks/tune_views.py      # ../shared NIH sample + shared MobileNetV2, 224 px

Every epoch of a fine-tuning unit trains on that epoch's augmented view of its images. Two ways
to feed them, which give the same inputs (tests/train/test_tune.py checks the units agree):

- cached: the frozen prefix runs once per backbone over ``max_epochs`` augmented views of every
  development image (shared by every fold and every fine-tuning arm of that backbone), kept in
  memory (``tune.cache_mb``);
- per batch: each unit runs the frozen prefix again over its own training images, every epoch.

Measured in one process on the same data: the views' one-off cost, one unit (fold 0 of
``last1-x0.1``, 10 epochs) each way, and from those the cost of the default grid's fine-tuning
units (3 pretrained fine-tuning arms x 5 folds) each way, as a ratio.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fibrosis.config import load_config  # noqa: E402
from fibrosis.train.tune import setup  # noqa: E402
from fibrosis.train.tune.models import prepare_base  # noqa: E402
from fibrosis.train.tune.unit import run_unit  # noqa: E402
from nih import REPO, SHA, WEIGHTS  # noqa: E402



def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", type=Path, default=REPO / "work" / "transfer" / "cache512",
                    help="an ingested, split cache (benchmarks/transfer.py builds this one)")
    ap.add_argument("--weights", type=Path, default=WEIGHTS)
    ap.add_argument("--work", type=Path, default=REPO / "work" / "tune_views")
    ap.add_argument("--arms", type=int, default=3, help="pretrained fine-tuning arms in the grid to extrapolate to")
    args = ap.parse_args(argv)
    if not (args.cache / "manifest.csv").is_file() or not args.weights.is_file():
        print(f"needs {args.cache} (run benchmarks/transfer.py first) and {args.weights}", file=sys.stderr)
        raise SystemExit(2)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    base = ["model.arch=mobilenet_v2", f"model.weights={args.weights}", f"model.weights_sha256={SHA}",
            "model.input_size=224", "tune.tta=false", "tune.arms=[{name: last1-x0.1, unfreeze: last1, lr_ratio: 10}]"]
    out = {}
    for name, cap in (("cached", 4096), ("per batch", 0)):
        cfg = load_config(None, base + [f"tune.cache_mb={cap}"])
        ctx, folds, arms, reader = setup(cfg, args.cache, args.work / name.replace(" ", "-"))
        arm = arms[0]
        t0 = time.perf_counter()
        prepare_base(ctx, arm, arms, reader)
        acts = ctx.acts[arm.base_key]
        if acts.keep_views:  # the views are built on first use: time them apart from the unit
            acts.augmented(arm.start, 0, [0])
        setup_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        run_unit(ctx, arm, folds[0], args.work / name.replace(" ", "-") / "unit")
        out[name] = {"setup_s": setup_s, "unit_s": time.perf_counter() - t1}
        logging.info("%s: set-up (features%s) %.0f s, one unit %.0f s", name,
                     " + views" if acts.keep_views else "", setup_s, out[name]["unit_s"])
    units = args.arms * len([f for f in folds if f.repeat == 0])
    grid = {k: v["setup_s"] + units * v["unit_s"] for k, v in out.items()}
    print(f"one unit ({cfg.tune.max_epochs} epochs): cached {out['cached']['unit_s']:.0f} s (+ {out['cached']['setup_s']:.0f} s "
          f"of features and views once per backbone), per batch {out['per batch']['unit_s']:.0f} s")
    print(f"{units} fine-tuning units: cached {grid['cached'] / 60:.1f} min, per batch {grid['per batch'] / 60:.1f} min "
          f"(per batch / cached = {grid['per batch'] / grid['cached']:.2f})")
    return {"units": out, "grid": grid}


if __name__ == "__main__":
    main()
