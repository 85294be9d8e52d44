"""Progress output: a bar on a terminal, plain periodic lines in a log."""

import io

from algd_runtime.progress import PlainProgress, progress_bar


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_a_log_gets_one_plain_line_per_period_and_one_at_the_end():
    out, clock = io.StringIO(), Clock()
    bar = PlainProgress(1000, initial=100, desc="task seed 1", every_s=30.0, stream=out, clock=clock)
    for _ in range(600):  # 600 steps over 60 s
        clock.t += 0.1
        bar.update(1)
        if clock.t > 25:
            bar.set_postfix(lam="0.500", ret="3.0")
    bar.write("eval at 700: return 3.0")
    bar.close()
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    assert lines[0] == "task seed 1: 400/1000 steps (40 %), 10.0 steps/s, lam=0.500, ret=3.0"
    assert lines[1] == "task seed 1: 700/1000 steps (70 %), 10.0 steps/s, lam=0.500, ret=3.0"
    assert lines[2] == "eval at 700: return 3.0"
    assert lines[3].startswith("task seed 1: 700/1000 steps") and len(lines) == 4


def test_a_terminal_gets_tqdm_and_a_pipe_does_not():
    class Tty(io.StringIO):
        def isatty(self):
            return True

    assert type(progress_bar(10, stream=Tty())).__module__.startswith("tqdm")
    assert isinstance(progress_bar(10, stream=io.StringIO()), PlainProgress)
