"""`fibrosis monitor` against hostile scores: values `fibrosis score` never writes are refused naming
file and line, each image counts once, a "$" in a category draws as text, and alerts are logged
with the exit status 1 they promise."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from fibrosis.cli.main import main
from helpers.checkpoints import make_checkpoint
from helpers.monitor import evaluated_run, scores_file

N = 60


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A checkpoint and the reference its evaluation wrote (60 PA images of vendor ACME)."""
    return evaluated_run(make_checkpoint(tmp_path_factory.mktemp("run") / "best.pt"), N)


def _monitor(run: Path, tmp_path: Path, *scores: Path, extra: tuple[str, ...] = ()) -> int:
    argv = ["monitor", "--run", str(run), "--out", str(tmp_path / "mon"), *extra]
    for s in scores:
        argv += ["--scores", str(s)]
    return main(argv)


def test_a_dollar_in_a_category_is_drawn_as_text_and_the_alerts_are_logged(run, tmp_path, capsys):
    """A Manufacturer holding "$\\FRAC{...": mathtext would raise (exit 2, no HTML, no alert logged)."""
    scores = scores_file(run, tmp_path / "s.csv", vendor=r"Evil $\FRAC{1}{2}$ Corp $5")
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
    ({"probability_calibrated": "inf"}, "probability_calibrated='inf'; expected a calibrated probability in [0, 1]"),
    ({"probability_calibrated": "1e999"}, "probability_calibrated='1e999'; expected a calibrated probability"),
    ({"probability_calibrated": "-5"}, "probability_calibrated='-5'; expected a calibrated probability in [0, 1]"),
    ({"probability_calibrated": "nan"}, "probability_calibrated='nan'; expected a calibrated probability"),
    ({"probability_calibrated": "Jane Doe"}, "probability_calibrated=<8 characters, not shown>"),
    ({"decision_fibrosis": "2"}, "decision_fibrosis='2'; expected 0 or 1"),
    ({"logit_uncalibrated": "-inf"}, "logit_uncalibrated='-inf'; expected a finite number"),
    ({"status": "maybe"}, "status=<5 characters, not shown>; expected one of ['ok', 'excluded', 'error']"),
    ({"status": "error: truncated"}, "status=<16 characters, not shown>; expected one of ['ok', 'excluded', 'error']"),
])
def test_values_score_never_writes_are_refused_naming_file_and_line(run, tmp_path, capsys, cells, message):
    scores = scores_file(run, tmp_path / "s.csv", **cells)
    assert _monitor(run, tmp_path, scores) == 2
    err = capsys.readouterr().err
    assert f"s.csv:2: {message}" in err and "Traceback" not in err
    assert not (tmp_path / "mon" / "monitor.json").exists()


def test_an_image_counts_once(run, tmp_path, capsys):
    a = scores_file(run, tmp_path / "a.csv")
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
    scores = scores_file(run, tmp_path / "s.csv", status="error", probability_calibrated="", logit_uncalibrated="",
                         decision_fibrosis="")
    assert _monitor(run, tmp_path, scores) in (0, 1)
    result = json.loads((tmp_path / "mon" / "monitor.json").read_text())
    failed = next(c for c in result["windows"][0]["checks"] if c["check"] == "failed share")
    assert failed["reasons"] == {"error: other": 1}


@pytest.mark.parametrize("where", ["scores", "labels"])
def test_a_field_over_the_csv_limit_is_one_line(run, tmp_path, capsys, where):
    scores = scores_file(run, tmp_path / "s.csv", **({"path": "/in/" + "x" * 140_000} if where == "scores" else {}))
    labels = tmp_path / "labels.csv"
    labels.write_text("image,fibrosis\n0.dcm,1\n" + "y" * 140_000 + ",0\n")
    extra = ("--labels", str(labels)) if where == "labels" else ()
    assert _monitor(run, tmp_path, scores, extra=extra) == 2
    err = capsys.readouterr().err
    assert f"{'s.csv:2' if where == 'scores' else 'labels.csv:3'}: a field longer than 131072 characters" in err
    assert "Traceback" not in err


def test_a_scores_file_of_an_earlier_version_is_migrated_with_a_note(run, tmp_path, capsys):
    """status "error: reason" and the columns logit, probability, decision: read as this version's."""
    from fibrosis.io import read_csv, write_csv
    from fibrosis.score.output import OLD_COLUMNS, RENAMED, meta_path

    new = scores_file(run, tmp_path / "new.csv", status="error", reason="truncated: (7FE0,0010) PixelData",
                      probability_calibrated="", logit_uncalibrated="", decision_fibrosis="")
    old = tmp_path / "old.csv"
    back = {v: k for k, v in RENAMED.items()}
    rows = [{**{back.get(k, k): v for k, v in r.items()},
             "status": f"{r['status']}: {r['reason']}" if r["reason"] else r["status"]} for r in read_csv(new)]
    write_csv(old, rows, OLD_COLUMNS)
    meta_path(old).write_bytes(meta_path(new).read_bytes())
    assert _monitor(run, tmp_path / "a", new) == _monitor(run, tmp_path / "b", old)
    assert "old.csv: a scores file of an earlier version" in capsys.readouterr().err
    a, b = (json.loads((tmp_path / x / "mon" / "monitor.json").read_text())["windows"] for x in "ab")
    assert a == b
    failed = next(c for c in b[0]["checks"] if c["check"] == "failed share")
    assert failed["reasons"] == {"error: truncated": 1}


def test_score_refuses_to_append_to_an_earlier_versions_file(tmp_path):
    from fibrosis.score.output import OLD_COLUMNS, open_for_resume

    old = tmp_path / "old.csv"
    old.write_text(",".join(OLD_COLUMNS) + "\n/a,ok\n")
    before = old.read_bytes()
    with pytest.raises(ValueError, match="not a score file of this version"):
        open_for_resume(old, "m1")
    assert old.read_bytes() == before
