"""Building the tiny random models once, also when the processes of one launch race to do it."""

from didr.testing.tiny import build_once


def _writer(text: str, calls: list):
    def build(folder):
        folder.mkdir()
        (folder / "done.json").write_text(text)
        calls.append(folder)

    return build


def test_build_once_builds_once(tmp_path):
    calls = []
    for _ in range(2):
        folder = build_once(tmp_path / "model", _writer("a", calls), "done.json")
    assert (folder / "done.json").read_text() == "a" and len(calls) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no temporary folder left


def test_a_copy_that_loses_the_race_is_dropped(tmp_path):
    target, calls = tmp_path / "model", []

    def racing(folder):  # another process renames its finished copy into place while this one builds
        _writer("theirs", [])(target)
        _writer("ours", calls)(folder)

    assert (build_once(target, racing, "done.json") / "done.json").read_text() == "theirs"
    assert len(calls) == 1 and sorted(p.name for p in tmp_path.iterdir()) == ["model"]
