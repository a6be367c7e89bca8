"""Progress bars in a log file: one line per redraw, no carriage returns; a terminal keeps tqdm's redraws."""
import io

from abaw_ce.progress import progress_bar


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_a_bar_written_to_a_file_is_whole_lines(monkeypatch):
    monkeypatch.delenv("TQDM_MININTERVAL", raising=False)
    log = io.StringIO()
    bar = progress_bar(total=4, desc="emotion fold 0", unit="upd", file=log, dynamic_ncols=True, mininterval=0)
    for step in range(4):
        bar.update(1)
        if step == 1:
            log.write("epoch 1 validation score 0.5\n")  # a print while the bar runs gets its own line
    bar.close()
    text = log.getvalue()
    assert "\r" not in text and text.endswith("\n")
    lines = text.splitlines()
    assert all(line.strip() for line in lines)
    assert "epoch 1 validation score 0.5" in lines
    bars = [line for line in lines if line.startswith("emotion fold 0")]
    assert len(bars) >= 2 and "4/4" in bars[-1]


def test_a_file_gets_few_redraws_by_default_and_a_terminal_tqdms_own(monkeypatch):
    monkeypatch.delenv("TQDM_MININTERVAL", raising=False)
    log = io.StringIO()
    with progress_bar(range(1000), desc="inference", file=log) as bar:
        for _ in bar:
            pass
    assert len(log.getvalue().splitlines()) <= 2  # the start and the end, not a thousand redraws
    terminal = Terminal()
    with progress_bar(range(3), desc="inference", file=terminal, mininterval=0) as bar:
        for _ in bar:
            pass
    assert "\r" in terminal.getvalue()
