"""Built-in datasets: generated (``transactions``, ``sensors``, ``credit``) and scikit-learn's bundled sets."""
from __future__ import annotations

from typing import TYPE_CHECKING

from raypipe.ingest.builtin import credit, sensors, transactions
from raypipe.ingest.builtin.chunks import PARALLEL_THRESHOLD, chunked_dataset, generate_frame
from raypipe.ingest.builtin.credit import credit_dataset  # noqa: F401 (re-exported)
from raypipe.ingest.builtin.sensors import sensors_dataset  # noqa: F401 (re-exported)
from raypipe.ingest.builtin.sklearn_sets import SKLEARN_SETS, TARGET_COLUMN, sklearn_dataset, sklearn_parts  # noqa: F401 (sklearn_dataset re-exported)
from raypipe.ingest.builtin.transactions import transactions_dataset  # noqa: F401 (re-exported)

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    import ray.data

    from raypipe.spec import BuiltinSource


BUILTIN_GENERATOR_VERSION: dict[str, int] = {
    "transactions": 1,
    "sensors": 1,
    "credit": 1,
    **{name: 1 for name in SKLEARN_SETS},
}
"""Bump a set's version whenever the rows it produces change (it enters the data fingerprint)."""

BUILTIN_TARGETS: dict[str, str] = {
    "transactions": "is_fraud",
    "sensors": "failure_soon",
    "credit": "default",
    **{name: TARGET_COLUMN for name in SKLEARN_SETS},
}
BUILTIN_TASKS: dict[str, str] = {
    "transactions": "classification",
    "sensors": "classification",
    "credit": "classification",
    **{name: entry.task for name, entry in SKLEARN_SETS.items()},
}
BUILTIN_ID_COLUMNS: dict[str, list[str]] = {
    "transactions": ["transaction_id"],
    "sensors": ["machine_id"],
    "credit": ["application_id"],
    **{name: [] for name in SKLEARN_SETS},
}


def builtin_dataset(source: BuiltinSource) -> ray.data.Dataset:
    """Opens any built-in set as a ``ray.data.Dataset``.

    ``rows``, ``seed`` and ``drift`` apply to the generated sets only; the scikit-learn
    sets are always their full, fixed data.
    """
    import ray.data

    frames = builtin_frames(source)
    if frames is not None:  # generated here (or a scikit-learn set): its blocks as they are
        return ray.data.from_pandas(frames)
    return chunked_dataset(_GENERATED[source.name], source.rows, source.seed, source.drift)  # a Ray task per chunk


_GENERATED = {"transactions": transactions.generate_chunk, "sensors": sensors.generate_chunk,
              "credit": credit.generate_chunk}


def builtin_frames(source: BuiltinSource) -> list[pd.DataFrame] | None:
    """The frames :func:`builtin_dataset` makes its dataset of (``ray.data.from_pandas``), when this process
    generates them anyway: a scikit-learn set, or a generated set of at most ``PARALLEL_THRESHOLD`` rows.
    None above that: one Ray task per chunk generates them."""
    if source.name in SKLEARN_SETS:
        return sklearn_parts(source.name)
    if source.name not in _GENERATED:
        raise ValueError(f"unknown built-in dataset {source.name!r}; expected one of {sorted(BUILTIN_GENERATOR_VERSION)}")
    if source.rows > PARALLEL_THRESHOLD:
        return None
    return [generate_frame(_GENERATED[source.name], source.rows, source.seed, source.drift)]
