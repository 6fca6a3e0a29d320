"""What the generated built-ins share: parameter checks and chunked generation.

A generator module provides ``generate_chunk(chunk_index, rows, seed, drift)``, a pure
function of its arguments; these helpers assemble chunks of :data:`CHUNK_ROWS` rows in
process or as one Ray Data task per chunk, with identical rows either way.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Callable

import numpy as np
import pandas as pd

if TYPE_CHECKING:  # pragma: no cover
    import ray.data

CHUNK_ROWS = 50_000
ChunkFn = Callable[[int, int, int, float], pd.DataFrame]


def validate_params(rows: int, seed: int, drift: float) -> None:
    """Raises ``ValueError`` for a negative row count or seed, or a bad drift."""
    if rows < 0:
        raise ValueError(f"rows must be >= 0, got {rows}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if not math.isfinite(drift) or drift < 0:
        raise ValueError(f"drift must be a finite number >= 0, got {drift}")


def chunk_rng(chunk_index: int, rows: int, seed: int, drift: float) -> np.random.Generator:
    """The random generator of chunk ``chunk_index``, after checking the parameters (``ValueError``)."""
    validate_params(rows, seed, drift)
    if chunk_index < 0:
        raise ValueError(f"chunk_index must be >= 0, got {chunk_index}")
    if rows > CHUNK_ROWS:
        raise ValueError(f"rows must be <= CHUNK_ROWS={CHUNK_ROWS}, got {rows}")
    return np.random.default_rng([seed, chunk_index])


def drift_weight(drift: float) -> float:
    """Maps ``drift`` in [0, inf) to a mixing weight in [0, 1)."""
    return drift / (1.0 + drift)


def chunk_sizes(rows: int) -> list[int]:
    """Row counts of the chunks making up ``rows`` rows (the last may be shorter)."""
    full, rest = divmod(rows, CHUNK_ROWS)
    return [CHUNK_ROWS] * full + ([rest] if rest else [])


def generate_frame(generate_chunk: ChunkFn, rows: int, seed: int, drift: float) -> pd.DataFrame:
    """Chunks ``0 .. ceil(rows / CHUNK_ROWS) - 1`` concatenated in process (one empty chunk for 0 rows)."""
    validate_params(rows, seed, drift)
    chunks = [generate_chunk(i, n, seed, drift) for i, n in enumerate(chunk_sizes(rows) or [0])]
    return chunks[0] if len(chunks) == 1 else pd.concat(chunks, ignore_index=True)


def chunked_dataset(generate_chunk: ChunkFn, rows: int, seed: int, drift: float,
                    parallel_threshold: int) -> "ray.data.Dataset":
    """Small data generated on the driver; above ``parallel_threshold`` rows one Ray task per chunk."""
    import ray.data

    validate_params(rows, seed, drift)
    if rows <= parallel_threshold or rows == 0:
        return ray.data.from_pandas(generate_frame(generate_chunk, rows, seed, drift))
    n_chunks = len(chunk_sizes(rows))

    def _generate(batch: dict[str, np.ndarray]) -> pd.DataFrame:
        index = int(batch["id"][0])
        return generate_chunk(index, min(CHUNK_ROWS, rows - index * CHUNK_ROWS), seed, drift)

    return ray.data.range(n_chunks, override_num_blocks=n_chunks).map_batches(
        _generate, batch_size=1, batch_format="numpy"
    )
