"""Training checkpoints that count only once complete.

A checkpoint folder holds the weights (safetensors), the best weights so far when early
stopping keeps them, the optimizer / LR-schedule / gradient-scaler state (``torch.save``
of plain tensors and numbers, read back with ``weights_only=True``) and ``meta.json``
(epoch counter, history). It is sealed like every artifact (:mod:`raypipe.store`): the
marker is written last and holds the sha256 of every other file, so a folder without it,
or whose files do not match it, is not a checkpoint. On resume the newest *complete*
checkpoint wins.
"""
from __future__ import annotations

import io
import json
import os
from typing import Any

from raypipe.errors import ArtifactError
from raypipe.store import MARKER, Store

WEIGHTS, BEST, STATE, META = "model.safetensors", "best.safetensors", "train_state.pt", "meta.json"


def write(folder: str, *, weights: dict[str, Any], state: dict[str, Any], meta: dict[str, Any],
          best: dict[str, Any] | None = None) -> None:
    """Write a checkpoint into ``folder``; the marker goes last."""
    import torch
    from safetensors.torch import save

    def tensors(sd: dict[str, Any]) -> bytes:
        return save({k: v.detach().cpu().contiguous() for k, v in sd.items()})

    store = Store(folder)
    store.write_bytes(WEIGHTS, tensors(weights))
    store.write_bytes(META, json.dumps(meta).encode())
    if best is not None:
        store.write_bytes(BEST, tensors(best))
    buf = io.BytesIO()
    torch.save(state, buf)
    store.write_bytes(STATE, buf.getvalue())
    store.complete_artifact("", {"epoch": meta["epoch"]})


def is_complete(folder: str) -> bool:
    """True when the marker is there and every file it lists has its recorded sha256."""
    try:
        Store(folder).verify_artifact("")
        return True
    except (ArtifactError, OSError, ValueError, KeyError, TypeError):
        return False


def read(folder: str) -> dict[str, Any]:
    """A complete checkpoint's contents: ``weights``, ``best`` (or None), ``state``, ``meta``."""
    import torch
    from safetensors.torch import load

    if not is_complete(folder):
        raise ValueError(f"{folder}: not a complete checkpoint (no {MARKER}, or files that do not match it)")

    def tensors(name: str) -> dict[str, Any] | None:
        path = os.path.join(folder, name)
        return load(open(path, "rb").read()) if os.path.exists(path) else None

    return {"weights": tensors(WEIGHTS), "best": tensors(BEST), "meta": json.load(open(os.path.join(folder, META))),
            "state": torch.load(os.path.join(folder, STATE), weights_only=True)}


def newest_complete(checkpoint: Any) -> Any:
    """The newest complete Ray Train checkpoint at or before ``checkpoint`` (None if there is none).

    Ray Train hands a restarted worker group its latest registered checkpoint; if that
    one is incomplete, its siblings in the run's storage are searched, newest epoch first.
    """
    from ray.train import Checkpoint

    with checkpoint.as_directory() as d:
        if is_complete(d):
            return checkpoint
    fs, parent = checkpoint.filesystem, os.path.dirname(checkpoint.path.rstrip("/"))
    import pyarrow.fs as pafs

    found = []
    for info in fs.get_file_info(pafs.FileSelector(parent)):
        if info.type != pafs.FileType.Directory or info.path.rstrip("/") == checkpoint.path.rstrip("/"):
            continue
        candidate = Checkpoint(path=info.path, filesystem=fs)
        with candidate.as_directory() as d:
            if is_complete(d):
                found.append((Store(d).read_json(MARKER)["epoch"], candidate))
    return max(found, key=lambda t: t[0])[1] if found else None


def work_folder(ctx: Any) -> Any:
    """The train stage's checkpoints: ``<storage>/work/train/<fingerprint>``, kept across a crashed run.

    The stage's artifact folder is emptied when a run starts it again; this one is not,
    so a rerun of the same stage (same fingerprint: same spec, data and code) resumes.
    ``--force`` empties it.
    """
    store = ctx.root.sub(f"work/train/{ctx.fingerprint[:20]}")
    if ctx.forced:
        store.delete()
    return store


def newest_in(folder: str, prefix: str = "epoch_") -> str | None:
    """The newest complete checkpoint folder under ``folder`` (``<prefix><zero-padded number>``; incomplete
    ones are skipped)."""
    if not os.path.isdir(folder):
        return None
    for name in sorted((n for n in os.listdir(folder) if n.startswith(prefix)), reverse=True):
        if is_complete(os.path.join(folder, name)):
            return os.path.join(folder, name)
    return None
