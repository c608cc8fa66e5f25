"""Benchmark `fibrosis runs` over a folder of many runs against reading every run whole.

    .venv/bin/python benchmarks/runs_index.py              # 200 runs, half of them evaluated
    .venv/bin/python benchmarks/runs_index.py --runs 500

Built in a temporary folder: one ResNet-18 checkpoint (224 px, ~45 MB) hard-linked into every
run folder (no disk cost), and in half of them a metrics.json of synthetic predictions made by
the real evaluation code; the other half are not evaluated. Both sides run in this process over
the same folder, page cache warm for both (each timed twice, the second kept):
- baseline: per run, ``load_checkpoint`` (the weights read) and ``EvaluationResult.read`` of
  each evaluation -- what reading each run through its readers costs;
- fibrosis: ``scan_runs`` (an evaluated run's model from its evaluation's own record; the
  checkpoint of a run not evaluated read memory-mapped, its weights left on disk).
Both are checked to find the same runs and evaluations before any timing is shown.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from fibrosis.config import Config, EvaluateConfig, config_to_dict
from fibrosis.evaluate.result import EvaluationResult
from fibrosis.evaluate.run import Predictions, evaluate_predictions
from fibrosis.evaluate.summary import run_summary
from fibrosis.model.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from fibrosis.model.net import build_model
from fibrosis.report.runs import scan_runs


def _predictions(n: int, seed: int, split: str) -> Predictions:
    rng = np.random.default_rng(seed)
    y = (rng.uniform(size=n) < 0.2).astype(int)
    rows = [{"patient_key": f"{split}-{i}", "label": str(v), "split": split} for i, v in enumerate(y)]
    return Predictions.from_rows(rows, rng.normal(size=n) + 1.5 * y, split)


def build(root: Path, n_runs: int) -> None:
    net = build_model("resnet18", "none", input_size=224)
    ckpt = Checkpoint(weights=net.state_dict(), config=config_to_dict(Config()), arch="resnet18",
                      preprocessing=net.preprocessing, weights_info=dict(net.weights_info))
    source = save_checkpoint(root / "source.pt", ckpt)
    res, *_ = evaluate_predictions(_predictions(200, 1, "val"), _predictions(200, 2, "test"),
                                   EvaluateConfig(bootstrap_resamples=200))
    for i in range(n_runs):
        run = root / "runs" / f"group{i % 10}" / f"run{i:04d}"
        run.mkdir(parents=True)
        os.link(source, run / "best.pt")
        if i % 2 == 0:
            (run / "eval" / "test").mkdir(parents=True)
            dataclasses.replace(res, run=run_summary(run, ckpt)).write(run / "eval" / "test" / "metrics.json")


def baseline(root: Path) -> tuple[int, int]:
    runs = evaluations = 0
    for best in sorted(root.rglob("best.pt")):
        load_checkpoint(best)
        runs += 1
        for metrics in sorted(best.parent.glob("eval/*/metrics.json")):
            EvaluationResult.read(metrics)
            evaluations += 1
    return runs, evaluations


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=200, help="run folders (half of them evaluated)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        build(root, args.runs)
        index = scan_runs(root / "runs")
        found = baseline(root / "runs")
        assert (index.n_runs, index.n_evaluations) == found and index.n_unreadable == 0, (index, found)
        times = {}
        for _ in range(2):
            for name, fn in (("baseline", lambda: baseline(root / "runs")), ("fibrosis", lambda: scan_runs(root / "runs"))):
                t = time.perf_counter()
                fn()
                times[name] = time.perf_counter() - t
        print(f"{args.runs} runs ({found[1]} evaluated): read whole {times['baseline']:.2f} s, "
              f"scan_runs {times['fibrosis']:.2f} s: {times['baseline'] / times['fibrosis']:.1f}x; "
              f"{1000 * times['fibrosis'] / args.runs:.1f} ms a run")


if __name__ == "__main__":
    main()
