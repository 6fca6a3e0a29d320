"""A file-based model registry under ``<storage>/registry/<pipeline>/``.

* ``versions/000007/``: model files, fitted features, schema, metrics, lineage, and
  the sha256 manifest written last (a version without it is incomplete and unused).
* ``aliases/<alias>.json``: atomic pointers (``champion``, ``challenger``).
* ``audit/``: one file per promotion or rollback, never rewritten.

Version numbers come from an exclusive folder create, so concurrent registrations
get distinct, increasing numbers.
"""
from __future__ import annotations

import json
import uuid
from datetime import datetime, timezone
from typing import Any

from raypipe.errors import RegistryError
from raypipe.store import MARKER, Store, create_exclusive


def _name(v: int) -> str:
    return f"{v:06d}"


class Registry:
    """The model versions of one pipeline.

    Args:
        root: the artifact store (``spec.storage``), a Store or a URI/path.
        pipeline: the pipeline name.
    """

    def __init__(self, root: Store | str, pipeline: str) -> None:
        root = root if isinstance(root, Store) else Store(root)
        self.store = root.sub("registry", pipeline)
        self.pipeline = pipeline

    # -- versions ---------------------------------------------------------------------
    def versions(self) -> list[int]:
        """Complete versions, oldest first."""
        return [int(n) for n in self.store.listdir("versions") if n.isdigit() and self.store.is_complete(f"versions/{n}")]

    def version_store(self, version: int) -> Store:
        rel = f"versions/{_name(version)}"
        if not self.store.is_complete(rel):
            raise RegistryError(f"{self.pipeline}: version {version} does not exist (versions: {self.versions()})")
        return self.store.sub(rel)

    def info(self, version: int) -> dict[str, Any]:
        vs = self.version_store(version)
        meta = vs.read_json(MARKER).get("meta", {})
        return {**meta, "metrics": vs.read_json("metrics.json").get("metrics"), "lineage": vs.read_json("lineage.json"),
                "aliases": [a for a, v in self.aliases().items() if v == version]}

    def register(self, files: dict[str, bytes], *, status: str, meta: dict[str, Any] | None = None) -> int:
        """Write a new version atomically and return its number."""
        existing = [int(n) for n in self.store.listdir("versions") if n.isdigit()]
        v = max(existing, default=0) + 1
        while not create_exclusive(self.store, f"versions/{_name(v)}"):
            v += 1
        rel = f"versions/{_name(v)}"
        vs = self.store.sub(rel)
        for name, data in files.items():
            vs.write_bytes(name, data)
        self.store.complete_artifact(rel, {"meta": {"version": v, "status": status, **(meta or {})}})
        return v

    # -- aliases ----------------------------------------------------------------------
    def aliases(self) -> dict[str, int]:
        return {n.removesuffix(".json"): self.store.read_json("aliases", n)["version"]
                for n in self.store.listdir("aliases") if n.endswith(".json")}

    def alias(self, name: str) -> int | None:
        return self.aliases().get(name)

    def set_alias(self, name: str, version: int, *, reason: str, action: str = "promote") -> None:
        info = self.version_store(version).read_json(MARKER).get("meta", {})
        if name == "champion" and info.get("status") != "ready":
            raise RegistryError(f"version {version} has status {info.get('status')!r}; only 'ready' versions can be champion")
        previous = self.alias(name)
        self.store.write_json(f"aliases/{name}.json", {"version": version, "at": _now()})
        self._audit({"action": action, "alias": name, "version": version, "previous": previous, "reason": reason})

    def rollback(self, name: str = "champion", *, reason: str) -> int:
        """Point ``name`` back at the version it pointed to before its last move.

        Returns:
            The version the alias points to now.
        """
        moves = [e for e in self.audit_log() if e.get("alias") == name]
        if not moves or moves[-1].get("previous") is None:
            raise RegistryError(f"{self.pipeline}: alias {name!r} has no earlier version to roll back to")
        target = moves[-1]["previous"]
        self.set_alias(name, target, reason=reason, action="rollback")
        return target

    def resolve(self, *, version: int | None = None, alias: str | None = None) -> int:
        if version is not None:
            self.version_store(version)
            return version
        v = self.alias(alias or "champion")
        if v is None:
            raise RegistryError(f"{self.pipeline}: no version has alias {alias or 'champion'!r}; run the pipeline first")
        return v

    # -- audit --------------------------------------------------------------------------
    def _audit(self, event: dict[str, Any]) -> None:
        from raypipe.lineage import _user

        event = {"at": _now(), "user": _user(), **event}
        self.store.write_json(f"audit/{event['at']}-{uuid.uuid4().hex[:8]}.json", event)

    def audit_log(self) -> list[dict[str, Any]]:
        return [self.store.read_json("audit", n) for n in self.store.listdir("audit") if n.endswith(".json")]


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def run_stage(ctx: Any, inputs: dict[str, Any]) -> dict[str, Any]:
    """The register stage: a new version (ready or rejected); champion moves if the gate passed."""
    from raypipe.lineage import lineage_record

    val, feats, train, ev = inputs["validate"], inputs["features"], inputs["train"], inputs["evaluate"]
    reg = Registry(ctx.root, ctx.spec.name)
    parent = reg.alias("champion")
    files = {
        "features.json": feats.store.read_bytes(feats.outputs["features"]),
        "schema.json": val.store.read_bytes(val.outputs["schema"]),
        "metrics.json": ev.store.read_bytes(ev.outputs["metrics_file"]),
        "train_report.json": train.store.read_bytes(train.outputs["report"]),
    }
    model_dir = train.outputs["model"]
    for f in train.store.walk_files(model_dir):
        files[f"model/{f}"] = train.store.read_bytes(model_dir, f)
    files["lineage.json"] = json.dumps(lineage_record(ctx, inputs, parent), indent=2, sort_keys=True).encode()
    gate = ev.outputs["gate"]
    status = "ready" if gate["passed"] else "rejected"
    version = reg.register(files, status=status, meta={"threshold": ev.outputs.get("threshold", 0.5), "run_id": ctx.run_id, "kind": ctx.spec.model.kind})
    if gate["passed"]:
        reg.set_alias("champion", version, reason=f"gate passed in run {ctx.run_id}")
    ctx.log(f"registered {ctx.spec.name} version {version} ({status})" + (" → champion" if gate["passed"] else ""))
    return {"version": version, "status": status, "gate_failures": gate["failures"]}
