"""Progress output: a tqdm bar on a terminal; off a terminal (CI, nohup, a scheduler's log) plain
lines every few percent or seconds, never carriage returns."""

import io


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_off_a_terminal_plain_lines_every_few_percent():
    from didr.progress import Progress

    out = io.StringIO()
    bar = Progress(10_000, "reference", stream=out, every_percent=10, every_seconds=1e9, clock=Clock())
    for _ in range(10_000):
        bar.update(1)
    bar.close()
    text = out.getvalue()
    assert "\r" not in text and len(text) < 2000  # not one line per update
    lines = text.splitlines()
    assert len(lines) == 10
    assert lines[0].startswith("reference: 1000/10000 (10%)") and lines[-1].startswith("reference: 10000/10000 (100%)")


def test_off_a_terminal_a_line_every_few_seconds():
    from didr.progress import Progress

    out, clock = io.StringIO(), Clock()
    bar = Progress(1000, "train", stream=out, every_percent=100, every_seconds=30, clock=clock)
    for _ in range(5):  # slow steps: 20 s each
        clock.now += 20
        bar.update(1)
    bar.set_postfix({"reward": "0.51"})
    clock.now += 20
    bar.update(1)
    lines = out.getvalue().splitlines()
    assert len(lines) == 3  # at 40 s, 80 s and 120 s
    assert lines[0].startswith("train: 2/1000 (0%)") and "40s elapsed" in lines[0]
    assert "reward=0.51" in lines[-1]
    bar.close()  # the last line: the state at the end
    assert out.getvalue().splitlines()[-1].startswith("train: 6/1000")


def test_on_a_terminal_a_tqdm_bar():
    from didr.progress import Progress

    out = Terminal()
    with Progress(50, "align", stream=out) as bar:
        for _ in range(50):
            bar.update(1)
    text = out.getvalue()
    assert text.startswith("\ralign:") and "| 0/50 [" in text  # tqdm's bar (it redraws at most every 0.1 s)


def test_disabled_writes_nothing_and_iterates():
    from didr.progress import Progress, progress

    out = io.StringIO()
    assert list(progress(range(5), "x", enabled=False, stream=out)) == [0, 1, 2, 3, 4]
    assert list(progress(range(5), "x", stream=out, every_percent=50)) == [0, 1, 2, 3, 4]
    assert out.getvalue().splitlines()[0].startswith("x: 3/5 (60%)")  # the first step at least 50% past the start
    bar = Progress(5, "y", enabled=False, stream=out)
    bar.update(5)
    bar.close()
    assert "y:" not in out.getvalue()


def test_toy_stages_write_plain_progress_off_a_terminal(capsys):
    from didr.experiments.config import ToyConfig
    from didr.experiments.toy.stages import prepare_stages

    cfg = ToyConfig(ref_steps=20, ref_batch=32, distill_steps=10, distill_batch=32, hidden=16, teacher_steps=4, eval_samples=16)
    prepare_stages(cfg, 0, None, progress=True)
    err = capsys.readouterr().err
    assert "\r" not in err
    assert "reference (DSM): 20/20 (100%)" in err and "generator init: 10/10 (100%)" in err
