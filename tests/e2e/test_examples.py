"""Every example under ``examples/`` is a valid spec and runs end to end at a reduced size.

Each example runs as shipped except for what makes it small and local: its storage in a
temporary folder, fewer rows or images, fewer epochs, and the data a user would have
(PNG digits, support tickets, a PostgreSQL table) generated here the way its header says.
A run must end with the gate passed and the version promoted.
"""
from __future__ import annotations

import copy
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import yaml

import raypipe
from raypipe.progress import Progress

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted(p.parent.name for p in (ROOT / "examples").glob("*/pipeline.yaml"))


def _example(name: str) -> dict[str, Any]:
    return yaml.safe_load((ROOT / "examples" / name / "pipeline.yaml").read_text())


@pytest.mark.parametrize("name", EXAMPLES)
def test_every_example_is_a_valid_spec(name: str) -> None:
    spec = raypipe.load_spec(ROOT / "examples" / name / "pipeline.yaml")
    assert spec.name and (spec.data.source is not None or spec.data.env is not None)


def _digits(data: dict[str, Any], tmp: Path) -> None:
    from raypipe.ingest.unstructured import write_digits_png

    write_digits_png(tmp / "png", per_class=60)
    data["source"]["path"] = str(tmp / "png")


def _tickets(data: dict[str, Any], tmp: Path) -> None:
    from raypipe.ingest.unstructured import write_support_tickets

    write_support_tickets(tmp / "tickets", per_class=60)
    data["source"]["path"] = str(tmp / "tickets")


def _scans(data: dict[str, Any], tmp: Path) -> None:
    from raypipe.ingest.unstructured import write_scans_png

    write_scans_png(tmp / "scans", per_class=200)
    data["source"]["path"] = str(tmp / "scans")


def _fewer_rows(rows: int) -> Callable[[dict[str, Any], Path], None]:
    def shrink(data: dict[str, Any], tmp: Path) -> None:
        data["source"]["rows"] = rows

    return shrink


CUSTOMERS = """
CREATE TABLE customers (id integer PRIMARY KEY, tenure_months integer, monthly_charges double precision,
                        contract text, region text, churned integer, signup_date date);
"""


def _postgres(monkeypatch: pytest.MonkeyPatch, stack: list[Callable[[], None]]) -> Callable[[dict[str, Any], Path], None]:
    """A PostgreSQL with the ``customers`` table the example queries (churn driven by tenure and contract)."""
    from raypipe.ingest.sql import PostgresConnect
    from tests.ingest.pg import start_postgres

    def setup(data: dict[str, Any], tmp: Path) -> None:
        url, password, stop = start_postgres(tempfile.mkdtemp(prefix="rp-pg-", dir="/tmp"))
        stack.append(stop)
        rng = np.random.default_rng(5)
        n = 3000
        tenure = rng.integers(1, 72, n)
        contract = rng.choice(["month-to-month", "one-year", "two-year"], n, p=[0.5, 0.3, 0.2])
        charges = rng.normal(70, 20, n).round(2)
        risk = -1.5 + 2.2 * (contract == "month-to-month") - 0.04 * tenure + 0.01 * (charges - 70)
        churned = (rng.random(n) < 1 / (1 + np.exp(-risk))).astype(int)
        region = rng.choice(["north", "south", "east", "west"], n)
        rows = [(i + 1, int(tenure[i]), float(charges[i]), str(contract[i]), str(region[i]), int(churned[i]),
                 f"2025-{1 + i % 12:02d}-15") for i in range(n)]
        with PostgresConnect(url, password)() as conn:
            conn.execute(CUSTOMERS)
            with conn.cursor() as cur:
                cur.executemany("INSERT INTO customers VALUES (%s, %s, %s, %s, %s, %s, %s)", rows)
        monkeypatch.setenv(data["source"]["password_env"], password)
        data["source"]["url"] = url

    return setup


# examples/monitoring_loop runs whole (its pipeline, then its traffic, the retrain and the swap) in
# tests/e2e/test_monitoring_loop.py; running its pipeline alone here would only repeat the first step.
# The reinforcement-learning examples run whole, with their own checks, in tests/e2e/test_rl.py, and
# streaming_maintenance (broker, landing, training, live scoring) in tests/e2e/test_streaming_maintenance.py.
# examples/speech_commands runs as shipped (its 30 epochs; 4 epochs here would fail its gate) on fewer
# clips in tests/e2e/test_speech.py, which also serves it; a second run here would only repeat that.
RUN_ELSEWHERE = {"monitoring_loop", "rl_cartpole", "maintenance_policy", "offline_rl", "streaming_maintenance",
                 "speech_commands"}
RUN_HERE = [e for e in EXAMPLES if e not in RUN_ELSEWHERE]
# The scans CNN finds the faint blobs only after some 20 epochs; on 400 images that is a few seconds.
KEEP_EPOCHS = {"medical_images": 30}


@pytest.mark.parametrize("name", RUN_HERE)
def test_every_example_runs_end_to_end_at_a_reduced_size(name: str, ray_session, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    stops: list[Callable[[], None]] = []
    prepare: dict[str, Callable[[dict[str, Any], Path], None]] = {
        "credit_risk": _fewer_rows(8000),
        "digits_images": _digits,
        "fraud_detection": _fewer_rows(12000),
        "medical_images": _scans,
        "predictive_maintenance": _fewer_rows(6000),
        "sql_postgres": _postgres(monkeypatch, stops),
        "support_tickets_text": _tickets,
    }
    assert name in prepare, f"examples/{name}: add how to run it small here"
    spec = copy.deepcopy(_example(name))
    spec["storage"] = str(tmp_path / "store")
    if "train" in spec:
        spec["train"]["epochs"] = min(KEEP_EPOCHS.get(name, 4), spec["train"].get("epochs", 4))
    try:
        prepare[name](spec["data"], tmp_path)
        result = raypipe.run(raypipe.load_spec(spec), progress=Progress(quiet=True))
    finally:
        for stop in stops:
            stop()
    assert result.status == "ok" and result.version == 1, result.summary()
    assert result.alias == (spec.get("registry") or {}).get("promote_to", "champion"), result.summary()
