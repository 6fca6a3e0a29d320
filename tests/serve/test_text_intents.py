"""examples/support_tickets_text served as real-time intent classification: the example's spec at
a reduced size, deployed on Ray Serve, classifying tickets it never saw over HTTP."""
from __future__ import annotations

import copy
from pathlib import Path

import httpx
import pytest
import yaml

import raypipe
from raypipe.progress import Progress
from raypipe.serve.client import post_predict
from tests.conftest import free_port

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "support_tickets_text" / "pipeline.yaml"

# Worded differently from every generated ticket (raypipe.ingest.unstructured._TICKET_TOPICS), clear to a person.
UNSEEN = {
    "Hello, you charged my card twice this month, please refund the duplicate payment.": "billing",
    "Since this morning the API returns 502 errors and the dashboard does not load for anyone.": "outage",
    "I cannot log in: the password reset email never arrives and now my account is locked.": "account",
    "The parcel still has not arrived and the tracking number shows no movement for ten days.": "shipping",
}


def test_support_tickets_example_answers_intents_over_http(ray_session, tmp_path: Path) -> None:
    from raypipe.ingest.unstructured import write_support_tickets

    write_support_tickets(tmp_path / "tickets", per_class=60)
    raw = copy.deepcopy(yaml.safe_load(EXAMPLE.read_text()))
    raw["storage"] = str(tmp_path / "store")
    raw["data"]["source"]["path"] = str(tmp_path / "tickets")
    raw.setdefault("deploy", {})["port"] = free_port()
    spec = raypipe.load_spec(raw)
    result = raypipe.run(spec, progress=Progress(quiet=True))
    assert result.status == "ok" and result.version == 1, result.summary()
    endpoint = raypipe.serve(spec)
    assert endpoint.url.endswith(spec.route_prefix)
    with httpx.Client(timeout=30) as http:
        one = post_predict(http, endpoint.url, {"text": next(iter(UNSEEN))})
        assert one.status_code == 200, one.text
        body = one.json()
        assert body["prediction"] == "billing" and body["version"] == 1
        assert set(body["scores"]) == set(UNSEEN.values()) and sum(body["scores"].values()) == pytest.approx(1.0)
        batch = post_predict(http, endpoint.url, [{"text": t} for t in UNSEEN])
        assert batch.status_code == 200, batch.text
        got = [p["prediction"] for p in batch.json()["predictions"]]
        assert got == list(UNSEEN.values())
        wrong = post_predict(http, endpoint.url, {"txt": "my parcel is late"})
        assert wrong.status_code == 422 and "text" in wrong.text  # the missing field is named
