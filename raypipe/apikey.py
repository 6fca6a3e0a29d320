"""The endpoint's API key at rest: a salted, slow scrypt hash, never the key or a plain digest.

The hash travels in the replica's constructor arguments (so in Serve's config and Ray's GCS);
scrypt (2**14, 8, 1) costs ~45 ms a try here, so a leaked config does not give the key away
to a fast dictionary attack. The salt is derived from the pipeline name: redeploying the same
key gives the same arguments, so Serve swaps versions in place instead of restarting replicas.
A replica pays scrypt once per distinct key it sees: accepted and recently refused keys are
remembered in memory by their SHA-256 (bounded), so steady traffic checks in microseconds.
"""
from __future__ import annotations

import hashlib
import hmac
from collections import OrderedDict

N, R, P, DKLEN = 2**14, 8, 1, 32
REMEMBERED = 1024  # refused keys kept, oldest dropped first


def _salt(pipeline: str) -> bytes:
    return hashlib.sha256(f"raypipe/api-key/{pipeline}".encode()).digest()[:16]


def hash_key(key: str, pipeline: str) -> str:
    """``scrypt$N$r$p$<salt hex>$<hash hex>`` of ``key`` for ``pipeline``'s endpoint."""
    salt = _salt(pipeline)
    digest = hashlib.scrypt(key.encode(), salt=salt, n=N, r=R, p=P, dklen=DKLEN)
    return f"scrypt${N}${R}${P}${salt.hex()}${digest.hex()}"


class KeyCheck:
    """Checks a presented key against an encoded hash (constant-time compares throughout)."""

    def __init__(self, encoded: str) -> None:
        scheme, n, r, p, salt, digest = encoded.split("$")
        if scheme != "scrypt":
            raise ValueError(f"API key hash: unknown scheme {scheme!r}")
        self.n, self.r, self.p, self.salt, self.digest = int(n), int(r), int(p), bytes.fromhex(salt), bytes.fromhex(digest)
        self.accepted: set[bytes] = set()
        self.refused: OrderedDict[bytes, None] = OrderedDict()

    def __call__(self, key: str) -> bool:
        seen = hashlib.sha256(key.encode()).digest()
        if any(hmac.compare_digest(seen, k) for k in self.accepted):
            return True
        if seen in self.refused:
            return False
        tried = hashlib.scrypt(key.encode(), salt=self.salt, n=self.n, r=self.r, p=self.p, dklen=len(self.digest))
        if hmac.compare_digest(tried, self.digest):
            self.accepted.add(seen)
            return True
        self.refused[seen] = None
        if len(self.refused) > REMEMBERED:
            self.refused.popitem(last=False)
        return False
