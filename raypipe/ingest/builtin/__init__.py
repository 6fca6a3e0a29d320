"""Built-in datasets: generated (``transactions``, ``sensors``) and scikit-learn's bundled sets."""
from __future__ import annotations

from typing import TYPE_CHECKING

from raypipe.ingest.builtin.sensors import generate_sensors, sensors_dataset
from raypipe.ingest.builtin.sklearn_sets import (
    SKLEARN_SETS,
    TARGET_COLUMN,
    default_task,
    load_frame,
    sklearn_dataset,
)
from raypipe.ingest.builtin.transactions import (
    CHUNK_ROWS,
    SCHEMA_DOC,
    generate_chunk,
    generate_transactions,
    transactions_dataset,
)

if TYPE_CHECKING:  # pragma: no cover
    import ray.data

    from raypipe.spec import BuiltinSource

__all__ = [
    "BUILTIN_GENERATOR_VERSION",
    "BUILTIN_ID_COLUMNS",
    "BUILTIN_TARGETS",
    "BUILTIN_TASKS",
    "CHUNK_ROWS",
    "SCHEMA_DOC",
    "SKLEARN_SETS",
    "TARGET_COLUMN",
    "builtin_dataset",
    "default_task",
    "generate_chunk",
    "generate_sensors",
    "generate_transactions",
    "load_frame",
    "sensors_dataset",
    "sklearn_dataset",
    "transactions_dataset",
]

BUILTIN_GENERATOR_VERSION: dict[str, int] = {
    "transactions": 1,
    "sensors": 1,
    **{name: 1 for name in SKLEARN_SETS},
}
"""Bump a set's version whenever the rows it produces change (it enters the data fingerprint)."""

BUILTIN_TARGETS: dict[str, str] = {
    "transactions": "is_fraud",
    "sensors": "failure_soon",
    **{name: TARGET_COLUMN for name in SKLEARN_SETS},
}
BUILTIN_TASKS: dict[str, str] = {
    "transactions": "classification",
    "sensors": "classification",
    **{name: entry.task for name, entry in SKLEARN_SETS.items()},
}
BUILTIN_ID_COLUMNS: dict[str, list[str]] = {
    "transactions": ["transaction_id"],
    "sensors": ["machine_id"],
    **{name: [] for name in SKLEARN_SETS},
}


def builtin_dataset(source: BuiltinSource) -> ray.data.Dataset:
    """Opens any built-in set as a ``ray.data.Dataset``.

    ``rows``, ``seed`` and ``drift`` apply to the generated sets only; the scikit-learn
    sets are always their full, fixed data.
    """
    if source.name == "transactions":
        return transactions_dataset(source.rows, seed=source.seed, drift=source.drift)
    if source.name == "sensors":
        return sensors_dataset(source.rows, seed=source.seed, drift=source.drift)
    if source.name in SKLEARN_SETS:
        return sklearn_dataset(source.name)
    raise ValueError(f"unknown built-in dataset {source.name!r}; expected one of {sorted(BUILTIN_GENERATOR_VERSION)}")
