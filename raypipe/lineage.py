"""Lineage records: where a model version came from."""
from __future__ import annotations

import getpass
import hashlib
import json
import subprocess
from datetime import datetime, timezone
from typing import Any


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def spec_hash(spec: Any) -> str:
    doc = spec.model_dump(mode="json", by_alias=True)
    doc.pop("storage", None)  # where artifacts live is not what the model is
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def lineage_record(ctx: Any, inputs: dict[str, Any], parent: int | None) -> dict[str, Any]:
    from raypipe.runner import code_hash, library_versions

    return {
        "run_id": ctx.run_id,
        "pipeline": ctx.spec.name,
        "created": datetime.now(timezone.utc).isoformat(),
        "data_fingerprint": ctx.data_fingerprint,
        "schema_sha256": inputs["validate"].store.sha256(inputs["validate"].outputs["schema"]) if "validate" in inputs else None,
        "spec_hash": spec_hash(ctx.spec),
        "code_hash": code_hash(),
        "git_commit": git_commit(),
        "versions": library_versions(),
        "seeds": {"split": ctx.spec.data.split.seed, "train": ctx.spec.train.seed,
                  **({"data": ctx.spec.data.source.seed} if hasattr(ctx.spec.data.source, "seed") else {})},
        "stages": {name: out.fingerprint for name, out in inputs.items()},
        "register_fingerprint": ctx.fingerprint,
        "parent_champion": parent,
        "user": _user(),
    }


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no passwd entry in some containers
        return "unknown"
