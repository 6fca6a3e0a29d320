"""A file-based model registry under ``<storage>/registry/<pipeline>/``.

* ``versions/000007/``: model files, fitted features, schema, metrics, report, lineage,
  ``_OWNER.json`` (the registering process) and the sha256 manifest written last: a
  version without it is incomplete, invisible and never loaded.
* ``versions/000007/_STATUS.json``: the version's status after its manifest:
  ``pending`` → ``ready`` (verified and loadable) or ``rejected`` (gate failed) or
  ``failed`` (did not load, or its registering process died).
* ``versions/000007/_SIGNATURE.json``: with ``registry.signing_key_env``, an HMAC-SHA256 of
  the manifest under a key only the deployer holds. The sha256 manifest proves the files
  are the ones sealed; the signature proves who sealed them: a storage writer can re-seal
  a forged version, not sign it.
* ``aliases/<alias>.json``: atomic pointers (``champion``, ``challenger``).
* ``audit/``: one file per promotion or rollback, never rewritten.

Version numbers come from an atomic rename of a prepared folder (an exclusive create
on object stores), so concurrent registrations get distinct, increasing numbers; a number is never reused (a crashed registration
leaves a ``failed`` tombstone). Writes go manifest → status → alias, so a reader
following an alias only ever sees a complete version, and :meth:`Registry.recover`
finishes or tombstones whatever a killed process left behind.
"""
from __future__ import annotations

import errno
import hashlib
import hmac
import os
import re
import socket
import time
import uuid
from datetime import datetime, timezone
from typing import Any, Callable

from raypipe.errors import ArtifactError, RegistryError, SpecError
from raypipe.lineage import current_user
from raypipe.spec import ALIAS_PATTERN, Spec
from raypipe.store import MARKER, Store, create_exclusive, fsync_dir

OWNER, STATUS, SIGNATURE = "_OWNER.json", "_STATUS.json", "_SIGNATURE.json"
STATUSES = ("pending", "ready", "rejected", "failed")
ORPHAN_AGE_S = 3600  # an incomplete version from another host is abandoned after this long


def _name(v: int) -> str:
    return f"{v:06d}"


class Registry:
    """The model versions of one pipeline.

    Args:
        root: the artifact store (``spec.storage``), a Store or a URI/path.
        pipeline: the pipeline name.
        verify: loads a sealed version back (its folder, its number) and raises if it cannot
            be used; a pending version becomes ``ready`` only when it passes. Without it, a
            version is ready once its manifest checks out.
        signing_key_env: the environment variable holding the key versions are signed with
            (``registry.signing_key_env``). With it, new versions are signed and
            :meth:`check_version` refuses a version without a valid signature. It is read
            when first needed, so listing and reading a registry never needs it.
    """

    def __init__(self, root: Store | str, pipeline: str, *, verify: Callable[[Store, int], Any] | None = None,
                 signing_key_env: str | None = None) -> None:
        root = root if isinstance(root, Store) else Store(root)
        self.store = root.sub("registry", pipeline)
        self.pipeline = pipeline
        self.verify = verify
        self.signing_key_env = signing_key_env

    @classmethod
    def for_spec(cls, spec: Spec, root: Store | str | None = None, **kw: Any) -> "Registry":
        """The registry of a spec's pipeline, signing as its ``registry.signing_key_env`` says."""
        return cls(spec.storage if root is None else root, spec.name,
                   signing_key_env=spec.registry.signing_key_env, **kw)

    # -- versions ---------------------------------------------------------------------
    def _numbers(self) -> list[int]:
        return sorted(int(n) for n in self.store.listdir("versions") if n.isdigit())

    def versions(self) -> list[int]:
        """Complete versions (any status), oldest first."""
        return [v for v in self._numbers() if self.store.is_complete(f"versions/{_name(v)}")]

    def version_store(self, version: int) -> Store:
        rel = f"versions/{_name(version)}"
        if not self.store.is_complete(rel):
            raise RegistryError(f"{self.pipeline}: version {version} does not exist (versions: {self.versions()})")
        return self.store.sub(rel)

    def state(self, version: int) -> dict[str, Any]:
        """``{"status", "finalized", "history"}`` of a version (complete or not)."""
        rel = f"versions/{_name(version)}"
        if self.store.exists(rel, STATUS):
            return self.store.read_json(rel, STATUS)
        if self.store.is_complete(rel):
            return {"status": self.store.read_json(rel, MARKER)["meta"].get("status", "pending"), "history": []}
        return {"status": "incomplete", "history": []}

    def status(self, version: int) -> str:
        return self.state(version)["status"]

    def meta(self, version: int) -> dict[str, Any]:
        """The meta a complete version was sealed with (threshold, run id, fingerprints, ...)."""
        return self.version_store(version).read_json(MARKER).get("meta", {})

    def info(self, version: int) -> dict[str, Any]:
        vs = self.version_store(version)
        meta = self.meta(version)
        state = self.state(version)
        return {**meta, "status": state["status"], "history": state.get("history", []),
                "metrics": vs.read_json("metrics.json").get("metrics"), "lineage": vs.read_json("lineage.json"),
                "aliases": [a for a, v in self.aliases().items() if v == version]}

    def register(self, files: dict[str, bytes], *, status: str = "ready", meta: dict[str, Any] | None = None) -> int:
        """Write a new version atomically with a final ``status`` (no load check); return its number."""
        if status not in STATUSES:
            raise RegistryError(f"status {status!r} is not one of {list(STATUSES)}")
        v = self.write_version(files, meta=meta)
        self._set_status(v, status, "registered", finalized=True)
        return v

    def write_version(self, files: dict[str, bytes], *, meta: dict[str, Any] | None = None) -> int:
        """Claim the next number, write the files and seal the manifest: a ``pending`` version."""
        v = self._claim(max(self._numbers(), default=0) + 1)
        rel = f"versions/{_name(v)}"
        vs = self.store.sub(rel)
        for name, data in files.items():
            vs.write_bytes(name, data)
        self.store.complete_artifact(rel, {"meta": {"version": v, "status": "pending", **(meta or {})}})
        key = self._signing_key()
        if key is not None:
            raw = self.store.read_bytes(rel, MARKER)
            self.store.write_json(f"{rel}/{SIGNATURE}", {"algorithm": "hmac-sha256",
                                                         "manifest_sha256": hashlib.sha256(raw).hexdigest(),
                                                         "hmac": _hmac(key, raw)})
        return v

    def _signing_key(self) -> bytes | None:
        if not self.signing_key_env:
            return None
        key = os.environ.get(self.signing_key_env)
        if not key:
            raise SpecError(f"registry.signing_key_env: the environment variable {self.signing_key_env!r} is not set or "
                            "empty; export the key this registry's versions are signed with, or remove the setting")
        return key.encode()

    def check_version(self, version: int) -> str:
        """Check a version before anything of it is loaded; return its manifest's sha256 (to pin).

        Every file against the sha256 manifest and, when versions are signed
        (``signing_key_env``), the manifest against its HMAC: a version re-sealed by
        someone without the key, or registered unsigned, is refused.

        Raises:
            ArtifactError: naming the version and what failed.
        """
        vs = self.version_store(version)
        vs.verify_artifact("")
        raw = vs.read_bytes(MARKER)
        key = self._signing_key()
        if key is not None:
            if not vs.exists(SIGNATURE):
                raise ArtifactError(f"{self.pipeline} version {version} is not signed, and this registry's versions "
                                    f"are (registry.signing_key_env: {self.signing_key_env}): registered without "
                                    "the key, or sealed by someone else. Refusing to load it")
            signature = vs.read_json(SIGNATURE)
            if not hmac.compare_digest(str(signature.get("hmac", "")), _hmac(key, raw)):
                raise ArtifactError(f"{self.pipeline} version {version}: its manifest does not match its signature "
                                    f"(registry.signing_key_env: {self.signing_key_env}): re-sealed by someone "
                                    "without the key, or signed with another key. Refusing to load it")
        return hashlib.sha256(raw).hexdigest()

    def _claim(self, v: int) -> int:
        """Take the first free number from ``v`` on, with its owner file already inside.

        Locally the folder is built under a temporary name and renamed into place:
        ``rename`` refuses a non-empty target, so the claim is atomic and a version
        folder never exists without its owner. Object stores fall back to an exclusive
        create (one writer at a time).
        """
        owner = {"pid": os.getpid(), "host": socket.gethostname(), "at": _now()}
        if not self.store.is_local:
            while not create_exclusive(self.store, f"versions/{_name(v)}"):
                v += 1
            self.store.write_json(f"versions/{_name(v)}/{OWNER}", owner)
            return v
        tmp = f"versions/.claim-{uuid.uuid4().hex}-{os.getpid()}-{socket.gethostname()}"
        self.store.write_json(f"{tmp}/{OWNER}", owner)
        while True:
            try:
                os.rename(self.store.path(tmp), self.store.path("versions", _name(v)))
                fsync_dir(self.store.path("versions"))  # the claimed number survives a power loss
                return v
            except OSError as exc:
                if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
                v += 1  # taken by another registration: try the next number

    def publish(self, files: dict[str, bytes], *, passed: bool, promote_to: str | None,
                meta: dict[str, Any] | None = None, reason: str = "") -> int:
        """Register a candidate: write it pending, verify it, set its status, move the alias.

        A candidate that failed its gate becomes ``rejected``; one that passed is loaded
        back from storage (manifest verified) and becomes ``ready``, or ``failed`` if it
        does not load; a ready one then gets ``promote_to`` (if any).
        """
        v = self.write_version(files, meta={**(meta or {}), "gate_passed": passed, "promote_to": promote_to,
                                            "reason": reason})
        self.finalize(v)
        return v

    def finalize(self, version: int) -> str:
        """Take a sealed version from wherever it stopped to its final status (idempotent)."""
        state = self.state(version)
        if state.get("finalized"):
            return state["status"]
        meta = self.store.read_json(f"versions/{_name(version)}", MARKER)["meta"]
        status = state["status"]
        if status == "pending":
            status, why = ("rejected", "gate not passed") if not meta.get("gate_passed", True) else self._verify(version)
            self._set_status(version, status, why)
        target = meta.get("promote_to")
        if status == "ready" and target and self.alias(target) != version:
            self.set_alias(target, version, reason=meta.get("reason") or f"version {version} passed its gate")
        self._set_status(version, status, "finalized", finalized=True)
        return status

    def _verify(self, version: int) -> tuple[str, str]:
        try:
            self.check_version(version)
            if self.verify is not None:
                self.verify(self.version_store(version), version)
        except Exception as exc:  # any load failure makes the version unusable
            return "failed", f"does not load back: {type(exc).__name__}: {exc}"
        return "ready", "manifest verified" + (" and model loaded" if self.verify is not None else "")

    def _set_status(self, version: int, status: str, why: str, *, finalized: bool = False) -> None:
        state = self.state(version)
        history = [*state.get("history", []), {"status": status, "at": _now(), "why": why}]
        self.store.write_json(f"versions/{_name(version)}/{STATUS}",
                              {"status": status, "finalized": finalized, "history": history})

    def recover(self) -> list[tuple[int, str]]:
        """Finish or tombstone versions whose registering process died.

        A sealed version is finalized; an unsealed one loses its files and becomes a
        ``failed`` tombstone (its number stays taken). Versions of live processes are
        left alone. Returns ``[(version, what was done)]``.
        """
        done: list[tuple[int, str]] = []
        for name in self.store.listdir("versions"):
            if name.startswith(".claim-") and self._claim_dead(name):
                self.store.delete("versions", name)  # died before taking a number
        for v in self._numbers():
            rel = f"versions/{_name(v)}"
            if self.store.exists(rel, STATUS) and self.state(v).get("finalized"):
                continue
            if not self._owner_dead(rel):
                continue
            if self.store.is_complete(rel):
                done.append((v, f"finalized as {self.finalize(v)}"))
            else:
                for f in self.store.walk_files(rel):
                    self.store.delete(rel, f)
                self._set_status(v, "failed", "registering process died before the manifest", finalized=True)
                done.append((v, "tombstoned"))
        return done

    def _claim_dead(self, name: str) -> bool:
        try:
            _, _, pid, host = name.split("-", 3)  # .claim-<uuid>-<pid>-<host>: the owner is in the name
        except ValueError:
            return False
        return self._pid_dead({"pid": int(pid), "host": host}, f"versions/{name}")

    def _owner_dead(self, rel: str) -> bool:
        if not self.store.exists(rel, OWNER):
            return _age_s(self.store, rel) > 600  # died between the folder create and the owner file
        return self._pid_dead(self.store.read_json(rel, OWNER), rel)

    def _pid_dead(self, owner: dict[str, Any], rel: str) -> bool:
        if owner.get("host") != socket.gethostname():
            return _age_s(self.store, rel) > ORPHAN_AGE_S
        try:
            os.kill(int(owner["pid"]), 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False

    def find(self, **meta: Any) -> int | None:
        """The newest complete version whose manifest meta has all of ``meta``."""
        for v in reversed(self.versions()):
            m = self.store.read_json(f"versions/{_name(v)}", MARKER).get("meta", {})
            if all(m.get(k) == val for k, val in meta.items()):
                return v
        return None

    # -- aliases ----------------------------------------------------------------------
    def aliases(self) -> dict[str, int]:
        return {n.removesuffix(".json"): self.store.read_json("aliases", n)["version"]
                for n in self.store.listdir("aliases") if n.endswith(".json")}

    def alias(self, name: str) -> int | None:
        return self.aliases().get(check_alias(name))

    def set_alias(self, name: str, version: int, *, reason: str, action: str = "promote") -> None:
        check_alias(name)
        self.version_store(version)
        status = self.status(version)
        if name in ("champion", "challenger") and status != "ready":
            raise RegistryError(f"version {version} has status {status!r}; only 'ready' versions can be {name}")
        previous = self.alias(name)
        self.store.write_json(f"aliases/{name}.json", {"version": version, "at": _now()})
        self._audit({"action": action, "alias": name, "version": version, "previous": previous, "reason": reason})

    def rollback(self, name: str = "champion", *, reason: str) -> int:
        """Point ``name`` back at the version it pointed to before its last move.

        Returns:
            The version the alias points to now.
        """
        check_alias(name)
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
    def record(self, action: str, **fields: Any) -> None:
        """Add an event to the audit log (a retrain's trigger, run and verdict): one file, never rewritten."""
        self._audit({"action": action, **fields})

    def _audit(self, event: dict[str, Any]) -> None:
        event = {"at": _now(), "user": current_user(), **event}
        self.store.write_json(f"audit/{event['at']}-{uuid.uuid4().hex[:8]}.json", event)

    def audit_log(self) -> list[dict[str, Any]]:
        return [self.store.read_json("audit", n) for n in self.store.listdir("audit") if n.endswith(".json")]


def check_alias(name: str) -> str:
    """``name`` if it is a valid alias (it becomes a file name), else a RegistryError saying what is allowed."""
    if not isinstance(name, str) or not re.fullmatch(ALIAS_PATTERN, name):
        raise RegistryError(f"alias {name!r} is not a valid alias name: start with a letter, then letters, digits, "
                            "'_', '-' or '.' (64 characters at most), e.g. champion or challenger")
    return name


def _age_s(store: Store, rel: str) -> float:
    mtime = store.fs.get_file_info(store.path(rel)).mtime
    return 0.0 if mtime is None else time.time() - mtime.timestamp()


def _hmac(key: bytes, data: bytes) -> str:
    return hmac.new(key, data, hashlib.sha256).hexdigest()


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
