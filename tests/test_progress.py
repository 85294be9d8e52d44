"""Progress output: a bar on a terminal, plain periodic lines in a log."""

import io

from algd_runtime.learn.progress import PlainProgress, progress_bar


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
    assert lines[0] == "task seed 1: 400/1000 steps (40 %), 10.0 steps/s (mean 10.0), ETA 1m00s, lam=0.500, ret=3.0"
    assert lines[1] == "task seed 1: 700/1000 steps (70 %), 10.0 steps/s (mean 10.0), ETA 30s, lam=0.500, ret=3.0"
    assert lines[2] == "eval at 700: return 3.0"
    assert lines[3].startswith("task seed 1: 700/1000 steps") and len(lines) == 4


def test_the_rate_and_the_time_left_follow_the_recent_steps_not_a_fast_warm_up():
    """Warm-up runs at 4 steps/s (no updates), training at 1: the line says 1 and its ETA."""
    out, clock = io.StringIO(), Clock()
    bar = PlainProgress(10_000, desc="run", every_s=300.0, stream=out, clock=clock)
    for _ in range(1200):  # 300 s of warm-up
        clock.t += 0.25
        bar.update(1)
    for _ in range(600):  # 600 s of training
        clock.t += 1.0
        bar.update(1)
    lines = out.getvalue().splitlines()
    assert lines[0] == "run: 1200/10000 steps (12 %), 4.0 steps/s (mean 4.0), ETA 36m40s", lines
    assert lines[-1] == "run: 1800/10000 steps (18 %), 1.0 steps/s (mean 2.0), ETA 2h16m", lines


def test_a_terminal_gets_tqdm_and_a_pipe_does_not():
    class Tty(io.StringIO):
        def isatty(self):
            return True

    assert type(progress_bar(10, stream=Tty())).__module__.startswith("tqdm")
    assert isinstance(progress_bar(10, stream=io.StringIO()), PlainProgress)
