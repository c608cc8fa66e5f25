"""The log says what the pipeline did: a library's INFO chatter and WeasyPrint's note on browser-only
CSS stay out of it unless -v; counts read as words."""
from __future__ import annotations

import logging

from fibrosis.cli.logs import QuietLibraries
from fibrosis.cli.main import main
from fibrosis.data.ingest import IngestSummary
from fibrosis.data.split import SplitSummary
from fibrosis.words import plural


def _record(name: str, level: int, msg: str, *args: object) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, msg, args, None)


def test_quiet_libraries_filter():
    quiet, verbose = QuietLibraries(False), QuietLibraries(True)
    css = _record("weasyprint", logging.WARNING, "Ignored `%s: %s` at %d:%d, %s.", "print-color-adjust", "exact",
                  1, 2, "unknown property")
    other_css = _record("weasyprint", logging.WARNING, "Ignored `%s: %s` at %d:%d, %s.", "colour", "red", 1, 2,
                        "unknown property")
    chatter = _record("fontTools.subset", logging.INFO, "Glyph names: %s", "...")
    ours = _record("fibrosis.data.ingest", logging.DEBUG, "ours")
    assert [quiet.filter(r) for r in (css, other_css, chatter, ours)] == [False, True, False, True]
    assert all(verbose.filter(r) for r in (css, other_css, chatter, ours))
    assert not quiet.filter(_record("fibrosisx", logging.INFO, "a library whose name only starts like ours"))


def test_library_chatter_stays_out_of_the_log(tmp_path, capsys):
    """A library's INFO (fontTools lists every table it subsets) is dropped; its warnings stay."""
    log = tmp_path / "log.txt"
    assert main(["split", "--cache", str(tmp_path), "--log-file", str(log)]) == 2
    logging.getLogger("fontTools.subset").info("Glyph names: ...")
    logging.getLogger("fontTools.subset").warning("a real problem")
    logging.getLogger("weasyprint").warning("Ignored `%s: %s` at %d:%d, %s.", "overflow-x", "auto", 1, 2,
                                            "unknown property")
    logging.getLogger("weasyprint").warning("Ignored `%s: %s` at %d:%d, %s.", "colour", "red", 3, 4,
                                            "unknown property")
    logging.getLogger("fibrosis.cli").info("our own line")
    text = log.read_text()
    assert "Glyph names" not in text and "a real problem" in text and "our own line" in text
    assert "overflow-x" not in text and "Ignored `colour: red`" in text
    assert main(["-v", "split", "--cache", str(tmp_path), "--log-file", str(log)]) == 2
    logging.getLogger("fontTools.subset").info("Glyph names: ...")
    assert "Glyph names" in log.read_text()


def test_counts_in_words():
    assert [plural(n, "study") for n in (0, 1, 2)] == ["0 studies", "1 study", "2 studies"]
    assert plural(1, "batch") == "1 batch" and plural(3, "batch") == "3 batches"
    assert plural(2, "file") == "2 files" and plural(2, "criterion", "criteria") == "2 criteria"


def test_stage_summaries_read_as_words():
    ingest = IngestSummary("c", inputs=3, ingested=2, skipped=0, rejected={"error": 1, "excluded": 0, "duplicate": 0})
    assert str(ingest) == "3 inputs: 2 ingested, 0 already in the cache, 1 rejected (1 error)"
    assert str(IngestSummary("c", inputs=1, rejected={"error": 1})) == \
        "1 input: 0 ingested, 0 already in the cache, 1 rejected (1 error); nothing ingested"
    split = SplitSummary(counts={"train": {"images": 3, "patients": 2, "positive": 1, "negative": 2, "unlabeled": 0},
                                 "test": {"images": 1, "patients": 1, "positive": 0, "negative": 1, "unlabeled": 0}},
                         near_duplicates=1)
    assert str(split) == ("train 3 images of 2 patients (1 positive, 2 negative); test 1 image of 1 patient "
                          "(0 positive, 1 negative); 1 near-duplicate pair across patients")


def test_the_console_handler_follows_sys_stderr(monkeypatch):
    import io

    from fibrosis.cli.logs import setup_logging

    first, second = io.StringIO(), io.StringIO()
    monkeypatch.setattr("sys.stderr", first)
    setup_logging(False, None)
    logging.getLogger("fibrosis.x").warning("one")
    first.close()  # what a test's capture does when it ends
    monkeypatch.setattr("sys.stderr", second)
    logging.getLogger("fibrosis.x").warning("two")  # no "I/O operation on closed file"
    assert "two" in second.getvalue()
    logging.basicConfig(force=True, handlers=[logging.NullHandler()])
