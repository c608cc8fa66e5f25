"""Input discovery shared by ingest and score: hidden files count, unreadable folders are entries."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from fibrosis.data.discover import FOLDER_ERROR, discover_entries


@pytest.fixture
def tree(tmp_path) -> Path:
    d = tmp_path / "d"
    for sub in (".snap", "locked", "b", "b-c"):
        (d / sub).mkdir(parents=True)
    for f in ("a.dcm", ".IM0001", ".snap/IM0002", "locked/x.dcm", "b/x.dcm", "b-c/x.dcm"):
        (d / f).write_text("x")
    return d


@pytest.fixture
def locked(monkeypatch, tree) -> Path:
    """``d/locked`` unlistable: chmod 000 does not stop root, so fail the listing call itself."""
    real, target = os.scandir, str(tree / "locked")

    def scandir(path="."):
        if os.fspath(path) == target:
            raise PermissionError(13, "Permission denied", target)
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    return tree / "locked"


def test_hidden_files_and_folders_are_inputs(tree):
    found = discover_entries([tree])
    assert [(Path(p).relative_to(tree.resolve()).as_posix(), e) for p, e in found] == [
        (".IM0001", ""), (".snap/IM0002", ""), ("a.dcm", ""), ("b-c/x.dcm", ""), ("b/x.dcm", ""),
        ("locked/x.dcm", "")]  # sorted as strings ("b-c/" < "b/"), like the score CSV


def test_unreadable_folder_is_an_explicit_entry(tree, locked):
    found = dict(discover_entries([tree]))
    assert found[str(locked.resolve())] == f"{FOLDER_ERROR}: Permission denied"
    assert str(locked.resolve() / "x.dcm") not in found and len(found) == 6


def test_unreadable_input_folder_itself(tree, monkeypatch):
    real, target = os.scandir, str(tree)

    def scandir(path="."):
        if os.fspath(path) == target:
            raise PermissionError(13, "Permission denied", target)
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    assert discover_entries([tree]) == [(str(tree.resolve()), f"{FOLDER_ERROR}: Permission denied")]


def test_csv_lists_single_files_and_missing_input(tmp_path, tree):
    (tmp_path / "list.csv").write_text("path\nd/a.dcm\nmissing.dcm\n\n")
    (tmp_path / "one.dcm").write_text("x")
    found = discover_entries([tmp_path / "list.csv", tmp_path / "one.dcm", tree / "a.dcm"])
    assert found == sorted([(str((tree / "a.dcm").resolve()), ""), (str((tmp_path / "missing.dcm").resolve()), ""),
                            (str((tmp_path / "one.dcm").resolve()), "")])
    with pytest.raises(FileNotFoundError, match=r"gone: input not found \(expected a folder, a file or a CSV"):
        discover_entries([tmp_path / "gone"])
