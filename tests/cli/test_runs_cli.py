"""`fibrosis runs DIR`: exit 0 with the page written, 2 with one line when DIR or --out cannot work."""
from __future__ import annotations

from helpers.runs import save_run_checkpoint

from fibrosis.cli.main import main


def _one_error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if " ERROR " in line]
    assert "Traceback" not in err and len(lines) == 1 and len(err.splitlines()) == 1, err
    return lines[0]


def test_runs_writes_the_page_and_exits_0(tmp_path, capsys):
    save_run_checkpoint(tmp_path / "work" / "r1", arch="mobilenet_v2", input_size=128)
    assert main(["runs", str(tmp_path / "work")]) == 0
    page = tmp_path / "work" / "index.html"
    assert "r1" in page.read_text() and "not evaluated" in page.read_text()
    assert f"runs: 1 run, 0 evaluations (0 not readable) -> {page}" in capsys.readouterr().err
    assert main(["runs", str(tmp_path / "work"), "--out", str(tmp_path / "site" / "runs.html"),
                 "--reports", str(tmp_path / "none")]) == 0
    assert "mobilenet_v2, 128 px" in (tmp_path / "site" / "runs.html").read_text()


def test_a_missing_folder_is_exit_2_in_one_line(tmp_path, capsys):
    line = _one_error(capsys, ["runs", str(tmp_path / "nowhere")])
    assert line.endswith(f"runs {tmp_path / 'nowhere'}: no such folder; expected a folder holding run folders")


def test_a_file_for_dir_or_a_folder_for_out_is_exit_2(tmp_path, capsys):
    (tmp_path / "f.txt").write_text("x")
    assert _one_error(capsys, ["runs", str(tmp_path / "f.txt")]).endswith(
        f"runs {tmp_path / 'f.txt'}: is a file; expected a folder")
    assert _one_error(capsys, ["runs", str(tmp_path), "--out", str(tmp_path)]).endswith(
        f"--out {tmp_path}: is a folder; expected a file path (e.g. {tmp_path / 'index.html'})")
