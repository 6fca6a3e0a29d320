"""The champion, an input of the evaluate stage from outside the pipeline (``evaluate.gate.vs_champion``).

A champion this stage's own earlier run registered counts as the one that run compared with
(the version's ``evaluate_base`` and ``champion_seen``): the run after a promotion stays cached.
"""
from __future__ import annotations

from typing import Any

from raypipe.registry import Registry
from raypipe.store import Store


def digest(spec: Any, root: Store, base_fingerprint: str) -> str:
    """The champion's part of the evaluate fingerprint ("" when the gate does not compare with it)."""
    if spec.evaluate.gate.vs_champion is None:
        return ""
    reg = Registry.for_spec(spec, root)
    version = reg.alias("champion")
    if version is None:
        return "none"
    meta = reg.meta(version)  # the marker only: not the metrics, lineage and aliases info() reads
    if meta.get("evaluate_base") == base_fingerprint and meta.get("champion_seen"):
        return meta["champion_seen"]
    return f"version:{version}"
