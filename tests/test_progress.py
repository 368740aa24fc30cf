"""vipaint.progress: log lines when not a terminal (fake clock), rich bars in one, the batch label."""

from __future__ import annotations

import io

from vipaint.progress import Progress, format_line, progress_label


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_log_lines_every_interval_and_at_the_end():
    clock, out = FakeClock(), io.StringIO()
    bar = Progress("VIPaint fit", True, tty=False, stream=out, clock=clock, interval=30.0)
    for it in range(1, 51):
        clock.now += 1.0                      # one iteration per second
        bar(it, 50, {"elbo": -95.1 - it})
    lines = out.getvalue().splitlines()
    # after 30 s, after 60 s would be next (never reached), and the stage's last step
    assert lines == ["[vipaint] VIPaint fit 30/50 · elbo -125.1 · 30 s",
                     "[vipaint] VIPaint fit 50/50 · elbo -145.1 · 50 s"]


def test_slow_steps_give_a_line_each_and_the_label_prefixes_them():
    clock, out = FakeClock(), io.StringIO()
    with progress_label("batch 2/3"):
        bar = Progress("VIPaint refine", True, tty=False, stream=out, clock=clock, interval=30.0)
        for step in range(1, 4):
            clock.now += 41.0
            bar(step, 3)
    assert out.getvalue().splitlines() == ["[vipaint] batch 2/3 · VIPaint refine 1/3 · 41 s",
                                           "[vipaint] batch 2/3 · VIPaint refine 2/3 · 82 s",
                                           "[vipaint] batch 2/3 · VIPaint refine 3/3 · 123 s"]
    bar2 = Progress("DPS", True, tty=False, stream=out, clock=clock)
    bar2(1, 1)                                   # outside the block: no label
    assert out.getvalue().splitlines()[-1] == "[vipaint] DPS 1/1 · 0 s"


def test_disabled_writes_nothing():
    out = io.StringIO()
    for tty in (True, False):
        bar = Progress("DPS", False, tty=tty, stream=out)
        for i in range(1, 4):
            bar(i, 3, {"elbo": 1.0})
    assert out.getvalue() == ""


def test_not_a_terminal_by_default_means_lines(capsys):
    bar = Progress("RePaint", True)             # pytest's captured stderr is not a terminal
    bar(2, 2)
    assert capsys.readouterr().err == "[vipaint] RePaint 2/2 · 0 s\n"


def test_terminal_bar_with_postfix():
    clock, out = FakeClock(), io.StringIO()
    with progress_label("batch 1/1"):
        bar = Progress("VIPaint fit", True, tty=True, stream=out, clock=clock)
        bar(1, 2, {"elbo": -95.123456})
        assert bar.bar is not None and bar.bar.tasks[0].completed == 1
        clock.now += 1.0
        bar(2, 2, {"elbo": -90.5})
    assert bar.bar is None                      # stopped (and cleared) at the end of the stage
    text = out.getvalue()
    assert "batch 1/1 · VIPaint fit" in text and "1/2" in text and "elbo -95.123" in text
    assert "2/2" in text and "elbo -90.5" in text and "[vipaint]" not in text


def test_format_line():
    assert format_line("VIPaint fit", 25, 50, {"elbo": -95.1}, 41.4, "batch 2/3") == \
        "[vipaint] batch 2/3 · VIPaint fit 25/50 · elbo -95.1 · 41 s"
    assert format_line("DDNM", 3, 100, None, 0.2) == "[vipaint] DDNM 3/100 · 0 s"
