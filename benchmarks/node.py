"""Benchmark `fibrosis listen` on loopback against `fibrosis score` on the same files, in one run.

    .venv/bin/python benchmarks/node.py                          # 8 studies x 2 DX images, resnet18 @ 224
    .venv/bin/python benchmarks/node.py --studies 20 --per-study 3 --engine auto

1. `fibrosis score --sr-out` (fibrosis.score.run.score) on the folder: files/s and studies/s;
2. the node (fibrosis.score.node.Node) on 127.0.0.1 with an SCU sending the same files in one
   association (each file's bytes as stored, as storescu does) and a loopback SCP collecting
   the SRs it sends back:
   - receive: instances/s and MB/s acknowledged (checked, written, fsync'ed);
   - scored: studies/s from the first instance sent to the last SR received, less the idle
     time the node waits before it scores (--idle);
   - overhead: that time over the `score` run's wall time (1.0 = the node costs nothing
     beyond scoring; it includes one checkpoint load per batch of idle studies).

Files: realistic 2500 x 2048 12-bit DX radiographs from benchmarks/ingest.py (uncompressed;
``--format j2k`` for JPEG 2000 lossless). Weights: random init, calibration T=1.5 and
threshold 0.5 stand in for an evaluated run (speed does not depend on them).
"""
from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))  # dicom_net: the loopback SCU / SCP of the node tests


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def make_files(root: Path, studies: int, per_study: int, fmt: str) -> list[Path]:
    """``studies`` x ``per_study`` DX files; the images of a study share its Study Instance UID."""
    import pydicom
    from pydicom.uid import generate_uid

    ingest = _load("ingest")
    files = []
    for s in range(studies):
        study_uid = generate_uid()
        for k in range(per_study):
            path = root / f"s{s:03d}_{k}.dcm"
            ingest.write_dicom((s * per_study + k, fmt, str(path)))
            ds = pydicom.dcmread(path)
            ds.StudyInstanceUID, ds.PatientID = study_uid, f"BENCH{s:04d}"
            ds.save_as(path, enforce_file_format=True)
            files.append(path)
    return files


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--studies", type=int, default=8)
    ap.add_argument("--per-study", type=int, default=2)
    ap.add_argument("--format", choices=["raw", "j2k"], default="raw")
    ap.add_argument("--arch", default="resnet18")
    ap.add_argument("--input-size", type=int, default=224)
    ap.add_argument("--engine", default="eager", help="scoring engine for both runs (default eager)")
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--idle", type=float, default=1.0, help="node idle time before scoring a study")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("FIBROSIS_SALT", "benchmark")

    import pynetdicom

    from dicom_net import LOOPBACK, Collector, associate, contexts_of
    from fibrosis.score.node import COMPREHENSIVE_SR, Destination, Node, NodeConfig
    from fibrosis.score.run import score

    with tempfile.TemporaryDirectory(prefix="fibrosis-node-bench-") as tmp:
        tmp = Path(tmp)
        (tmp / "in").mkdir()
        t = time.perf_counter()
        files = make_files(tmp / "in", args.studies, args.per_study, args.format)
        mb = sum(f.stat().st_size for f in files) / 1e6
        ckpt = _load("score").make_checkpoint(tmp / "run" / "best.pt", args.arch, args.input_size)
        print(f"{len(files)} files ({args.studies} studies x {args.per_study}, {args.format}, {mb:.0f} MB), "
              f"{args.arch} @ {args.input_size}, engine {args.engine}; prepared in {time.perf_counter() - t:.1f} s")

        # Warm-up (imports, decode fork server, page cache) so that neither run pays it alone.
        score(ckpt, files[0], tmp / "warm" / "scores.csv", progress=False, device="cpu", engine=args.engine)
        t = time.perf_counter()
        summary = score(ckpt, tmp / "in", tmp / "score" / "scores.csv", progress=False, device="cpu",
                        engine=args.engine, workers=args.workers, sr_out=tmp / "score" / "sr")
        score_s = time.perf_counter() - t
        print(f"fibrosis score --sr-out: {score_s:6.1f} s  {len(files) / score_s:6.2f} files/s  "
              f"{args.studies / score_s:6.2f} studies/s  (setup {summary.setup_seconds:.1f} s)")

        pacs = Collector("PACS", (COMPREHENSIVE_SR,))
        node = Node(NodeConfig(ckpt, tmp / "node", 0, idle_seconds=args.idle, engine=args.engine,
                               device="cpu", workers=args.workers,
                               destination=Destination("PACS", LOOPBACK, pacs.port)))
        node.start()
        try:
            pynetdicom._config.STORE_SEND_CHUNKED_DATASET = True  # send the stored bytes, no re-encode
            t0 = time.perf_counter()
            assoc = associate(node.port, "FIBROSIS", "BENCH", contexts_of(files))
            bad = [f.name for f in files if assoc.send_c_store(f).Status != 0]
            assoc.release()
            recv_s = time.perf_counter() - t0
            deadline = time.monotonic() + 600
            while pacs.count() < args.studies and time.monotonic() < deadline:
                time.sleep(0.05)
            total_s = time.perf_counter() - t0
        finally:
            node.stop()
            pacs.close()
        if bad or pacs.count() != args.studies:
            raise SystemExit(f"node run incomplete: refused {bad}, {pacs.count()} of {args.studies} SRs")
        busy = total_s - args.idle
        print(f"node receive:           {recv_s:6.1f} s  {len(files) / recv_s:6.1f} instances/s  "
              f"{mb / recv_s:6.0f} MB/s")
        print(f"node scored + SR sent:  {busy:6.1f} s  {args.studies / busy:6.2f} studies/s  "
              f"(first instance to last SR, less --idle {args.idle:g} s)")
        print(f"node / score wall time: {busy / score_s:6.2f}")


if __name__ == "__main__":
    main()
