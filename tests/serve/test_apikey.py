"""The API key at rest: a salted scrypt hash; a replica checks keys against it and remembers its answers."""
from __future__ import annotations

import hashlib

from raypipe import apikey
from raypipe.apikey import KeyCheck, hash_key


def test_the_hash_is_salted_slow_and_stable_per_pipeline() -> None:
    h = hash_key("k-123", "fraud")
    assert h.startswith("scrypt$16384$8$1$") and h == hash_key("k-123", "fraud")  # redeploys keep the same args
    assert h != hash_key("k-123", "other")  # another pipeline, another salt
    assert hashlib.sha256(b"k-123").hexdigest() not in h and "k-123" not in h


def test_the_check_accepts_the_key_only_and_pays_scrypt_once_per_key(monkeypatch) -> None:
    check = KeyCheck(hash_key("right", "p"))
    calls = []
    scrypt = hashlib.scrypt
    monkeypatch.setattr(apikey.hashlib, "scrypt", lambda *a, **k: calls.append(1) or scrypt(*a, **k))
    assert check("right") and check("right") and check("right")
    assert not check("wrong") and not check("wrong") and not check("righ") and not check("")
    assert len(calls) == 4  # right once, then wrong, righ and "" once each


def test_refused_keys_are_remembered_up_to_a_bound(monkeypatch) -> None:
    monkeypatch.setattr(apikey, "REMEMBERED", 3)
    check = KeyCheck(hash_key("right", "p"))
    for i in range(5):
        assert not check(f"guess-{i}")
    assert len(check.refused) == 3 and check("right")
