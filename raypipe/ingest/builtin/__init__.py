"""Built-in synthetic datasets."""
from raypipe.ingest.builtin.transactions import (
    CHUNK_ROWS,
    SCHEMA_DOC,
    generate_chunk,
    generate_transactions,
    transactions_dataset,
)

__all__ = [
    "CHUNK_ROWS",
    "SCHEMA_DOC",
    "generate_chunk",
    "generate_transactions",
    "transactions_dataset",
]
