"""Rows of tensors saved by W processes, read back whole or as the rows of W' processes."""

from __future__ import annotations

import torch
from safetensors.torch import save_file

from didr.train.shard_io import RowReader, rows_of
from didr.train.streams import RandomStreams, batch_split_note, seed_all


def test_rows_split_as_torch_chunk_does():
    for n in (0, 1, 5, 7, 16):
        for world in (1, 2, 3, 4):
            rows = [rows_of(n, world, r) for r in range(world)]
            chunks = torch.arange(n).chunk(world) if n else []
            expected = [(int(c[0]), int(c[-1]) + 1) for c in chunks] + [(n, n)] * (world - len(chunks))
            assert rows == expected


def save_as(tmp_path, tensors, world, whole):
    """The files ``world`` processes write: each its rows of the sharded tensors, the main one the whole ones."""
    files = []
    for r in range(world):
        mine = {k: t[slice(*rows_of(t.shape[0], world, r))].clone() for k, t in tensors.items()}
        if r == 0:
            mine.update(whole)
        files.append(tmp_path / f"rank{r}.safetensors")
        save_file(mine, str(files[-1]))
    return RowReader(files, {k: list(t.shape) for k, t in tensors.items()})


def test_any_process_count_reads_back_what_any_other_wrote(tmp_path):
    sharded = {"w": torch.randn(7, 3), "b": torch.randn(5), "tiny": torch.randn(1, 4)}
    whole = {"step": torch.tensor(3.0)}
    for saved in (1, 2, 3):
        (tmp_path / str(saved)).mkdir()
        reader = save_as(tmp_path / str(saved), sharded, saved, whole)
        assert reader.keys() == {"w", "b", "tiny", "step"}
        assert torch.equal(reader.read("step"), whole["step"])
        for key, t in sharded.items():
            assert torch.equal(reader.read(key), t) and reader.shape(key) == list(t.shape)
            for world in (1, 2, 4):
                parts = [reader.rows(key, *rows_of(t.shape[0], world, r)) for r in range(world)]
                assert torch.equal(torch.cat(parts), t)


def draw(streams, slot, n=2):
    streams.switch(slot)
    return torch.rand(n)


def test_slots_draw_as_separately_seeded_processes_would_and_resume_exactly():
    """Process 0 with two slots draws, micro-batch by micro-batch, what processes 0 and 1 draw alone;
    its saved streams continue exactly in another process, and a slot saved by nobody is reseeded."""
    alone = []
    for rank in (0, 1):
        seed_all(10 + rank)
        alone.append(torch.rand(6))
    streams = RandomStreams(10, 0, 2)
    got = [[], []]
    for _ in range(3):
        for m in (0, 1):
            got[m].append(draw(streams, m))
    assert torch.equal(torch.cat(got[0]), alone[0]) and torch.equal(torch.cat(got[1]), alone[1])
    saved = streams.states()
    expected = [draw(streams, 1), draw(streams, 0)]
    resumed = RandomStreams(99, 0, 2)
    assert resumed.restore(saved, step=3) == []
    assert torch.equal(draw(resumed, 1), expected[0]) and torch.equal(draw(resumed, 0), expected[1])
    assert RandomStreams(10, 0, 2).restore({0: saved[0]}, step=3) == [1]


def test_a_resume_says_how_the_global_batch_is_split():
    assert batch_split_note(2, 1, 2, 1) is None
    assert batch_split_note(2, 1, 1, 2).endswith("the same global batch and random streams")
    assert batch_split_note(2, 1, 1, 1).endswith("the global batch changes from 2 to 1 micro-batches")
