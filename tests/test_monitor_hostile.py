"""`fibrosis monitor` against hostile scores: values `fibrosis score` never writes are refused naming
file and line, each image counts once, a "$" in a category draws as text, and alerts are logged
with the exit status 1 they promise."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fibrosis.cli.main import main
from fibrosis.io import file_sha256, write_json
from fibrosis.score.output import META_COLUMNS, RowWriter, meta_path
from test_monitor_stats import _ref
from test_score import make_checkpoint

N = 60


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A checkpoint and the reference its evaluation wrote (60 PA images of vendor ACME)."""
    ckpt = make_checkpoint(tmp_path_factory.mktemp("run") / "best.pt")
    ref = {**_ref(N), "format": 1, "model_id": file_sha256(ckpt)[:16], "split": "test", "n": N,
           "created": "2026-12-01T00:00:00+00:00"}
    (ckpt.parent / "eval" / "test").mkdir(parents=True)
    write_json(ckpt.parent / "eval" / "test" / "reference.json", ref)
    return ckpt.parent


def _scores(run: Path, out: Path, n: int = N, vendor: str = "ACME", **override: str) -> Path:
    """A scores file as `fibrosis score` writes it (and its side file); ``override`` sets cells of row 0."""
    model_id = json.loads((run / "eval" / "test" / "reference.json").read_text())["model_id"]
    rng = np.random.default_rng(3)
    rows, metas = RowWriter(out), RowWriter(meta_path(out), META_COLUMNS)
    for i in range(n):
        p = float(rng.uniform(0.02, 0.98))
        row = {"path": f"/in/{i}.dcm", "status": "ok", "logit": f"{np.log(p / (1 - p)):.6f}",
               "probability": f"{p:.6f}", "decision": int(p >= 0.5), "model_id": model_id, "content_hash": f"h{i}",
               "threshold_name": "youden", "threshold": "0.5", "view_position": "PA"}
        row.update(override if i == 0 else {})
        rows.write(row)
        metas.write({"path": row["path"], "scored_at": "2027-01-01T00:00Z", "manufacturer": vendor,
                     "view_position": "PA", "modality": "DX", "transfer_syntax": "1.2.840.10008.1.2.1",
                     "sex": "FM"[i % 2], "age": "50", **{k: f"{rng.normal(0.5, 0.05):.5f}" for k in
                                                          ("img_mean", "img_std", "img_p05", "img_p50", "img_p95")}})
    rows.close(), metas.close()
    return out


def _monitor(run: Path, tmp_path: Path, *scores: Path, extra: tuple[str, ...] = ()) -> int:
    argv = ["monitor", "--model", str(run), "--out", str(tmp_path / "mon"), *extra]
    for s in scores:
        argv += ["--scores", str(s)]
    return main(argv)


def test_a_dollar_in_a_category_is_drawn_as_text_and_the_alerts_are_logged(run, tmp_path, capsys):
    """A Manufacturer holding "$\\FRAC{...": mathtext would raise (exit 2, no HTML, no alert logged)."""
    scores = _scores(run, tmp_path / "s.csv", vendor=r"Evil $\FRAC{1}{2}$ Corp $5")
    assert _monitor(run, tmp_path, scores) == 1
    alerts = [line for line in capsys.readouterr().err.splitlines() if " ALERT " in line]
    assert alerts and any("manufacturer" in a for a in alerts)
    page = (tmp_path / "mon" / "monitor.html").read_text()
    assert page.count("data:image/png") == 3 and "EVIL $\\FRAC{1}{2}$ CORP $5" in page.upper()  # mix figure too
    assert sorted(p.name for p in (tmp_path / "mon").iterdir()) == ["monitor.html", "monitor.json"]


def test_every_figure_goes_through_plain_text_even_one_made_outside_the_report_style():
    from matplotlib.figure import Figure

    from fibrosis.report.plots import png_bytes

    fig = Figure()
    ax = fig.add_subplot()
    ax.barh([0, 1], [1, 2])
    ax.set_yticks([0, 1], [r"$\FRAC{cmd}$", "a $ b"])
    ax.set_title(r"$\undefinedsymbol$")
    assert png_bytes(fig).startswith(b"\x89PNG")


@pytest.mark.parametrize("cells, message", [
    ({"probability": "inf"}, "probability='inf'; expected a calibrated probability in [0, 1]"),
    ({"probability": "1e999"}, "probability='1e999'; expected a calibrated probability in [0, 1]"),
    ({"probability": "-5"}, "probability='-5'; expected a calibrated probability in [0, 1]"),
    ({"probability": "nan"}, "probability='nan'; expected a calibrated probability in [0, 1]"),
    ({"probability": "Jane Doe"}, "probability=<8 characters, not shown>"),
    ({"decision": "2"}, "decision='2'; expected 0 or 1"),
    ({"logit": "-inf"}, "logit='-inf'; expected a finite number"),
    ({"status": "maybe"}, "status=<5 characters, not shown>; expected ok, 'excluded: reason' or 'error: reason'"),
])
def test_values_score_never_writes_are_refused_naming_file_and_line(run, tmp_path, capsys, cells, message):
    scores = _scores(run, tmp_path / "s.csv", **cells)
    assert _monitor(run, tmp_path, scores) == 2
    err = capsys.readouterr().err
    assert f"s.csv:2: {message}" in err and "Traceback" not in err
    assert not (tmp_path / "mon" / "monitor.json").exists()


def test_an_image_counts_once(run, tmp_path, capsys):
    a = _scores(run, tmp_path / "a.csv")
    assert _monitor(run, tmp_path, a, a) == 2
    assert "a.csv: given twice as --scores" in capsys.readouterr().err
    b = tmp_path / "b.csv"
    b.write_bytes(a.read_bytes())  # the same images scored into a second file
    assert _monitor(run, tmp_path, a, b) == 2
    assert "b.csv:2: the image of " in capsys.readouterr().err
    dup = tmp_path / "dup.csv"
    dup.write_text(a.read_text() + a.read_text().split("\n", 2)[1] + "\n")  # row 1 again at the end
    assert _monitor(run, tmp_path, dup) == 2
    assert f"dup.csv:{N + 2}: the image of {dup}:2 again" in capsys.readouterr().err


def test_an_error_row_without_a_reason_is_counted_not_a_traceback(run, tmp_path, capsys):
    scores = _scores(run, tmp_path / "s.csv", status="error", probability="", logit="", decision="")
    assert _monitor(run, tmp_path, scores) in (0, 1)
    result = json.loads((tmp_path / "mon" / "monitor.json").read_text())
    failed = next(c for c in result["windows"][0]["checks"] if c["check"] == "failed share")
    assert failed["reasons"] == {"error: other": 1}


@pytest.mark.parametrize("where", ["scores", "labels"])
def test_a_field_over_the_csv_limit_is_one_line(run, tmp_path, capsys, where):
    scores = _scores(run, tmp_path / "s.csv", **({"path": "/in/" + "x" * 140_000} if where == "scores" else {}))
    labels = tmp_path / "labels.csv"
    labels.write_text("image,fibrosis\n0.dcm,1\n" + "y" * 140_000 + ",0\n")
    extra = ("--labels", str(labels)) if where == "labels" else ()
    assert _monitor(run, tmp_path, scores, extra=extra) == 2
    err = capsys.readouterr().err
    assert f"{'s.csv:2' if where == 'scores' else 'labels.csv:3'}: a field longer than 131072 characters" in err
    assert "Traceback" not in err
