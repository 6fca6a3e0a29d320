"""Checkpoints count only once their completion marker is written and matches the files."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from raypipe.train import checkpoint as ck


def _write(folder: Path, epoch: int) -> None:
    folder.mkdir(parents=True)
    weights = {"w": torch.full((2, 2), float(epoch))}
    ck.write(str(folder), weights=weights, best={"w": torch.zeros(2, 2)}, meta={"epoch": epoch, "history": []},
             state={"optimizer": {"lr": 0.1}, "scheduler": {"last_epoch": epoch}})


def test_round_trip_and_marker_last(tmp_path: Path) -> None:
    _write(tmp_path / "c", 3)
    marker = json.loads((tmp_path / "c" / ck.MARKER).read_text())
    assert marker["epoch"] == 3 and set(marker["files"]) == {ck.WEIGHTS, ck.BEST, ck.STATE, ck.META}
    got = ck.read(str(tmp_path / "c"))
    assert torch.equal(got["weights"]["w"], torch.full((2, 2), 3.0)) and got["meta"]["epoch"] == 3
    assert got["state"]["scheduler"] == {"last_epoch": 3} and torch.equal(got["best"]["w"], torch.zeros(2, 2))


def test_no_marker_or_changed_file_is_not_a_checkpoint(tmp_path: Path) -> None:
    _write(tmp_path / "a", 1)
    (tmp_path / "a" / ck.MARKER).unlink()
    assert not ck.is_complete(str(tmp_path / "a"))
    _write(tmp_path / "b", 1)
    with open(tmp_path / "b" / ck.WEIGHTS, "r+b") as f:  # a torn write
        f.truncate(10)
    assert not ck.is_complete(str(tmp_path / "b"))
    try:
        ck.read(str(tmp_path / "b"))
    except ValueError as exc:
        assert "not a complete checkpoint" in str(exc)
    else:
        raise AssertionError("an incomplete checkpoint was read")


def test_resume_takes_the_newest_complete_sibling(tmp_path: Path) -> None:
    from ray.train import Checkpoint

    for epoch in (1, 2, 3):
        _write(tmp_path / f"checkpoint_{epoch}", epoch)
    (tmp_path / "checkpoint_3" / ck.MARKER).unlink()  # the latest one never finished
    latest = Checkpoint.from_directory(str(tmp_path / "checkpoint_3"))
    chosen = ck.newest_complete(latest)
    assert Path(chosen.path).name == "checkpoint_2"
    assert ck.newest_complete(Checkpoint.from_directory(str(tmp_path / "checkpoint_2"))).path == chosen.path
    for epoch in (1, 2):
        (tmp_path / f"checkpoint_{epoch}" / ck.MARKER).unlink()
    assert ck.newest_complete(latest) is None
