"""Cost of test-time augmentation: forward time of a model with TTA over the same model without,
in one process (a ratio: absolute times differ between machines).

    python benchmarks/tta_cost.py                                   # resnet18 at 224 px, batch 8
    python benchmarks/tta_cost.py --arch resnet50 --size 224 --batch-size 32 --device cuda

The TTA views are made inside the model's forward (fibrosis.model.tta), so the expected ratio
is about one pass per view (5 by default) plus the warps; the README quotes it.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fibrosis.model import tta as T  # noqa: E402
from fibrosis.model.net import build_model  # noqa: E402


def seconds_per_batch(net: torch.nn.Module, x: torch.Tensor, repeats: int) -> float:
    with torch.no_grad():
        net(x)  # warm-up: allocator and kernel choice
        if x.is_cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(repeats):
            net(x)
        if x.is_cuda:
            torch.cuda.synchronize()
    return (time.perf_counter() - t0) / repeats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="resnet18")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.manual_seed(0)
    x = torch.rand(args.batch_size, 1, args.size, args.size, device=args.device)
    times = {}
    for name, tta in (("plain", None), ("tta", T.DEFAULT_VARIANTS)):
        net = build_model(args.arch, "none", input_size=args.size).set_tta(tta).eval().to(args.device)
        times[name] = seconds_per_batch(net, x, args.repeats)
    result = {"arch": args.arch, "size": args.size, "batch_size": args.batch_size, "device": args.device,
              "views": len(T.DEFAULT_VARIANTS), "plain_s": round(times["plain"], 4),
              "tta_s": round(times["tta"], 4), "ratio": round(times["tta"] / times["plain"], 2)}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
